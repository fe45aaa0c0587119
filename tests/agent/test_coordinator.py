"""The coordinator on a virtual clock: no kernel, no socket, no sleep.

Nodes are real IPAM cores behind real coordinators; what one publishes becomes the record the
others see on their next step, as gossip would carry it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from agent.config import StaticPeer
from agent.coordinator import NO_ROUTER, Coordinator, Local, Plan
from agent.ipam import Ipam, Settings
from agent.peers import Member, View
from agent.peers.static import StaticPeers
from gossip.identity import name_for, peer_id
from gossip.topology import PeerRecord
from overlay import node
from overlay.ipam import space
from overlay.ipam.claim import decode

Net = ipaddress.IPv4Network
RANGE = Net("10.32.0.0/16")
BASE = node.NodeSpec("weave", "weave-tun", 1436, 62000, (), frozenset())
STEP = 0.5


def wall(now: float) -> int:
    return int(1_700_000_000e9 + now * 1e9)


@dataclass
class Node:
    """One node: its IPAM core, its coordinator and the record its publishes build."""

    name: str
    ipam: Ipam
    coordinator: Coordinator
    incarnation: int
    fields: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    plans: list[Plan] = field(default_factory=list)

    def record(self) -> PeerRecord:
        return PeerRecord(
            name=self.name, nickname=f"node-{self.name[-1]}", incarnation=self.incarnation,
            version=self.version, uid=self.incarnation,
            data_endpoint=(f"192.168.1.{self.name[-1]}", 6783),
            control_endpoint=(f"192.168.1.{self.name[-1]}", 6783), **self.fields,
        )  # fmt: skip


def gossip_node(name: str, incarnation: int, quorum: int, state: Any = None, **kw: Any) -> Node:
    ipam = Ipam(Settings(RANGE, 24, quorum=quorum), name, incarnation, state)
    return Node(name, ipam, Coordinator(ipam, BASE, **kw), incarnation)


class Cluster:
    """Nodes on a virtual clock; ``live`` and ``cut`` shape what each one sees."""

    def __init__(self, *nodes: Node) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.live = set(self.nodes)
        self.now = 0.0
        self.strangers: dict[str, PeerRecord] = {}  # records no node of ours published

    def view_of(self, n: Node) -> View:
        records = {m.name: m.record() for m in self.nodes.values() if m.version}
        records.update(self.strangers)
        others = [r for name, r in records.items() if name != n.name and name in self.live]
        members = tuple(Member(r.name, r.nickname, r.data_endpoint, None, r) for r in others)
        return View(members, records, frozenset(self.live))

    def step(self, unreachable: tuple[str, ...] = ()) -> None:
        for n in self.nodes.values():
            if n.name not in self.live:
                continue
            plan = n.coordinator.step(self.now, wall(self.now), self.view_of(n), unreachable)
            n.plans.append(plan)
            if plan.publish:
                n.fields.update(plan.publish)
                n.version += 1
        self.now += STEP

    def run(self, steps: int = 20) -> None:
        for _ in range(steps):
            self.step()


def latest(n: Node, attribute: str) -> Any:
    """The newest value a plan gave for ``attribute`` (None when none did)."""
    values = [getattr(p, attribute) for p in n.plans if getattr(p, attribute) is not None]
    return values[-1] if values else None


A, B, C = "aa:00:00:00:00:01", "aa:00:00:00:00:02", "aa:00:00:00:00:03"


# -- static peers --------------------------------------------------------------------------------


def test_static_peers_become_data_plane_peers_and_routes() -> None:
    block = Net("10.32.1.0/24")
    other = StaticPeer("node-2", "192.168.1.8", 6783, (Net("10.32.2.0/24"),))
    ipam = Ipam(Settings(RANGE, 24, pod_block=block, static=True), A, 1, None)
    coordinator = Coordinator(ipam, BASE)
    plan = coordinator.step(0.0, wall(0.0), StaticPeers((other,)).view(), ())
    assert plan.peers is not None
    (peer,) = plan.peers
    assert peer.peer_id == peer_id(name_for("node-2"))
    assert (peer.name, peer.address, peer.blocks, peer.via) == (
        "node-2", ("192.168.1.8", 6783), other.blocks, None,
    )  # fmt: skip
    assert plan.local is not None and plan.local.blocks == (block,)
    assert plan.local.router_address == ipaddress.IPv4Address("10.32.1.1").packed
    assert plan.node is not None
    assert plan.node.remote_blocks == frozenset(other.blocks)
    assert plan.node.gateways == (ipaddress.IPv4Interface("10.32.1.1/24"),)
    assert plan.next_at == STEP
    again = coordinator.step(1.0, wall(1.0), StaticPeers((other,)).view(), ())
    assert again == Plan(next_at=1.0 + STEP)  # no news: nothing to carry out


def test_unreachable_peers_are_published_once_per_change() -> None:
    ipam = Ipam(Settings(RANGE, 24, pod_block=Net("10.32.1.0/24")), A, 1, None)
    coordinator, view = Coordinator(ipam, BASE), View()
    first = coordinator.step(0.0, wall(0.0), view, ())
    assert first.publish == {
        "blocks": ("10.32.1.0/24",), "meta": b"", "unreachable": (), "fastdp": b"",
    }  # fmt: skip
    assert coordinator.step(0.5, wall(0.5), view, ()).publish is None
    cut = coordinator.step(1.0, wall(1.0), view, (C, B))
    assert cut.publish == {"unreachable": (B, C)}
    assert coordinator.step(1.5, wall(1.5), view, (B, C)).publish is None


# -- gossip: peers join, space is granted and released -------------------------------------------


def test_a_lone_node_seeds_the_range_and_saves_before_publishing() -> None:
    n = gossip_node(A, 1, quorum=1)
    cluster = Cluster(n)
    cluster.run(5)
    assert n.ipam.owned == [RANGE]
    seeded = next(p for p in n.plans if p.publish and p.publish.get("blocks"))
    assert seeded.save  # the ring's change is written in the same plan, before it goes out
    assert latest(n, "local").blocks == (RANGE,)
    assert latest(n, "node").remote_blocks == frozenset()
    gateway = ipaddress.IPv4Interface("10.32.0.1/24")  # the first block's, from the start
    assert latest(n, "node").gateways == (gateway,)
    assert latest(n, "local").router_address == gateway.ip.packed


def test_a_node_without_space_has_no_router_address() -> None:
    n = gossip_node(A, 1, quorum=2)  # alone: no consensus, no space
    plan = n.coordinator.step(0.0, wall(0.0), View(), ())
    assert plan.local == Local((), NO_ROUTER)
    assert plan.node is not None and plan.node.gateways == ()


def test_joined_peers_share_the_range_and_route_each_others_space() -> None:
    a, b = gossip_node(A, 1, quorum=2), gossip_node(B, 2, quorum=2)
    cluster = Cluster(a, b)
    cluster.run(30)
    assert a.ipam.owned and b.ipam.owned
    assert not space.overlaps(a.ipam.owned, b.ipam.owned)
    assert space.size(a.ipam.owned) + space.size(b.ipam.owned) == RANGE.num_addresses
    assert latest(a, "node").remote_blocks == frozenset(b.ipam.owned)
    assert latest(b, "node").remote_blocks == frozenset(a.ipam.owned)
    (peer,) = latest(a, "peers")
    assert peer.peer_name == B and peer.blocks == tuple(b.ipam.owned)
    granter = a if any(p.save for p in a.plans[1:]) else b
    assert any(p.save and p.publish for p in granter.plans)


def test_a_third_node_joining_gets_space_and_everyone_routes_it() -> None:
    a, b = gossip_node(A, 1, quorum=2), gossip_node(B, 2, quorum=2)
    c = gossip_node(C, 3, quorum=2)
    cluster = Cluster(a, b, c)
    cluster.live = {A, B}
    cluster.run(30)
    assert not c.plans
    cluster.live = {A, B, C}
    cluster.run(30)
    assert c.ipam.owned
    for n in (a, b):
        assert frozenset(c.ipam.owned) <= latest(n, "node").remote_blocks
    owned = [n.ipam.owned for n in (a, b, c)]
    assert sum(space.size(o) for o in owned) == RANGE.num_addresses
    assert not any(space.overlaps(x, y) for i, x in enumerate(owned) for y in owned[i + 1 :])


def test_a_lost_peer_is_no_longer_a_data_plane_peer() -> None:
    a, b = gossip_node(A, 1, quorum=2), gossip_node(B, 2, quorum=2)
    cluster = Cluster(a, b)
    cluster.run(30)
    cluster.live = {A}
    cluster.step()
    assert a.plans[-1].peers == ()
    assert a.plans[-1].node is not None and a.plans[-1].node.remote_blocks == frozenset()


def test_a_new_block_puts_its_gateway_on_the_bridge_and_a_released_one_takes_it_off() -> None:
    ipam = Ipam(Settings(RANGE, 28, quorum=1), A, 1, None)  # 13 pods a block
    n = Node(A, ipam, Coordinator(ipam, BASE), 1)
    cluster = Cluster(n)
    cluster.run(5)
    first = ipaddress.IPv4Interface("10.32.0.1/28")
    assert latest(n, "node").gateways == (first,)
    for i in range(14):  # the 14th opens the next block
        assert ipam.allocate(f"pod-{i}", "eth0") is not None
    cluster.step()
    second = ipaddress.IPv4Interface("10.32.0.17/28")
    assert n.plans[-1].node is not None and n.plans[-1].node.gateways == (first, second)
    local = n.plans[-1].local  # the same space and router address; the sleeve learns the
    assert local is not None and local.gateways == (first.ip, second.ip)  # new host address
    ipam.release("pod-13", "eth0")
    cluster.step()
    assert n.plans[-1].node is not None and n.plans[-1].node.gateways == (first,)


# -- restarts ------------------------------------------------------------------------------------


def test_a_restart_keeps_its_space_and_the_routes_it_found_for_the_grace() -> None:
    a, b = gossip_node(A, 1, quorum=2), gossip_node(B, 2, quorum=2)
    cluster = Cluster(a, b)
    cluster.run(30)
    state, owned, theirs = a.ipam.document(), a.ipam.owned, b.ipam.owned
    found = frozenset(theirs)  # routes the kernel still has when the agent restarts
    restarted = gossip_node(A, 10, quorum=2, state=state, kept=found, grace_until=10.0)
    first = restarted.coordinator.step(0.0, wall(0.0), View(), ())
    assert restarted.ipam.owned == owned  # the same space, asking no one
    assert first.node is not None and first.node.remote_blocks == found
    assert first.next_at == STEP
    near = restarted.coordinator.step(9.8, wall(9.8), View(), ())
    assert near.node is None and near.next_at == 10.0  # woken at the grace's end
    after = restarted.coordinator.step(10.0, wall(10.0), View(), ())
    assert after.node is not None and after.node.remote_blocks == frozenset()


def test_the_grace_keeps_nothing_once_the_peer_is_back() -> None:
    kept = frozenset({Net("10.32.9.0/24")})
    n = gossip_node(A, 1, quorum=1, kept=kept, grace_until=3.0)
    plan = n.coordinator.step(0.0, wall(0.0), View(), ())
    assert plan.node is not None and plan.node.remote_blocks == kept
    assert n.coordinator.step(3.0, wall(3.0), View(), ()).node is not None
    assert n.coordinator.node is not None and n.coordinator.node.remote_blocks == frozenset()


# -- a stranger's claims (no secret: it completed a plain handshake and gossips its record) -----

X = "ee:00:00:00:00:01"


def stranger_record(fields: dict[str, Any], version: int = 1) -> PeerRecord:
    return PeerRecord(
        name=X, nickname="stranger", incarnation=1, version=version, uid=99,
        data_endpoint=("192.168.1.66", 6783), control_endpoint=("192.168.1.66", 6783), **fields,
    )  # fmt: skip


def claim_of(n: Node, **changes: Any) -> dict[str, Any]:
    """``n``'s published claim with ``changes``, as a record's ``blocks`` and ``meta``."""
    claim = replace(decode(n.fields["blocks"], n.fields["meta"]), **changes)
    return {"blocks": tuple(map(str, claim.owned)), "meta": claim.encode()}


def routed_to(n: Node, name: str) -> tuple[Net, ...]:
    peers = latest(n, "peers") or ()
    return next((p.blocks for p in peers if p.peer_name == name), ())


def test_a_strangers_claim_on_a_live_nodes_block_is_never_routed() -> None:
    a, b, c = (gossip_node(x, i, quorum=2) for i, x in enumerate((A, B, C), 1))
    cluster = Cluster(a, b, c)
    cluster.run(40)
    block = b.ipam.owned[0]
    before = {n.name: latest(n, "node").remote_blocks for n in (a, b, c)}
    cluster.strangers[X] = stranger_record(claim_of(b, grants=(), want=None))
    cluster.live.add(X)
    cluster.run(4)  # the old code routed it to the stranger within one step
    for n in (a, c):
        assert routed_to(n, X) == ()
        assert block in routed_to(n, B)
    for n in (a, b, c):
        assert latest(n, "node").remote_blocks == before[n.name]
    assert block not in latest(b, "node").remote_blocks  # the bridge keeps its route
    status = b.ipam.status({}, set(), "node-2")
    assert status.conflict is not None and "refused claims" in status.conflict
    assert b.ipam.refusals.counts["ours"] == 1 and a.ipam.refusals.counts["held"] == 1


def test_a_strangers_claim_on_a_live_nodes_block_is_not_routed_after_a_restart() -> None:
    a, b = gossip_node(A, 1, quorum=2), gossip_node(B, 2, quorum=2)
    cluster = Cluster(a, b)
    cluster.run(30)
    cluster.strangers[X] = stranger_record(claim_of(b, grants=(), want=None))
    cluster.live.add(X)
    cluster.run(2)
    restarted = gossip_node(A, 10, quorum=2, state=a.ipam.document())
    cluster.nodes[A] = restarted
    restarted.fields, restarted.version = a.fields, a.version
    cluster.run(4)  # the restart reads every claim at once: history comes from its state
    assert routed_to(restarted, X) == ()
    assert routed_to(restarted, B) == tuple(b.ipam.owned)


def test_a_kube_nodes_block_claimed_by_a_stranger_is_not_routed() -> None:
    blocks = {A: Net("10.32.1.0/24"), B: Net("10.32.2.0/24")}
    nodes = []
    for i, name in enumerate((A, B), 1):
        ipam = Ipam(Settings(RANGE, 24, pod_block=blocks[name]), name, i, None)
        nodes.append(Node(name, ipam, Coordinator(ipam, BASE), i))
    a, b = nodes
    cluster = Cluster(a, b)
    cluster.run(3)
    assert routed_to(a, B) == (blocks[B],)
    cluster.strangers[X] = stranger_record({"blocks": (str(blocks[B]), str(blocks[A]))})
    cluster.live.add(X)
    cluster.run(3)
    assert routed_to(a, X) == () and routed_to(b, X) == ()
    assert routed_to(a, B) == (blocks[B],)
    assert latest(a, "node").remote_blocks == frozenset({blocks[B]})
    assert {r.reason for r in a.ipam.holdings.refused.values()} == {"ours", "held"}


class Trusting:
    """An address policy that routes whatever a record claims (as the old IPAM did)."""

    owned = [Net("10.32.1.0/24")]
    gateways = (ipaddress.IPv4Interface("10.32.1.1/24"),)

    def step(self, records: Any, live: Any, wall_ns: int) -> bool:
        return False

    def record_fields(self) -> dict[str, Any]:
        return {"blocks": ("10.32.1.0/24",), "meta": b""}

    def routable(self, record: PeerRecord) -> tuple[Net, ...]:
        return tuple(Net(b) for b in record.blocks)


def test_no_remote_route_covers_this_nodes_own_space_whatever_ipam_says() -> None:
    coordinator = Coordinator(Trusting(), BASE, kept=[Net("10.32.1.0/25"), Net("10.32.9.0/24")],
                              grace_until=5.0)  # fmt: skip
    record = stranger_record({"blocks": ("10.32.1.0/24", "10.32.1.128/25", "10.32.2.0/24")})
    view = View((Member(X, "stranger", record.data_endpoint, None, record),), {X: record},
                frozenset({X}))  # fmt: skip
    plan = coordinator.step(0.0, wall(0.0), view, ())
    assert plan.peers is not None and plan.peers[0].blocks == (Net("10.32.2.0/24"),)
    assert plan.node is not None
    assert plan.node.remote_blocks == {Net("10.32.2.0/24"), Net("10.32.9.0/24")}
