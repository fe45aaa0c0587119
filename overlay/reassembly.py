"""Reassembly of DATA_CHUNK slices into DATA bodies (sans-IO).

A sender emits the chunks of one body in order, so per source there is at most one body in
progress (after ``headroom`` bytes the caller fills, say with a header): offset 0 starts it
(and names its total), each later chunk must continue exactly where the last ended. Anything
else -- a gap, a reorder, a chunk without a start -- drops the body in progress, counted by
reason in ``drops``. Memory is bounded by one body per peer, and a body left incomplete expires
after ``timeout`` seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass
class _Partial:
    body: bytearray
    started_at: float
    received: int


class Reassembler:
    """Bodies in progress, one per source, with drops counted into ``drops``."""

    def __init__(
        self, timeout: float = 1.0, drops: Counter[str] | None = None, headroom: int = 0
    ) -> None:
        self.timeout = timeout
        self.headroom = headroom
        self.drops: Counter[str] = Counter() if drops is None else drops
        self._pending: dict[int, _Partial] = {}

    def add(
        self,
        source: int,
        offset: int,
        total: int,
        piece: bytes | bytearray | memoryview,
        now: float,
    ) -> bytearray | None:
        """Append one slice; the whole body (after ``headroom``) once its last slice arrived,
        else None."""
        partial = self._pending.get(source)
        if offset == 0:
            if partial is not None:
                self.drops["chunk_incomplete"] += 1
            partial = self._pending[source] = _Partial(bytearray(self.headroom + total), now, 0)
        elif partial is None or partial.received != offset:
            if partial is not None:
                del self._pending[source]
                self.drops["chunk_incomplete"] += 1
            self.drops["chunk_out_of_order"] += 1
            return None
        end = offset + len(piece)
        room = self.headroom
        if room + end > len(partial.body):
            del self._pending[source]
            self.drops["chunk_overrun"] += 1
            return None
        partial.body[room + offset : room + end] = piece
        partial.received = end
        if room + end < len(partial.body):
            return None
        del self._pending[source]
        return partial.body

    def expire(self, now: float) -> None:
        """Drop the bodies started ``timeout`` or more before ``now`` (counted)."""
        stale = [k for k, p in self._pending.items() if now - p.started_at >= self.timeout]
        for key in stale:
            del self._pending[key]
        if stale:
            self.drops["chunk_incomplete"] += len(stale)

    def __len__(self) -> int:
        return len(self._pending)
