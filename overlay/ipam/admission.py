"""Which of the others' claims a peer of the ring follows (sans-IO; the ring core in ring.py
acts on what passes). Without a secret anyone may publish a claim, so each kind of change the
ring protocol knows is admitted only as the protocol makes it:

- Space. A peer holds only what the ring's history lets it hold (holdings.py); only that is
  routed, reclaimed, granted from or asked for, and its ``free`` counts at most that.
- Grants. A grant to us is taken only when it is at least one of our blocks, inside the range,
  of space its granter holds; a refused grant is not acknowledged, so it stays the granter's.
- Removals. A marker is followed only as ``rmpeer`` gives it: from a peer that holds space, of
  a peer that is not live. A marker naming us comes from a peer that took some of our space,
  and that was cut off from us (or unknown to this life of ours) since it last published a
  claim without it: a peer that stayed reachable cannot have run rmpeer on us.
- Rings. While we have a ring, an older one counts only when a quorum of its members is live
  and their claims share out the whole range exactly, as a seeded ring's do.

What is refused is a ``Refusal`` (holdings.py), noted once while it stands.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Set

from overlay.ipam import space
from overlay.ipam.claim import RingId
from overlay.ipam.holdings import Refusal
from overlay.ipam.ringstate import RingState

Net = ipaddress.IPv4Network


class Admission(RingState):
    """The checks a ring peer applies to the others' claims (see above)."""

    def _markers(self, live: Set[str]) -> dict[str, int]:
        """Removed peer -> highest removed incarnation, from our claim and the others' removals
        that follow rmpeer's rules (``_removal_refused``)."""
        out: dict[str, int] = {}
        for name, inc in self.removed:
            out[name] = max(out.get(name, -1), inc)
        for issuer, view in sorted(self.known.items()):
            for name, inc in view.claim.removed:
                why = self._removal_refused(issuer, name, inc, live)
                if why is None:
                    out[name] = max(out.get(name, -1), inc)
                elif why:
                    self._refuse(Refusal(issuer, None, "removal", f"removal of {name}: {why}"))
        return out

    def _removal_refused(self, issuer: str, name: str, inc: int, live: Set[str]) -> str | None:
        """Why a removal marker is not followed (empty: it concerns no one we know; None: it
        is followed). rmpeer is run by a peer holding space, on a peer that is not live; a
        marker for us comes from a peer that took some of our space and was cut off from us
        (or unknown to this life of ours) since it published a claim without it."""
        if name == self.name:
            if inc < self.removed_since:
                return ""
            if not (self.owned or self.grants):
                return None  # nothing to give up
            if issuer in self.steady:
                return "this peer is live and has been reachable from the remover"
            if not space.overlaps(self.known[issuer].claim.owned, self.owned):
                return "the remover holds none of this peer's space"
        elif name in self.known and self.known[name].incarnation > inc:
            return ""  # an earlier life of that peer
        elif name not in self.known and not any(g[1] == name for g in self.grants):
            return ""  # nothing of ours to forget
        elif name in live:
            return f"{name} is live" if self.holdings.of(name) else ""  # else: nothing to keep
        if not self.holdings.of(issuer):
            return "the remover holds no space of this ring" if self.holdings.held else ""
        return None

    def _removes_us(self, name: str) -> bool:
        return any(r[0] == self.name for r in self.known[name].claim.removed)

    def _refuse(self, refusal: Refusal) -> None:
        """Note a refusal once while it stands (the holdings note theirs the same way)."""
        if refusal not in self._refused_before:
            self.refusals.append(refusal)
        self._refusing.add(refusal)

    def _hold(self, ring: RingId | None) -> None:
        """Take in which space the others hold in ``ring`` (ours, or the one we may join)."""
        claims = {n: v.claim for n, v in self.known.items() if ring and v.claim.ring == ring}
        self.refusals += self.holdings.update(claims, self.owned, self.grants)

    def _winning_ring(self, live: Set[str]) -> RingId | None:
        """The oldest ring in reach; while we have one, only rings that look seeded count."""
        rings = {r for n in live if (r := self.known[n].claim.ring) is not None}
        if self.ring is None:
            return min(rings) if rings else None
        for ring in sorted(r for r in rings if r < self.ring):
            why = self._unseeded(ring, live)
            if not why:
                return ring
            self._refuse(Refusal(ring[1], None, "ring", f"ring {list(ring)}: {why}"))
        return self.ring

    def _unseeded(self, ring: RingId, live: Set[str]) -> str:
        """Why ``ring`` does not look like a seeded ring (empty when it does): a quorum of its
        members is live, and their claims share out the whole range, as seeding and grants
        keep it. One host inventing an older ring must not make us give up our space."""
        members = [v.claim for v in self.known.values() if v.claim.ring == ring]
        if sum(self.known[n].claim.ring == ring for n in live) < self.quorum:
            return f"fewer than {self.quorum} live members"
        nets = [n for c in members for n in (*c.owned, *(g[0] for g in c.grants))]
        if space.size(nets) != sum(n.num_addresses for n in nets) or space.collapse(nets) != [
            self.range
        ]:
            return f"its members' claims do not share out {self.range} exactly"
        return ""

    def _grant_refused(self, granter: str, net: Net) -> tuple[str, str] | None:
        """(reason, detail) when a grant to us breaks the ring's rules; None when it may be
        taken: a grant is at least one of our blocks, inside the range, of space its granter
        held (a grant never creates space)."""
        if not net.subnet_of(self.range):
            return "grant_outside", f"{granter} grants {net}, outside the range {self.range}"
        if net.prefixlen > self.block_prefix:
            return "grant_small", (
                f"{granter} grants {net}, smaller than this node's /{self.block_prefix} blocks: "
                f"IPALLOC_BLOCK must be the same on every node"
            )
        if not space.covers(self.holdings.of(granter), net):
            return "grant_unheld", f"{granter} grants {net}, which it does not hold"
        return None

    def _free_of(self, name: str, ring: RingId) -> int:
        """The addresses ``name`` says it could give, at most what it holds of ``ring``."""
        claim = self.known[name].claim
        if claim.ring != ring:
            return 0
        return min(claim.free, space.size(self.holdings.owned_by(name, claim)))
