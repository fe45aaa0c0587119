"""The Kubernetes peer source against a real kube-apiserver (tests/kube/conftest.py): Nodes
listed and watched into dial targets, a relist after the watch expired, the podCIDR and the
quorum read at start-up, NetworkUnavailable cleared, and two agents racing to reclaim one
deleted Node. The agents use the service account the manifest's RBAC binds, so a call the
manifest does not grant fails here with 403."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Node

from agent import errors
from agent.peers import kube
from agent.peers.gossip import GossipPeers
from agent.peers.kube import KubePeers
from agent.peers.kube_api import connect, enabled
from agent.peers.nodes import NodeInfo
from agent.peers.reclaim import lease_name
from agent.peers.startup import prepare
from gossip.identity import new_identity
from tests.kube.conftest import Cluster, add_node, delete_nodes

pytestmark = pytest.mark.netns
PORT = 6783
Net = ipaddress.IPv4Network


def names(*suffixes: str) -> list[str]:
    """Node names unique to one test (the cluster is shared by the session)."""
    tag = secrets.token_hex(2)
    return [f"n{tag}-{s}" for s in suffixes]


def source(
    cluster: Cluster,
    node: str,
    address: str,
    rmpeer: kube.Rmpeer | None = None,
    routed: Callable[[], set[Net]] = set,
    blocks: tuple[str, ...] = (),
) -> KubePeers:
    """An agent's Kubernetes source (the mesh built but not run: its dials stay off)."""
    identity = new_identity(node)
    gossip = GossipPeers(identity, 1, (address, PORT), ("127.0.0.1", 0), (), 8,
                         {"blocks": blocks, "meta": b""})  # fmt: skip
    gossip.driver.closing = True  # no dials towards the made-up addresses
    return KubePeers(gossip, connect(cluster.agent_config(node)), node, routed, rmpeer)


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` (the apiserver's answers take real time) until it holds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


def seeds(peers: KubePeers) -> set[str]:
    return {host for host, _ in peers.gossip.mesh.seeds}


def test_nodes_become_dial_targets_and_follow_adds_and_deletes(cluster: Cluster) -> None:
    a, b, c, d = names("a", "b", "c", "d")

    async def scenario() -> None:
        admin = cluster.admin()
        for name, ip in ((a, "192.0.2.1"), (b, "192.0.2.2"), (c, "192.0.2.3")):
            await add_node(admin, name, ip)
        peers = source(cluster, a, "192.0.2.1")
        task = asyncio.create_task(peers.follow_nodes())
        try:
            await until(lambda: {"192.0.2.2", "192.0.2.3"} <= seeds(peers), "listed")
            assert "192.0.2.1" not in seeds(peers)  # never ourselves
            await add_node(admin, d, "192.0.2.4")
            await until(lambda: "192.0.2.4" in seeds(peers), "watched add")
            await delete_nodes(admin, c)
            await until(lambda: "192.0.2.3" not in seeds(peers), "watched delete")
            assert c in peers.reclaims.steps  # a deletion starts a reclaim
        finally:
            task.cancel()
            await delete_nodes(admin, a, b, c, d)
            await peers.api.close()
            await admin.close()

    cluster.run(scenario)


def test_a_deletion_while_no_watch_ran_is_seen_by_the_relist(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = names("a", "b")
    peers: list[KubePeers] = []

    async def first() -> None:
        admin = cluster.admin()
        await add_node(admin, a, "192.0.2.11")
        await add_node(admin, b, "192.0.2.12")
        peers.append(source(cluster, a, "192.0.2.11"))
        task = asyncio.create_task(peers[0].follow_nodes())
        await until(lambda: "192.0.2.12" in seeds(peers[0]), "listed")
        task.cancel()
        await delete_nodes(admin, b)  # nobody watches
        await admin.close()
        await peers[0].api.close()

    async def second() -> None:
        p = peers[0]
        p.api = connect(cluster.agent_config(a))
        old = p.table.version
        task = asyncio.create_task(p.follow_nodes())
        try:
            await until(lambda: "192.0.2.12" not in seeds(p), "relisted")
            assert p.table.version != old and b not in p.table.nodes
            assert b in p.reclaims.steps
        finally:
            task.cancel()
            admin = cluster.admin()
            await delete_nodes(admin, a)
            await admin.close()
            await p.api.close()

    cluster.run(first)
    cluster.control.restart("kube-apiserver")  # its watch cache starts after our version
    with caplog.at_level(logging.INFO, logger="weave-py.kube"):
        cluster.run(second)
    assert "relist nodes: the watch expired" in caplog.text


def test_start_up_reads_the_quorum_the_pod_cidr_and_the_address(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = names("a", "b", "c")

    async def scenario() -> None:
        admin = cluster.admin()
        for name, ip in ((a, "192.0.2.21"), (b, "192.0.2.22"), (c, "192.0.2.23")):
            await add_node(admin, name, ip)
        count = len([n async for n in admin.list(Node)])
        config = cluster.agent_config(a, ipam_mode="kube", ipalloc_range=Net("10.244.0.0/16"))
        try:
            prepared = await prepare(config)
            cidr = (await admin.get(Node, a)).spec.podCIDR
            gossip = await prepare(cluster.agent_config(a, ipalloc_init="consensus=7"))
        finally:
            await delete_nodes(admin, a, b, c)
            await admin.close()
        assert prepared.pod_block == Net(cidr)  # the controller-manager's, waited for
        assert prepared.ipalloc_init == f"consensus={count}"
        assert prepared.advertise_address == "192.0.2.21"
        assert {"192.0.2.22", "192.0.2.23"} <= set(prepared.seeds)
        assert "192.0.2.21" not in prepared.seeds
        assert gossip.ipalloc_init == "consensus=7"  # IPALLOC_INIT wins
        assert gossip.pod_block is None

    with caplog.at_level(logging.INFO, logger="weave-py.kube"):
        cluster.run(scenario)
    assert "list nodes:" in caplog.text


def test_network_unavailable_is_cleared_once_routes_are_in_place(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = names("a")
    monkeypatch.setattr(kube, "READY_INTERVAL", 0.05)
    monkeypatch.setattr(kube, "READY_GRACE", 0.0)

    async def scenario() -> dict[str, str]:
        admin = cluster.admin()
        await add_node(admin, a, "192.0.2.31")
        peers = source(cluster, a, "192.0.2.31", blocks=("10.32.1.0/24",))
        try:
            async with asyncio.timeout(20):
                await peers.mark_ready()
            node = await admin.get(Node, a)
        finally:
            await delete_nodes(admin, a)
            await admin.close()
            await peers.api.close()
        conditions = node.status.conditions or []
        found = next(c for c in conditions if c.type == "NetworkUnavailable")
        return {"status": found.status, "reason": found.reason}

    assert cluster.run(scenario) == {"status": "False", "reason": "WeavePyIsUp"}


def test_two_agents_racing_to_reclaim_a_deleted_node_only_one_wins(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, gone = names("a", "b", "gone")
    calls: list[tuple[str, str]] = []  # (the agent that called rmpeer, the peer)

    def rmpeer_of(agent: str) -> kube.Rmpeer:
        async def rmpeer(name: str) -> dict[str, Any]:
            calls.append((agent, name))
            if len(calls) == 1:  # the first try finds the peer still reachable
                raise errors.Conflict(f"peer {name} is reachable; stop it first")
            return {"name": name, "taken": ["10.32.3.0/24"]}

        return rmpeer

    async def scenario() -> tuple[str, str]:
        admin = cluster.admin()
        for name, ip in ((a, "192.0.2.41"), (b, "192.0.2.42"), (gone, "192.0.2.43")):
            await add_node(admin, name, ip)
        victim = await admin.get(Node, gone)
        agents = [source(cluster, n, ip, rmpeer_of(n)) for n, ip in
                  ((a, "192.0.2.41"), (b, "192.0.2.42"))]  # fmt: skip
        tasks = []
        for p in agents:
            p.reclaims.retry_interval = 0.1
            tasks += [asyncio.create_task(p.follow_nodes()), asyncio.create_task(p.reclaim())]
        try:
            await until(lambda: all(gone in p.table.nodes for p in agents), "listed")
            await delete_nodes(admin, gone)
            await until(lambda: len(calls) >= 2, "reclaimed")
            await asyncio.sleep(1.0)  # time enough for a second winner to show up
            lease = lease_name(NodeInfo(gone, victim.metadata.uid or ""))
            holder = cluster.kubectl("-n", "kube-system", "get", "lease", lease,
                                     "-o", "jsonpath={.spec.holderIdentity}")  # fmt: skip
            await add_node(admin, gone, "192.0.2.43")  # the name is back: the lease goes
            await until(lambda: not any(p.reclaims.steps for p in agents), "lease deleted")
            assert not _lease_exists(cluster, lease)
        finally:
            for t in tasks:
                t.cancel()
            await delete_nodes(admin, a, b, gone)
            await admin.close()
            for p in agents:
                await p.api.close()
        return holder, lease

    with caplog.at_level(logging.INFO, logger="weave-py.kube"):
        holder, lease = cluster.run(scenario)
    winners = {agent for agent, _ in calls}
    assert winners == {holder}, calls  # one agent, the lease's holder, called rmpeer
    assert [peer for _, peer in calls] == [new_identity(gone).name] * 2  # refused, then done
    assert f"lease {lease} is ours" in caplog.text
    assert f"lease {lease} is another node's" in caplog.text
    assert "refused" in caplog.text
    assert f"lease {lease} deleted" in caplog.text


def _lease_exists(cluster: Cluster, lease: str) -> bool:
    done = cluster.control.kubectl("-n", "kube-system", "get", "lease", lease)
    return done.returncode == 0


def test_out_of_cluster_through_a_kubeconfig(cluster: Cluster, tmp_path: Path) -> None:
    (a,) = names("a")
    token = (cluster.account_dir / "token").read_text()
    ca = cluster.control.pki.ca_cert
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": cluster.control.server,
                                               "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    config = dataclasses.replace(cluster.agent_config(a), kubernetes="auto", kube_api_host="",
                                 kubeconfig=str(kubeconfig))  # fmt: skip
    assert enabled(config)

    async def scenario() -> list[str]:
        admin = cluster.admin()
        await add_node(admin, a, "192.0.2.51")
        api = connect(config)
        try:
            listed, _ = await api.list_nodes()
        finally:
            await delete_nodes(admin, a)
            await admin.close()
            await api.close()
        return [n.name for n in listed]

    assert a in cluster.run(scenario)


def test_the_agent_s_account_may_do_no_more_than_the_manifest_grants(cluster: Cluster) -> None:
    (a,) = names("a")

    async def scenario() -> int:
        admin = cluster.admin()
        await add_node(admin, a, "192.0.2.61")
        api = connect(cluster.agent_config(a))
        try:
            await api.client.delete(Node, a)  # not in the RBAC table
        except ApiError as exc:
            return exc.status.code or 0
        finally:
            await delete_nodes(admin, a)
            await admin.close()
            await api.close()
        return 200

    assert cluster.run(scenario) == 403
