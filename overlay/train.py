"""Trains of DATA_CHUNK frames (layout in overlay/frame.py): the sending side builds a
super-packet's train over the driver's buffer with its chunk headers prebuilt (Train), the
receiving side recognises a whole train in a GRO read with a few word compares (TrainCheck).
Both hand back views of the drivers' buffers for one ``sendmsg`` or ``writev``: nothing is
copied, no syscall is made here.
"""

from __future__ import annotations

import array
import sys

from overlay.frame import (
    CHUNK,
    CHUNK_FRAME,
    CHUNK_OVERHEAD,
    CHUNK_TOTAL_AT,
    CHUNK_WORD,
    DATA_CHUNK,
    DEFAULT_HOPS,
    HEADER_SIZE,
    LENGTH_AT,
    MAX_BODY,
    RECORD_VNET,
    TYPE_AT,
    U32,
    VERSION,
)

# The version, type, flags and hops bytes of a header's first 8-byte word, in native order.
FIRST_FOUR = 0xFFFFFFFF if sys.byteorder == "little" else 0xFFFFFFFF << 32


def chunk_count(total: int, step: int) -> int:
    """How many chunks of ``step`` body bytes carry a body of ``total`` bytes."""
    return -(-total // step)


class Train:
    """The sending side of a train from ``source`` to ``destination``: chunk k carries bytes
    [k * step, (k + 1) * step) of the DATA body held in ``data``, each chunk ``stride`` bytes
    long on the wire (a multiple of 8, so a receiver checks the headers as 8-byte words). With
    ``flags`` FLAG_AEAD, ``data`` holds what follows a sealed DATA frame's header instead.

    The chunk headers are built once; per train only the first chunk's total and the last
    chunk's length are written. ``parts`` hands back header/data views for one UDP_SEGMENT
    ``sendmsg``, nothing copied; they stay valid until the next call."""

    def __init__(
        self, source: int, destination: int, stride: int, data: memoryview, flags: int = 0
    ) -> None:
        self.step = step = stride - CHUNK_OVERHEAD
        count = chunk_count(MAX_BODY, step)
        self._data = data
        self._heads = heads = bytearray(CHUNK_OVERHEAD * count)
        self._full = CHUNK.size + step  # the length field of every chunk but a train's last
        self._short_at = LENGTH_AT  # the length field the last train shortened
        view = memoryview(heads)
        self._parts: list[memoryview] = []
        for k in range(count):
            at = k * CHUNK_OVERHEAD
            CHUNK_FRAME.pack_into(
                heads, at, VERSION, DATA_CHUNK, flags, DEFAULT_HOPS, self._full,
                source, destination, k * step, 0,
            )  # fmt: skip
            self._parts += (view[at : at + CHUNK_OVERHEAD], data[k * step : (k + 1) * step])
        self._by_count: dict[int, list[memoryview]] = {}

    def parts(self, total: int) -> list[memoryview]:
        """Header and data views of the train carrying the first ``total`` bytes of ``data``."""
        step, heads = self.step, self._heads
        count = -(-total // step)
        U32.pack_into(heads, self._short_at, self._full)
        self._short_at = (count - 1) * CHUNK_OVERHEAD + LENGTH_AT
        U32.pack_into(heads, self._short_at, CHUNK.size + total - (count - 1) * step)
        U32.pack_into(heads, CHUNK_TOTAL_AT, total)
        parts = self._by_count.get(count)
        if parts is None:
            parts = self._by_count[count] = self._parts[: 2 * count]
        parts[-1] = self._data[(count - 1) * step : total]
        return parts


class TrainCheck:
    """The receiving side: finds a whole train (one super-packet's chunks, in order) in a GRO
    read held in ``buf`` with a few compares, and hands back views of its record for one
    ``writev``, nothing copied.

    Datagrams coalesced by GRO share one 5-tuple, so after a full check of the first chunk
    header the others need only show the same first 8 bytes (version, type, flags, hops,
    length; the last chunk's length is its own) and the next offset with no total: two compares
    of 8-byte columns of the buffer against columns cached per first word and per step. Only
    trains whose chunks carry ``flags`` are recognised (FLAG_AEAD: sealed trains, whose
    ``body`` is joined and opened whole)."""

    def __init__(self, buf: bytearray, local_id: int, flags: int = 0) -> None:
        self._buf = buf
        self._flags = flags
        self._view = memoryview(buf)
        self._words = self._view.cast("Q")
        self._local_id = local_id
        self._slices: dict[int, list[memoryview]] = {}  # per stride
        self._offsets: dict[int, memoryview] = {}  # per step
        self._columns: dict[int, tuple[memoryview, memoryview]] = {}  # per first header word

    def intact(self, start: int, n: int, stride: int) -> tuple[int, int, int, int] | None:
        """(source, total, chunk count, end) of the train for this node at ``start`` of the
        ``n`` bytes read, if its chunk headers say it is whole and in order, else None."""
        buf = self._buf
        if buf[start + TYPE_AT] != DATA_CHUNK or stride & 7 or n - start <= CHUNK_OVERHEAD:
            return None
        version, _, flags, _, length, source, dest, offset, total = CHUNK_FRAME.unpack_from(
            buf, start
        )
        if (
            version != VERSION or flags != self._flags or offset or dest != self._local_id
            or length != stride - HEADER_SIZE or total <= 0
        ):  # fmt: skip
            return None
        step = stride - CHUNK_OVERHEAD
        count = -(-total // step)
        stop = start + (count - 1) * stride  # where the last chunk starts
        end = stop + CHUNK_OVERHEAD + total - (count - 1) * step
        if end > n or (end < n and end != stop + stride):
            return None  # continues in a later read, or a short chunk inside a read
        words, width, first = self._words, stride >> 3, start >> 3
        same, offsets = self._columns.get(words[first]) or self._columns_of(words[first], step)
        if (
            count > 2
            and words[first + width : first + (count - 1) * width : width] != same[: count - 2]
        ):
            return None
        at = first + width + CHUNK_WORD
        if (
            words[at : first + count * width : width] != offsets[1:count]
            or (words[stop >> 3] ^ words[first]) & FIRST_FOUR
            or U32.unpack_from(buf, stop + LENGTH_AT)[0] != end - stop - HEADER_SIZE
        ):
            return None
        return source, total, count, end

    def parts(self, start: int, stride: int, count: int, end: int) -> list[memoryview]:
        """Views of the record (virtio-net header and packet) of the intact train at ``start``
        that ends at ``end``, for one writev; valid until the next call."""
        slices = self._slices.get(stride) or self._slices_of(stride)
        at = start // stride
        parts = slices[at : at + count]
        parts[-1] = self._view[start + (count - 1) * stride + CHUNK_OVERHEAD : end]
        parts[0] = self._view[start + CHUNK_OVERHEAD + RECORD_VNET : min(end, start + stride)]
        return parts

    def body(self, start: int, stride: int, count: int, end: int) -> list[memoryview]:
        """Views of the whole body of the intact train at ``start`` that ends at ``end`` (a
        sealed train's, to be joined and opened); valid until the next call."""
        slices = self._slices.get(stride) or self._slices_of(stride)
        at = start // stride
        parts = slices[at : at + count]
        parts[-1] = self._view[start + (count - 1) * stride + CHUNK_OVERHEAD : end]
        return parts

    def _slices_of(self, stride: int) -> list[memoryview]:
        """The data part of every ``stride``-long datagram in the buffer."""
        view = self._view
        found = [view[at + CHUNK_OVERHEAD : at + stride]
                 for at in range(0, len(view) - stride + 1, stride)]  # fmt: skip
        self._slices[stride] = found
        return found

    def _columns_of(self, first: int, step: int) -> tuple[memoryview, memoryview]:
        """What the chunk headers of a train must hold, as 8-byte words: the first word of
        chunks 1.. (the same as chunk 0's ``first``) and the offset/total word of chunk k at
        [k]. One entry per first word seen (hops and stride differ): a few."""
        count = chunk_count(MAX_BODY, step) + 1
        offsets = self._offsets.get(step)
        if offsets is None:
            packed = b"".join(CHUNK.pack(k * step, 0) for k in range(count))
            offsets = self._offsets[step] = memoryview(packed).cast("Q")
        same = memoryview(array.array("Q", [first]) * count)
        if len(self._columns) >= 64:
            self._columns.clear()
        self._columns[first] = (same, offsets)
        return same, offsets
