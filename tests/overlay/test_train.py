"""Trains of DATA_CHUNK frames: what the builder puts on the wire (read back with the general
decoders), and what the checker accepts as whole (only an intact train, read back unchanged)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import frame
from overlay.frame import CHUNK_OVERHEAD, DecodeError, MessageType
from overlay.train import Train, TrainCheck

SOURCE, DESTINATION = 0xA1, 0xB2
STRIDE = 1472  # a 1500-byte underlay: 1472 bytes of UDP payload, a multiple of 8
STEP = STRIDE - CHUNK_OVERHEAD
BUFFER = 65536 + 4096


def body_of(total: int, seed: int = 1) -> bytearray:
    """A DATA body of ``total`` bytes in a buffer as large as the driver's."""
    buf = bytearray(frame.RECORD_VNET + frame.VNET_HEADER_SIZE + 65536)
    buf[:total] = random.Random(seed).randbytes(total)
    return buf


def wire(train: Train, total: int) -> bytes:
    return b"".join(train.parts(total))


def chunks(data: bytes) -> list[bytes]:
    return [data[at : at + STRIDE] for at in range(0, len(data), STRIDE)]


@pytest.mark.parametrize("total", [1, STEP - 1, STEP, STEP + 1, 3 * STEP, 60000, frame.MAX_BODY])
def test_train_chunks_decode_as_the_body_in_order(total: int) -> None:
    buf = body_of(total)
    data = wire(Train(SOURCE, DESTINATION, STRIDE, memoryview(buf)), total)
    pieces = chunks(data)
    assert len(pieces) == -(-total // STEP)
    rebuilt = b""
    for k, piece in enumerate(pieces):
        h = frame.decode_header(piece, len(piece))
        assert (h.type, h.source, h.destination, h.hops) == (
            MessageType.DATA_CHUNK, SOURCE, DESTINATION, frame.DEFAULT_HOPS,
        )  # fmt: skip
        assert frame.decode_chunk(piece, h) == (k * STEP, total if k == 0 else 0)
        rebuilt += piece[CHUNK_OVERHEAD:]
    assert rebuilt == buf[:total]


def test_a_train_after_another_of_another_size_is_right() -> None:
    """Only the last chunk's length and the total change per train: both are put back."""
    buf = body_of(frame.MAX_BODY)
    train = Train(SOURCE, DESTINATION, STRIDE, memoryview(buf))
    for total in (20000, 5000, 40000, STEP, 40000):
        fresh = Train(SOURCE, DESTINATION, STRIDE, memoryview(buf))
        assert wire(train, total) == wire(fresh, total)


def read_of(*trains: bytes) -> bytearray:
    buf = bytearray(BUFFER)
    data = b"".join(trains)
    buf[: len(data)] = data
    return buf


def test_check_finds_whole_trains_and_hands_back_the_record() -> None:
    # GRO ends a read at a short datagram: only a train whose last chunk is full goes on.
    records = [body_of(total, seed)[:total] for total, seed in ((20 * STEP, 1), (9000, 2))]
    trains = [
        wire(
            Train(SOURCE, DESTINATION, STRIDE, memoryview(bytearray(r) + bytearray(70000))), len(r)
        )
        for r in records
    ]
    buf = read_of(*trains)
    check = TrainCheck(buf, DESTINATION)
    n, start = sum(map(len, trains)), 0
    for r in records:
        found = check.intact(start, n, STRIDE)
        assert found is not None
        source, total, count, end = found
        assert (source, total, count) == (SOURCE, len(r), -(-len(r) // STEP))
        assert b"".join(check.parts(start, STRIDE, count, end)) == r[frame.RECORD_VNET :]
        start = end
    assert start == n


def test_check_refuses_what_is_not_one_whole_train_for_us() -> None:
    total = 30000
    data = wire(Train(SOURCE, DESTINATION, STRIDE, memoryview(body_of(total))), total)
    cases = {
        "for another node": (TrainCheck(read_of(data), 0xEE), len(data), STRIDE),
        "continues in a later read": (
            TrainCheck(read_of(data), DESTINATION),
            len(data) - 1,
            STRIDE,
        ),
        "stride not a multiple of 8": (
            TrainCheck(read_of(data), DESTINATION),
            len(data),
            STRIDE - 4,
        ),
        "no chunk header": (TrainCheck(read_of(bytes(len(data))), DESTINATION), len(data), STRIDE),
    }
    for name, (check, n, stride) in cases.items():
        assert check.intact(0, n, stride) is None, name


@st.composite
def damage(draw: st.DrawFn) -> tuple[int, str, int, int, int]:
    size = draw(st.integers(3000, 62000))
    kind = draw(st.sampled_from(["flip", "copy", "swap", "drop", "repeat"]))
    return size, kind, draw(st.integers(0, 60)), draw(st.integers(0, 60)), draw(st.integers(0, 31))


@settings(max_examples=300, deadline=None)
@given(damage())
def test_a_damaged_train_is_refused_or_reads_back_unchanged(
    case: tuple[int, str, int, int, int],
) -> None:
    """A flipped header byte, a chunk copied over another, two swapped, one lost, one
    repeated: the checker refuses, or what it hands back is exactly the original record."""
    size, kind, i, j, byte = case
    buf = body_of(size)
    pieces = chunks(wire(Train(SOURCE, DESTINATION, STRIDE, memoryview(buf)), size))
    full = len(pieces) - 1  # every chunk but the last is exactly one stride long
    i, j = i % full, j % full
    if kind == "flip":
        damaged = bytearray(pieces[i])
        damaged[byte] ^= 0x5A
        pieces[i] = bytes(damaged)
    elif kind == "copy" and i != j:
        pieces[i] = pieces[j]
    elif kind == "swap":
        pieces[i], pieces[j] = pieces[j], pieces[i]
    elif kind == "drop":
        del pieces[i]
    elif kind == "repeat":
        pieces.insert(i, pieces[i])
    data = b"".join(pieces)
    check = TrainCheck(read_of(data), DESTINATION)
    found = check.intact(0, len(data), STRIDE)
    if found is not None:
        _, total, count, end = found
        assert bytes(buf[frame.RECORD_VNET : size]) == b"".join(check.parts(0, STRIDE, count, end))
        assert total == size


@pytest.mark.parametrize(
    ("offset", "total", "length"),
    [
        (0, frame.MAX_BODY + 1, 100),  # a body no record holds
        (0, 50, 100),  # a first slice longer than its body
        (1440, 9, 100),  # a total outside the first chunk
        (frame.MAX_BODY, 0, 100),  # an offset past any body
    ],
)
def test_decode_chunk_reasons(offset: int, total: int, length: int) -> None:
    data = bytearray(frame.HEADER_SIZE) + frame.CHUNK.pack(offset, total) + bytes(length)
    frame.encode_header(data, MessageType.DATA_CHUNK, len(data) - frame.HEADER_SIZE, 1, 2)
    with pytest.raises(DecodeError) as exc:
        frame.decode_chunk(data, frame.decode_header(data, len(data)))
    assert exc.value.reason == "chunk"


@pytest.mark.parametrize("total", [STEP + 1, 9000, 60000])
def test_a_flagged_train_is_found_only_by_a_check_for_its_flag_and_read_whole(
    total: int,
) -> None:
    body = body_of(total, 3)
    data = wire(Train(SOURCE, DESTINATION, STRIDE, memoryview(body), frame.FLAG_AEAD), total)
    assert {p[2] for p in chunks(data)} == {frame.FLAG_AEAD}
    buf = read_of(data)
    assert TrainCheck(buf, DESTINATION).intact(0, len(data), STRIDE) is None
    check = TrainCheck(buf, DESTINATION, frame.FLAG_AEAD)
    found = check.intact(0, len(data), STRIDE)
    assert found is not None and found[:2] == (SOURCE, total)
    assert b"".join(check.body(0, STRIDE, found[2], found[3])) == body[:total]
