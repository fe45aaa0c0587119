"""Block ownership in gossip mode: who owns which part of the cluster range (sans-IO core).

Theory of operation. Each peer publishes a ``Claim`` (claim.py) in its own topology record, and
only that peer changes it, so ownership changes only by the owner's own action:

- Seeding. Before anyone owns anything, the range belongs to nobody. Ringless peers agree on a
  ring id ``(time, seed)`` by single-decree Paxos over their claims (seeding.py); the seed then
  owns the whole range. A group smaller than the quorum cannot decide: it waits.
- Grants. A peer that needs space sets ``want`` to the live owner in its ring with the most
  free space. That owner moves part of its free space (half of its largest free CIDR, at least
  one block) from ``owned`` to ``grants`` with a fresh serial. The grantee adds it to its own
  ``owned`` and publishes ``acks[granter] = serial``; the granter then forgets the grant. Space
  is therefore never held by two peers: the granter lets go before the grantee takes, and a
  serial is taken up once.
- Reclaim. ``rmpeer`` (an operator's action, refused while the peer is live) adds a dead peer's
  space -- what it held of its last claim, and grants to it that it never took up -- to ours and
  publishes ``removed``: every peer then ignores the dead peer's claim, and granters forget
  their grants to it. A peer that finds itself removed
  (it was only partitioned, or restarted from old state) drops its space.
- Two rings. Groups that seeded independently (a wrong ``IPALLOC_INIT`` count, say) hold
  different ring ids and never route to each other. When they meet, the older ring wins; a peer
  of the younger ring that holds no pod addresses leaves it and asks the older ring for space,
  so two empty or fresh groups merge by themselves. A peer with pods in the younger ring keeps
  them and reports ``conflict`` with what to do.
- Trust. Without a secret anyone may publish a claim: space, grants, removal markers and older
  rings are admitted only as the protocol above makes them (admission.py, holdings.py), and
  what is refused is noted for the counters, the log and status.

The agent calls ``step`` whenever the topology changes and on a timer, persists ``to_state()``
when it returns True, then publishes ``claim()`` (both from ringstate.py, with the fields).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Set

from overlay.ipam import space
from overlay.ipam.admission import Admission
from overlay.ipam.claim import Grant, RingId
from overlay.ipam.holdings import Refusal
from overlay.ipam.ringstate import View
from overlay.ipam.space import intersect

Net = ipaddress.IPv4Network
MAX_REMOVED = 256


class RmpeerError(ValueError):
    """rmpeer refused; the message says why."""


class Ring(Admission):
    """This peer's part in block ownership: its claim, and what it makes of everyone's (the
    fields, the claim and the state document are RingState's)."""

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
        live = {n for n in live if n != self.name and n in self.known}
        markers = self._markers(live)
        self._handle_removals(markers)
        live &= self.known.keys()
        self.steady = {n for n in live if n in self.steady or not self._removes_us(n)}
        winner = self._winning_ring(live)
        self._hold(winner)
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
        self._refused_before, self._refusing = self._refusing, set()
        return self._fingerprint() != before

    def _learn(self, views: Mapping[str, View]) -> None:
        for name, view in views.items():
            if name == self.name:
                continue
            held = self.known.get(name)
            if held is None or (view.incarnation, view.version) > (held.incarnation, held.version):
                self.known[name] = view

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
                why = self._grant_refused(granter, net)
                if why is not None:
                    self._refuse(Refusal(granter, net, why[0], why[1]))
                    continue  # not acknowledged: the granter keeps it
                self.acks[granter] = serial
                if space.overlaps([net], self.owned):
                    continue  # never take space we cannot hold alone
                self.ring = c.ring
                self.owned = space.collapse([*self.owned, net])
                self.holdings.forget([net])
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
            self.seeding.clear_proposal()
            owners = sorted((-free, n) for n in live if (free := self._free_of(n, ring)) > 0)
            self.want = owners[0][1] if owners else None
            if owners:
                self.status = "waiting for IP(s) to become available"
            elif any(self._free_of(n, ring) > 0 for n in self.known):
                self.status = "all IP ranges owned by unreachable peers"
            else:
                self.status = "waiting for IP(s) to become available"
            return
        self.want = None
        self.status = "awaiting consensus"
        self._seed(live, now_ns)

    def _seed(self, live: Set[str], now_ns: int) -> None:
        """Take part in seeding a ring; as its decided seed, own the whole range."""
        claims = {n: v.claim for n, v in self.known.items()}
        seeded = self.seeding.step(claims, live, now_ns)
        if seeded is not None:
            self.ring, self.owned = seeded, [self.range]

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
        held = self.holdings.owned_by(name, view.claim)  # never what it claimed and did not hold
        for granter, other in self.known.items():  # grants it never took up are its too
            acked = view.claim.ack_for(granter)
            nets = [g[0] for g in other.claim.grants if g[1] == name and g[2] > acked]
            held += intersect(nets, self.holdings.of(granter))
        held += [g[0] for g in self.grants if g[1] == name and g[2] > view.claim.ack_for(self.name)]
        taken = [] if view.claim.ring != self.ring else space.subtract(held, self.owned)
        self.owned = space.collapse([*self.owned, *taken])
        self.holdings.held.pop(name, None)
        self.holdings.forget(taken)
        self.removed = [r for r in self.removed if r[0] != name] + [(name, view.incarnation)]
        del self.removed[:-MAX_REMOVED]
        del self.known[name]
        self._forget_taken_grants(self._markers(live))
        return taken
