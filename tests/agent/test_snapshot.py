"""The Report taken of the cores: the sleeve's peers and counters, the control connections
with Weave's states, and the kernel routes."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from agent import __version__, snapshot
from agent.readiness import missing
from agent.report import Connection, Peer, Report, Route
from overlay import netdev
from overlay.paths import Path, PathState
from overlay.peer import PeerSpec
from overlay.sleeve import Sleeve
from overlay.traffic import VXLAN_FRAME, Totals, Traffic
from tests.agent.test_status import REPORT

NET = ipaddress.IPv4Network
NODE2 = PeerSpec(0xB2, "node-2", ("192.168.48.12", 6783), (NET("10.32.2.0/24"),),
                 peer_name="aa:bb:cc:dd:ee:02")  # fmt: skip
NODE3 = PeerSpec(0xC3, "node-3", ("10.51.34.219", 6783), (NET("10.32.3.0/24"),),
                 via=("192.168.48.12", 6783), peer_name="aa:bb:cc:dd:ee:03")  # fmt: skip


def sleeve() -> Sleeve:
    """node-2 answers heartbeats and has moved traffic; node-3 is relayed through node-2 and
    has not answered yet."""
    s = Sleeve(0xA1, 0x1111, [NET("10.32.1.0/24")], 1376, rng=random.Random(7))
    s.set_peers([NODE2, NODE3], 0.0)
    node2 = s.peers[NODE2.peer_id]
    node2.established = True
    node2.rtt = 0.0004123
    node2.counters.tx_packets, node2.counters.tx_bytes = 10, 123456
    node2.counters.rx_packets, node2.counters.rx_bytes = 7, 900
    node2.counters.relayed = 4
    s.drop("too_big", node2)
    s.drop("unknown_peer")
    s.paths["gro"] += 2
    return s


def take(
    control: list[dict[str, str]] | None = None,
    sleeve: Sleeve | None = None,
    waiting_for: tuple[str, ...] = (),
    **paths: Any,
) -> Report:
    """The report of ``sleeve`` (default: one with no peers yet); ``paths``: ``paths`` and
    ``wall_offset``, when given."""
    return snapshot.take(
        REPORT.router,
        waiting_for=waiting_for,
        uptime_seconds=12.46,
        ipam=REPORT.ipam,
        sleeve=sleeve or Sleeve(1, 1, [], 1376),
        routes=[netdev.Route(NET("10.32.2.0/24"), "weave-tun")],
        control=control or [],
        terminations=3,
        **paths,
    )


def test_the_report_of_the_cores() -> None:
    report = take(sleeve=sleeve())
    assert report.version == __version__
    assert (report.ready, report.uptime_seconds) == (True, 12.5)
    assert report.router == REPORT.router
    assert report.ipam == REPORT.ipam
    assert report.peers == (
        Peer(name="aa:bb:cc:dd:ee:02", via=None, nickname="node-2", address="192.168.48.12:6783",
             blocks=(NET("10.32.2.0/24"),), state="established", rtt_ms=0.412, mtu=1376,
             path="sleeve", path_reason="no path choice for it", path_since=None, path_switches=0,
             tx_packets=10, tx_bytes=123456, rx_packets=7, rx_bytes=900, relayed=4,
             drops={"too_big": 1}),
        Peer(name="aa:bb:cc:dd:ee:03", via="192.168.48.12:6783", nickname="node-3",
             address="10.51.34.219:6783", blocks=(NET("10.32.3.0/24"),), state="pending",
             rtt_ms=None, mtu=1376, path="sleeve", path_reason="no path choice for it",
             path_since=None, path_switches=0, tx_packets=0, tx_bytes=0, rx_packets=0, rx_bytes=0,
             relayed=0, drops={}),
    )  # fmt: skip
    assert report.drops == {"too_big": 1, "unknown_peer": 1}
    assert report.super_packets_received == {"gro": 2}
    assert report.routes == (Route(NET("10.32.2.0/24"), "weave-tun"),)
    assert report.connections == () and report.connection_terminations == 3


def test_the_report_is_a_copy_not_a_view_of_the_counters() -> None:
    s = sleeve()
    report = take(sleeve=s)
    s.drop("too_big", s.peers[NODE2.peer_id])
    s.paths["gro"] += 1
    assert report.peers[0].drops == {"too_big": 1}
    assert report.drops["too_big"] == 1
    assert report.super_packets_received == {"gro": 2}


def test_before_any_peer() -> None:
    report = take(waiting_for=("no address space for pods yet",))
    assert report.peers == ()
    assert report.drops == {} and report.super_packets_received == {}
    assert report.ready is False and report.waiting_for == ("no address space for pods yet",)


def test_ready_only_when_the_node_can_carry_pod_traffic() -> None:
    assert missing(applied=True, space=True, cni_serving=True) == ()
    assert missing(applied=False, space=False, cni_serving=False) == (
        "node state not in the kernel yet",
        "no address space for pods yet",
        "cni socket not serving yet",
    )
    for absent in ("applied", "space", "cni_serving"):
        flags = {"applied": True, "space": True, "cni_serving": True, absent: False}
        assert len(missing(**flags)) == 1


def test_control_connections_get_weaves_states() -> None:
    control = [
        {"direction": "->", "address": "192.168.48.12:6783", "state": "established",
         "peer": "aa:bb:cc:dd:ee:02(node-2)", "name": "aa:bb:cc:dd:ee:02"},
        {"direction": "<-", "state": "established", "peer": "aa:bb:cc:dd:ee:03(node-3)",
         "name": "aa:bb:cc:dd:ee:03", "address": "10.51.34.219:41234"},
        {"direction": "->", "address": "192.0.2.9:6783", "state": "established",
         "peer": "aa:bb:cc:dd:ee:09(node-9)", "name": "aa:bb:cc:dd:ee:09"},
        {"direction": "->", "address": "192.0.2.10:6783", "state": "retrying",
         "detail": "connection refused"},
    ]  # fmt: skip
    assert take(control, sleeve=sleeve()).connections == (
        Connection("->", "192.168.48.12:6783", "established", peer="aa:bb:cc:dd:ee:02(node-2)",
                   name="aa:bb:cc:dd:ee:02", mtu=1376),  # data path up: established, its MTU
        Connection("<-", "10.51.34.219:41234", "pending", peer="aa:bb:cc:dd:ee:03(node-3)",
                   name="aa:bb:cc:dd:ee:03"),  # data path not confirmed yet
        Connection("->", "192.0.2.9:6783", "pending", peer="aa:bb:cc:dd:ee:09(node-9)",
                   name="aa:bb:cc:dd:ee:09"),  # no data-plane peer of that name yet
        Connection("->", "192.0.2.10:6783", "retrying", detail="connection refused"),
    )  # fmt: skip


def test_each_peer_shows_its_path_with_the_last_switch_in_unix_seconds() -> None:
    paths = {
        "aa:bb:cc:dd:ee:02": PathState(Path.FASTDP, "answered 2 probes in a row", since=84.25,
                                       switches=1, rtt=0.0003, probes_sent=9, probes_answered=8),
        "aa:bb:cc:dd:ee:03": PathState(Path.SLEEVE, "relayed"),
    }  # fmt: skip
    node2, node3 = take(sleeve=sleeve(), paths=paths, wall_offset=1_700_000_500.0).peers
    assert (node2.path, node2.path_reason) == ("fastdp", "answered 2 probes in a row")
    assert (node2.path_since, node2.path_switches) == (1_700_000_584.25, 1)
    assert type(node2.path) is str  # the value, not the enum: the JSON and its reading agree
    assert (node3.path, node3.path_reason, node3.path_since, node3.path_switches) == (
        "sleeve", "relayed", None, 0
    )  # fmt: skip
    report = take(sleeve=sleeve(), paths=paths, wall_offset=1_700_000_500.0)
    assert Report.from_json(report.to_json()) == report
    assert report.to_json()["peers"][0]["path_since"] == 1_700_000_584.25


def test_a_peer_path_choice_does_not_know_is_on_the_sleeve() -> None:
    only_node2 = {"aa:bb:cc:dd:ee:02": PathState(Path.FASTDP, "kept", since=None)}
    node2, node3 = take(sleeve=sleeve(), paths=only_node2).peers
    assert (node2.path, node2.path_reason, node2.path_since) == ("fastdp", "kept", None)
    assert (node3.path, node3.path_reason) == ("sleeve", "no path choice for it")
    unwired = take(sleeve=sleeve(), paths=None).peers
    assert [(p.path, p.path_reason) for p in unwired] == [("sleeve", "no path choice for it")] * 2


def test_a_static_peer_has_no_mesh_name_and_stays_on_the_sleeve() -> None:
    s = Sleeve(0xA1, 0x1111, [NET("10.32.1.0/24")], 1376)
    s.set_peers([PeerSpec(0xB2, "node-2", ("192.168.48.12", 6783), (NET("10.32.2.0/24"),))], 0.0)
    paths = {"": PathState(Path.FASTDP, "a state keyed by no name is never used", switches=5)}
    [static] = take(sleeve=s, paths=paths).peers
    assert (static.name, static.path, static.path_reason) == ("", "sleeve", "static peer")
    assert static.path_switches == 0


def test_what_the_kernel_carried_on_the_fast_path_adds_to_a_peers_counts() -> None:
    """node-2's host counted by the kernel: its inner bytes add to the sleeve's; node-3 is
    relayed, so nothing counted for a host of that address is its."""
    traffic = Totals()
    frames = Traffic(3, 3 * VXLAN_FRAME + 3000, 2, 2 * VXLAN_FRAME + 200)
    hosts = {ipaddress.IPv4Address("192.168.48.12"), ipaddress.IPv4Address("10.51.34.219")}
    traffic.update(dict.fromkeys(hosts, frames), hosts)
    node2, node3 = take(sleeve=sleeve(), traffic=traffic).peers
    assert (node2.tx_packets, node2.tx_bytes, node2.rx_packets, node2.rx_bytes) == (
        13, 126456, 9, 1100,
    )  # fmt: skip
    assert (node3.tx_packets, node3.tx_bytes, node3.rx_packets, node3.rx_bytes) == (0, 0, 0, 0)
