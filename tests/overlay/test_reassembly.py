"""DATA_CHUNK reassembly: in-order appends per source, every loss counted by reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overlay.reassembly import Reassembler


def chunks(body: bytes, step: int) -> list[tuple[int, int, bytes]]:
    out = []
    for off in range(0, len(body), step):
        out.append((off, len(body) if off == 0 else 0, body[off : off + step]))
    return out


def test_in_order_chunks_rebuild_the_body() -> None:
    r = Reassembler()
    body = bytes(range(256)) * 20
    parts = chunks(body, 1440)
    results = [r.add(7, off, total, piece, 0.0) for off, total, piece in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == body
    assert len(r) == 0 and sum(r.drops.values()) == 0


def test_sources_are_independent() -> None:
    r = Reassembler()
    a, b = b"a" * 3000, b"b" * 3000
    pa, pb = chunks(a, 1440), chunks(b, 1440)
    got = []
    for x, y in zip(pa, pb, strict=True):
        got.append(r.add(1, *x, now=0.0))
        got.append(r.add(2, *y, now=0.0))
    assert got[-2:] == [a, b]


def test_gap_reorder_and_missing_start_are_counted() -> None:
    r = Reassembler()
    parts = chunks(b"x" * 5000, 1440)
    r.add(1, *parts[0], now=0.0)
    assert r.add(1, *parts[2], now=0.0) is None  # gap: the body in progress is dropped
    assert r.drops["chunk_out_of_order"] == 1 and r.drops["chunk_incomplete"] == 1
    assert r.add(1, *parts[3], now=0.0) is None  # no start any more
    assert r.drops["chunk_out_of_order"] == 2
    r.add(1, *parts[0], now=0.0)
    r.add(1, *parts[0], now=0.0)  # a new start replaces the unfinished one
    assert r.drops["chunk_incomplete"] == 2
    assert len(r) == 1


def test_overrun_and_expiry() -> None:
    r = Reassembler(timeout=1.0)
    assert r.add(1, 0, 100, b"y" * 60, 0.0) is None
    assert r.add(1, 60, 0, b"y" * 60, 0.0) is None  # 120 > 100
    assert r.drops["chunk_overrun"] == 1 and len(r) == 0
    r.add(2, 0, 100, b"z" * 10, 5.0)
    r.expire(5.5)
    assert len(r) == 1
    r.expire(6.0)
    assert len(r) == 0 and r.drops["chunk_incomplete"] == 1


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3), st.integers(0, 5000), st.integers(0, 5000), st.binary(max_size=1500)
        ),
        max_size=60,
    )
)
def test_arbitrary_input_never_raises_and_stays_bounded(items) -> None:
    r = Reassembler()
    for source, offset, total, piece in items:
        out = r.add(source, offset, total, piece, 0.0)
        if out is not None:
            assert offset + len(piece) == len(out)
        assert len(r) <= 4


def test_headroom_is_left_before_the_body_for_the_caller() -> None:
    r = Reassembler(headroom=24)
    assert r.add(7, 0, 6, b"abc", 0.0) is None
    whole = r.add(7, 3, 6, b"def", 0.0)
    assert whole is not None and len(whole) == 30 and bytes(whole[24:]) == b"abcdef"
    assert r.add(7, 0, 2, b"abc", 0.0) is None and r.drops["chunk_overrun"] == 1
