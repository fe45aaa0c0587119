"""The daemon's wiring without root: an Agent built on the fake kernel (overlay/fake_kernel.py)
and a fake TUN, started, asked for addresses, stepped; what reaches the kernel is read back
from the fake."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import errors
from agent.addresses import STATE_FILE
from agent.api import Api
from agent.config import Config, StaticPeer
from agent.config_rules import validate
from agent.daemon import Agent
from agent.kernel import NodeKernel, Underlay
from gossip.identity import name_for, new_identity
from overlay import node
from overlay.fake_kernel import FakeKernel
from overlay.fakes import FakeTun
from overlay.ipam import store
from overlay.netdev import RTPROT_WEAVE_PY, Masquerade, NatTable, Route
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
    config = make_config(tmp_path, pod_block=POD_BLOCK, masquerade=False)
    agent = build(fake, config, threads)
    await agent.start()
    try:
        assert fake.host.nat_table(NAT_TABLE) is None
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
