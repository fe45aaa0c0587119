"""Prometheus collector rendering the status snapshot at scrape time.

Weave's names where the meaning matches (``weave_connections`` and the IPAM series
``weave_ips``, ``weave_max_ips``, ``weave_ipam_*``, which dashboards and the kube-prometheus
alerts use), plus per-peer tunnel series Weave never had. The cores never import prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.status import Snapshot


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.snapshot()
        conns = GaugeMetricFamily(
            "weave_connections",
            "Connections to peers by state.",
            labels=["state", "type", "encryption"],
        )
        for state in ("established", "pending"):
            n = sum(1 for p in s["peers"] if p["state"] == state)
            conns.add_metric([state, "sleeve", "no"], n)
        yield conns
        labels = ["peer", "nickname"]
        series = {
            "tx_packets": ("weave_py_peer_tx_packets", "Packets sent to the peer."),
            "tx_bytes": ("weave_py_peer_tx_bytes", "Inner bytes sent to the peer."),
            "rx_packets": ("weave_py_peer_rx_packets", "Packets received from the peer."),
            "rx_bytes": ("weave_py_peer_rx_bytes", "Inner bytes received from the peer."),
        }
        for key, (name, doc) in series.items():
            fam = CounterMetricFamily(name, doc, labels=labels)
            for p in s["peers"]:
                fam.add_metric([p["name"], p["nickname"]], p[key])
            yield fam
        drops = CounterMetricFamily(
            "weave_py_peer_drops", "Frames dropped, by peer and reason.", labels=[*labels, "reason"]
        )
        for p in s["peers"]:
            for reason, n in p["drops"].items():
                drops.add_metric([p["name"], p["nickname"], reason], n)
        yield drops
        all_drops = CounterMetricFamily(
            "weave_py_drops", "Datagrams and packets dropped, by reason.", labels=["reason"]
        )
        for reason, n in s["drops"].items():
            all_drops.add_metric([reason], n)
        yield all_drops
        rtt = GaugeMetricFamily("weave_py_peer_rtt_seconds", "Heartbeat round trip.", labels=labels)
        mtu = GaugeMetricFamily(
            "weave_py_peer_mtu_bytes", "Overlay MTU towards the peer.", labels=labels
        )
        up = GaugeMetricFamily(
            "weave_py_peer_established", "1 while heartbeats are answered.", labels=labels
        )
        for p in s["peers"]:
            who = [p["name"], p["nickname"]]
            if p["rtt_ms"] is not None:
                rtt.add_metric(who, p["rtt_ms"] / 1e3)
            mtu.add_metric(who, p["mtu"])
            up.add_metric(who, 1 if p["state"] == "established" else 0)
        yield from (rtt, mtu, up)
        info = GaugeMetricFamily(
            "weave_py_dataplane_info", "Data-plane mode of this node.", labels=["offload", "mtu"]
        )
        info.add_metric([s["router"]["offload"], str(s["router"]["mtu"])], 1)
        yield info
        yield from _ipam(s["ipam"])


IPAM_GAUGES = {
    "capacity": ("weave_max_ips", "Size of IP address space used by allocator."),
    "unreachable_percentage": (
        "weave_ipam_unreachable_percentage",
        "Percentage of IP addresses owned by unreachable peers.",
    ),
    "pending_allocates": ("weave_ipam_pending_allocates", "Number of pending allocates."),
    "pending_claims": ("weave_ipam_pending_claims", "Number of pending claims."),
}


def _ipam(ipam: Snapshot) -> Iterator[GaugeMetricFamily]:
    """Weave's IPAM series, same names and meanings."""
    ips = GaugeMetricFamily("weave_ips", "Number of IP addresses.", labels=["state"])
    ips.add_metric(["local-used"], ipam["used"])
    yield ips
    for key, (name, doc) in IPAM_GAUGES.items():
        yield GaugeMetricFamily(name, doc, value=ipam[key])
    unreachable = sum(1 for o in ipam["owners"] if not o["reachable"])
    yield GaugeMetricFamily(
        "weave_ipam_unreachable_count", "Number of unreachable peers.", value=unreachable
    )
