"""Seeding the ring: single-decree Paxos over the claims of ringless peers (sans-IO core).

Theory of operation. Before anyone owns anything, the range belongs to nobody. Every ringless
peer is an acceptor (state ``promised``, ``accepted``); the lowest-named live one is also the
proposer (state ``proposal``, ``accept``). All four travel in the peer's claim (claim.py), so
the messages of Paxos are the claims themselves: a peer reads the others' ballots from their
claims and publishes its own. Ballots are ``(round, proposer)``; the decided value is a ring id
``(time, seed)``, and the seed then owns the whole range.

Rules this module keeps:
- A quorum is ``quorum`` peers (from ``IPALLOC_INIT`` consensus=N: N // 2 + 1). A value is
  decided once that many claims list it as accepted; a group smaller than the quorum (the
  minority side of a partition, a lone node) cannot decide: it waits.
- An acceptor promises the highest ballot proposed by a live peer (or by itself) and accepts a
  request whose ballot is at least its promise, replacing an accepted value only with one of a
  higher ballot.
- The proposer opens a ballot above every ballot it has seen; once a quorum promised it, it
  asks them to accept the value of the highest ballot any of them accepted, or, if none did, a
  new ring id ``(now_ns, its name)``. A peer that is not the lowest-named live one withdraws
  its proposal.
- A peer seeds a decided ring only when it is that ring's seed, and never the same ring twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from overlay.ipam.claim import Ballot, Claim, RingId


class Seeding:
    """One ringless peer's part in seeding a ring: its acceptor and proposer state."""

    def __init__(self, name: str, quorum: int) -> None:
        self.name = name
        self.quorum = quorum
        self.promised: Ballot | None = None
        self.accepted: tuple[Ballot, RingId] | None = None
        self.proposal: Ballot | None = None
        self.accept: tuple[Ballot, RingId] | None = None
        self.seeded: list[RingId] = []  # rings we seeded: never seed one again

    def ballots(self) -> Claim:
        """Our own ballots as a claim, read with the others' (no space in it)."""
        return Claim(
            promised=self.promised,
            accepted=self.accepted,
            proposal=self.proposal,
            accept=self.accept,
        )

    def step(self, claims: Mapping[str, Claim], live: Set[str], now_ns: int) -> RingId | None:
        """One round over the others' ``claims``; the ring to seed when we are its seed."""
        self._act_as_acceptor(live, claims)
        decided = self._decided(claims)
        if decided is not None:
            if decided[1] == self.name and decided not in self.seeded:
                self.seeded.append(decided)
                self.clear_proposal()
                return decided
            return None
        if self.name != min([self.name, *live]):
            self.clear_proposal()
            return None
        self._propose(claims, now_ns)
        return None

    def clear_proposal(self) -> None:
        """Stop proposing (a ring was found or decided, or a lower-named peer proposes)."""
        self.proposal, self.accept = None, None

    def _act_as_acceptor(self, live: Set[str], claims: Mapping[str, Claim]) -> None:
        requests = [c for n, c in claims.items() if n in live] + [self.ballots()]
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
        for c in [*claims.values(), self.ballots()]:
            if c.accepted is not None:
                votes[c.accepted] = votes.get(c.accepted, 0) + 1
        decided = [value for (_b, value), n in votes.items() if n >= self.quorum]
        return min(decided) if decided else None

    def _propose(self, claims: Mapping[str, Claim], now_ns: int) -> None:
        everyone = [*claims.values(), self.ballots()]
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
