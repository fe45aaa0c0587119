"""Prometheus collector rendering the status Report (agent/report.py) at scrape time.

Weave's names where the meaning matches (``weave_connections``,
``weave_connection_terminations_total`` and the IPAM series ``weave_ips``, ``weave_max_ips``,
``weave_ipam_*``, which dashboards and the kube-prometheus alerts use; Weave's
``weave_ipam_unreachable_count`` is ``weave_ipam_unreachable_peers`` here, as Prometheus
reserves ``_count`` for summaries and histograms), the process's own
``process_*`` series (prometheus-client's collector), plus per-peer tunnel series Weave never
had. The cores never import prometheus.

``weave_connections``' ``type`` label is each connection's data path, as Weave's was: "fastdp"
when its peer's pod traffic takes the kernel fast path, else "sleeve" (both given for every
state, even at 0).

Series per node in a cluster of N nodes: the per-peer ones are 9 per remote peer
(``PEER_SERIES``: five counters, four gauges; the round trip once a heartbeat was answered) plus
one ``weave_py_peer_drops_total`` per peer and drop reason seen, so 9(N-1) per node and 9N(N-1)
across the cluster; ``peer_metrics=False`` leaves them all out. The rest does not grow with N:
about 25 series, plus one per drop reason seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent.report import PATHS, IpamStatus, Peer, Report

Family = GaugeMetricFamily | CounterMetricFamily | Metric
PEER_LABELS = ["peer", "nickname"]
PEER_COUNTERS: tuple[tuple[str, str, Callable[[Peer], int]], ...] = (
    ("weave_py_peer_tx_packets", "Packets sent to the peer, both paths.", lambda p: p.tx_packets),
    ("weave_py_peer_tx_bytes", "Inner bytes sent to the peer, both paths.", lambda p: p.tx_bytes),
    ("weave_py_peer_rx_packets", "Packets from the peer, both paths.", lambda p: p.rx_packets),
    ("weave_py_peer_rx_bytes", "Inner bytes from the peer, both paths.", lambda p: p.rx_bytes),
    ("weave_py_peer_path_switches", "Fast path <-> sleeve switches.", lambda p: p.path_switches),
)
PEER_SERIES = len(PEER_COUNTERS) + 4  # and the gauges: rtt, mtu, established, fastdp
CONNECTION_STATES = ("connecting", "retrying", "failed", "pending", "established")  # Weave's
FALLBACK = "sleeve"  # the type of a connection whose peer has no data path (yet)
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
    """Every series, built from ``report()`` when Prometheus scrapes; ``peer_metrics``: the
    per-peer series too (9 per remote peer, see the module docstring)."""

    def __init__(self, report: Callable[[], Report], peer_metrics: bool = True) -> None:
        self.report = report
        self.peer_metrics = peer_metrics
        self.process = ProcessCollector(registry=None)

    def collect(self) -> Iterator[Family]:
        """The series of this moment's report, then the process's."""
        r = self.report()
        yield from _connections(r)
        if self.peer_metrics:
            yield from _peer_counters(r.peers)
            yield from _peer_gauges(r.peers)
        yield from _node(r)
        yield from _ipam(r.ipam)
        yield from self.process.collect()


def _connections(r: Report) -> Iterator[Family]:
    """Weave's connection series: connections by Weave's states and data path (the control
    connections and dial targets when there are any, else the static peers' data paths), every
    state given even at 0 as Weave does, on both paths; and how many control connections
    ended."""
    conns = GaugeMetricFamily(
        "weave_connections",
        "Number of peer-to-peer connections.",
        labels=["state", "type", "encryption"],
    )
    paths = {p.name: p.path for p in r.peers}
    if r.connections:
        kinds = [(c.state, paths.get(c.name or "", FALLBACK)) for c in r.connections]
    else:
        kinds = [(p.state, p.path) for p in r.peers]
    encryption = "yes" if r.router.encryption else "no"
    for state in CONNECTION_STATES:
        for path in PATHS:
            conns.add_metric([state, path, encryption], kinds.count((state, path)))
    yield conns
    yield CounterMetricFamily(
        "weave_connection_terminations",
        "Number of peer-to-peer connections terminated.",
        value=r.connection_terminations,
    )
    yield by_reason(
        "weave_py_gossip_rejected",
        "Control-plane input refused (handshakes, messages, records), by reason.",
        r.control_rejected,
    )


def by_reason(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter family with one series per reason in ``counts``."""
    family = CounterMetricFamily(name, doc, labels=["reason"])
    for reason, n in sorted(counts.items()):
        family.add_metric([reason], n)
    return family


def _node(r: Report) -> Iterator[Family]:
    """Drops of the whole node by reason, and its data-plane mode."""
    yield by_reason("weave_py_drops", "Datagrams and packets dropped, by reason.", r.drops)
    info = GaugeMetricFamily(
        "weave_py_dataplane_info", "Data-plane mode of this node.", labels=["offload", "mtu"]
    )
    info.add_metric([r.router.offload, str(r.router.mtu)], 1)
    yield info


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
    """Round trip, MTU, data-path health and path per peer."""
    rtt = GaugeMetricFamily(
        "weave_py_peer_rtt_seconds", "Heartbeat round trip.", labels=PEER_LABELS
    )
    mtu = GaugeMetricFamily(
        "weave_py_peer_mtu_bytes", "Overlay MTU towards the peer.", labels=PEER_LABELS
    )
    up = GaugeMetricFamily(
        "weave_py_peer_established", "1 while heartbeats are answered.", labels=PEER_LABELS
    )
    fastdp = GaugeMetricFamily(
        "weave_py_peer_fastdp",
        "1 while on the kernel fast path, 0 on the sleeve.",
        labels=PEER_LABELS,
    )
    for p in peers:
        who = [p.name, p.nickname]
        if p.rtt_ms is not None:
            rtt.add_metric(who, p.rtt_ms / 1e3)
        mtu.add_metric(who, p.mtu)
        up.add_metric(who, 1 if p.state == "established" else 0)
        fastdp.add_metric(who, 1 if p.path == "fastdp" else 0)
    yield from (rtt, mtu, up, fastdp)


def _ipam(ipam: IpamStatus) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Weave's IPAM series, same names and meanings; and the claims refused."""
    ips = GaugeMetricFamily("weave_ips", "Number of IP addresses.", labels=["state"])
    ips.add_metric(["local-used"], ipam.used)
    yield ips
    for name, doc, value in IPAM_GAUGES:
        yield GaugeMetricFamily(name, doc, value=value(ipam))
    unreachable = sum(1 for o in ipam.owners if not o.reachable)
    yield GaugeMetricFamily(  # Weave's weave_ipam_unreachable_count (a _count suffix is a
        # summary's or a histogram's to Prometheus: promtool refuses it on a gauge)
        "weave_ipam_unreachable_peers",
        "Number of unreachable peers.",
        value=unreachable,
    )
    yield by_reason(
        "weave_ipam_refused_claims",
        "Other peers' address claims refused (never routed nor held), by reason.",
        ipam.refused,
    )
