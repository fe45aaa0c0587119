"""The log line of a path switch: one per switch, the peer as name(nickname), the old and the
new path and why; peer text escaped."""

from __future__ import annotations

import logging

import pytest

from agent import peer_log
from overlay.paths import Path, PathSwitch


def switched(caplog: pytest.LogCaptureFixture, *switches: PathSwitch) -> list[str]:
    with caplog.at_level(logging.INFO, logger="weave-py"):
        for switch in switches:
            peer_log.path_switch(switch)
    assert all(r.levelno == logging.INFO for r in caplog.records)
    return [r.getMessage() for r in caplog.records]


def test_a_switch_is_one_line_with_both_paths_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = switched(
        caplog,
        PathSwitch("aa:bb:cc:dd:ee:02", "node-2", Path.FASTDP, "answered 2 probes in a row"),
        PathSwitch("aa:bb:cc:dd:ee:02", "node-2", Path.SLEEVE, "no answer through the fast path"),
    )
    assert lines == [
        "switch path: aa:bb:cc:dd:ee:02(node-2) sleeve -> fastdp: answered 2 probes in a row",
        "switch path: aa:bb:cc:dd:ee:02(node-2) fastdp -> sleeve: no answer through the fast path",
    ]


def test_peer_text_is_escaped_and_cut(caplog: pytest.LogCaptureFixture) -> None:
    hostile = "node\x1b[2J\n" + "x" * 100
    [line] = switched(caplog, PathSwitch("aa:bb:cc:dd:ee:09", hostile, Path.SLEEVE, "relayed\r"))
    assert "\x1b" not in line and "\n" not in line and "\r" not in line
    assert line.startswith("switch path: aa:bb:cc:dd:ee:09(node\\x1b[2J\\nxxx")
    assert "...) fastdp -> sleeve: relayed\\r" in line
    assert len(line) < 120
