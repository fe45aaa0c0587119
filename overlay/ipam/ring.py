"""Block ownership in gossip mode: who owns which part of the cluster range (sans-IO core).

Theory of operation. Each peer publishes a ``Claim`` (claim.py) in its own topology record, and
only that peer changes it, so ownership changes only by the owner's own action:

- Seeding. Before anyone owns anything, the range belongs to nobody. Ringless peers run
  single-decree Paxos over their claims (acceptor state ``promised``/``accepted``, proposer state
  ``proposal``/``accept``), with a quorum of ``quorum`` acceptors (from ``IPALLOC_INIT``
  consensus=N: N // 2 + 1). Only the lowest-named live ringless peer proposes. The decided value
  is a ring id ``(time, seed)``; the seed then owns the whole range. A group smaller than the
  quorum (the minority side of a partition, a lone node) cannot decide: it waits.
- Grants. A peer that needs space sets ``want`` to the live owner in its ring with the most
  free space. That owner moves part of its free space (half of its largest free CIDR, at least
  one block) from ``owned`` to ``grants`` with a fresh serial. The grantee adds it to its own
  ``owned`` and publishes ``acks[granter] = serial``; the granter then forgets the grant. Space
  is therefore never held by two peers: the granter lets go before the grantee takes, and a
  serial is taken up once.
- Reclaim. ``rmpeer`` (an operator's action, refused while the peer is live) adds a dead peer's
  space -- what its last claim owned, and grants to it that it never took up -- to ours and
  publishes ``removed``: every peer then ignores the dead peer's claim, and granters forget
  their grants to it. A peer that finds itself removed
  (it was only partitioned, or restarted from old state) drops its space.
- Two rings. Groups that seeded independently (a wrong ``IPALLOC_INIT`` count, say) hold
  different ring ids and never route to each other. When they meet, the older ring wins; a peer
  of the younger ring that holds no pod addresses leaves it and asks the older ring for space,
  so two empty or fresh groups merge by themselves. A peer with pods in the younger ring keeps
  them and reports ``conflict`` with what to do.

The agent calls ``step`` whenever the topology changes and on a timer, persists ``to_state()``
when it returns True, then publishes ``claim()``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from overlay.ipam import space
from overlay.ipam.claim import Ballot, Claim, Grant, RingId

Net = ipaddress.IPv4Network
MAX_REMOVED = 256


class RmpeerError(ValueError):
    """rmpeer refused; the message says why."""


@dataclass(frozen=True)
class View:
    """A peer's claim as we last saw it, with its record's stamp."""

    incarnation: int
    version: int
    claim: Claim
    nickname: str = ""


class Ring:
    """This peer's part in block ownership: its claim, and what it makes of everyone's."""

    def __init__(
        self,
        name: str,
        cluster_range: Net,
        block_prefix: int,
        quorum: int,
        incarnation: int,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if block_prefix < cluster_range.prefixlen:
            raise ValueError(f"blocks (/{block_prefix}) are larger than the range {cluster_range}")
        self.name = name
        self.range = cluster_range
        self.block_prefix = block_prefix
        self.quorum = max(1, quorum)
        self.incarnation = incarnation
        self.ring: RingId | None = None
        self.owned: list[Net] = []
        self.grants: list[Grant] = []
        self.serial = 0
        self.acks: dict[str, int] = {}
        self.want: str | None = None
        self.promised: Ballot | None = None
        self.accepted: tuple[Ballot, RingId] | None = None
        self.proposal: Ballot | None = None
        self.accept: tuple[Ballot, RingId] | None = None
        self.removed: list[tuple[str, int]] = []
        self.seeded: list[RingId] = []  # rings we seeded: never seed one again
        self.known: dict[str, View] = {}
        # Removal markers for our name below this concern earlier lives of this peer.
        self.removed_since = incarnation
        self.conflict: str | None = None
        self.status = "idle"
        if state:
            self._load(state)

    # -- what we publish ---------------------------------------------------------------------

    def claim(self, used: int = 0, free: int = 0) -> Claim:
        """The claim to publish, with the pool's counts of addresses in use and to spare."""
        return Claim(
            owned=tuple(self.owned),
            ring=self.ring,
            grants=tuple(self.grants),
            acks=tuple(sorted(self.acks.items())),
            want=self.want,
            promised=self.promised,
            accepted=self.accepted,
            proposal=self.proposal,
            accept=self.accept,
            removed=tuple(self.removed),
            used=used,
            free=free,
        )

    # -- the step ----------------------------------------------------------------------------

    def step(
        self,
        now_ns: int,
        views: Mapping[str, View],
        live: Set[str],
        need: bool,
        free_space: list[Net],
        used: int,
    ) -> bool:
        """Take in the others' claims; True when our state changed (persist, then publish)."""
        before = self._fingerprint()
        self._learn(views)
        markers = self._markers()
        self._handle_removals(markers)
        live = {n for n in live if n != self.name and n in self.known}
        winner = self._winning_ring(live)
        self._settle_conflict(winner, used)
        owned_before = list(self.owned)
        self._take_grants()
        if self.owned != owned_before:
            need = False  # space just arrived: the caller says next time whether it suffices
        self._prune_acks()
        self._forget_taken_grants(markers)
        free = space.subtract(free_space, [g[0] for g in self.grants])
        self._answer_requests(live, free)
        self._ask(live, need or not self.owned, winner, now_ns)
        return self._fingerprint() != before

    def _learn(self, views: Mapping[str, View]) -> None:
        for name, view in views.items():
            if name == self.name:
                continue
            held = self.known.get(name)
            if held is None or (view.incarnation, view.version) > (held.incarnation, held.version):
                self.known[name] = view

    def _markers(self) -> dict[str, int]:
        """Removed peer -> highest removed incarnation, from everyone's claims and ours."""
        out: dict[str, int] = {}
        theirs = [r for v in self.known.values() for r in v.claim.removed]
        for name, inc in [*self.removed, *theirs]:
            out[name] = max(out.get(name, -1), inc)
        return out

    def _handle_removals(self, markers: Mapping[str, int]) -> None:
        for name, inc in markers.items():
            if name == self.name:
                if inc >= self.removed_since and (self.owned or self.grants):
                    self.conflict = (
                        "this peer was removed with rmpeer while it held space; its space was "
                        "reclaimed, so it gave up its addresses: re-create its pods"
                    )
                    self._drop_space()
                self.removed_since = max(self.removed_since, inc + 1)
                continue
            view = self.known.get(name)
            if view is not None and view.incarnation <= inc:
                del self.known[name]

    def _winning_ring(self, live: Set[str]) -> RingId | None:
        rings = {self.known[n].claim.ring for n in live} | {self.ring}
        rings.discard(None)
        return min(rings) if rings else None  # type: ignore[type-var]

    def _settle_conflict(self, winner: RingId | None, used: int) -> None:
        if self.ring is None or winner is None or self.ring == winner:
            if self.conflict and self.conflict.startswith("IP allocation"):
                self.conflict = None
            return
        if used == 0:
            self._drop_space()  # an empty peer of the younger ring joins the older one
            return
        self.conflict = (
            f"IP allocation was seeded by different peers: this peer holds pod addresses in the "
            f"ring seeded by {self.ring[1]}, the older ring was seeded by {winner[1]}; to join "
            f"it, delete this node's pods and its IPAM state file and restart the agent"
        )

    def _drop_space(self) -> None:
        self.ring, self.owned, self.grants, self.want = None, [], [], None

    def _take_grants(self) -> None:
        for granter, view in sorted(self.known.items()):
            c = view.claim
            if c.ring is None or (self.ring is not None and c.ring != self.ring):
                continue
            for net, grantee, serial in sorted(c.grants, key=lambda g: g[2]):
                if grantee != self.name or serial <= self.acks.get(granter, 0):
                    continue
                self.acks[granter] = serial
                if not net.subnet_of(self.range) or space.overlaps([net], self.owned):
                    continue  # never take space we cannot hold alone
                self.ring = c.ring
                self.owned = space.collapse([*self.owned, net])
                self.want = None

    def _prune_acks(self) -> None:
        """An ack is needed while the granter still lists that grant (stale gossip must not be
        taken up twice); once its claim no longer lists one, the ack can go."""
        for granter in list(self.acks):
            view = self.known.get(granter)
            if view is None:
                continue
            if not any(g[1] == self.name for g in view.claim.grants):
                del self.acks[granter]

    def _forget_taken_grants(self, markers: Mapping[str, int]) -> None:
        kept: list[Grant] = []
        for grant in self.grants:
            _net, grantee, serial = grant
            view = self.known.get(grantee)
            if view is not None and view.claim.ack_for(self.name) >= serial:
                continue  # taken up
            if grantee in markers and (view is None or view.incarnation <= markers[grantee]):
                continue  # the grantee was reclaimed: whoever ran rmpeer took this grant too
            kept.append(grant)
        self.grants = kept

    def _answer_requests(self, live: Set[str], free: list[Net]) -> None:
        if self.ring is None:
            return
        pending = {g[1] for g in self.grants}
        for name in sorted(live):
            c = self.known[name].claim
            if c.want != self.name or c.ring not in (None, self.ring) or name in pending:
                continue
            net = space.half_of_largest(free, self.block_prefix)
            if net is None:
                return
            self.serial += 1
            self.grants.append((net, name, self.serial))
            self.owned = space.subtract(self.owned, [net])
            free = space.subtract(free, [net])

    def _ask(self, live: Set[str], need: bool, winner: RingId | None, now_ns: int) -> None:
        if not need:
            self.want = None
            self.status = "ready" if self.owned else "idle"
            return
        ring = self.ring or winner
        if ring is not None:
            self._clear_proposal()
            owners = sorted(
                (-self.known[n].claim.free, n)
                for n in live
                if self.known[n].claim.ring == ring and self.known[n].claim.free > 0
            )
            self.want = owners[0][1] if owners else None
            if owners:
                self.status = "waiting for IP(s) to become available"
            elif any(v.claim.ring == ring and v.claim.free > 0 for v in self.known.values()):
                self.status = "all IP ranges owned by unreachable peers"
            else:
                self.status = "waiting for IP(s) to become available"
            return
        self.want = None
        self.status = "awaiting consensus"
        self._bootstrap(live, now_ns)

    # -- seeding (single-decree Paxos over claims) -------------------------------------------

    def _bootstrap(self, live: Set[str], now_ns: int) -> None:
        claims = {n: v.claim for n, v in self.known.items()}
        self._act_as_acceptor(live, claims)
        decided = self._decided(claims)
        if decided is not None:
            if decided[1] == self.name and decided not in self.seeded:
                self.seeded.append(decided)
                self.ring, self.owned = decided, [self.range]
                self._clear_proposal()
            return
        if self.name != min([self.name, *live]):
            self._clear_proposal()
            return
        self._propose(claims, now_ns)

    def _act_as_acceptor(self, live: Set[str], claims: Mapping[str, Claim]) -> None:
        requests = [c for n, c in claims.items() if n in live] + [self.claim()]
        for c in sorted(requests, key=lambda c: c.proposal or (-1, "")):
            if c.proposal is not None and (self.promised is None or c.proposal > self.promised):
                self.promised = c.proposal
        for c in requests:
            if c.accept is None:
                continue
            ballot, _value = c.accept
            if self.promised is None or ballot >= self.promised:
                self.promised = ballot
                if self.accepted is None or ballot > self.accepted[0]:
                    self.accepted = c.accept

    def _decided(self, claims: Mapping[str, Claim]) -> RingId | None:
        votes: dict[tuple[Ballot, RingId], int] = {}
        for c in [*claims.values(), self.claim()]:
            if c.accepted is not None:
                votes[c.accepted] = votes.get(c.accepted, 0) + 1
        decided = [value for (_b, value), n in votes.items() if n >= self.quorum]
        return min(decided) if decided else None

    def _propose(self, claims: Mapping[str, Claim], now_ns: int) -> None:
        everyone = [*claims.values(), self.claim()]
        top = max(
            (b for c in everyone for b in (c.promised, c.proposal, c.accepted and c.accepted[0])
             if b),
            default=(0, ""),
        )  # fmt: skip
        if self.proposal is None or top > self.proposal:
            self.proposal, self.accept = (top[0] + 1, self.name), None
            return
        if self.accept is not None:
            return
        promises = [c for c in everyone if c.promised == self.proposal]
        if len(promises) < self.quorum:
            return
        prior = [c.accepted for c in promises if c.accepted is not None]
        value = max(prior)[1] if prior else (now_ns, self.name)
        self.accept = (self.proposal, value)

    def _clear_proposal(self) -> None:
        self.proposal, self.accept = None, None

    # -- operator actions --------------------------------------------------------------------

    def rmpeer(self, name: str, live: Set[str]) -> list[Net]:
        """Take over a dead peer's space; what we took. Refused while it is live."""
        if name == self.name:
            raise RmpeerError("cannot remove this peer itself")
        if name in live:
            raise RmpeerError(f"peer {name} is reachable; stop it first (rmpeer is for dead peers)")
        view = self.known.get(name)
        if view is None:
            raise RmpeerError(f"peer {name} is not known to own any space")
        if self.ring is None:
            raise RmpeerError("this peer has no space yet; run rmpeer on a peer that has")
        held = list(view.claim.owned)
        for granter, other in self.known.items():  # grants it never took up are its too
            acked = view.claim.ack_for(granter)
            held += [g[0] for g in other.claim.grants if g[1] == name and g[2] > acked]
        held += [g[0] for g in self.grants if g[1] == name and g[2] > view.claim.ack_for(self.name)]
        taken = [] if view.claim.ring != self.ring else space.subtract(held, self.owned)
        self.owned = space.collapse([*self.owned, *taken])
        self.removed = [r for r in self.removed if r[0] != name] + [(name, view.incarnation)]
        del self.removed[:-MAX_REMOVED]
        del self.known[name]
        self._forget_taken_grants(self._markers())
        return taken

    # -- persistence ---------------------------------------------------------------------------

    def _fingerprint(self) -> tuple[Any, ...]:
        return (self.ring, tuple(self.owned), tuple(self.grants), self.serial,
                tuple(sorted(self.acks.items())), self.want, self.promised, self.accepted,
                self.proposal, self.accept, tuple(self.removed), tuple(self.seeded),
                self.removed_since)  # fmt: skip

    def to_state(self) -> dict[str, Any]:
        """Everything a restart needs, as a JSON-ready document (the ``state`` argument)."""
        return {
            "range": str(self.range),
            "incarnation": self.incarnation,
            "ring": list(self.ring) if self.ring else None,
            "owned": [str(n) for n in self.owned],
            "grants": [[str(n), who, s] for n, who, s in self.grants],
            "serial": self.serial,
            "acks": dict(self.acks),
            "promised": list(self.promised) if self.promised else None,
            "accepted": _pair_out(self.accepted),
            "removed": [list(r) for r in self.removed],
            "seeded": [list(r) for r in self.seeded],
            "removed_since": self.removed_since,
            "known": {n: _known_out(v) for n, v in self.known.items() if v.claim.owned},
        }

    def _load(self, d: Mapping[str, Any]) -> None:
        try:
            if d["range"] != str(self.range):
                raise ValueError(
                    f"the state holds range {d['range']}, configuration says {self.range}; "
                    f"changing IPALLOC_RANGE needs a fresh state directory on every node"
                )
            self.ring = _ring(d["ring"])
            self.owned = space.collapse(Net(n) for n in d["owned"])
            self.grants = [(Net(n), str(who), int(s)) for n, who, s in d["grants"]]
            self.serial = int(d["serial"])
            self.acks = {str(k): int(v) for k, v in d["acks"].items()}
            self.promised = _ballot(d["promised"])
            acc = d["accepted"]
            self.accepted = None if acc is None else (_ballot(acc[0]), _ring(acc[1]))  # type: ignore[assignment]
            self.removed = [(str(n), int(i)) for n, i in d["removed"]]
            self.seeded = [r for r in (_ring(x) for x in d["seeded"]) if r is not None]
            # Removal markers at or above the incarnation that saved this state concern us now.
            self.removed_since = min(int(d["removed_since"]), int(d["incarnation"]))
            for n, k in d["known"].items():
                claim = Claim(owned=tuple(Net(o) for o in k["owned"]), ring=_ring(k["ring"]))
                self.known[str(n)] = View(int(k["incarnation"]), 0, claim, str(k["nickname"]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"IPAM state: {e}") from None


def _known_out(v: View) -> dict[str, Any]:
    """What we remember of another owner across restarts (for status and rmpeer)."""
    return {
        "incarnation": v.incarnation,
        "nickname": v.nickname,
        "ring": list(v.claim.ring) if v.claim.ring else None,
        "owned": [str(o) for o in v.claim.owned],
    }


def _ring(value: Any) -> RingId | None:
    return None if value is None else (int(value[0]), str(value[1]))


def _ballot(value: Any) -> Ballot | None:
    return None if value is None else (int(value[0]), str(value[1]))


def _pair_out(value: tuple[Ballot, RingId] | None) -> list[Any] | None:
    return None if value is None else [list(value[0]), list(value[1])]
