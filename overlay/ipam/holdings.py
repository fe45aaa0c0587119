"""Who holds which space, as this peer accepts it from the claims it reads (sans-IO).

A claim is what a peer says it owns; a holding is what we believe it owns. Only holdings are
routed, reclaimed with rmpeer, granted from or asked for space. Without a secret anyone can
publish a claim, so a claim is taken up only where the ring's history allows it.

Rules this module keeps:
- Shape. Space outside the cluster range, or smaller than a block, is never held.
- Ours first. Space this node owns is never another peer's holding; space it granted and the
  grantee has not taken up yet may become that grantee's holding and no one else's.
- First holder keeps. A claim on space another peer holds is refused, unless that peer's own
  claim grants the space to the claimant: a grant is the one way space moves between peers. A
  peer may always let go: its holding shrinks to what its claim still lists (owned or granted).
- No history, no winner. When two peers newly claim the same space in one update (a fresh
  node reads every claim at once), neither holds it until one of them lets go.
- Holdings never overlap each other nor this node's space (the ring simulation checks it).

Every claimed piece that is not held is a ``Refusal``, kept while the claim stands (status shows
them); ``update`` returns the ones not refused before, for the counter and the log.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from overlay.ipam import space
from overlay.ipam.claim import Claim, Grant

Net = ipaddress.IPv4Network
REASONS = (
    "outside_range",
    "small_block",
    "ours",
    "held",
    "contested",
    "grant_outside",
    "grant_small",
    "grant_unheld",
    "removal",
    "ring",
)  # counter labels


@dataclass(frozen=True)
class Refusal:
    """Space ``peer`` claims and does not hold: ``reason`` is a counter label (``REASONS``),
    ``detail`` says it in words (with the holder's name when there is one)."""

    peer: str
    net: Net | None  # None: no space in question (a removal)
    reason: str
    detail: str


def intersect(a: Iterable[Net], b: Iterable[Net]) -> list[Net]:
    """The addresses in both ``a`` and ``b``, as the fewest aligned CIDRs."""
    a = space.collapse(a)
    return space.subtract(a, space.subtract(a, b))


def granted(claim: Claim | None, grantee: str) -> list[Net]:
    """The space ``claim`` grants to ``grantee``."""
    return [] if claim is None else [g[0] for g in claim.grants if g[1] == grantee]


class Holdings:
    """The space each peer other than ``name`` holds, by name (see above); ``held`` restores
    saved ones."""

    def __init__(
        self,
        name: str,
        cluster_range: Net,
        block_prefix: int,
        held: Mapping[str, Iterable[Net]] | None = None,
    ) -> None:
        self.name = name  # this node's
        self.range = cluster_range
        self.block_prefix = block_prefix
        self.held: dict[str, list[Net]] = {n: space.collapse(h) for n, h in (held or {}).items()}
        self.refused: dict[tuple[str, Net | None], Refusal] = {}

    def of(self, name: str) -> list[Net]:
        """Everything ``name`` holds (its owned space and its grants not yet taken up)."""
        return list(self.held.get(name, []))

    def owned_by(self, name: str, claim: Claim) -> list[Net]:
        """What ``name`` holds of the space its claim owns: what may be routed to it."""
        return intersect(self.held.get(name, []), claim.owned)

    def update(
        self, claims: Mapping[str, Claim], ours: Iterable[Net], our_grants: Iterable[Grant]
    ) -> list[Refusal]:
        """Take in the current claims of the other peers of our ring, our space and our
        grants; the refusals that are new since the last update."""
        ours, our_grants = space.collapse(ours), list(our_grants)
        refusals: list[Refusal] = []
        shaped = {n: self._shape(n, c, refusals) for n, c in sorted(claims.items())}
        self.held = {
            n: kept
            for n, h in self.held.items()
            if n in shaped and (kept := space.subtract(intersect(h, shaped[n]), ours))
        }
        fresh = {
            n: space.subtract(s, [*self.held.get(n, []), *self._handed(claims[n], ours)])
            for n, s in shaped.items()
        }
        taken: dict[str, list[Net]] = {}
        for name, pieces in fresh.items():
            for net in pieces:
                refusal = self._blocker(name, net, claims, ours, our_grants, fresh)
                if refusal is None:
                    taken.setdefault(name, []).append(net)
                else:
                    refusals.append(refusal)
        for name, nets in taken.items():
            self.held[name] = space.collapse([*self.held.get(name, []), *nets])
        if taken:
            self._hand_over(claims, taken)
        self.held = {n: h for n, h in self.held.items() if h}
        before, self.refused = self.refused, {(r.peer, r.net): r for r in refusals}
        return [r for key, r in self.refused.items() if before.get(key) != r]

    def _handed(self, claim: Claim, ours: list[Net]) -> list[Net]:
        """The space ``claim`` still grants that its grantee has taken up (ours included):
        not the granter's to claim any more, nor a conflict."""
        out = []
        for net, grantee, _serial in claim.grants:
            holder = ours if grantee == self.name else self.held.get(grantee, [])
            out += intersect([net], holder)
        return out

    def _hand_over(self, claims: Mapping[str, Claim], taken: Mapping[str, list[Net]]) -> None:
        """Space both a granter and its grantee now hold is the grantee's (``_blocker`` let
        a claim overlap another's holding only where that one grants it)."""
        for name in taken:
            for other in list(self.held):
                if other == name:
                    continue
                overlap = intersect(self.held[name], self.held[other])
                if not overlap:
                    continue
                if _covers_all(granted(claims.get(other), name), overlap):
                    self.held[other] = space.subtract(self.held[other], overlap)
                else:
                    self.held[name] = space.subtract(self.held[name], overlap)

    def _shape(self, name: str, claim: Claim, refusals: list[Refusal]) -> list[Net]:
        """The claim's owned and granted space that may be held at all."""
        kept = []
        for net in [*claim.owned, *(g[0] for g in claim.grants)]:
            if not net.subnet_of(self.range):
                why = f"{net} is outside the range {self.range}"
                refusals.append(Refusal(name, net, "outside_range", why))
            elif net.prefixlen > self.block_prefix:
                why = f"{net} is smaller than a block (/{self.block_prefix})"
                refusals.append(Refusal(name, net, "small_block", why))
            else:
                kept.append(net)
        return space.collapse(kept)

    def _blocker(
        self,
        name: str,
        net: Net,
        claims: Mapping[str, Claim],
        ours: list[Net],
        our_grants: list[Grant],
        fresh: Mapping[str, list[Net]],
    ) -> Refusal | None:
        """Why ``name`` may not take ``net``, newly claimed; None when it may."""
        if space.overlaps([net], ours):
            return Refusal(name, net, "ours", f"{net} overlaps this node's space")
        for g_net, grantee, _serial in our_grants:
            if grantee != name and net.overlaps(g_net):
                return Refusal(name, net, "ours", f"{net} overlaps a grant to {grantee}")
        for other, held in sorted(self.held.items()):
            overlap = intersect([net], held) if other != name else []
            if overlap and not _covers_all(granted(claims.get(other), name), overlap):
                return Refusal(name, net, "held", f"{net} is held by {other}")
        for other, pieces in sorted(fresh.items()):
            overlap = intersect([net], pieces) if other != name else []
            if overlap and not (
                _covers_all(granted(claims.get(other), name), overlap)
                or _covers_all(granted(claims.get(name), other), overlap)
            ):
                return Refusal(name, net, "contested", f"{net} is also claimed by {other}")
        return None


def _covers_all(space_: Iterable[Net], nets: Iterable[Net]) -> bool:
    have = list(space_)
    return all(space.covers(have, n) for n in nets)
