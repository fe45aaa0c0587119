"""Input the mesh refused: counters by reason, and log lines that cannot flood (sans-IO).

Rules this module keeps:

- Every refusal of outside input is ``add``-ed with a reason (a short counter label, say
  "handshake_timeout"), the source (who sent it: address and peer) and a detail. ``counts``
  holds every refusal ever made, by reason: what the agent exports as metrics.
- Log lines come from ``lines(now)``, never from ``add``: per reason, the first refusal after a
  quiet ``interval`` is one line of its own; the refusals that follow within the interval are
  summed up in one line once it ends (how many, from how many sources, the first source and the
  last detail). However fast refusals come, a reason yields at most two lines per interval.
- Text a peer chose (a nickname, a reason it sent, a name that is no name) is escaped with
  ``printable`` before it is kept: logs and status views never show raw control characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INTERVAL = 10.0  # seconds: per reason, one line at once, then one summary per interval
MAX_TEXT = 120  # characters of peer-chosen text kept per source or detail
MAX_SOURCES = 1024  # distinct sources counted per reason and interval; more are "many"


def printable(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e``...), cut to
    ``limit`` characters (marked with "...")."""
    raw = text if isinstance(text, str) else repr(text)
    out = raw if raw.isprintable() else raw.encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: max(0, limit - 3)] + "..."


@dataclass
class _Pending:
    count: int = 0
    first_source: str = ""
    detail: str = ""
    sources: set[str] = field(default_factory=set)


class Rejections:
    """Counters of refused input by reason, and the rate-limited lines that report it."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.counts: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        self._quiet_at: dict[str, float] = {}  # reason -> when its next line may be logged

    @property
    def total(self) -> int:
        """Refusals counted so far, all reasons."""
        return sum(self.counts.values())

    def add(self, reason: str, source: str, detail: str = "") -> None:
        """Count one refusal; its line comes from a later ``lines`` call."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        pending = self._pending.setdefault(reason, _Pending())
        source = printable(source)
        if pending.count == 0:
            pending.first_source = source
        pending.count += 1
        pending.detail = printable(detail)
        if len(pending.sources) < MAX_SOURCES:
            pending.sources.add(source)

    def lines(self, now: float) -> list[str]:
        """The lines to log at ``now``: refusals whose reason has been quiet, and summaries of
        intervals that have ended. Sorted by reason."""
        out = []
        for reason in sorted(self._pending):
            if now < self._quiet_at.get(reason, float("-inf")):
                continue
            pending = self._pending.pop(reason)
            self._quiet_at[reason] = now + self.interval
            out.append(_line(reason, pending))
        for reason in [r for r, at in self._quiet_at.items() if now >= at]:
            if reason not in self._pending:
                del self._quiet_at[reason]  # quiet: the next refusal is logged at once
        return out

    def next_line_at(self) -> float | None:
        """When ``lines`` next has something to say, or None when nothing waits."""
        waiting = [self._quiet_at.get(r, float("-inf")) for r in self._pending]
        return min(waiting) if waiting else None


def _line(reason: str, p: _Pending) -> str:
    detail = f": {p.detail}" if p.detail else ""
    if p.count == 1:
        return f"reject {reason} from {p.first_source}{detail}"
    others = len(p.sources) - 1
    more = f" and {others} other source{'s' if others != 1 else ''}" if others else ""
    if len(p.sources) >= MAX_SOURCES:
        more = f" and {MAX_SOURCES - 1} or more other sources"
    return f"reject {reason} {p.count} times from {p.first_source}{more}{detail}"
