"""The status tree read back from JSON: a document that is not a report is refused with the
path of the first value at fault."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.document import DocumentError
from agent.report import Connection, IpamStatus, Report
from tests.agent.test_status import CONTROL, REPORT, REPORT_JSON, snap

DELETE = object()


def document(**changes: Any) -> dict[str, Any]:
    """REPORT_JSON with ``changes``: "a.b" keys reach into objects, "a.0.b" into lists; the
    value DELETE removes the key."""
    doc = copy.deepcopy(REPORT_JSON)
    for path, value in changes.items():
        node: Any = doc
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return doc


def test_round_trip_through_json_text() -> None:
    report = snap(connections=CONTROL)
    assert Report.from_json(json.loads(json.dumps(report.to_json()))) == report


def test_ints_are_accepted_where_numbers_are_expected() -> None:
    doc = document(uptime_seconds=12, **{"ipam.unreachable_percentage": 25})
    report = Report.from_json(doc)
    assert report.uptime_seconds == 12.0 and isinstance(report.uptime_seconds, float)
    assert report.ipam.unreachable_percentage == 25.0
    assert isinstance(report.ipam.unreachable_percentage, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ready": DELETE}, "report.ready: missing"),
        ({"ready": "yes"}, "report.ready: expected true or false, got 'yes'"),
        ({"router": []}, "report.router: expected an object, got []"),
        ({"router.mtu": "1376"}, "report.router.mtu: expected an integer, got '1376'"),
        ({"router.port": True}, "report.router.port: expected an integer, got True"),
        ({"uptime_seconds": None}, "report.uptime_seconds: expected a number, got None"),
        ({"peers": {}}, "report.peers: expected a list, got {}"),
        ({"peers.1.tx_bytes": 1.5}, "report.peers[1].tx_bytes: expected an integer, got 1.5"),
        ({"peers.0.state": "up"}, "report.peers[0].state: expected 'established' or 'pending'"),
        ({"peers.2.blocks": ["10.32.4.1/24"]}, "report.peers[2].blocks[0]: expected an IPv4"),
        ({"peers.2.blocks": [24]}, "report.peers[2].blocks[0]: expected an IPv4 network, got 24"),
        ({"peers.0.drops": {"too_big": "2"}}, "report.peers[0].drops.too_big: expected an int"),
        ({"peers.0.via": 7}, "report.peers[0].via: expected a string, got 7"),
        ({"peers.0.rtt_ms": "fast"}, "report.peers[0].rtt_ms: expected a number, got 'fast'"),
        ({"ipam.mode": "dhcp"}, "report.ipam.mode: expected 'gossip' or 'static' or 'kube'"),
        ({"ipam.range": "10.32.0.0/33"}, "report.ipam.range: expected an IPv4 network"),
        ({"ipam.owners.2.local": 0}, "report.ipam.owners[2].local: expected true or false"),
        ({"routes.3": "10.32.9.0/24"}, "report.routes[3]: expected an object"),
        ({"super_packets_received": DELETE}, "report.super_packets_received: missing"),
        ({"peers.0.path": DELETE}, "report.peers[0].path: missing"),
        ({"peers.0.path": "vxlan"}, "report.peers[0].path: expected 'fastdp' or 'sleeve'"),
        ({"peers.1.path_reason": None}, "report.peers[1].path_reason: expected a string"),
        ({"peers.1.path_since": DELETE}, "report.peers[1].path_since: missing"),
        ({"peers.0.path_since": "12:03"}, "report.peers[0].path_since: expected a number"),
        ({"peers.2.path_switches": 2.0}, "report.peers[2].path_switches: expected an integer"),
    ],
)
def test_a_document_that_is_not_a_report_names_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(DocumentError) as refused:
        Report.from_json(document(**changes))
    assert str(refused.value).startswith(message)


def test_a_long_wrong_value_is_shortened_in_the_message() -> None:
    with pytest.raises(DocumentError) as refused:
        Report.from_json(document(version=["x" * 100]))
    assert len(str(refused.value)) < 100
    assert str(refused.value).endswith("...")


def test_not_an_object_at_all() -> None:
    with pytest.raises(DocumentError, match=r"^report: expected an object, got 'ok\\n'"):
        Report.from_json("ok\n")


def test_connection_fields_may_be_absent_or_null() -> None:
    bare = {"direction": "->", "address": "192.0.2.9:6783", "state": "connecting"}
    expected = Connection("->", "192.0.2.9:6783", "connecting")
    assert Connection.from_json(bare) == expected
    assert Connection.from_json({**bare, "mtu": None, "peer": None}) == expected
    with pytest.raises(DocumentError, match=r"^connection.direction: expected '->' or '<-'"):
        Connection.from_json({**bare, "direction": "<>"})
    with pytest.raises(DocumentError, match=r"^connection.mtu: expected an integer"):
        Connection.from_json({**bare, "mtu": "1376"})


def test_required_nulls_stay_required() -> None:
    # ``conflict``, ``via`` and ``path_since`` may be null but not absent: agents always send
    # them.
    doc = document(**{"ipam.conflict": DELETE})
    with pytest.raises(DocumentError, match=r"^report.ipam.conflict: missing"):
        Report.from_json(doc)
    assert IpamStatus.from_json(REPORT_JSON["ipam"]) == REPORT.ipam


def test_a_path_switch_time_reads_back_as_a_number() -> None:
    doc = document(**{"peers.1.path_since": 1700000600, "peers.1.path": "fastdp"})
    node3 = Report.from_json(doc).peers[1]
    assert (node3.path, node3.path_since) == ("fastdp", 1700000600.0)
    assert isinstance(node3.path_since, float)
