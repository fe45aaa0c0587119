"""The sans-IO path choice core, driven on a virtual clock: a simulated fast path answers (or
drops) the probes it hands out, and the tests assert switches, reasons and their times."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from overlay.paths import (
    ANSWER_TIMEOUT,
    HOLD_INTERVAL,
    MAX_HOLD_INTERVAL,
    PROBE_INTERVAL,
    SEQUENCES,
    Candidate,
    Path,
    Paths,
    PathSwitch,
)

VTEP_B, VTEP_C, VTEP_B2 = (
    IPv4Address("10.32.1.1"),
    IPv4Address("10.32.2.1"),
    IPv4Address("10.32.9.1"),
)
B, C = "b2:00:00:00:00:0b", "c2:00:00:00:00:0c"
RTT = 0.002
SLACK = 1e-6
LATE = 2 * PROBE_INTERVAL + RTT + SLACK  # the first answer, and the first after the hold


def candidate(name: str = B, vtep: IPv4Address | None = VTEP_B, **kw: object) -> Candidate:
    return Candidate(name, name[:2], vtep, **kw)  # type: ignore[arg-type]


class Sim:
    """A fast path on a virtual clock: each probe to a VTEP that is ``up`` is answered RTT later."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.now = 0.0
        self.up: dict[IPv4Address, bool] = {}
        self.answers: list[tuple[float, int, IPv4Address]] = []
        self.switches: list[tuple[float, PathSwitch]] = []
        self.sent: list[tuple[float, IPv4Address, int]] = []

    def run_until(self, end: float, stop: Callable[[], bool] = lambda: False) -> float:
        """Step every deadline up to ``end`` (or until ``stop()``); returns the clock."""
        while not stop():
            timer = self.paths.get_timer()
            deadlines = [
                t for t in (timer, self.answers[0][0] if self.answers else None) if t is not None
            ]
            at = min(deadlines, default=end + 1)
            if at > end:
                break
            self.step(max(at, self.now))
        return self.now

    def step(self, now: float) -> None:
        self.now = now
        while self.answers and self.answers[0][0] <= now:
            _, sequence, vtep = heapq.heappop(self.answers)
            self.paths.answered(vtep, sequence, now)
        self.paths.handle_timer(now)
        for vtep, sequence in self.paths.probes_due(now):
            self.sent.append((now, vtep, sequence))
            if self.up.get(vtep, True):
                heapq.heappush(self.answers, (now + RTT, sequence, vtep))
        self.switches += [(now, e) for e in self.paths.events()]

    def until_switch(self, limit: float) -> tuple[float, PathSwitch]:
        """Run until the next switch (at most ``limit`` seconds); its time and itself."""
        seen = len(self.switches)
        self.run_until(self.now + limit, lambda: len(self.switches) > seen)
        assert len(self.switches) > seen, f"no switch within {limit}s"
        return self.switches[seen]


def started(*candidates: Candidate) -> tuple[Paths, Sim]:
    paths = Paths()
    paths.set_candidates(candidates or (candidate(),), 0.0)
    return paths, Sim(paths)


def test_new_peer_waits_on_the_sleeve_then_two_answers_promote_it() -> None:
    paths, sim = started()
    assert paths.states()[B].path is Path.SLEEVE
    assert paths.states()[B].reason == "fast path not answered yet"
    assert paths.on_fast() == frozenset()
    at, switch = sim.until_switch(5)
    assert at == pytest.approx(PROBE_INTERVAL + RTT)  # probes at 0 and 0.4
    assert switch == PathSwitch(B, "b2", Path.FASTDP, "fast path answered")
    state = paths.states()[B]
    assert (state.path, state.since, state.switches) == (Path.FASTDP, at, 1)
    assert (state.probes_sent, state.probes_answered) == (2, 2)
    assert state.rtt == pytest.approx(RTT)
    assert paths.on_fast() == {B}
    assert paths.events() == []  # drained by the simulator


def test_three_misses_in_a_row_demote_and_a_hold_of_steady_answers_promotes_again() -> None:
    paths, sim = started()
    sim.until_switch(5)
    sim.run_until(10.0)
    sim.up[VTEP_B] = False
    at, switch = sim.until_switch(5)
    # the first probe lost is sent within an interval, the third expires two intervals later
    assert at >= 10 + 2 * PROBE_INTERVAL + ANSWER_TIMEOUT - SLACK
    assert at <= 10 + 3 * PROBE_INTERVAL + ANSWER_TIMEOUT + SLACK
    assert switch == PathSwitch(B, "b2", Path.SLEEVE, "3 probes unanswered")
    assert paths.on_fast() == frozenset()
    sim.run_until(20.0)
    sim.up[VTEP_B] = True
    at, switch = sim.until_switch(10)
    assert 20 + HOLD_INTERVAL <= at <= 20 + HOLD_INTERVAL + LATE
    assert switch == PathSwitch(B, "b2", Path.FASTDP, "answered steadily for 5.0s")
    assert paths.states()[B].switches == 3


def test_two_misses_do_not_demote_and_one_miss_restarts_the_hold() -> None:
    paths, sim = started()
    sim.until_switch(5)
    sim.run_until(10.0)
    sim.up[VTEP_B] = False
    sim.run_until(10.0 + 2 * PROBE_INTERVAL - SLACK)  # two probes lost
    sim.up[VTEP_B] = True
    sim.run_until(30.0)
    assert paths.on_fast() == {B} and len(sim.switches) == 1
    sim.up[VTEP_B] = False
    sim.until_switch(5)
    sim.up[VTEP_B] = True
    back = sim.now
    sim.run_until(back + 3.0)
    sim.up[VTEP_B] = False  # one probe lost
    sim.run_until(back + 3.0 + PROBE_INTERVAL - SLACK)
    sim.up[VTEP_B] = True
    restart = sim.now
    at, _ = sim.until_switch(10)
    assert at >= restart + HOLD_INTERVAL  # the run of answers began again after the loss


def flap(sim: Sim, up_for: float, down_for: float) -> float | None:
    """One flap: the path answers for ``up_for``, then drops for ``down_for``. Returns how long
    after it came up the peer was promoted (None: not promoted)."""
    sim.up[VTEP_B] = True
    came_up = sim.now
    promoted = None
    seen = len(sim.switches)
    sim.run_until(came_up + up_for)
    for at, switch in sim.switches[seen:]:
        if switch.path is Path.FASTDP:
            promoted = at - came_up
    sim.up[VTEP_B] = False
    sim.run_until(sim.now + down_for)
    return promoted


def demoted_once(sim: Sim) -> None:
    sim.until_switch(5)
    sim.run_until(sim.now + 1.0)
    sim.up[VTEP_B] = False
    sim.until_switch(5)


def test_a_flapping_path_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    paths, sim = started()
    demoted_once(sim)
    holds = []
    for _ in range(7):
        delay = flap(sim, MAX_HOLD_INTERVAL + 10, 3.0)
        assert delay is not None
        holds.append(delay)
    expected = [5.0, 10.0, 20.0, 40.0, 80.0, 80.0, 80.0]
    for hold, want in zip(holds, expected, strict=True):
        assert want <= hold <= want + LATE
    assert paths.states()[B].reason == "3 probes unanswered"


def test_a_flapping_path_does_not_flap_the_routes() -> None:
    paths, sim = started()
    demoted_once(sim)
    promotions = [flap(sim, 7.0, 2.5) for _ in range(20)]
    # the first comes back after 5 s; once it flaps again the hold (10 s) outlasts each window
    assert promotions[0] is not None
    assert all(p is None for p in promotions[1:])
    assert paths.states()[B].switches <= 4
    assert paths.on_fast() == frozenset()


def test_answers_that_never_span_the_hold_keep_a_demoted_peer_on_the_sleeve() -> None:
    paths, sim = started()
    demoted_once(sim)
    for _ in range(10):
        assert flap(sim, HOLD_INTERVAL - 1.0, 1.0) is None
    assert paths.states()[B].switches == 2


def test_steady_for_120s_resets_the_hold() -> None:
    _, sim = started()
    demoted_once(sim)
    assert flap(sim, 6.0, 3.0) is not None  # hold 5, then a flap: hold 10
    assert flap(sim, 11.0, 3.0) is not None  # hold 10, a flap again: hold 20
    assert flap(sim, 150.0, 3.0) is not None  # promoted after 20 s, then 130 s steadily fast
    delay = flap(sim, 10.0, 3.0)
    assert delay is not None and delay <= HOLD_INTERVAL + LATE


def test_a_short_first_stay_on_the_fast_path_does_not_lengthen_the_hold() -> None:
    _, sim = started()
    demoted_once(sim)
    delay = flap(sim, 6.0, 3.0)
    assert delay is not None and delay <= HOLD_INTERVAL + LATE


def test_a_kept_peer_begins_on_the_fast_path_and_stays_while_it_answers() -> None:
    paths, sim = started(candidate(kept=True))
    state = paths.states()[B]
    assert (state.path, state.reason, state.since, state.switches) == (
        Path.FASTDP,
        "kept from the previous agent",
        None,
        0,
    )
    assert paths.on_fast() == {B}
    assert paths.probes_due(0.0) == [(VTEP_B, 0)]
    sim.run_until(30.0)
    assert sim.switches == [] and paths.on_fast() == {B}


def test_a_kept_peer_that_does_not_answer_goes_to_the_sleeve() -> None:
    _, sim = started(candidate(kept=True))
    sim.up[VTEP_B] = False
    at, switch = sim.until_switch(5)
    assert at == pytest.approx(2 * PROBE_INTERVAL + ANSWER_TIMEOUT)
    assert switch.path is Path.SLEEVE and switch.reason == "3 probes unanswered"
    sim.up[VTEP_B] = True
    came_up = sim.now
    at, _ = sim.until_switch(10)
    assert at - came_up >= HOLD_INTERVAL  # demoted once: the hold applies


def test_ineligible_peers_are_on_the_sleeve_at_once_and_never_probed() -> None:
    paths = Paths()
    paths.set_candidates([candidate(vtep=None, reason="relayed"), candidate(C, None)], 0.0)
    states = paths.states()
    assert (states[B].path, states[B].reason) == (Path.SLEEVE, "relayed")
    assert (states[C].path, states[C].reason) == (Path.SLEEVE, "no fast path")
    assert paths.probes_due(0.0) == [] and paths.get_timer() is None
    assert paths.events() == []


def test_a_fast_peer_that_becomes_ineligible_moves_at_once_and_its_probes_are_void() -> None:
    paths, sim = started()
    sim.until_switch(5)
    sim.up[VTEP_B] = False
    sim.run_until(sim.now + PROBE_INTERVAL)
    (_, vtep, sequence) = sim.sent[-1]
    paths.set_candidates([candidate(vtep=None, reason="encrypted")], sim.now)
    assert paths.events() == [PathSwitch(B, "b2", Path.SLEEVE, "encrypted")]
    assert paths.answered(vtep, sequence, sim.now) is False
    assert paths.get_timer() is None
    paths.set_candidates([candidate(vtep=None, reason="relayed")], sim.now)
    assert paths.states()[B].reason == "relayed" and paths.events() == []


def test_a_changed_vtep_is_probed_and_answers_from_the_old_one_do_not_count() -> None:
    paths, sim = started()
    sim.until_switch(5)
    sim.up[VTEP_B] = False
    sim.run_until(sim.now + 2 * PROBE_INTERVAL)  # two misses at the old VTEP
    old = [(v, s) for _, v, s in sim.sent[-2:]]
    sim.answers.clear()
    paths.set_candidates([candidate(vtep=VTEP_B2)], sim.now)
    for vtep, sequence in old:
        assert paths.answered(vtep, sequence, sim.now) is False
    changed_at = sim.now
    sim.run_until(changed_at + 10)
    assert paths.on_fast() == {B} and len(sim.switches) == 1  # the old misses were dropped
    assert {v for t, v, _ in sim.sent if t > changed_at} == {VTEP_B2}
    sim.up[VTEP_B2] = False
    _, switch = sim.until_switch(5)
    assert switch.reason == "3 probes unanswered"


def test_only_answers_to_our_unexpired_probes_count() -> None:
    paths = Paths()
    paths.set_candidates([candidate(), candidate(C, VTEP_C)], 0.0)
    (vb, sb), (vc, sc) = paths.probes_due(0.0)
    assert (vb, vc) == (VTEP_B, VTEP_C) and sb != sc
    assert paths.answered(VTEP_C, sb, 0.1) is False  # another peer's sequence
    assert paths.answered(VTEP_B, 999, 0.1) is False  # never sent
    assert paths.answered(VTEP_B, sb, ANSWER_TIMEOUT) is False  # expired, timer not run yet
    assert paths.answered(VTEP_C, sc, ANSWER_TIMEOUT - SLACK) is True
    assert paths.answered(VTEP_C, sc, ANSWER_TIMEOUT - SLACK) is False  # answered already
    assert paths.states()[B].probes_answered == 0


def test_a_lost_probe_older_than_an_answered_one_is_not_a_miss_in_a_row() -> None:
    paths = Paths()
    paths.set_candidates([candidate()], 0.0)
    paths.probes_due(0.0)  # lost
    ((_, second),) = paths.probes_due(PROBE_INTERVAL)
    assert paths.answered(VTEP_B, second, PROBE_INTERVAL + RTT)
    paths.handle_timer(ANSWER_TIMEOUT)  # the lost one expires after a later one was answered
    ((_, third),) = paths.probes_due(2 * PROBE_INTERVAL)
    assert paths.answered(VTEP_B, third, 2 * PROBE_INTERVAL + RTT)
    assert paths.on_fast() == {B}


def test_get_timer_is_the_next_probe_or_the_oldest_expiry() -> None:
    paths = Paths()
    assert paths.get_timer() is None
    paths.set_candidates([candidate()], 3.0)
    assert paths.get_timer() == 3.0
    paths.probes_due(3.0)
    assert paths.get_timer() == pytest.approx(3.0 + PROBE_INTERVAL)
    paths.set_candidates([candidate(), candidate(C, VTEP_C)], 3.0)
    paths.probes_due(3.0)
    assert paths.get_timer() == pytest.approx(3.0 + PROBE_INTERVAL)
    paths.set_candidates([], 3.1)
    assert paths.get_timer() is None and paths.states() == {}


def test_removed_peers_are_forgotten_with_their_probes() -> None:
    paths, sim = started()
    sim.until_switch(5)
    (_, vtep, sequence) = sim.sent[-1]
    paths.set_candidates([], sim.now)
    assert paths.on_fast() == frozenset() and paths.events() == []
    assert paths.answered(vtep, sequence, sim.now) is False
    paths.set_candidates([candidate()], sim.now)
    assert paths.states()[B].path is Path.SLEEVE  # a new peer, on the sleeve until it answers


def test_many_peers_sequences_wrap_and_stay_unique_among_outstanding() -> None:
    peers = [f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(1000)]
    vteps = [IPv4Address(0x0A200001 + (i << 8)) for i in range(1000)]
    paths = Paths()
    paths.set_candidates([Candidate(n, n, v) for n, v in zip(peers, vteps, strict=True)], 0.0)
    down = set(vteps[::3])  # every third never answers: its probes stay outstanding
    outstanding: dict[int, float] = {}
    wrapped, previous, now = False, -1, 0.0
    for _ in range(80):
        paths.handle_timer(now)
        outstanding = {s: t for s, t in outstanding.items() if t + ANSWER_TIMEOUT > now}
        due = paths.probes_due(now)
        assert len(due) == len(peers)
        for vtep, sequence in due:
            assert 0 <= sequence < SEQUENCES and sequence not in outstanding
            wrapped |= sequence < previous
            previous = sequence
            if vtep in down:
                outstanding[sequence] = now
            else:
                assert paths.answered(vtep, sequence, now + RTT)
        now += PROBE_INTERVAL
    assert wrapped
    fast = paths.on_fast()
    assert fast == {n for n, v in zip(peers, vteps, strict=True) if v not in down}
    assert all(s.path is Path.SLEEVE for n, s in paths.states().items() if n not in fast)
