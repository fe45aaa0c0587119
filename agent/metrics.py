"""Prometheus collector rendering the status Report (agent/report.py) at scrape time.

Weave's names where the meaning matches (``weave_connections`` and the IPAM series
``weave_ips``, ``weave_max_ips``, ``weave_ipam_*``, which dashboards and the kube-prometheus
alerts use), plus per-peer tunnel series Weave never had. The cores never import prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.report import IpamStatus, Peer, Report

Family = GaugeMetricFamily | CounterMetricFamily
PEER_LABELS = ["peer", "nickname"]
PEER_COUNTERS: tuple[tuple[str, str, Callable[[Peer], int]], ...] = (
    ("weave_py_peer_tx_packets", "Packets sent to the peer.", lambda p: p.tx_packets),
    ("weave_py_peer_tx_bytes", "Inner bytes sent to the peer.", lambda p: p.tx_bytes),
    ("weave_py_peer_rx_packets", "Packets received from the peer.", lambda p: p.rx_packets),
    ("weave_py_peer_rx_bytes", "Inner bytes received from the peer.", lambda p: p.rx_bytes),
)
IPAM_GAUGES: tuple[tuple[str, str, Callable[[IpamStatus], float]], ...] = (
    ("weave_max_ips", "Size of IP address space used by allocator.", lambda i: i.capacity),
    (
        "weave_ipam_unreachable_percentage",
        "Percentage of IP addresses owned by unreachable peers.",
        lambda i: i.unreachable_percentage,
    ),
    ("weave_ipam_pending_allocates", "Number of pending allocates.", lambda i: i.pending_allocates),
    ("weave_ipam_pending_claims", "Number of pending claims.", lambda i: i.pending_claims),
)


class ReportCollector(Collector):
    """Every series, built from ``report()`` when Prometheus scrapes."""

    def __init__(self, report: Callable[[], Report]) -> None:
        self.report = report

    def collect(self) -> Iterator[Family]:
        r = self.report()
        conns = GaugeMetricFamily(
            "weave_connections",
            "Connections to peers by state.",
            labels=["state", "type", "encryption"],
        )
        for state in ("established", "pending"):
            conns.add_metric([state, "sleeve", "no"], sum(1 for p in r.peers if p.state == state))
        yield conns
        yield from _peer_counters(r.peers)
        all_drops = CounterMetricFamily(
            "weave_py_drops", "Datagrams and packets dropped, by reason.", labels=["reason"]
        )
        for reason, n in r.drops.items():
            all_drops.add_metric([reason], n)
        yield all_drops
        yield from _peer_gauges(r.peers)
        info = GaugeMetricFamily(
            "weave_py_dataplane_info", "Data-plane mode of this node.", labels=["offload", "mtu"]
        )
        info.add_metric([r.router.offload, str(r.router.mtu)], 1)
        yield info
        yield from _ipam(r.ipam)


def _peer_counters(peers: Sequence[Peer]) -> Iterator[CounterMetricFamily]:
    """Traffic and drops per peer."""
    for name, doc, value in PEER_COUNTERS:
        fam = CounterMetricFamily(name, doc, labels=PEER_LABELS)
        for p in peers:
            fam.add_metric([p.name, p.nickname], value(p))
        yield fam
    drops = CounterMetricFamily(
        "weave_py_peer_drops",
        "Frames dropped, by peer and reason.",
        labels=[*PEER_LABELS, "reason"],
    )
    for p in peers:
        for reason, n in p.drops.items():
            drops.add_metric([p.name, p.nickname, reason], n)
    yield drops


def _peer_gauges(peers: Sequence[Peer]) -> Iterator[GaugeMetricFamily]:
    """Round trip, MTU and data-path health per peer."""
    rtt = GaugeMetricFamily(
        "weave_py_peer_rtt_seconds", "Heartbeat round trip.", labels=PEER_LABELS
    )
    mtu = GaugeMetricFamily(
        "weave_py_peer_mtu_bytes", "Overlay MTU towards the peer.", labels=PEER_LABELS
    )
    up = GaugeMetricFamily(
        "weave_py_peer_established", "1 while heartbeats are answered.", labels=PEER_LABELS
    )
    for p in peers:
        who = [p.name, p.nickname]
        if p.rtt_ms is not None:
            rtt.add_metric(who, p.rtt_ms / 1e3)
        mtu.add_metric(who, p.mtu)
        up.add_metric(who, 1 if p.state == "established" else 0)
    yield from (rtt, mtu, up)


def _ipam(ipam: IpamStatus) -> Iterator[GaugeMetricFamily]:
    """Weave's IPAM series, same names and meanings."""
    ips = GaugeMetricFamily("weave_ips", "Number of IP addresses.", labels=["state"])
    ips.add_metric(["local-used"], ipam.used)
    yield ips
    for name, doc, value in IPAM_GAUGES:
        yield GaugeMetricFamily(name, doc, value=value(ipam))
    unreachable = sum(1 for o in ipam.owners if not o.reachable)
    yield GaugeMetricFamily(
        "weave_ipam_unreachable_count", "Number of unreachable peers.", value=unreachable
    )
