"""Counts of refused outside input and failed actions, by reason, with rate-limited log lines.

A ``Tally`` is a small core: ``note(reason, source, now)`` counts one refusal and logs it when
it is the first of its reason in the current interval; the rest of that interval only count,
and the first note after the interval (or ``flush(now)``, which the daemon calls now and then)
logs one summary line per reason with how many more there were and the last source. So a
flood of bad input costs a counter increment per item and at most two log lines per reason
and interval, and every source still shows up in the log once. The counts never reset: they
are the counters the metrics render (``weave_py_refusals_total{what,reason}``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LOG_INTERVAL = 60.0  # seconds between summary lines per reason


@dataclass
class _Quiet:
    """Refusals of one reason counted but not yet logged in this interval."""

    since: float
    more: int = 0
    last_source: str = ""


@dataclass
class Tally:
    """Refusals of one kind (``what``: "api request", "plan action"...), counted by reason;
    log lines go to ``logger`` at WARNING."""

    what: str
    logger: logging.Logger
    interval: float = LOG_INTERVAL
    counts: dict[str, int] = field(default_factory=dict)
    _quiet: dict[str, _Quiet] = field(default_factory=dict)

    def note(self, reason: str, source: str, now: float, detail: str = "") -> None:
        """Count one refusal of ``reason`` from ``source``; log it if its reason has not
        been logged in this interval."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        quiet = self._quiet.get(reason)
        if quiet is not None and now - quiet.since < self.interval:
            quiet.more += 1
            quiet.last_source = source
            return
        if quiet is not None:
            self._summarise(reason, quiet, now)
        self._quiet[reason] = _Quiet(now)
        suffix = f": {detail}" if detail else ""
        self.logger.warning("refuse %s: %s from %s%s", self.what, reason, source, suffix)

    def flush(self, now: float) -> None:
        """Log the summaries of the intervals that are over."""
        for reason, quiet in list(self._quiet.items()):
            if now - quiet.since >= self.interval:
                self._summarise(reason, quiet, now)
                del self._quiet[reason]

    def _summarise(self, reason: str, quiet: _Quiet, now: float) -> None:
        if quiet.more:
            self.logger.warning(
                "refuse %s: %s, %d more in %.0fs, the last from %s",
                self.what, reason, quiet.more, now - quiet.since, quiet.last_source,
            )  # fmt: skip

    def total(self) -> int:
        """Every refusal counted so far."""
        return sum(self.counts.values())


@dataclass
class Tallies:
    """The node's tallies by kind, for the metrics and the daemon's periodic flush."""

    kinds: dict[str, Tally] = field(default_factory=dict)

    def add(self, what: str, logger: logging.Logger, interval: float = LOG_INTERVAL) -> Tally:
        """A new tally of ``what`` (one per kind)."""
        tally = self.kinds[what] = Tally(what, logger, interval)
        return tally

    def flush(self, now: float) -> None:
        """Every tally's overdue summaries."""
        for tally in self.kinds.values():
            tally.flush(now)

    def counts(self) -> Iterator[tuple[str, str, int]]:
        """(what, reason, count) for every reason seen."""
        for what, tally in self.kinds.items():
            for reason, n in tally.counts.items():
                yield what, reason, n

    def snapshot(self) -> Mapping[str, Mapping[str, int]]:
        """Counts by kind and reason, as plain dictionaries."""
        return {what: dict(t.counts) for what, t in self.kinds.items()}


class TallyCollector(Collector):
    """``weave_py_refusals_total{what,reason}``: every tally's counts at scrape time."""

    def __init__(self, tallies: Tallies) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One counter family, a series per kind and reason seen."""
        family = CounterMetricFamily(
            "weave_py_refusals",
            "Outside input refused and node actions failed, by kind and reason.",
            labels=["what", "reason"],
        )
        for what, reason, n in self.tallies.counts():
            family.add_metric([what, reason], n)
        yield family
