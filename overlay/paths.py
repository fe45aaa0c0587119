"""Sans-IO core of path choice: per remote peer, the kernel fast path or the sleeve.

Rules this module keeps:
- It never touches a socket or a clock: the driver (overlay/prober.py) passes ``now``
  (monotonic seconds) in, sends the probes ``probes_due`` hands out, feeds the answers to
  ``answered`` and takes ``on_fast()``, ``states()`` and ``events()`` out.
- Everything that moves a peer between paths lives in this file.

Theory of operation. A peer may use the fast path when its candidate has a ``vtep`` (both ends
support it, not relayed, no secret); otherwise it is on the sleeve at once with the candidate's
reason and is not probed. Every eligible peer, on either path, is probed every
``PROBE_INTERVAL`` with an ICMP echo to its VTEP through the VXLAN device; a probe not answered
within ``ANSWER_TIMEOUT`` is a miss. ``DEMOTE_MISSES`` misses in a row move a peer on the fast
path to the sleeve. A peer that never left the fast path (or never reached it) is promoted after
``FIRST_ANSWERS`` answers in a row; once demoted, only after answers in a row spanning its hold,
which starts at ``HOLD_INTERVAL``. The hold doubles (up to ``MAX_HOLD_INTERVAL``) when a
re-promoted peer is demoted again within ``STEADY_INTERVAL`` of that promotion -- a flapping path
waits longer each time instead of flapping routes -- and is back to ``HOLD_INTERVAL`` once the
peer stayed on the fast path for ``STEADY_INTERVAL``. A peer whose routes already went through
the fast path when the agent started (``kept``) begins there, and must keep answering.

"In a row" follows the order probes were sent: the loss of a probe sent before the first answer
of a run of answers does not break that run, and a loss counts towards a demotion only when no
later probe was answered. An answer counts only
when it matches a probe we sent to that VTEP that has not expired; the sequence numbers (16
bits) are unique among the probes outstanding.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

PROBE_INTERVAL = 0.4  # seconds between probes to one peer
ANSWER_TIMEOUT = 0.8  # a probe unanswered this long is a miss
DEMOTE_MISSES = 3  # misses in a row that move a peer to the sleeve
FIRST_ANSWERS = 2  # answers in a row that promote a peer never demoted
HOLD_INTERVAL = 5.0  # answers in a row must span this long to promote a demoted peer
MAX_HOLD_INTERVAL = 80.0  # the hold's cap however often a path flaps
STEADY_INTERVAL = 120.0  # on the fast path this long: a later demotion is no flap
SEQUENCES = 1 << 16

WAITING = "fast path not answered yet"
KEPT = "kept from the previous agent"
FIRST_ANSWERED = "fast path answered"
NOT_ELIGIBLE = "no fast path"


class Path(StrEnum):
    """Which data path carries a peer's pod traffic."""

    FASTDP = "fastdp"  # kernel VXLAN on UDP 6784
    SLEEVE = "sleeve"  # the userspace sleeve on UDP 6783 (TUN)


@dataclass(frozen=True)
class Candidate:
    """A remote peer as path choice sees it. ``vtep``: its fast-path endpoint (overlay/vtep.py)
    when it may use the fast path; None when it may not, and ``reason`` says why ("fast path
    off here", "peer has no fast path", "relayed", "encrypted", ...). ``kept``: its blocks were
    routed through the fast path when this agent started, so it begins there."""

    name: str  # the mesh name "aa:bb:cc:dd:ee:ff"
    nickname: str
    vtep: ipaddress.IPv4Address | None
    reason: str = ""
    kept: bool = False


@dataclass(frozen=True)
class PathState:
    """One peer's path as views show it. ``since``: monotonic seconds of the last switch (None:
    never switched since it appeared); ``rtt``: of the last answered probe, seconds."""

    path: Path
    reason: str
    since: float | None = None
    switches: int = 0
    rtt: float | None = None
    probes_sent: int = 0
    probes_answered: int = 0


@dataclass(frozen=True)
class PathSwitch:
    """A peer's traffic moved to ``path`` because of ``reason``: logged, one line each."""

    name: str
    nickname: str
    path: Path
    reason: str


@dataclass(frozen=True)
class _Probe:
    name: str
    vtep: ipaddress.IPv4Address
    sent_at: float


@dataclass
class _Peer:
    """One peer's path and the bookkeeping of its probes."""

    name: str
    nickname: str
    vtep: ipaddress.IPv4Address | None
    path: Path
    reason: str
    since: float | None = None
    switches: int = 0
    rtt: float | None = None
    sent: int = 0
    answered: int = 0
    next_probe_at: float = 0.0
    misses: int = 0
    run: int = 0  # answers in a row
    run_began_at: float = 0.0  # when the first of them arrived
    run_sent_at: float = 0.0  # when the first of them was sent
    answered_sent_at: float = float("-inf")  # when the latest answered probe was sent
    demoted: bool = False  # left the fast path once: promotion waits for the hold
    hold: float = HOLD_INTERVAL
    fast_at: float = 0.0  # when it last reached the fast path
    held: bool = False  # it reached the fast path after a hold (a re-promotion)

    def state(self) -> PathState:
        return PathState(
            self.path, self.reason, self.since, self.switches, self.rtt, self.sent, self.answered
        )


class Paths:
    """The path of every remote peer, chosen from probes through the fast path."""

    def __init__(self) -> None:
        self._peers: dict[str, _Peer] = {}
        self._outstanding: dict[int, _Probe] = {}  # by sequence, in the order sent
        self._sequence = 0
        self._events: list[PathSwitch] = []

    # -- inputs ------------------------------------------------------------------------------

    def set_candidates(self, candidates: Iterable[Candidate], now: float) -> None:
        """The peers to choose for: those that stay keep their state, new ones begin on the
        sleeve (on the fast path when ``kept``), gone ones are forgotten with their probes."""
        wanted = {c.name: c for c in candidates}
        for name in [n for n in self._peers if n not in wanted]:
            del self._peers[name]
            self._drop_probes(name)
        for candidate in wanted.values():
            peer = self._peers.get(candidate.name)
            if peer is None:
                self._peers[candidate.name] = self._new_peer(candidate, now)
            else:
                self._update(peer, candidate, now)

    def probes_due(self, now: float) -> list[tuple[ipaddress.IPv4Address, int]]:
        """The probes to send now: (the peer's VTEP, sequence), each now outstanding."""
        due = []
        for peer in self._peers.values():
            if peer.vtep is None or peer.next_probe_at > now:
                continue
            sequence = self._free_sequence()
            if sequence is None:
                break
            self._outstanding[sequence] = _Probe(peer.name, peer.vtep, now)
            peer.sent += 1
            peer.next_probe_at = now + PROBE_INTERVAL
            due.append((peer.vtep, sequence))
        return due

    def answered(self, vtep: ipaddress.IPv4Address, sequence: int, now: float) -> bool:
        """An echo reply from ``vtep``; False (not counted) unless it answers an unexpired
        probe we sent to that VTEP."""
        probe = self._outstanding.get(sequence)
        if probe is None or probe.vtep != vtep or now >= probe.sent_at + ANSWER_TIMEOUT:
            return False
        del self._outstanding[sequence]
        peer = self._peers[probe.name]
        peer.rtt = now - probe.sent_at
        peer.answered += 1
        peer.misses = 0
        peer.answered_sent_at = max(peer.answered_sent_at, probe.sent_at)
        if peer.run == 0:
            peer.run_began_at, peer.run_sent_at = now, probe.sent_at
        peer.run += 1
        self._maybe_promote(peer, now)
        return True

    def handle_timer(self, now: float) -> None:
        """Count the probes unanswered for ``ANSWER_TIMEOUT`` as misses."""
        while self._outstanding:
            sequence, probe = next(iter(self._outstanding.items()))
            if probe.sent_at + ANSWER_TIMEOUT > now:
                break
            del self._outstanding[sequence]
            self._missed(self._peers[probe.name], probe, now)

    # -- outputs -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next probe or, if sooner, the moment the oldest outstanding probe expires."""
        deadlines = [p.next_probe_at for p in self._peers.values() if p.vtep is not None]
        if self._outstanding:
            deadlines.append(next(iter(self._outstanding.values())).sent_at + ANSWER_TIMEOUT)
        return min(deadlines, default=None)

    def on_fast(self) -> frozenset[str]:
        """The names of the peers on the fast path."""
        return frozenset(p.name for p in self._peers.values() if p.path is Path.FASTDP)

    def states(self) -> dict[str, PathState]:
        """Every peer's path, by name."""
        return {name: peer.state() for name, peer in self._peers.items()}

    def events(self) -> list[PathSwitch]:
        """The switches since the last call."""
        out, self._events = self._events, []
        return out

    def has_events(self) -> bool:
        """Whether switches wait for ``events()``."""
        return bool(self._events)

    # -- rules -------------------------------------------------------------------------------

    def _new_peer(self, candidate: Candidate, now: float) -> _Peer:
        if candidate.vtep is None:
            reason = candidate.reason or NOT_ELIGIBLE
            return _Peer(candidate.name, candidate.nickname, None, Path.SLEEVE, reason)
        path, reason = (Path.FASTDP, KEPT) if candidate.kept else (Path.SLEEVE, WAITING)
        peer = _Peer(candidate.name, candidate.nickname, candidate.vtep, path, reason)
        peer.next_probe_at = peer.fast_at = now
        return peer

    def _update(self, peer: _Peer, candidate: Candidate, now: float) -> None:
        peer.nickname = candidate.nickname
        if candidate.vtep == peer.vtep:
            if candidate.vtep is None:
                peer.reason = candidate.reason or NOT_ELIGIBLE
            return
        self._drop_probes(peer.name)
        peer.vtep, peer.misses, peer.run, peer.next_probe_at = candidate.vtep, 0, 0, now
        if candidate.vtep is not None:
            if peer.path is Path.SLEEVE:
                peer.reason = WAITING
        elif peer.path is Path.FASTDP:
            self._demote(peer, candidate.reason or NOT_ELIGIBLE, now)
        else:
            peer.reason = candidate.reason or NOT_ELIGIBLE

    def _missed(self, peer: _Peer, probe: _Probe, now: float) -> None:
        if probe.sent_at >= peer.run_sent_at:
            peer.run = 0
        if probe.sent_at < peer.answered_sent_at:
            return  # a later probe was answered: not a miss in a row
        peer.misses += 1
        if peer.path is Path.FASTDP and peer.misses >= DEMOTE_MISSES:
            self._demote(peer, f"{peer.misses} probes unanswered", now)

    def _maybe_promote(self, peer: _Peer, now: float) -> None:
        if peer.path is Path.FASTDP:
            return
        if not peer.demoted:
            if peer.run >= FIRST_ANSWERS:
                self._switch(peer, Path.FASTDP, FIRST_ANSWERED, now)
                peer.fast_at, peer.held = now, False
        elif now - peer.run_began_at >= peer.hold:
            self._switch(peer, Path.FASTDP, f"answered steadily for {peer.hold:.1f}s", now)
            peer.fast_at, peer.held = now, True

    def _demote(self, peer: _Peer, reason: str, now: float) -> None:
        fast_for = now - peer.fast_at
        if fast_for >= STEADY_INTERVAL:
            peer.hold = HOLD_INTERVAL
        elif peer.held:
            peer.hold = min(peer.hold * 2, MAX_HOLD_INTERVAL)
        peer.demoted = True
        peer.run = 0
        self._switch(peer, Path.SLEEVE, reason, now)

    def _switch(self, peer: _Peer, path: Path, reason: str, now: float) -> None:
        peer.path, peer.reason, peer.since = path, reason, now
        peer.switches += 1
        self._events.append(PathSwitch(peer.name, peer.nickname, path, reason))

    # -- sequences ---------------------------------------------------------------------------

    def _free_sequence(self) -> int | None:
        """The next sequence not outstanding; None when all 2^16 are."""
        for _ in range(SEQUENCES):
            sequence = self._sequence
            self._sequence = (sequence + 1) % SEQUENCES
            if sequence not in self._outstanding:
                return sequence
        return None

    def _drop_probes(self, name: str) -> None:
        for sequence in [s for s, p in self._outstanding.items() if p.name == name]:
            del self._outstanding[sequence]
