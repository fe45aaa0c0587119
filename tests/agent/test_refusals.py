"""Refusal tallies (agent/refusals.py) on a virtual clock, and the task supervisor
(agent/supervisor.py): nothing that stops or is refused goes silent, nothing floods the log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.refusals import Tallies, Tally, TallyCollector
from agent.supervisor import Supervisor

log = logging.getLogger("weave-py.test-refusals")


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_one_line_per_reason_and_interval_then_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    tally = Tally("gossip message", log, interval=60.0)
    with caplog.at_level(logging.WARNING, log.name):
        tally.note("bad-stamp", "10.0.0.9:5000", 0.0, "version 2^64-1")
        for i in range(1, 100):
            tally.note("bad-stamp", f"10.0.0.{i % 7}:5000", float(i) / 10)
        tally.note("oversize", "10.0.0.9:5000", 11.0)
        assert messages(caplog) == [
            "refuse gossip message: bad-stamp from 10.0.0.9:5000: version 2^64-1",
            "refuse gossip message: oversize from 10.0.0.9:5000",
        ]
        tally.flush(59.0)  # the interval is not over: nothing yet
        assert len(caplog.records) == 2
        tally.flush(60.0)
        assert messages(caplog)[2:] == [
            "refuse gossip message: bad-stamp, 99 more in 60s, the last from 10.0.0.1:5000"
        ]
        tally.flush(200.0)  # oversize had no more: no summary line
        tally.note("bad-stamp", "10.0.0.3:5000", 201.0)  # a new interval: logged at once
    assert messages(caplog)[3:] == ["refuse gossip message: bad-stamp from 10.0.0.3:5000"]
    assert tally.counts == {"bad-stamp": 101, "oversize": 1} and tally.total() == 102


def test_a_note_after_the_interval_summarises_the_last_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tally = Tally("api request", log, interval=10.0)
    with caplog.at_level(logging.WARNING, log.name):
        for t in (0.0, 1.0, 2.0, 15.0):
            tally.note("malformed", "uid 1000 pid 7", t)
    assert messages(caplog) == [
        "refuse api request: malformed from uid 1000 pid 7",
        "refuse api request: malformed, 2 more in 15s, the last from uid 1000 pid 7",
        "refuse api request: malformed from uid 1000 pid 7",
    ]


def test_the_collector_renders_every_kind() -> None:
    tallies = Tallies()
    tallies.add("api request", log).note("foreign-uid", "uid 5 pid 1", 0.0)
    tallies.add("plan action", log).note("save ENOSPC", "disk", 0.0)
    (family,) = TallyCollector(tallies).collect()
    assert family.name == "weave_py_refusals"
    assert {(s.labels["what"], s.labels["reason"], s.value) for s in family.samples} == {
        ("api request", "foreign-uid", 1.0),
        ("plan action", "save ENOSPC", 1.0),
    }
    assert tallies.snapshot() == {
        "api request": {"foreign-uid": 1},
        "plan action": {"save ENOSPC": 1},
    }


async def test_the_supervisor_names_every_task_that_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()
    forever = asyncio.Event()

    async def crash() -> None:
        raise OverflowError("int too big to convert")

    async def ends() -> None:
        return

    async def runs() -> None:
        await forever.wait()

    serving = [True]
    with caplog.at_level(logging.ERROR, "weave-py"):
        for name, coro in (("mesh", crash()), ("loop", ends()), ("datapath", runs()),
                           ("victim", runs())):  # fmt: skip
            supervisor.start(name, coro)
        supervisor.watch("api (http)", lambda: serving[0])
        await asyncio.sleep(0)
        supervisor.tasks["victim"].cancel()
        await asyncio.sleep(0.01)
        assert supervisor.dead() == (
            "mesh: OverflowError: int too big to convert",
            "loop: ended",
            "victim: cancelled",
        )
        serving[0] = False
        assert supervisor.dead()[-1] == "api (http): not serving"
        assert not supervisor.tasks["datapath"].done()  # the others run on
        await supervisor.stop(1.0)
    assert supervisor.tasks["datapath"].cancelled()
    assert len(supervisor.dead()) == 4  # a stop is no failure
    crashed = [r for r in caplog.records if r.getMessage().startswith("stop task mesh")]
    assert crashed and crashed[0].exc_info is not None  # with its traceback
