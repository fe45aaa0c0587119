"""A cluster of ``Ring`` cores with gossip modelled as copies of published claims.

Each peer publishes its claim (with a stamp) after persisting its state, as the agent does.
Gossip delivers a peer's latest published claim to another peer of the same partition group
with some probability per tick, so views lag and arrive in any order. Pods are modelled as
blocks a peer uses; ``demand`` says how many it wants. Kills lose the in-memory views and
keep the persisted state; restarts come back with a newer incarnation.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass, field
from typing import Any

from overlay.ipam import space
from overlay.ipam.claim import Claim, decode
from overlay.ipam.ring import Ring
from overlay.ipam.ringstate import View

Net = ipaddress.IPv4Network
RANGE = Net("10.32.0.0/16")
BLOCK = 24


@dataclass
class Peer:
    name: str
    incarnation: int
    ring: Ring
    alive: bool = True
    removed: bool = False  # rmpeer'd: never started again with its old state
    saved: dict[str, Any] | None = None
    used: list[Net] = field(default_factory=list)
    demand: int = 1
    version: int = 0
    published: View | None = None
    views: dict[str, View] = field(default_factory=dict)


class RingSim:
    def __init__(self, n: int, seed: int, quorum: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.quorum = quorum if quorum is not None else n // 2 + 1
        self.tick_count = 0
        self.peers: list[Peer] = []
        self.groups: dict[int, int] | None = None
        self.rings_seeded: set[Any] = set()
        self.strangers: dict[str, View] = {}  # hostile claims every live peer reads, live
        for _ in range(n):
            self.join()

    # -- events -------------------------------------------------------------------------------

    def join(self) -> Peer:
        i = len(self.peers)
        name = f"aa:00:00:00:{i // 256:02x}:{i % 256:02x}"
        peer = Peer(name, self._now(), Ring(name, RANGE, BLOCK, self.quorum, self._now()))
        self.peers.append(peer)
        self._publish(peer)
        return peer

    def kill(self, i: int) -> None:
        self.peers[i].alive = False

    def restart(self, i: int) -> None:
        p = self.peers[i]
        if p.alive or p.removed:
            return
        p.incarnation = self._now()
        p.ring = Ring(p.name, RANGE, BLOCK, self.quorum, p.incarnation, p.saved)
        p.alive, p.views, p.version = True, {}, 0
        self._publish(p)

    def partition(self, groups: int) -> None:
        self.groups = {i: self.rng.randrange(groups) for i in range(len(self.peers))}

    def heal(self) -> None:
        self.groups = None

    def rmpeer(self, i: int) -> bool:
        """A live peer of the largest group reclaims dead peer ``i``; True when done."""
        dead = self.peers[i]
        if dead.alive or dead.removed:
            return False
        final = dead.published
        for p in self.live():
            # The operator's side of the contract: rmpeer a peer that is dead, from a peer
            # that has its final claim (status shows it unreachable, owning what it owned).
            view = p.ring.known.get(dead.name)
            if p.ring.ring is None or view is None or final is None:
                continue
            if (view.incarnation, view.version) != (final.incarnation, final.version):
                continue
            try:
                p.ring.rmpeer(dead.name, self.live_names(p))
            except ValueError:
                continue
            dead.removed = True
            self._save_publish(p)
            return True
        return False

    # -- running ------------------------------------------------------------------------------

    def tick(self) -> None:
        self.tick_count += 1
        for p in self.live():
            for q in self.live():
                if q is not p and self.connected(p, q) and self.rng.random() < 0.5:
                    assert q.published is not None
                    p.views[q.name] = q.published
            p.views.update(self.strangers)
        for p in self.rng.sample(self.live(), len(self.live())):
            self._step(p)
        self.check()

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def _step(self, p: Peer) -> None:
        ring = p.ring
        p.used = [b for b in p.used if space.covers(ring.owned, b)]
        free = space.subtract(ring.owned, p.used)
        while len(p.used) < p.demand and free:
            block = next(free[0].subnets(new_prefix=BLOCK))
            p.used.append(block)
            free = space.subtract(free, [block])
        while len(p.used) > p.demand:
            p.used.pop()
        free = space.subtract(ring.owned, p.used)
        need = len(p.used) < p.demand
        was = ring.ring
        if ring.step(self._now(), p.views, self.live_names(p), need, free, len(p.used)):
            if was is None and ring.ring is not None and ring.ring[1] == p.name:
                self._check_seeding(p)
            self._save_publish(p)
        elif p.published is None or p.published.claim != self._claim(p):
            self._publish(p)

    def _check_seeding(self, p: Peer) -> None:
        """A seed may take the range only when a quorum of peers (by their real state, not
        the seed's view) accepted its ring, and no member of another ring was in reach."""
        value = p.ring.ring
        accepted = [q for q in self.peers if q.ring.accepted and q.ring.accepted[1] == value]
        assert len(accepted) >= self.quorum, f"{p.name} seeded with {len(accepted)} accepts"
        in_reach = [q for q in self.peers if q is not p and q.alive and self.connected(p, q)]
        assert not any(q.ring.ring not in (None, value) for q in in_reach if q.published and
                       q.published.claim.ring and p.views.get(q.name) == q.published), (
            f"{p.name} seeded while it saw a ring"
        )  # fmt: skip
        self.rings_seeded.add(value)

    def _save_publish(self, p: Peer) -> None:
        p.saved = json.loads(json.dumps(p.ring.to_state()))
        self._publish(p)

    def _claim(self, p: Peer) -> Claim:
        free = space.subtract(p.ring.owned, p.used)
        return p.ring.claim(len(p.used), space.size(free))

    def _publish(self, p: Peer) -> None:
        claim = self._claim(p)
        # Through the real codec, as a peer would receive it.
        wire = decode([str(n) for n in claim.owned], claim.encode())
        p.version += 1
        p.published = View(p.incarnation, p.version, wire, p.name[-5:])

    def _now(self) -> int:
        return 1_000_000_000 + self.tick_count * 1_000_000 + len(getattr(self, "peers", []))

    # -- who is where -------------------------------------------------------------------------

    def live(self) -> list[Peer]:
        return [p for p in self.peers if p.alive]

    def connected(self, p: Peer, q: Peer) -> bool:
        if self.groups is None:
            return True
        i, j = self.peers.index(p), self.peers.index(q)
        return self.groups.get(i, 0) == self.groups.get(j, 0)

    def live_names(self, p: Peer) -> set[str]:
        return {q.name for q in self.live() if self.connected(p, q)} | self.strangers.keys()

    # -- invariants ---------------------------------------------------------------------------

    def holders(self) -> list[Peer]:
        """Peers whose persisted or live state can put addresses to use: alive ones, and dead
        ones that may restart (not rmpeer'd)."""
        return [p for p in self.peers if p.alive or not p.removed]

    def check(self) -> None:
        by_ring: dict[Any, list[tuple[str, list[Net], list[Net]]]] = {}
        for p in self.holders():
            r = p.ring
            if r.ring is None:
                assert not r.owned, f"{p.name} owns {r.owned} outside any ring"
                continue
            held = list(r.owned)
            by_ring.setdefault(r.ring, []).append((p.name, held, [g[0] for g in r.grants]))
            assert all(space.covers(r.owned, b) for b in p.used), f"{p.name} uses unowned space"
        for ring, members in by_ring.items():
            for a, (name_a, owned_a, grants_a) in enumerate(members):
                for name_b, owned_b, _grants_b in members[a + 1 :]:
                    assert not space.overlaps(owned_a, owned_b), (
                        f"ring {ring}: {name_a} {owned_a} and {name_b} {owned_b} overlap"
                    )
                    assert not space.overlaps(owned_a, grants_a), f"{name_a} owns its grant"
        for p in self.live():
            held = [(n, h) for n, h in p.ring.holdings.held.items()]
            for a, (name_a, held_a) in enumerate(held):
                assert not space.overlaps(held_a, p.ring.owned), f"{p.name}: {name_a} holds ours"
                for name_b, held_b in held[a + 1 :]:
                    assert not space.overlaps(held_a, held_b), (
                        f"{p.name} sees {name_a} {held_a} and {name_b} {held_b} hold the same"
                    )
        used = [(p.name, b) for p in self.holders() for b in p.used]
        seen: dict[tuple[Any, Net], str] = {}
        for name, block in used:
            ring = next(q.ring.ring for q in self.peers if q.name == name)
            assert (ring, block) not in seen, f"{block} used by {seen[ring, block]} and {name}"
            seen[ring, block] = name

    def converged(self) -> bool:
        """Every live peer's view of every other live peer is that peer's current claim."""
        live = self.live()
        return all(q is p or (p.views.get(q.name) == q.published) for p in live for q in live)
