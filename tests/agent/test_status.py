"""Status views rendered from one hand-built status tree, and the HTTP API's routing."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import status
from agent.api import Api
from agent.lab.kube import prometheus
from agent.metrics import PEER_SERIES
from agent.report import Connection, IpamStatus, Owner, Peer, Report, Route, Router

N = ipaddress.IPv4Network


def nets(*texts: str) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(N(t) for t in texts)


def owner(name: str, nickname: str, **changes: Any) -> Owner:
    entry = Owner(
        name=name,
        nickname=nickname,
        local=False,
        reachable=True,
        owned=nets("10.32.0.0/14"),
        addresses=262144,
        share=25.0,
        active=0,
    )
    return replace(entry, **changes)


def peer(name: str, nickname: str, address: str, *blocks: str, **changes: Any) -> Peer:
    """A pending peer on the sleeve that has moved no traffic, with ``changes``."""
    entry = Peer(
        name=name,
        via=None,
        nickname=nickname,
        address=address,
        blocks=nets(*blocks),
        state="pending",
        rtt_ms=None,
        mtu=1376,
        path="sleeve",
        path_reason="peer has no fast path",
        path_since=None,
        path_switches=0,
        tx_packets=0,
        tx_bytes=0,
        rx_packets=0,
        rx_bytes=0,
        relayed=0,
        drops={},
    )
    return replace(entry, **changes)


REPORT = Report(
    version="0.1.0",
    ready=True,
    waiting_for=(),
    uptime_seconds=12.5,
    router=Router(
        name="aa:bb:cc:dd:ee:01",
        nickname="node-1",
        uid="1f2e3d",
        port=6783,
        mtu=1376,
        underlay_mtu=1440,
        offload="tso+csum",
        super_packets="udp-gso",
        encryption=False,
    ),
    ipam=IpamStatus(
        mode="gossip",
        status="ready",
        range=N("10.32.0.0/12"),
        block_prefix=24,
        blocks=nets("10.32.1.0/24"),
        conflict=None,
        owners=(
            owner(
                "aa:bb:cc:dd:ee:01",
                "node-1",
                local=True,
                owned=nets("10.32.0.0/13"),
                addresses=524288,
                share=50.0,
                active=3,
            ),
            owner("aa:bb:cc:dd:ee:02", "node-2", owned=nets("10.40.0.0/14"), active=1),
            owner("aa:bb:cc:dd:ee:03", "node-3", reachable=False, owned=nets("10.44.0.0/14")),
        ),
        used=3,
        capacity=524285,
        pending_allocates=2,
        pending_claims=1,
        unreachable_addresses=262144,
        unreachable_percentage=25.0,
        refused={"held": 2},
    ),
    peers=(
        peer(
            "aa:bb:cc:dd:ee:02",
            "node-2",
            "192.168.48.12:6783",
            "10.32.2.0/24",
            state="established",
            rtt_ms=0.412,
            path="fastdp",
            path_reason="answered 2 probes in a row",
            path_since=1700000584.25,
            path_switches=1,
            tx_packets=10,
            tx_bytes=123456,
            rx_packets=7,
            rx_bytes=900,
            drops={"too_big": 2},
        ),
        peer("aa:bb:cc:dd:ee:03", "node-3", "10.51.34.219:6783", "10.32.3.0/24", "10.32.30.0/24"),
        peer(
            "aa:bb:cc:dd:ee:04",
            "node-4",
            "255.255.255.255:65535",
            "10.32.4.0/24",
            state="established",
            rtt_ms=1.0,
            mtu=1300,
            path="sleeve",
            path_reason="no answer through the fast path",
            path_since=1700000590.5,
            path_switches=2,
            tx_packets=1,
            tx_bytes=5 * 1024 * 1024,
            rx_packets=2,
            rx_bytes=3 * 1024**3,
            drops={"no_route": 1, "heartbeat": 4},
        ),
    ),
    drops={"unknown_peer": 3, "too_big": 2},
    super_packets_received={},
    routes=tuple(
        Route(N(d), "weave-tun")
        for d in ("10.32.2.0/24", "10.32.3.0/24", "10.32.30.0/24", "10.32.9.0/24")
    ),
    connections=(),
    connection_terminations=2,
    control_rejected={"name_in_use": 3},
)

REPORT_JSON: dict[str, Any] = {  # /report as agents serve it: the oracle of to_json
    "version": "0.1.0",
    "ready": True,
    "waiting_for": [],
    "uptime_seconds": 12.5,
    "router": {
        "name": "aa:bb:cc:dd:ee:01",
        "nickname": "node-1",
        "uid": "1f2e3d",
        "port": 6783,
        "mtu": 1376,
        "underlay_mtu": 1440,
        "offload": "tso+csum",
        "super_packets": "udp-gso",
        "encryption": False,
    },
    "ipam": {
        "mode": "gossip",
        "status": "ready",
        "range": "10.32.0.0/12",
        "block_prefix": 24,
        "blocks": ["10.32.1.0/24"],
        "conflict": None,
        "owners": [
            {
                "name": "aa:bb:cc:dd:ee:01",
                "nickname": "node-1",
                "local": True,
                "reachable": True,
                "owned": ["10.32.0.0/13"],
                "addresses": 524288,
                "share": 50.0,
                "active": 3,
            },
            {
                "name": "aa:bb:cc:dd:ee:02",
                "nickname": "node-2",
                "local": False,
                "reachable": True,
                "owned": ["10.40.0.0/14"],
                "addresses": 262144,
                "share": 25.0,
                "active": 1,
            },
            {
                "name": "aa:bb:cc:dd:ee:03",
                "nickname": "node-3",
                "local": False,
                "reachable": False,
                "owned": ["10.44.0.0/14"],
                "addresses": 262144,
                "share": 25.0,
                "active": 0,
            },
        ],
        "used": 3,
        "capacity": 524285,
        "pending_allocates": 2,
        "pending_claims": 1,
        "unreachable_addresses": 262144,
        "unreachable_percentage": 25.0,
        "refused": {"held": 2},
    },
    "peers": [
        {
            "name": "aa:bb:cc:dd:ee:02",
            "via": None,
            "nickname": "node-2",
            "address": "192.168.48.12:6783",
            "blocks": ["10.32.2.0/24"],
            "state": "established",
            "rtt_ms": 0.412,
            "mtu": 1376,
            "path": "fastdp",
            "path_reason": "answered 2 probes in a row",
            "path_since": 1700000584.25,
            "path_switches": 1,
            "tx_packets": 10,
            "tx_bytes": 123456,
            "rx_packets": 7,
            "rx_bytes": 900,
            "relayed": 0,
            "drops": {"too_big": 2},
        },
        {
            "name": "aa:bb:cc:dd:ee:03",
            "via": None,
            "nickname": "node-3",
            "address": "10.51.34.219:6783",
            "blocks": ["10.32.3.0/24", "10.32.30.0/24"],
            "state": "pending",
            "rtt_ms": None,
            "mtu": 1376,
            "path": "sleeve",
            "path_reason": "peer has no fast path",
            "path_since": None,
            "path_switches": 0,
            "tx_packets": 0,
            "tx_bytes": 0,
            "rx_packets": 0,
            "rx_bytes": 0,
            "relayed": 0,
            "drops": {},
        },
        {
            "name": "aa:bb:cc:dd:ee:04",
            "via": None,
            "nickname": "node-4",
            "address": "255.255.255.255:65535",
            "blocks": ["10.32.4.0/24"],
            "state": "established",
            "rtt_ms": 1.0,
            "mtu": 1300,
            "path": "sleeve",
            "path_reason": "no answer through the fast path",
            "path_since": 1700000590.5,
            "path_switches": 2,
            "tx_packets": 1,
            "tx_bytes": 5 * 1024 * 1024,
            "rx_packets": 2,
            "rx_bytes": 3 * 1024**3,
            "relayed": 0,
            "drops": {"no_route": 1, "heartbeat": 4},
        },
    ],
    "drops": {"unknown_peer": 3, "too_big": 2},
    "super_packets_received": {},
    "routes": [
        {"destination": "10.32.2.0/24", "device": "weave-tun"},
        {"destination": "10.32.3.0/24", "device": "weave-tun"},
        {"destination": "10.32.30.0/24", "device": "weave-tun"},
        {"destination": "10.32.9.0/24", "device": "weave-tun"},
    ],
    "connections": [],
    "connection_terminations": 2,
    "control_rejected": {"name_in_use": 3},
}


def snap(**changes: Any) -> Report:
    return replace(REPORT, **changes)


def ipam(**changes: Any) -> IpamStatus:
    """REPORT's ipam part with ``changes``."""
    return replace(REPORT.ipam, **changes)


def weave_sample(title: str) -> list[str]:
    """The fenced example under ``title`` in WEAVE.md (Weave's own output), when available."""
    path = Path("/work/shared/WEAVE.md")
    if not path.exists():
        pytest.skip("WEAVE.md not available")
    text = path.read_text()
    block = text.split(title, 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if line]


# -- the tree and its JSON ---------------------------------------------------------------------


def test_report_json_is_the_document_agents_serve() -> None:
    # json.dumps compares key order and value types too (50.0 is not 50, None is not absent).
    assert json.dumps(REPORT.to_json()) == json.dumps(REPORT_JSON)
    assert Report.from_json(REPORT_JSON) == REPORT


@pytest.mark.parametrize("view", sorted(status.VIEWS))
def test_views_render_fetched_json_as_the_tree(view: str) -> None:
    render = status.VIEWS[view]
    assert render(Report.from_json(REPORT_JSON)) == render(REPORT)


# -- weave-py status ---------------------------------------------------------------------------


def test_status_labels_right_aligned() -> None:
    out = status.render_status(REPORT)
    assert out.endswith("\n")
    lines = out.splitlines()
    filled = [line for line in lines if line]
    assert all(line.index(":") == 15 for line in filled), out
    assert all(re.match(r"^ *[A-Za-z]+: \S", line) for line in filled), out
    rows: dict[str, str] = {}
    for line in filled:
        key, value = line.split(": ", 1)
        rows.setdefault(key.strip(), value)
    assert rows["Version"] == "weave-py 0.1.0"
    assert rows["Name"] == "aa:bb:cc:dd:ee:01(node-1)"
    assert rows["Connections"] == "3 (2 established, 1 pending)"
    assert rows["Peers"] == "4"
    assert rows["Targets"] == "3"
    assert rows["FastPath"] == "1 of 3 peers"
    assert rows["Range"] == "10.32.0.0/12"
    assert rows["DefaultSubnet"] == "10.32.0.0/12"
    assert rows["Blocks"] == "10.32.1.0/24"
    assert rows["Status"] == "ready"
    assert "Conflict" not in rows
    assert "1376" in out and "1440" in out  # overlay and underlay MTU both shown
    assert "tso+csum" in out  # the offload mode is visible
    # Two services, each introduced by a blank line, as Weave prints them.
    services = [line.split(": ")[1] for line in lines if line.strip().startswith("Service:")]
    assert services == ["router", "ipam"]
    assert lines[lines.index("        Service: ipam") - 1] == ""


def test_status_alignment_matches_weave() -> None:
    sample = weave_sample("## `weave status`")
    ours = status.render_status(REPORT).splitlines()
    weave_version = next(line for line in sample if "Version:" in line)
    our_version = next(line for line in ours if "Version:" in line)
    assert weave_version.index(":") == our_version.index(":")


def test_status_without_peers_and_not_ready() -> None:
    entry = ipam(status="idle", range=N("10.0.0.0/8"), blocks=(), owners=())
    out = status.render_status(snap(peers=(), ready=False, ipam=entry))
    assert "    Connections: 0\n" in out
    assert "          Peers: 1\n" in out
    assert "         Status: idle\n" in out
    assert "  DefaultSubnet: 10.0.0.0/8\n" in out
    assert "         Blocks: none\n" in out


def test_status_ipam_matches_weave() -> None:
    sample = weave_sample("## `weave status`")
    weave_ipam = sample[sample.index("        Service: ipam") :]
    ours = status.render_status(REPORT).splitlines()
    assert ours[ours.index("        Service: ipam") :][:4] == weave_ipam


@pytest.mark.parametrize(
    "state",
    [
        "idle",
        "awaiting consensus",
        "waiting for IP(s) to become available",
        "all IP ranges owned by unreachable peers",
    ],
)
def test_status_shows_the_ipam_status(state: str) -> None:
    out = status.render_status(snap(ipam=ipam(status=state)))
    assert f"         Status: {state}\n" in out


def test_status_shows_a_seeding_conflict() -> None:
    text = "IP allocation was seeded by different peers: restart node-9 with an empty state_dir"
    out = status.render_status(snap(ipam=ipam(status="awaiting consensus", conflict=text)))
    assert f"       Conflict: {text}\n" in out
    assert out.index("Blocks:") < out.index("Conflict:")


# -- weave-py status ipam ----------------------------------------------------------------------


def test_ipam_lines() -> None:
    assert status.render_ipam(REPORT).splitlines() == [
        "aa:bb:cc:dd:ee:01(node-1)   524288 IPs (50.0% of total) (3 active)",
        "aa:bb:cc:dd:ee:02(node-2)   262144 IPs (25.0% of total) (1 active)",
        "aa:bb:cc:dd:ee:03(node-3)   262144 IPs (25.0% of total) (0 active) - unreachable!",
    ]


def test_ipam_local_first_then_by_name_and_aligned() -> None:
    owners = [
        owner("ff:00:00:00:00:02", "b", addresses=16, share=0.0015),
        owner("11:00:00:00:00:03", "a-much-longer-nickname", active=12),
        owner("aa:00:00:00:00:01", "me", local=True, addresses=1048560, share=99.9985),
    ]
    lines = status.render_ipam(snap(ipam=ipam(owners=tuple(owners)))).splitlines()
    assert [line.split("(", 1)[0] for line in lines] == [
        "aa:00:00:00:00:01",  # local first, although its name sorts after the next
        "11:00:00:00:00:03",
        "ff:00:00:00:00:02",
    ]
    width = len("11:00:00:00:00:03(a-much-longer-nickname)") + 3
    for line in lines:  # every count starts in the same column, after at least 3 spaces
        assert line[width - 3 : width] == "   " and line[width].isdigit(), line
    assert lines[1] == (
        "11:00:00:00:00:03(a-much-longer-nickname)   262144 IPs (25.0% of total) (12 active)"
    )
    assert lines[0].endswith("1048560 IPs (100.0% of total) (0 active)")
    assert lines[2].endswith("16 IPs (0.0% of total) (0 active)")


def test_ipam_marks_only_unreachable_others() -> None:
    owners = [
        owner("aa:00:00:00:00:01", "me", local=True, reachable=False),  # never marked
        owner("aa:00:00:00:00:02", "up"),
        owner("aa:00:00:00:00:03", "gone", reachable=False),
    ]
    lines = status.render_ipam(snap(ipam=ipam(owners=tuple(owners)))).splitlines()
    assert [line.endswith(" - unreachable!") for line in lines] == [False, False, True]
    assert lines[2].endswith("(0 active) - unreachable!")


def test_ipam_conflict_after_the_owners() -> None:
    text = "IP allocation was seeded by different peers: wipe node-9's state_dir and restart it"
    lines = status.render_ipam(snap(ipam=ipam(conflict=text))).splitlines()
    assert len(lines) == 4
    assert lines[-1] == f"conflict: {text}"


def test_ipam_without_owners_says_the_status() -> None:
    out = status.render_ipam(snap(ipam=ipam(status="awaiting consensus", owners=())))
    assert out == "awaiting consensus: no peer owns any of 10.32.0.0/12 yet\n"
    text = "IP allocation was seeded by different peers: ..."
    out = status.render_ipam(snap(ipam=ipam(status="awaiting consensus", owners=(), conflict=text)))
    assert out.splitlines() == [
        "awaiting consensus: no peer owns any of 10.32.0.0/12 yet",
        f"conflict: {text}",
    ]


def test_ipam_is_a_status_view() -> None:
    assert status.VIEWS["ipam"] is status.render_ipam


# -- weave-py status connections -------------------------------------------------------------


def test_connections_layout() -> None:
    lines = status.render_connections(REPORT).splitlines()
    assert lines == [
        "-> 192.168.48.12:6783    established fastdp aa:bb:cc:dd:ee:02(node-2) mtu=1376",
        "-> 10.51.34.219:6783     pending",
        "-> 255.255.255.255:65535 established sleeve aa:bb:cc:dd:ee:04(node-4) mtu=1300",
    ]
    for line, p in zip(lines, REPORT.peers, strict=True):
        assert line[:3] == "-> "
        assert line[3:24] == p.address.ljust(21)  # address, 21 wide
        assert line[25:36].rstrip() == p.state  # state, 11 wide


def test_connections_columns_match_weave() -> None:
    sample = weave_sample("## `weave status connections`")
    ours = status.render_connections(REPORT).splitlines()
    weave_line = next(line for line in sample if " established " in line)
    assert weave_line.index("established") == ours[0].index("established") == 25
    assert weave_line.index("established") + 12 == ours[0].index("fastdp")
    assert ours[2].index("sleeve") == 37  # either path in the same column


def test_connections_empty() -> None:
    assert status.render_connections(snap(peers=())) == ""


CONTROL = (
    Connection(
        "<-",
        "192.168.48.12:33866",
        "established",
        peer="aa:bb:cc:dd:ee:02(node-2)",
        name="aa:bb:cc:dd:ee:02",
        mtu=1376,
    ),
    Connection("->", "192.168.48.14:6783", "retrying", detail="connection refused"),
    Connection("->", "192.168.48.16:6783", "connecting"),
    Connection(
        "->",
        "10.51.34.219:6783",
        "pending",
        peer="aa:bb:cc:dd:ee:03(node-3)",
        name="aa:bb:cc:dd:ee:03",
    ),
    Connection("->", "10.51.34.220:6783", "established", peer="aa:bb:cc:dd:ee:04(node-4)"),
)


def test_connections_in_gossip_mode_are_the_control_connections() -> None:
    assert status.render_connections(snap(connections=CONTROL)).splitlines() == [
        "<- 192.168.48.12:33866   established fastdp aa:bb:cc:dd:ee:02(node-2) mtu=1376",
        "-> 192.168.48.14:6783    retrying    connection refused",
        "-> 192.168.48.16:6783    connecting",
        "-> 10.51.34.219:6783     pending     aa:bb:cc:dd:ee:03(node-3)",
        "-> 10.51.34.220:6783     established sleeve aa:bb:cc:dd:ee:04(node-4) mtu=?",
    ]  # node-2's peer is on the fast path; an unnamed connection's peer is not known: sleeve


def test_status_in_gossip_mode_counts_control_connections() -> None:
    out = status.render_status(snap(connections=CONTROL))
    assert "  PeerDiscovery: enabled\n" in out
    assert "        Targets: 4\n" in out  # the dialled ones
    assert "    Connections: 5 (2 established, 1 pending, 1 retrying, 1 connecting)\n" in out


def test_connection_json_leaves_out_what_it_lacks() -> None:
    assert [c.to_json() for c in CONTROL[:2]] == [
        {"direction": "<-", "address": "192.168.48.12:33866", "state": "established",
         "peer": "aa:bb:cc:dd:ee:02(node-2)", "name": "aa:bb:cc:dd:ee:02", "mtu": 1376},
        {"direction": "->", "address": "192.168.48.14:6783", "state": "retrying",
         "detail": "connection refused"},
    ]  # fmt: skip
    report = snap(connections=CONTROL)
    assert Report.from_json(report.to_json()) == report


# -- weave-py status routes / peers ----------------------------------------------------------


def test_routes_map_blocks_to_owners() -> None:
    lines = status.render_routes(REPORT).splitlines()
    assert lines[0].split() == ["DESTINATION", "VIA", "PEER"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert table == {
        "10.32.2.0/24": ["weave-tun", "aa:bb:cc:dd:ee:02(node-2)"],
        "10.32.3.0/24": ["weave-tun", "aa:bb:cc:dd:ee:03(node-3)"],
        "10.32.30.0/24": ["weave-tun", "aa:bb:cc:dd:ee:03(node-3)"],  # second block, same peer
        "10.32.9.0/24": ["weave-tun", "-"],  # nobody owns it (yet)
    }
    assert len({line.index("weave-tun") for line in lines[1:]}) == 1  # one column


def test_peers_table() -> None:
    lines = status.render_peers(REPORT).splitlines()
    assert lines[0].split() == ["PEER", "ADDRESS", "STATE", "RTT", "TX", "RX", "DROPS", "PATH"]
    node2 = next(line for line in lines if "node-2" in line)
    assert node2.split()[:7] == [
        "aa:bb:cc:dd:ee:02(node-2)",
        "192.168.48.12:6783",
        "established",
        "0.41ms",
        "10p/120.6KiB",
        "7p/900B",
        "too_big=2",
    ]
    assert node2.endswith(" too_big=2 fastdp (since 22:23:04: answered 2 probes in a row)")
    node3 = next(line for line in lines if "node-3" in line)
    assert node3.split()[3:7] == ["-", "0p/0B", "0p/0B", "0"]
    assert node3.endswith(" 0 sleeve (peer has no fast path)")  # never switched: no time
    node4 = next(line for line in lines if "node-4" in line)
    assert node4.split()[4:7] == ["1p/5.0MiB", "2p/3.0GiB", "heartbeat=4,no_route=1"]
    assert node4.endswith(" sleeve (since 22:23:10: no answer through the fast path)")
    assert lines[-1] == "drops (all peers): too_big=2,unknown_peer=3"
    # Columns line up under the header.
    for line in (node2, node3, node4):
        assert line[29:50].strip() in {p.address for p in REPORT.peers}


# -- HTTP API --------------------------------------------------------------------------------


def api(s: Report | None = None, metrics_only: bool = False) -> Api:
    return Api(lambda: s if s is not None else REPORT, metrics_only=metrics_only)


def test_healthz_needs_no_report() -> None:
    def broken() -> Report:
        raise AssertionError("liveness must not depend on the report")

    assert Api(broken).respond("GET", "/healthz") == (200, "text/plain", "ok\n")


def test_status_ready_and_not_ready() -> None:
    code, ctype, body = api().respond("GET", "/status")
    assert (code, ctype) == (200, "text/plain")
    assert body == status.render_status(REPORT)
    waiting = ("no address space for pods yet", "cni socket not serving yet")
    not_ready = snap(ready=False, waiting_for=waiting, ipam=ipam(status="idle"))
    code, _, body = api(not_ready).respond("GET", "/status")
    assert code == 503
    lines = body.splitlines()
    assert lines[:2] == [f"not ready: {why}" for why in waiting]
    assert "\n".join(lines[2:]) + "\n" == status.render_status(not_ready)
    assert "Status: idle" in body


def test_report_is_the_tree_as_json() -> None:
    code, ctype, body = api().respond("GET", "/report")
    assert (code, ctype) == (200, "application/json")
    assert body == json.dumps(REPORT_JSON, indent=2) + "\n"  # same keys, order and types


@pytest.mark.parametrize(
    ("path", "view"),
    [
        ("/status/peers", status.render_peers),
        ("/status/connections", status.render_connections),
        ("/status/routes", status.render_routes),
        ("/status/ipam", status.render_ipam),
        ("/status/peers/", status.render_peers),
        ("/status/connections?verbose=1", status.render_connections),
        ("/status?x", status.render_status),
    ],
)
def test_status_views(path: str, view: Any) -> None:
    assert api().respond("GET", path) == (200, "text/plain", view(REPORT))


def test_metrics() -> None:
    code, ctype, body = api().respond("GET", "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "weave_connections" in body and "weave_py_peer_tx_bytes" in body
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    for state, path, count in (
        ("established", "fastdp", 1),  # node-2
        ("established", "sleeve", 1),  # node-4
        ("pending", "sleeve", 1),
        ("pending", "fastdp", 0),
    ):
        labels = (("encryption", "no"), ("state", state), ("type", path))
        assert samples[("weave_connections", labels)] == count
    node2 = (("nickname", "node-2"), ("peer", "aa:bb:cc:dd:ee:02"))
    assert samples[("weave_py_peer_tx_bytes_total", node2)] == 123456
    assert samples[("weave_py_peer_rx_packets_total", node2)] == 7
    assert samples[("weave_py_peer_established", node2)] == 1
    assert samples[("weave_py_peer_rtt_seconds", node2)] == pytest.approx(0.000412)
    node3 = (("nickname", "node-3"), ("peer", "aa:bb:cc:dd:ee:03"))
    assert samples[("weave_py_peer_established", node3)] == 0
    assert ("weave_py_peer_rtt_seconds", node3) not in samples  # no answer yet, no RTT
    assert samples[("weave_py_peer_drops_total", (*node2, ("reason", "too_big")))] == 2
    assert samples[("weave_py_drops_total", (("reason", "unknown_peer"),))] == 3


def samples_of(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


PER_PEER = ("weave_py_peer_", "weave_py_peer_path_switches")


def test_weave_connections_count_the_control_connections_by_weaves_states() -> None:
    samples = samples_of(api(snap(connections=CONTROL)).respond("GET", "/metrics")[2])
    counts = {"established": 1, "retrying": 1, "connecting": 1, "pending": 1, "failed": 0}
    for state, count in counts.items():
        labels = (("encryption", "no"), ("state", state), ("type", "sleeve"))
        assert samples[("weave_connections", labels)] == count
    # node-2's connection: its peer is on the fast path; every state is given on both paths
    fastdp = {state: 1 if state == "established" else 0 for state in counts}
    for state, count in fastdp.items():
        labels = (("encryption", "no"), ("state", state), ("type", "fastdp"))
        assert samples[("weave_connections", labels)] == count


def test_connection_terminations_and_process_series() -> None:
    body = api().respond("GET", "/metrics")[2]
    samples = samples_of(body)
    assert samples[("weave_connection_terminations_total", ())] == 2
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert types["weave_connection_terminations"] == "counter"
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_cpu_seconds_total", ())] >= 0
    assert ("process_open_fds", ()) in samples


def test_per_peer_series_follow_the_documented_count_and_switch_off() -> None:
    samples = samples_of(api().respond("GET", "/metrics")[2])
    per_peer = [name for name, _ in samples if name.startswith(PER_PEER)]
    answered = sum(1 for p in REPORT.peers if p.rtt_ms is not None)
    drops = sum(len(p.drops) for p in REPORT.peers)
    # 9 a peer (its round trip once answered) plus one per peer and drop reason seen
    assert len(per_peer) == 8 * len(REPORT.peers) + answered + drops == 9 * 3 - 1 + 3
    assert PEER_SERIES == 9
    quiet = Api(lambda: REPORT, peer_metrics=False)
    samples = samples_of(quiet.respond("GET", "/metrics")[2])
    assert not [name for name, _ in samples if name.startswith(PER_PEER)]
    assert samples[("weave_py_drops_total", (("reason", "unknown_peer"),))] == 3  # node-wide
    assert samples[("weave_connections", (("encryption", "no"), ("state", "established"),
                                          ("type", "fastdp")))] == 1  # fmt: skip


PROMTOOL = next((p for p in (prometheus.PROMTOOL, shutil.which("promtool")) if p and
                 os.access(p, os.X_OK)), None)  # fmt: skip


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool (scripts/fetch-prometheus fetches it)")
def test_promtool_finds_nothing_to_say_about_the_exposition() -> None:
    body = api().respond("GET", "/metrics")[2]
    assert PROMTOOL is not None
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_ipam_metrics_have_weaves_names() -> None:
    code, _, body = api().respond("GET", "/metrics")
    assert code == 200
    samples = samples_of(body)
    assert samples[("weave_ips", (("state", "local-used"),))] == 3
    assert samples[("weave_max_ips", ())] == 524285
    assert samples[("weave_ipam_unreachable_peers", ())] == 1
    assert samples[("weave_ipam_unreachable_percentage", ())] == 25.0
    assert samples[("weave_ipam_pending_allocates", ())] == 2
    assert samples[("weave_ipam_pending_claims", ())] == 1
    assert samples[("weave_ipam_refused_claims_total", (("reason", "held"),))] == 2
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    for name in ("weave_ips", "weave_max_ips", "weave_ipam_unreachable_peers"):
        assert types[name] == "gauge"


def test_ipam_metrics_before_consensus() -> None:
    entry = ipam(
        status="awaiting consensus",
        owners=(),
        blocks=(),
        used=0,
        capacity=0,
        pending_allocates=4,
        unreachable_addresses=0,
        unreachable_percentage=0.0,
    )
    samples = samples_of(api(snap(ipam=entry)).respond("GET", "/metrics")[2])
    assert samples[("weave_ips", (("state", "local-used"),))] == 0
    assert samples[("weave_max_ips", ())] == 0
    assert samples[("weave_ipam_unreachable_peers", ())] == 0
    assert samples[("weave_ipam_unreachable_percentage", ())] == 0.0
    assert samples[("weave_ipam_pending_allocates", ())] == 4


def test_metrics_reflect_the_report_at_scrape_time() -> None:
    current = [REPORT]
    a = Api(lambda: current[0])
    current[0] = snap(peers=(replace(REPORT.peers[0], tx_bytes=999), *REPORT.peers[1:]))
    assert (
        'weave_py_peer_tx_bytes_total{nickname="node-2",peer="aa:bb:cc:dd:ee:02"} 999.0'
        in (a.respond("GET", "/metrics")[2])
    )


@pytest.mark.parametrize("path", ["/", "/nope", "/status/bogus", "/statusx", "/report/extra"])
def test_not_found(path: str) -> None:
    code, _, body = api().respond("GET", path)
    assert code == 404
    assert "no such endpoint" in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_method_not_allowed(method: str) -> None:
    assert api().respond(method, "/status")[0] == 405
    assert api().respond(method, "/metrics")[0] == 405


def test_metrics_only_listener() -> None:
    public = api(metrics_only=True)
    assert public.respond("GET", "/metrics")[0] == 200
    for path in ("/status", "/report", "/healthz", "/status/peers"):
        assert public.respond("GET", path)[0] == 404


def test_encryption_shows_in_status_and_the_connection_series() -> None:
    secret = snap(router=replace(REPORT.router, encryption=True), connections=CONTROL)
    status = api(secret).respond("GET", "/status")[2]
    assert "Encryption: enabled" in status
    assert "Encryption: disabled" in api().respond("GET", "/status")[2]
    samples = samples_of(api(secret).respond("GET", "/metrics")[2])
    established = [
        samples[("weave_connections", (("encryption", "yes"), ("state", "established"),
                                        ("type", path)))]
        for path in ("fastdp", "sleeve")
    ]  # fmt: skip
    assert sum(established) == 2


def test_control_rejections_are_counted_by_reason() -> None:
    samples = samples_of(api().respond("GET", "/metrics")[2])
    assert samples[("weave_py_gossip_rejected_total", (("reason", "name_in_use"),))] == 3


def test_path_per_peer_metrics() -> None:
    body = api().respond("GET", "/metrics")[2]
    samples = samples_of(body)
    node2 = (("nickname", "node-2"), ("peer", "aa:bb:cc:dd:ee:02"))
    node3 = (("nickname", "node-3"), ("peer", "aa:bb:cc:dd:ee:03"))
    node4 = (("nickname", "node-4"), ("peer", "aa:bb:cc:dd:ee:04"))
    assert [samples[("weave_py_peer_fastdp", who)] for who in (node2, node3, node4)] == [1, 0, 0]
    counter = "weave_py_peer_path_switches_total"
    switches = [samples[(counter, who)] for who in (node2, node3, node4)]
    assert switches == [1, 0, 2]
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    kinds = (types["weave_py_peer_fastdp"], types["weave_py_peer_path_switches"])
    assert kinds == ("gauge", "counter")


def test_a_switch_shows_in_the_metrics_at_the_next_scrape() -> None:
    current = [REPORT]
    a = Api(lambda: current[0])
    node3 = replace(REPORT.peers[1], path="fastdp", path_since=1.0e9, path_switches=1)
    current[0] = snap(peers=(REPORT.peers[0], node3, REPORT.peers[2]))
    samples = samples_of(a.respond("GET", "/metrics")[2])
    who = (("nickname", "node-3"), ("peer", "aa:bb:cc:dd:ee:03"))
    assert samples[("weave_py_peer_fastdp", who)] == 1
    assert samples[("weave_py_peer_path_switches_total", who)] == 1
    labels = (("encryption", "no"), ("state", "pending"), ("type", "fastdp"))
    assert samples[("weave_connections", labels)] == 1


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({}, "sleeve (peer has no fast path)"),
        ({"path_reason": ""}, "sleeve"),
        ({"path": "fastdp", "path_since": 1700000584.9, "path_reason": "answered for 5.0s"},
         "fastdp (since 22:23:04: answered for 5.0s)"),
        ({"path_since": 0.0, "path_reason": ""}, "sleeve (since 00:00:00)"),
    ],
)  # fmt: skip
def test_path_text_is_the_path_why_and_the_last_switch_in_utc(
    changes: dict[str, Any], text: str
) -> None:
    assert status.path_text(replace(REPORT.peers[1], **changes)) == text


def test_status_counts_peers_on_the_fast_path() -> None:
    assert "       FastPath: 0 of 0 peers\n" in status.render_status(snap(peers=()))
    both = tuple(replace(p, path="fastdp") for p in REPORT.peers)
    assert "       FastPath: 3 of 3 peers\n" in status.render_status(snap(peers=both))
