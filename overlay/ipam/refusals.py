"""What IPAM refused of the others' claims: counted by reason, summed up for the log at most
once per interval (sans-IO: the caller passes the time).

A refusal is noted once while it stands (holdings.py, ring.py), so a claim that stays wrong is
counted once; one that comes and goes is counted each time it comes. The log line is a summary
(how many of each reason since the last line, and the first few in words) so that a peer
sending a flood of bad claims cannot flood the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from gossip.rejections import printable
from overlay.ipam.holdings import Refusal

LOG_INTERVAL_NS = 10_000_000_000  # at most one summary line per 10 s
LOG_EXAMPLES = 3  # refusals spelled out in one summary line
TEXT_LIMIT = 400  # characters of one refusal's words kept (names and nets: never cut in practice)
__all__ = ["RefusalLog", "printable"]


class RefusalLog:
    """Counters of refused claims by reason, and the summary lines to log."""

    def __init__(self, interval_ns: int = LOG_INTERVAL_NS) -> None:
        self.interval_ns = interval_ns
        self.counts: Counter[str] = Counter()  # every refusal since start, by reason
        self._unlogged: list[Refusal] = []
        self._dropped = 0  # unlogged ones not kept for examples
        self._next_log_ns = 0

    def add(self, refusals: Iterable[Refusal]) -> None:
        """Count new refusals; they appear in the next summary."""
        for refusal in refusals:
            self.counts[refusal.reason] += 1
            if len(self._unlogged) < 64:
                self._unlogged.append(refusal)
            else:
                self._dropped += 1

    def summary(self, now_ns: int, who: Callable[[str], str]) -> str | None:
        """The line to log now, if one is due (``who`` names a peer as name(nickname))."""
        if not self._unlogged or now_ns < self._next_log_ns:
            return None
        self._next_log_ns = now_ns + self.interval_ns
        total = len(self._unlogged) + self._dropped
        reasons = Counter(r.reason for r in self._unlogged)
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        shown = self._unlogged[:LOG_EXAMPLES]
        examples = "; ".join(printable(f"{who(r.peer)}: {r.detail}", TEXT_LIMIT) for r in shown)
        more = f"; and {total - LOG_EXAMPLES} more" if total > LOG_EXAMPLES else ""
        self._unlogged, self._dropped = [], 0
        return f"refuse address claims: {total} ({by_reason}); {examples}{more}"
