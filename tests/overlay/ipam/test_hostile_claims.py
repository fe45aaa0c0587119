"""Claims from a stranger who completed a plain handshake and gossips records (no secret): the
ring keeps every peer's space, holds only what the ring's history allows, and counts what it
refuses. Each test runs a settled cluster of real ``Ring`` cores (ringsim.py, whose invariants
-- no two holders, and no two holdings as any peer sees them, overlap -- are checked on every
tick) and adds the stranger's claim to what every peer reads."""

from __future__ import annotations

import ipaddress

from overlay.ipam import space
from overlay.ipam.claim import Claim, decode
from overlay.ipam.ring import Ring
from overlay.ipam.ringstate import View
from tests.overlay.ipam.ringsim import RANGE, RingSim

Net = ipaddress.IPv4Network
X = "ee:00:00:00:00:01"  # the stranger


def settled(n: int = 3, seed: int = 1, demand: int = 1) -> RingSim:
    sim = RingSim(n, seed)
    for p in sim.peers:
        p.demand = demand
    sim.run(60)
    assert sim.converged() and all(p.ring.owned for p in sim.peers)
    return sim


def stranger(claim: Claim, incarnation: int = 1, version: int = 1) -> View:
    """The stranger's claim as a peer receives it: through the real decoder."""
    wire = decode([str(n) for n in claim.owned], claim.encode())
    return View(incarnation, version, wire, "stranger")


def refused(sim: RingSim, reason: str) -> int:
    """How many peers noted a refusal with ``reason`` (and keep it standing)."""
    return sum(any(r.reason == reason for r in p.ring.take_refusals()) for p in sim.peers)


def test_a_stranger_claiming_a_live_peers_block_holds_nothing_and_the_owner_keeps_it() -> None:
    sim = settled()
    victim = sim.peers[1]
    block = victim.ring.owned[0]
    ring = victim.ring.ring
    sim.strangers[X] = stranger(Claim(owned=(block,), ring=ring, free=1))
    sim.run(20)
    for p in sim.peers:
        assert p.ring.routable(X) == ()
        if p is not victim:
            assert space.covers(p.ring.routable(victim.name), block)
    assert victim.ring.owned[0] == block
    standing = [r for p in sim.peers for r in p.ring.holdings.refused.values() if r.peer == X]
    assert {r.reason for r in standing} == {"ours", "held"}  # the victim's and the others'


def test_rmpeer_of_a_strangers_ghost_takes_none_of_a_live_peers_space() -> None:
    sim = settled()
    victim, operator = sim.peers[1], sim.peers[0]
    sim.strangers[X] = stranger(Claim(owned=tuple(victim.ring.owned), ring=victim.ring.ring))
    sim.run(10)
    del sim.strangers[X]  # gone; its claim stays in the views (the ghost)
    taken = operator.ring.rmpeer(X, sim.live_names(operator))
    assert taken == []
    assert not space.overlaps(operator.ring.owned, victim.ring.owned)
    sim.run(20)  # and nobody else takes it either (check() on every tick)


def test_a_forged_removal_marker_does_not_wipe_a_live_peer() -> None:
    sim = settled()
    victim = sim.peers[2]
    owned = list(victim.ring.owned)
    marker = ((victim.name, victim.incarnation),)
    sim.strangers[X] = stranger(Claim(ring=victim.ring.ring, removed=marker))
    sim.run(20)
    assert victim.ring.owned == owned and victim.ring.conflict is None
    for p in sim.peers:
        if p is not victim:
            assert p.ring.routable(victim.name) == tuple(owned)
    assert refused(sim, "removal") == 3


def test_a_removal_marker_from_a_peer_reachable_all_along_is_not_followed() -> None:
    # peer 0 holds space and stays connected to peer 2; it cannot have run rmpeer on it
    sim = settled()
    remover, victim = sim.peers[0], sim.peers[2]
    owned = list(victim.ring.owned)
    assert remover.published is not None
    claim = remover.published.claim
    forged = Claim(
        owned=claim.owned + tuple(owned),
        ring=claim.ring,
        removed=((victim.name, victim.incarnation),),
    )
    sim.strangers[remover.name] = stranger(forged, remover.incarnation, 10**6)
    sim.run(5)
    assert victim.ring.owned == owned
    assert any(r.reason == "removal" for r in victim.ring.take_refusals())


def test_a_grant_of_space_the_granter_never_held_is_not_taken() -> None:
    sim = settled()
    grantee, owner = sim.peers[0], sim.peers[1]
    block = owner.ring.owned[0]
    grant = ((block, grantee.name, 1),)
    sim.strangers[X] = stranger(Claim(ring=grantee.ring.ring, grants=grant))
    sim.run(10)  # check(): the grantee never owns the owner's space
    assert not space.overlaps(grantee.ring.owned, [block])
    assert X not in grantee.ring.acks
    assert refused(sim, "grant_unheld") == 1


def test_a_fake_older_ring_does_not_make_empty_peers_give_up_their_space() -> None:
    sim = settled(demand=0)  # no pods anywhere: the peers most easily talked out of space
    before = {p.name: (p.ring.ring, list(p.ring.owned)) for p in sim.peers}
    old = (1, X)
    sim.strangers[X] = stranger(Claim(owned=(RANGE,), ring=old, free=2**64 - 1))
    sim.run(20)
    assert {p.name: (p.ring.ring, list(p.ring.owned)) for p in sim.peers} == before
    assert refused(sim, "ring") == 3


def test_free_space_a_stranger_does_not_hold_attracts_no_request() -> None:
    sim = settled(n=2)
    sim.strangers[X] = stranger(Claim(ring=sim.peers[0].ring.ring, free=2**64 - 1))
    sim.peers[0].demand = sim.peers[1].demand = 300  # more than the range holds
    sim.run(60)
    assert all(p.ring.want != X for p in sim.peers)
    assert sum(len(p.used) for p in sim.peers) == 256  # the range still shared out in full


# -- one ring core, claims by hand -----------------------------------------------------------

A, B = "aa:00:00:00:00:01", "aa:00:00:00:00:02"
RING = (1_000, A)


def view(claim: Claim, version: int) -> View:
    return View(1, version, claim, "")


def test_a_grant_smaller_than_a_block_is_refused_and_not_acknowledged() -> None:
    # A uses /26 blocks (another IPALLOC_BLOCK), B /24: no attacker needed
    b = Ring(B, RANGE, 24, 1, 1)
    owned = (Net("10.32.0.0/17"),)
    b.step(1, {A: view(Claim(owned=owned, ring=RING), 1)}, {A}, True, [], 0)
    small = Net("10.32.0.64/26")
    claim = Claim(owned=tuple(space.subtract(owned, [small])), ring=RING, grants=((small, B, 1),))
    b.step(2, {A: view(claim, 2)}, {A}, True, [], 0)
    assert b.owned == [] and b.acks == {}
    [refusal] = b.take_refusals()
    assert refusal.reason == "grant_small" and "IPALLOC_BLOCK" in refusal.detail
    standing = {r.net: r.reason for r in b.holdings.refused.values()}  # reported if they stay
    assert standing[small] == "small_block"  # A's claim lists it, and A's pieces under /24
    assert set(standing.values()) == {"small_block"}
    b.step(3, {A: view(claim, 2)}, {A}, True, [], 0)
    assert b.take_refusals() == []  # noted once while it stands


def test_a_grant_of_held_space_is_taken() -> None:
    b = Ring(B, RANGE, 24, 1, 1)
    owned = (Net("10.32.0.0/17"),)
    b.step(1, {A: view(Claim(owned=owned, ring=RING), 1)}, {A}, True, [], 0)
    given = Net("10.32.64.0/18")
    claim = Claim(owned=tuple(space.subtract(owned, [given])), ring=RING, grants=((given, B, 1),))
    b.step(2, {A: view(claim, 2)}, {A}, True, [], 0)
    assert b.owned == [given] and b.acks == {A: 1} and b.ring == RING
    assert b.take_refusals() == []


def test_a_state_saved_with_a_strangers_claim_holds_it_for_no_one_after_a_restart() -> None:
    # an older agent saved whatever was claimed: the stranger's copy of the victim's block too
    sim = settled()
    reader, victim = sim.peers[0], sim.peers[1]
    state = reader.ring.to_state()
    mine = state["known"][victim.name]
    state["known"][X] = {**mine, "nickname": "stranger", "incarnation": 1}
    restarted = Ring(reader.name, RANGE, 24, sim.quorum, reader.incarnation + 1, state)
    assert restarted.holdings.of(X) == [] and restarted.holdings.of(victim.name) == []
    assert victim.published is not None
    views = {victim.name: victim.published}  # the stranger is gone; the victim still claims
    restarted.step(1, views, {victim.name}, False, [], 0)
    assert restarted.routable(victim.name) == tuple(victim.ring.owned)


# -- what rmpeer really does still works ------------------------------------------------------


def test_a_peer_restarted_from_old_state_after_rmpeer_gives_up_its_space() -> None:
    sim = settled()
    dead = sim.peers[2]
    owned, saved = list(dead.ring.owned), dead.saved
    sim.kill(2)
    sim.run(5)
    assert sim.rmpeer(2)
    sim.run(10)
    back = Ring(dead.name, RANGE, 24, sim.quorum, dead.incarnation + 1, saved)
    assert back.owned == owned  # as saved: it does not know yet
    views = {p.name: p.published for p in sim.peers[:2] if p.published is not None}
    back.step(sim._now(), views, set(views), False, [], 0)
    assert back.owned == [] and back.conflict is not None and "rmpeer" in back.conflict
