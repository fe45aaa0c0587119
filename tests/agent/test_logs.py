"""What ``kubectl logs`` shows: JSON records one line each with the traceback inside, text lines
without terminal tricks, the peer table and the peer events."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest

from agent import logs, peer_log
from overlay.peer import PeerSpec
from overlay.sleeve import PeerEvent, PeerEventKind
from tests.agent.test_status import REPORT


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through a fresh stream with the agent's handlers' formatters."""
    stream = io.StringIO()
    logger = logging.getLogger("weave-py.test-logs")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_a_json_record_is_one_line_with_the_traceback_inside(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.handlers[0].setFormatter(logs.JsonFormatter())
    try:
        raise ValueError("bad block 10.32.0.0/33")
    except ValueError:
        logger.exception("api POST /ip/c1: failed")
    logger.info("update routes: %d peer(s)", 2, stack_info=True)
    first, second = stream.getvalue().splitlines()
    record = json.loads(first)
    assert (record["level"], record["msg"]) == ("error", "api POST /ip/c1: failed")
    assert record["exc"].startswith("Traceback (most recent call last):")
    assert record["exc"].endswith("ValueError: bad block 10.32.0.0/33")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    plain = json.loads(second)
    assert plain["msg"] == "update routes: 2 peer(s)" and "exc" not in plain
    assert "test_a_json_record_is_one_line" in plain["stack"]


def test_text_lines_have_no_terminal_escapes(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.handlers[0].setFormatter(logs.text_formatter())
    logger.warning("data path lost: %s", "no heartbeat answered")
    line = stream.getvalue()
    assert "\x1b" not in line
    assert re.fullmatch(r"\S+Z WARNING data path lost: no heartbeat answered\n", line), line


def test_the_peer_table_names_each_peer_and_its_health() -> None:
    report = replace(REPORT.peers[0], via="192.168.48.12:6783")
    lines = peer_log.table(replace(REPORT, peers=(report, *REPORT.peers[1:])))
    assert lines[0] == (
        "peer table: 3 peer(s), 2 established, 1 on the fast path; ipam ready; "
        "2 control connection(s) terminated"
    )
    assert lines[1] == (
        "peer aa:bb:cc:dd:ee:02(node-2) 192.168.48.12:6783 established via 192.168.48.12:6783 "
        "rtt=0.412ms mtu=1376 tx=10/123456B rx=7/900B drops=2 path=fastdp switches=1"
    )
    assert lines[2].startswith("peer aa:bb:cc:dd:ee:03(node-3) 10.51.34.219:6783 pending direct")
    assert " rtt=- " in lines[2]
    assert lines[2].endswith(" drops=0 path=sleeve switches=0")
    assert lines[3].endswith(" path=sleeve switches=2")
    assert peer_log.table(replace(REPORT, peers=()))[0].startswith("peer table: 0 peer(s)")


def test_a_peer_event_names_the_peer_by_node_name_and_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = PeerSpec(0xB2, "node-2", ("192.168.1.8", 6783), (), peer_name="aa:bb:cc:dd:ee:02")
    with caplog.at_level(logging.INFO, logger="weave-py"):
        peer_log.peer_event(PeerEvent(PeerEventKind.ESTABLISHED, spec, "rtt 0.4ms"), 1376)
        peer_log.peer_event(PeerEvent(PeerEventKind.LOST, spec, "no answer for 15s"), 1376)
    assert [r.getMessage() for r in caplog.records] == [
        "sleeve ->[192.168.1.8:6783|aa:bb:cc:dd:ee:02(node-2)]: data path established "
        "(rtt 0.4ms), mtu=1376",
        "sleeve ->[192.168.1.8:6783|aa:bb:cc:dd:ee:02(node-2)]: data path lost: no answer for 15s",
    ]
