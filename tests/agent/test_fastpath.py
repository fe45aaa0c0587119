"""The fast path's policy inside the coordinator, on a virtual clock: what nodes publish of
their endpoint, who may use the fast path and why not, the kernel state for the peers on it,
and how restarts keep fast routes."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from agent.coordinator import Coordinator
from agent.fastpath import LINGER, FastPath
from agent.ipam import Ipam, Settings
from agent.peers import Member
from overlay.fastdp import Fastdp, KeptFastdp
from overlay.paths import Candidate
from overlay.vtep import Vtep, encode_vtep, parse_vtep, vtep_mac
from tests.agent.test_coordinator import BASE, RANGE, STEP, Cluster, Node, wall

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address
A, B, C = "aa:00:00:00:00:01", "aa:00:00:00:00:02", "aa:00:00:00:00:03"


def template(name: str) -> Fastdp:
    host = Addr(f"192.168.1.{name[-1]}")
    return Fastdp("vxlan-6784", 6784, 6784, host, vtep_mac(name))


def fast_node(name: str, incarnation: int, on: bool = True, **kw: Any) -> Node:
    ipam = Ipam(Settings(RANGE, 24, quorum=2), name, incarnation, None)
    policy = FastPath(template(name) if on else None, **kw)
    return Node(name, ipam, Coordinator(ipam, BASE, fastpath=policy), incarnation)


class FastCluster(Cluster):
    """The coordinator cluster with path choice's answer given per node: ``fast[n]``."""

    def __init__(self, *nodes: Node) -> None:
        super().__init__(*nodes)
        self.fast: dict[str, frozenset[str]] = {n.name: frozenset() for n in nodes}

    def step(self, unreachable: tuple[str, ...] = ()) -> None:
        for n in self.nodes.values():
            if n.name not in self.live:
                continue
            view = self.view_of(n)
            plan = n.coordinator.step(self.now, wall(self.now), view, (), self.fast[n.name])
            n.plans.append(plan)
            if plan.publish:
                n.fields.update(plan.publish)
                n.version += 1
        self.now += STEP


def candidates(n: Node) -> dict[str, Candidate]:
    values = [p.candidates for p in n.plans if p.candidates is not None]
    return {c.name: c for c in values[-1]}


def fastdp(n: Node) -> Fastdp:
    node = n.coordinator.node
    assert node is not None and node.fastdp is not None
    return node.fastdp


def joined(*nodes: Node) -> FastCluster:
    cluster = FastCluster(*nodes)
    cluster.run(20)
    return cluster


def test_each_node_publishes_its_first_gateway_and_mac_and_the_other_becomes_a_candidate() -> None:
    a, b = fast_node(A, 1), fast_node(B, 2)
    joined(a, b)
    gateway_b = b.ipam.gateways[0].ip
    assert parse_vtep(b.fields["fastdp"]) == (gateway_b, vtep_mac(B))
    assert candidates(a)[B] == Candidate(B, "node-2", gateway_b)
    vtep = Vtep(gateway_b, vtep_mac(B), Addr("192.168.1.2"))
    assert fastdp(a).vteps == {vtep}
    assert fastdp(a).fast_blocks == frozenset()  # nobody is on the fast path yet


def test_the_fast_peers_blocks_are_routed_via_its_vtep_and_leave_the_tun() -> None:
    a, b = fast_node(A, 1), fast_node(B, 2)
    cluster = joined(a, b)
    cluster.fast[A] = frozenset({B})
    cluster.run(2)
    gateway_b = b.ipam.gateways[0].ip
    assert fastdp(a).fast_blocks == {(block, gateway_b) for block in b.ipam.owned}
    cluster.fast[A] = frozenset()
    cluster.run(2)
    assert fastdp(a).fast_blocks == frozenset()


def test_why_a_peer_may_not_use_the_fast_path() -> None:
    a, b = fast_node(A, 1), fast_node(B, 2, on=False)
    joined(a, b)
    assert b.fields["fastdp"] == b""
    assert candidates(a)[B] == Candidate(B, "node-2", None, "peer has no fast path")
    assert candidates(b)[A] == Candidate(A, "node-1", None, "fast path off here")
    assert fastdp(a).vteps == frozenset()
    assert b.coordinator.node is not None and b.coordinator.node.fastdp is None


def policy_for(members: list[Member], own: tuple[Net, ...] = ()) -> dict[str, Candidate]:
    fp = FastPath(template(A))
    found = fp.update([(m, m.blocks) for m in members], frozenset(), own, 0.0, False)
    return {c.name: c for c in found}


def member(name: str, block: str, vtep: str, via: Any = None, host: str = "") -> Member:
    b = Node(name, None, None, 1, {"fastdp": encode_vtep(Addr(vtep), vtep_mac(name))}).record()  # type: ignore[arg-type]
    endpoint = (host or b.data_endpoint[0], 6783)
    return Member(name, b.nickname, endpoint, via, b, (Net(block),))


def test_relayed_peers_foreign_vteps_and_taken_vteps_stay_on_the_sleeve() -> None:
    found = policy_for([
        member(B, "10.32.2.0/24", "10.32.2.1", via=("192.168.1.3", 6783)),
        member(C, "10.32.3.0/24", "10.32.9.1"),
    ])  # fmt: skip
    assert (found[B].vtep, found[B].reason) == (None, "relayed")
    assert (found[C].vtep, found[C].reason) == (None, "peer's vtep is outside its space")
    same = policy_for(
        [member(B, "10.32.0.0/23", "10.32.1.1"), member(C, "10.32.1.0/24", "10.32.1.1")]
    )
    assert same[B].vtep == Addr("10.32.1.1")
    assert (same[C].vtep, same[C].reason) == (None, f"vtep taken by {B}")
    ours = policy_for([member(B, "10.32.2.0/24", "10.32.2.1")], own=(Net("10.32.2.0/25"),))
    assert (ours[B].vtep, ours[B].reason) == (None, "blocks overlap ours")
    v6 = policy_for([member(B, "10.32.2.0/24", "10.32.2.1", host="fd00::2")])
    assert v6[B].reason == "peer's host is not an ipv4 address"


def test_a_fast_peer_gone_from_the_mesh_keeps_its_routes_while_it_answers_up_to_the_linger() -> (
    None
):
    fp = FastPath(template(A))
    b = member(B, "10.32.2.0/24", "10.32.2.1")
    fp.update([(b, b.blocks)], frozenset({B}), (), 0.0, False)
    fp.update([], frozenset({B}), (), 1.0, False)  # its agent restarts: not routed by the mesh
    routes = {(Net("10.32.2.0/24"), Addr("10.32.2.1"))}
    assert fp.state(frozenset({B}), (), False).fast_blocks == routes  # type: ignore[union-attr]
    assert [c.name for c in fp.update([], frozenset(), (), 2.0, False)] == []  # demoted: gone
    fp.update([(b, b.blocks)], frozenset({B}), (), 3.0, False)
    assert [c.name for c in fp.update([], frozenset({B}), (), 3.0 + LINGER, False)] == []


def test_a_lingering_peers_blocks_never_shadow_a_members() -> None:
    fp = FastPath(template(A))
    b, c = member(B, "10.32.2.0/24", "10.32.2.1"), member(C, "10.32.2.0/24", "10.32.2.2")
    fp.update([(b, b.blocks)], frozenset({B}), (), 0.0, False)
    names = [x.name for x in fp.update([(c, c.blocks)], frozenset({B}), (), 1.0, False)]
    assert names == [C]  # C took the space over (rmpeer): B's fast routes go


def test_a_restart_begins_on_the_fast_path_it_found_and_keeps_it_for_the_grace() -> None:
    block, via = Net("10.32.2.0/24"), Addr("10.32.2.1")
    vtep = Vtep(via, vtep_mac(B), Addr("192.168.1.2"))
    stale = Vtep(Addr("10.32.7.1"), vtep_mac(C), Addr("192.168.1.3"))
    kept = KeptFastdp({block: via, Net("10.32.7.0/24"): stale.address}, frozenset({vtep, stale}))
    fp = FastPath(template(A), kept=kept)
    state = fp.state(frozenset(), (), True)
    assert state is not None and state.vteps == {vtep, stale}
    assert state.fast_blocks == {(block, via), (Net("10.32.7.0/24"), stale.address)}
    b = member(B, "10.32.2.0/24", "10.32.2.1")
    (found,) = fp.update([(b, b.blocks)], frozenset(), (), 0.5, True)
    assert found == Candidate(B, "node-2", via, kept=True)
    appeared = fp.state(frozenset(), (), True)  # path choice has not seen it yet: no detour
    assert appeared is not None and (block, via) in appeared.fast_blocks
    fp.update([(b, b.blocks)], frozenset(), (), 1.0, True)
    judged = fp.state(frozenset(), (), True)  # path choice has, and holds it on the sleeve
    assert judged is not None and judged.fast_blocks == {(Net("10.32.7.0/24"), stale.address)}
    after = fp.state(frozenset({B}), (), False)
    assert after is not None and after.vteps == {vtep} and after.fast_blocks == {(block, via)}
    (later,) = fp.update([(b, b.blocks)], frozenset({B}), (), 20.0, False)
    assert later.kept is False


def test_sealed_static_and_addressless_nodes_run_without_the_fast_path() -> None:
    from agent.config import Config, StaticPeer
    from agent.fastpath import policy

    none = KeptFastdp({}, frozenset())
    config = Config(node_name="n")
    assert policy(config, "192.168.1.1", A, False, none).template == template(A)
    assert policy(config, "192.168.1.1", A, True, none).off_reason == "encrypted: sleeve only"
    assert policy(replace(config, no_fastdp=True), "192.168.1.1", A, False, none).off_reason == (
        "fast path off here"
    )
    peers = (StaticPeer("x", "192.168.1.2", 6783, ()),)
    assert policy(replace(config, peers=peers), "192.168.1.1", A, False, none).template is None
    assert policy(config, None, A, False, none).off_reason == "no underlay address"
