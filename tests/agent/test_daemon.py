"""The daemon's wiring without root: an Agent built on the fake kernel (overlay/fake_kernel.py)
and a fake TUN, started, asked for addresses, stepped; what reaches the kernel is read back
from the fake."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent import client, errors, status
from agent.addresses import STATE_FILE
from agent.api import Api
from agent.config import Config, StaticPeer
from agent.config_rules import validate
from agent.daemon import Agent
from agent.execution import RETRY_INTERVAL
from agent.kernel import NodeKernel, Underlay
from gossip.identity import name_for, new_identity
from overlay import node
from overlay.fake_kernel import FakeKernel
from overlay.fakes import FakeTun
from overlay.ipam import store
from overlay.netdev import RTPROT_WEAVE_PY, Masquerade, NatTable, NetlinkFailure, Route, UdpGuard
from overlay.node import NAT_TABLE

Net = ipaddress.IPv4Network
POD_BLOCK = Net("10.32.1.0/24")
PEER_BLOCK = Net("10.32.2.0/24")
LEFT_OVER = Net("10.32.9.0/24")  # a route a previous agent left in the kernel


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_config(tmp_path: Path, **changes: object) -> Config:
    config = dataclasses.replace(
        Config(), node_name="node-1", state_dir=str(tmp_path / "state"),
        socket_path=str(tmp_path / "api.sock"), cni_socket="", http_addr="", metrics_addr="",
        bind_address="127.0.0.1", port=free_port(), ipalloc_range=Net("10.32.0.0/16"),
        **changes,
    )  # fmt: skip
    validate(config)
    return config


@pytest.fixture
def fake() -> FakeKernel:
    kernel = FakeKernel()
    kernel.host.add_device("weave-tun", kind="tun")
    return kernel


@pytest.fixture
def threads() -> Iterator[list[ThreadPoolExecutor]]:
    made: list[ThreadPoolExecutor] = []
    yield made
    for thread in made:
        thread.shutdown()


def build(fake: FakeKernel, config: Config, threads: list[ThreadPoolExecutor]) -> Agent:
    thread = ThreadPoolExecutor(1)
    threads.append(thread)
    kept = frozenset(r.destination for r in fake.host.list_routes())
    underlay = Underlay(1500, "127.0.0.1", kept)
    kernel = NodeKernel(FakeTun(), "tso", underlay, 1436, thread, node.Reconciler(fake.host),
                        sysctl=fake_sysctl)  # fmt: skip
    return Agent(config, kernel, new_identity(config.node_name))


SYSCTLS: dict[str, str] = {}


def fake_sysctl(key: str, value: str) -> bool:
    """Never the host's: the settings land in SYSCTLS."""
    changed = SYSCTLS.get(key) != value
    SYSCTLS[key] = value
    return changed


def routes(fake: FakeKernel) -> set[Route]:
    return set(fake.host.list_routes())


def bridge_addresses(fake: FakeKernel) -> list[ipaddress.IPv4Interface]:
    return fake.host.list_addresses("weave")


async def test_static_node_starts_with_bridge_gateway_and_peer_routes(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    other = StaticPeer("node-2", "127.0.0.2", 6783, (PEER_BLOCK,))
    agent = build(fake, make_config(tmp_path, pod_block=POD_BLOCK, peers=(other,)), threads)
    await agent.start()
    try:
        assert agent.applied and agent.addresses.ready() and agent.readiness() == ()
        assert SYSCTLS["net.ipv4.ip_forward"] == "1"
        assert SYSCTLS["net/ipv4/conf/weave/rp_filter"] == "2"
        assert bridge_addresses(fake) == [ipaddress.IPv4Interface("10.32.1.1/24")]
        assert routes(fake) == {Route(PEER_BLOCK, "weave-tun")}
        bridge, tun = fake.host.link("weave"), fake.host.link("weave-tun")
        assert bridge is not None and bridge.up and bridge.mtu == 1436
        assert tun is not None and tun.up and tun.gso_max_size == 62000
        report = agent.report()
        assert (report.router.mtu, report.router.underlay_mtu, report.router.offload) == (
            1436, 1500, "tso",
        )  # fmt: skip
        (peer,) = report.peers
        assert (peer.name, peer.nickname, peer.address) == (
            name_for("node-2"), "node-2", "127.0.0.2:6783",
        )  # fmt: skip
        assert [r.destination for r in report.routes] == [PEER_BLOCK]
        assert report.ipam.mode == "static"
        assert (report.ready, report.waiting_for, report.connection_terminations) == (True, (), 0)
        cluster = Net("10.32.0.0/16")  # the range: pods to outside it leave masqueraded
        assert fake.host.nat_table(NAT_TABLE) == NatTable(True, (Masquerade(cluster, cluster),))
        assert agent.coordinator.node is not None and agent.coordinator.node.hairpin
    finally:
        agent.close()


async def test_masquerading_can_be_turned_off(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    fake.host.replace_nat_table(NAT_TABLE, [])  # left by an agent that masqueraded
    config = make_config(tmp_path, pod_block=POD_BLOCK, masquerade=False, no_fastdp=True)
    agent = build(fake, config, threads)
    await agent.start()
    try:
        assert fake.host.nat_table(NAT_TABLE) is None
    finally:
        agent.close()


async def test_without_masquerade_the_table_holds_only_the_fast_paths_guard(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    config = make_config(tmp_path, pod_block=POD_BLOCK, masquerade=False)
    agent = build(fake, config, threads)
    await agent.start()
    try:
        table = fake.host.nat_table(NAT_TABLE)
        assert table is not None and table.rules == ()
        assert table.guard == UdpGuard(6784, frozenset())  # no peer yet: no VXLAN accepted
        assert fake.host.link(config.vxlan_device) is not None
    finally:
        agent.close()


async def test_not_ready_without_space_or_before_the_cni_socket_serves(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    config = make_config(tmp_path, seeds=("127.0.0.9",))
    config = dataclasses.replace(config, cni_socket=str(tmp_path / "cni.sock"))
    agent = build(fake, config, threads)  # consensus of two: never seeded alone
    await agent.start()
    try:
        for _ in range(3):
            await agent.follow()
        assert agent.applied and not agent.ipam.owned
        missing = ("no address space for pods yet", "cni socket not serving yet")
        assert agent.readiness() == missing
        report = agent.report()
        assert (report.ready, report.waiting_for) == (False, missing)
        code, _, body = Api(agent.report).respond("GET", "/status")
        assert code == 503 and body.startswith(
            "not ready: no address space for pods yet\nnot ready: cni socket not serving yet\n"
        )
        agent.cni_serving = True
        assert agent.readiness() == missing[:1]
    finally:
        agent.close()


async def test_addresses_are_written_before_they_are_answered_and_released(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    config = make_config(tmp_path, pod_block=POD_BLOCK)
    agent = build(fake, config, threads)
    await agent.start()
    try:
        answer = await agent.allocate("c1", "eth0")
        assert answer["address"] == "10.32.1.2/24" and answer["gateway"] == "10.32.1.1"
        saved = store.load(str(tmp_path / "state" / STATE_FILE))
        assert saved is not None and ["c1", "eth0", "10.32.1.2"] in saved["pool"]["allocations"]
        assert await agent.release("c1", None) == {"released": ["10.32.1.2/24"]}
        with pytest.raises(errors.Invalid):
            await agent.allocate("bad id", "eth0")
        with pytest.raises(errors.Conflict):
            await agent.rmpeer("aa:00:00:00:00:02")  # no gossip IPAM here
    finally:
        agent.close()


async def test_a_gossip_node_alone_seeds_and_routes_nothing(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    agent = build(fake, make_config(tmp_path), threads)  # no seeds: consensus of one
    await agent.start()
    try:
        for _ in range(5):
            await agent.follow()
        assert agent.ipam.owned == [Net("10.32.0.0/16")]
        assert bridge_addresses(fake) == [ipaddress.IPv4Interface("10.32.0.1/24")]
        assert agent.source.kind == "gossip"
        record = agent.source.view().records[agent.identity.name]
        assert record.blocks == ("10.32.0.0/16",)  # the claim went out with the ring
        answer = await agent.allocate("c1", "eth0")
        assert answer["address"] == "10.32.0.2/24"
        assert agent.readiness() == () and agent.report().ready
    finally:
        agent.close()


async def test_a_restart_keeps_found_routes_for_the_grace_only(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    fake.host.set_link("weave-tun", up=True)
    fake.host.replace_route_index(LEFT_OVER, fake.host.index("weave-tun"), None, RTPROT_WEAVE_PY)
    agent = build(fake, make_config(tmp_path), threads)
    await agent.start()
    try:
        assert Route(LEFT_OVER, "weave-tun") in routes(fake)
        agent.coordinator.grace_until = 0.0  # the grace is over
        await agent.follow()
        assert Route(LEFT_OVER, "weave-tun") not in routes(fake)
    finally:
        agent.close()


# -- failure stays local ------------------------------------------------------------------------


async def test_a_kernel_refusal_fails_that_action_and_is_retried(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    other = StaticPeer("node-2", "127.0.0.2", 6783, (PEER_BLOCK,))
    agent = build(fake, make_config(tmp_path, pod_block=POD_BLOCK, peers=(other,)), threads)
    await agent.start()
    reconcile = agent.kernel.reconcile
    refusals = 0

    async def refusing(spec: node.NodeSpec) -> list[node.Action]:
        nonlocal refusals
        if refusals < 2:
            refusals += 1
            raise NetlinkFailure("replace route 10.32.2.0/24", errno.ENOBUFS)
        return await reconcile(spec)

    try:
        fake.host.remove_route_index(PEER_BLOCK, fake.host.index("weave-tun"))  # drift
        agent.kernel.reconcile = refusing  # type: ignore[method-assign]
        agent.coordinator._node = None  # the coordinator plans the node state afresh
        await agent.follow()  # refused: no exception, counted, due again within a second
        assert agent.execution.node_due and routes(fake) == set()
        assert agent._next_at <= time.monotonic() + RETRY_INTERVAL
        await agent.execution.repair(node_spec(agent), time.monotonic())  # refused again
        counts = agent.tallies.snapshot()["plan action"]
        assert counts == {"reconcile ENOBUFS": 1, "repair ENOBUFS": 1}
        await agent.follow()  # the plan has no node change now; the due one is carried out
        assert not agent.execution.node_due
        assert routes(fake) == {Route(PEER_BLOCK, "weave-tun")}
    finally:
        agent.close()


def node_spec(agent: Agent) -> node.NodeSpec:
    spec = agent.coordinator.node
    assert spec is not None
    return spec


async def test_a_full_disk_and_a_failing_publish_fail_alone(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    agent = build(fake, make_config(tmp_path), threads)  # gossip: the plans publish and save
    await agent.start()
    flush, publish = agent.state.flush, agent.source.publish
    broken = {"disk": True, "source": True}

    async def full(document: Mapping[str, Any]) -> None:
        if broken["disk"]:
            raise errors.StorageFailed("cannot write ipam.json", "[Errno 28] No space left")
        await flush(document)

    def overflowing(fields: Mapping[str, Any]) -> None:
        if broken["source"]:
            raise OverflowError("int too big to convert")
        publish(fields)

    agent.execution.save, agent.execution.publish = full, overflowing
    try:
        for _ in range(5):
            await agent.follow()  # seeds alone: saves and publishes fail, the rest goes on
        assert agent.ipam.owned == [Net("10.32.0.0/16")]
        assert bridge_addresses(fake) == [ipaddress.IPv4Interface("10.32.0.1/24")]
        counts = agent.tallies.snapshot()["plan action"]
        assert counts["save ENOSPC"] >= 1 and counts["publish OverflowError"] >= 1
        assert agent.execution.save_due and agent.execution.publish_due
        broken.update(disk=False, source=False)
        await agent.follow()
        assert not agent.execution.due
        saved = store.load(str(tmp_path / "state" / STATE_FILE))
        assert saved is not None and saved == json.loads(json.dumps(agent.ipam.document()))
        record = agent.source.view().records[agent.identity.name]
        assert record.blocks == ("10.32.0.0/16",)
    finally:
        agent.close()


async def test_a_dead_task_is_named_by_healthz_and_sigterm_still_stops(
    fake: FakeKernel, tmp_path: Path, threads: list[ThreadPoolExecutor]
) -> None:
    with tempfile.TemporaryDirectory(prefix="wp-daemon-", dir="/tmp") as directory:
        socket_path = os.path.join(directory, "api.sock")
        config = make_config(tmp_path, pod_block=POD_BLOCK)
        config = dataclasses.replace(config, socket_path=socket_path)
        agent = build(fake, config, threads)

        async def dying(changed: Callable[[], None]) -> None:
            raise OverflowError("int too big to convert")

        agent.source.run = dying  # type: ignore[method-assign]
        running = asyncio.create_task(agent.run())
        answer = (0, "")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if os.path.exists(socket_path):
                answer = await asyncio.to_thread(client.get, "/healthz", socket_path)
                if answer[0] == 500:
                    break
        assert answer == (500, "dead task: gossip: OverflowError: int too big to convert\n")
        assert not running.done()  # the rest of the agent serves on
        code, _ = await asyncio.to_thread(client.get, "/status", socket_path)
        assert code == 200
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler takes it
        await asyncio.wait_for(running, 10)


async def test_the_secret_is_in_no_view_metric_or_log_line(
    fake: FakeKernel,
    tmp_path: Path,
    threads: list[ThreadPoolExecutor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "correct-horse-battery-staple-41"
    with caplog.at_level(logging.DEBUG):
        agent = build(fake, make_config(tmp_path, password=secret), threads)
        await agent.start()
        try:
            for _ in range(3):
                await agent.follow()
            api = Api(agent.report)
            answers = [api.respond("GET", p)[2] for p in ("/report", "/metrics", "/status")]
            answers += [api.respond("GET", f"/status/{view}")[2] for view in status.VIEWS]
        finally:
            agent.close()
    assert agent.source.kind == "gossip" and answers[0].startswith("{")
    for text in [*answers, *(r.getMessage() for r in caplog.records)]:
        assert secret not in text
