"""Refusal counters and their rate-limited log lines, on explicit ``now`` values."""

from __future__ import annotations

from gossip.rejections import Rejections, printable


def test_the_first_refusal_is_one_line_and_a_burst_is_one_summary() -> None:
    r = Rejections(interval=10.0)
    r.add("handshake_timeout", "10.0.0.9:4000", "no hello within 10s")
    assert r.lines(0.0) == ["reject handshake_timeout from 10.0.0.9:4000: no hello within 10s"]
    for i in range(8773):
        r.add("handshake_timeout", f"10.0.0.9:{5000 + i % 3}", "no hello within 10s")
        assert r.lines(1.0 + i / 1000) == []
    assert r.next_line_at() == 10.0
    [summary] = r.lines(10.0)
    assert summary == (
        "reject handshake_timeout 8773 times from 10.0.0.9:5000 and 2 other sources: "
        "no hello within 10s"
    )
    assert r.counts == {"handshake_timeout": 8774}
    assert r.lines(30.0) == []
    r.add("handshake_timeout", "10.0.0.9:4000")
    assert r.lines(30.0) == ["reject handshake_timeout from 10.0.0.9:4000"]  # quiet: at once


def test_reasons_are_limited_apart() -> None:
    r = Rejections(interval=5.0)
    r.add("b", "x")
    r.add("a", "y")
    assert r.lines(0.0) == ["reject a from y", "reject b from x"]
    r.add("a", "y")
    assert r.lines(1.0) == []
    r.add("c", "z")
    assert r.lines(2.0) == ["reject c from z"]
    assert r.lines(5.0) == ["reject a from y"]
    assert r.total == 4


def test_peer_text_is_escaped_before_it_is_kept() -> None:
    r = Rejections()
    r.add("malformed", "evil\x1b[2J\nname", "nick \u202eevil")
    [line] = r.lines(0.0)
    assert line == "reject malformed from evil\\x1b[2J\\nname: nick \\u202eevil"
    assert line.isprintable()


def test_printable_cuts_long_text() -> None:
    assert printable("a" * 10, limit=6) == "aaa..."
    assert printable("plain node-1") == "plain node-1"
    assert printable(b"\x00") == "b'\\x00'"
