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
- Counts. A claim's ``free`` (addresses it could give) beyond the space it claims at all is
  refused as "free" (askers never count more than a holding: admission.py).

Every claimed piece that is not held is a ``Refusal``, kept while the claim stands (status shows
them, and nothing refused is ever held or routed); ``update`` returns each once it has stood a
few updates, for the counter and the log: gossip may bring a grantee's claim before its
granter's grant, and that passing refusal is no one's fault.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from overlay.ipam import space
from overlay.ipam.claim import Claim, Grant
from overlay.ipam.space import intersect

Net = ipaddress.IPv4Network
REPORT_AFTER = 3  # updates a refusal stands before it is counted and logged
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
    "free",
)  # counter labels


@dataclass(frozen=True)
class Refusal:
    """Space ``peer`` claims and does not hold: ``reason`` is a counter label (``REASONS``),
    ``detail`` says it in words (with the holder's name when there is one)."""

    peer: str
    net: Net | None  # None: no space in question (a removal)
    reason: str
    detail: str


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
        report_after: int = REPORT_AFTER,
    ) -> None:
        self.name = name  # this node's
        self.report_after = report_after
        self.range = cluster_range
        self.block_prefix = block_prefix
        self.held: dict[str, list[Net]] = {n: space.collapse(h) for n, h in (held or {}).items()}
        self.refused: dict[tuple[str, Net | None], Refusal] = {}
        self._last: tuple[dict[str, Claim], list[Net], list[Grant]] | None = None
        self._standing: dict[tuple[str, Net | None], int] = {}  # updates each refusal stood

    def of(self, name: str) -> list[Net]:
        """Everything ``name`` holds (its owned space and its grants not yet taken up)."""
        return list(self.held.get(name, []))

    def owned_by(self, name: str, claim: Claim) -> list[Net]:
        """What ``name`` holds of the space its claim owns: what may be routed to it."""
        return intersect(self.held.get(name, []), claim.owned)

    def forget(self, nets: Iterable[Net]) -> None:
        """``nets`` became ours (a grant taken up, a peer reclaimed): no one else holds them."""
        nets = list(nets)
        self.held = {n: kept for n, h in self.held.items() if (kept := space.subtract(h, nets))}
        self._last = None

    def update(
        self, claims: Mapping[str, Claim], ours: Iterable[Net], our_grants: Iterable[Grant]
    ) -> list[Refusal]:
        """Take in the current claims of the other peers of our ring, our space and our
        grants; the refusals to report: those that have stood ``report_after`` updates (a
        grant overtaken by its grantee's claim in gossip stands for one or two), once each."""
        ours, our_grants = space.collapse(ours), list(our_grants)
        news = (dict(claims), ours, our_grants)
        if news != self._last:  # else the common step: nothing new (the work is per peer²)
            self._last = news
            self._recompute(claims, ours, our_grants)
        due = []
        for key, refusal in self.refused.items():
            stood = self._standing.get(key, 0) + 1
            self._standing[key] = stood
            if stood == self.report_after + 1:
                due.append(refusal)
        return due

    def _recompute(
        self, claims: Mapping[str, Claim], ours: list[Net], our_grants: list[Grant]
    ) -> None:
        refusals: list[Refusal] = []
        shaped = {n: self._shape(n, c, refusals) for n, c in sorted(claims.items())}
        for name, claim in sorted(claims.items()):
            claimed = space.size(claim.owned)
            if claim.free > claimed:
                detail = f"says {claim.free} addresses are free of the {claimed} it claims"
                refusals.append(Refusal(name, None, "free", detail))
        self.held = {
            n: kept
            for n, h in self.held.items()
            if n in shaped and (kept := space.subtract(intersect(h, shaped[n]), ours))
        }
        fresh = {
            n: space.subtract(s, [*self.held.get(n, []), *self._handed(claims[n], ours)])
            for n, s in shaped.items()
        }
        fresh = {n: f for n, f in fresh.items() if f}
        near = touching(fresh, self.held)
        free = {
            n: self._unblocked(n, f, claims, ours, our_grants, near.get(n, set()), refusals)
            for n, f in fresh.items()
        }
        near = touching(free, free)
        taken = {
            n: self._uncontested(n, f, claims, free, near.get(n, set()), refusals)
            for n, f in free.items()
        }
        taken = {n: t for n, t in taken.items() if t}
        for name, nets in taken.items():
            self.held[name] = space.collapse([*self.held.get(name, []), *nets])
        if taken:
            self._hand_over(claims, taken)
        self.held = {n: h for n, h in self.held.items() if h}
        before, self.refused = self.refused, {(r.peer, r.net): r for r in refusals}
        for key, refusal in self.refused.items():
            if before.get(key) != refusal:
                self._standing[key] = 0  # a new refusal, or another one for the same space
        self._standing = {key: n for key, n in self._standing.items() if key in self.refused}

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

    def _unblocked(
        self,
        name: str,
        fresh: list[Net],
        claims: Mapping[str, Claim],
        ours: list[Net],
        our_grants: list[Grant],
        holders: set[str],
        refusals: list[Refusal],
    ) -> list[Net]:
        """What ``name`` may take of its ``fresh`` claims as far as we and the holders go
        (``holders``: those whose holdings touch it)."""
        if not fresh:
            return []
        blockers = [(ours, "ours", "overlaps this node's space")]
        blockers += [([g[0]], "ours", f"overlaps a grant to {g[1]}") for g in our_grants
                     if g[1] != name]  # fmt: skip
        blockers += [
            (space.subtract(held, granted(claims.get(other), name)), "held", f"is held by {other}")
            for other, held in sorted(self.held.items())
            if other in holders and other != name
        ]
        left = fresh
        for blocking, reason, words in blockers:
            overlap = intersect(left, blocking) if left else []
            refusals += [Refusal(name, net, reason, f"{net} {words}") for net in overlap]
            left = space.subtract(left, overlap)
        return left

    def _uncontested(
        self,
        name: str,
        free: list[Net],
        claims: Mapping[str, Claim],
        everyone: Mapping[str, list[Net]],
        rivals: set[str],
        refusals: list[Refusal],
    ) -> list[Net]:
        """What ``name`` may take of ``free`` that no other peer newly claims too (a grant
        between the two settles it: the grantee's)."""
        left = free
        for other in sorted(rivals):
            if other == name or not left:
                continue
            overlap = intersect(left, everyone[other])
            overlap = space.subtract(overlap, granted(claims.get(other), name))
            overlap = space.subtract(overlap, granted(claims.get(name), other))
            words = f"is also claimed by {other}"
            refusals += [Refusal(name, net, "contested", f"{net} {words}") for net in overlap]
            left = space.subtract(left, overlap)
        return left


def _covers_all(space_: Iterable[Net], nets: Iterable[Net]) -> bool:
    have = list(space_)
    return all(space.covers(have, n) for n in nets)


def touching(a: Mapping[str, Iterable[Net]], b: Mapping[str, Iterable[Net]]) -> dict[str, set[str]]:
    """For each name of ``a``, the other names of ``b`` whose space overlaps its space: one
    sweep over every range, so a fresh node reading a thousand claims does not compare every
    pair."""
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address) + 1, side, name)
        for side, group in enumerate((a, b))
        for name, nets in group.items()
        for n in nets
    )
    out: dict[str, set[str]] = {}
    active: list[tuple[int, int, str]] = []  # (end, side, name) of the ranges still open
    for start, end, side, name in spans:
        active = [x for x in active if x[0] > start]
        for _end, other_side, other in active:
            if other != name and other_side != side:
                first, second = (name, other) if side == 0 else (other, name)
                out.setdefault(first, set()).add(second)
        active.append((end, side, name))
    return out
