"""Prometheus (Debian's package) in the cluster lab, as a user's would find the agents: its
Kubernetes discovery (``kubernetes_sd_configs``, role pod) lists and watches the pods of
kube-system through the API, kept to those the manifest annotates (``prometheus.io/scrape``,
``/port``, ``/path``), scraped every second; run in the control plane's namespace, which
reaches the API and every node's address, and stopped by ``lab down`` with the control plane.
Debian 12's Prometheus is built without that discovery, so the lab runs Debian 13's
(scripts/fetch-prometheus puts it and its promtool in the cache).

``counters`` asks its HTTP API for one per-peer series; ``rising`` says which (node, peer)
pairs it saw grow between two samples; ``check_exposition`` runs ``promtool check metrics``
over an agent's /metrics.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.lab.kube import checks
from agent.lab.kube.checks import Check
from agent.lab.kube.cluster import Cluster
from agent.lab.kube.pods import Pod
from agent.lab.kube.processes import Daemon, spawn
from overlay.netns import run_in_netns

LISTEN = "127.0.0.1:9090"
TOOLS = Path("/var/cache/weave-py/prometheus-trixie")  # scripts/fetch-prometheus
BINARY, PROMTOOL = str(TOOLS / "prometheus"), str(TOOLS / "promtool")
SCRAPE_INTERVAL = "1s"
READY_TIMEOUT = 60.0
Pair = tuple[str, str]  # (scraped node, peer nickname)


def config(kubeconfig: Path) -> str:
    """The scrape configuration: the annotated pods of kube-system, found through the API that
    ``kubeconfig`` reaches, at their annotated port and path, labelled with the node they run
    on."""
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
         "action": "keep", "regex": "true"},
        {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
         "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
         "target_label": "__address__"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
         "action": "replace", "regex": "(.+)", "target_label": "__metrics_path__"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]  # fmt: skip
    job = {
        "job_name": "weave-py",
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                   "namespaces": {"names": ["kube-system"]}}],
        "relabel_configs": relabel,
    }  # fmt: skip
    document = {"global": {"scrape_interval": SCRAPE_INTERVAL}, "scrape_configs": [job]}
    return json.dumps(document, indent=2) + "\n"  # YAML is a superset of JSON


def start(cluster: Cluster) -> Daemon:
    """Prometheus in the control plane's namespace, recorded with the control plane's
    processes (so ``lab down`` stops it); returns once its API answers."""
    directory = cluster.plan.control_dir / "prometheus"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prometheus.yml"
    path.write_text(config(cluster.control.admin_kubeconfig))
    inside = ["nsenter", f"--net=/run/netns/{cluster.plan.control_ns}", "--"]
    marker = str(cluster.plan.control_dir)
    argv = [*inside, BINARY, f"--config.file={path}", f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={LISTEN}"]  # fmt: skip
    daemon = spawn("prometheus", argv, directory / "prometheus.log", marker)
    cluster.record(daemon)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if query(cluster, "up") is not None:
            return daemon
        time.sleep(0.5)
    raise RuntimeError(f"prometheus did not answer within {READY_TIMEOUT:.0f}s")


def query(cluster: Cluster, expression: str) -> list[dict[str, object]] | None:
    """The result vector of an instant query (None while Prometheus does not answer)."""
    url = f"http://{LISTEN}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        answer = json.loads(fetch(cluster.plan.control_ns, url))
    except (OSError, ValueError):
        return None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return None
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def fetch(netns: str, url: str) -> str:
    """GET ``url`` from inside the network namespace ``netns``."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    return run_in_netns(f"/run/netns/{netns}", get)


def targets_up(cluster: Cluster) -> dict[str, bool]:
    """Node -> whether its agent's target is up."""
    found = query(cluster, 'up{job="weave-py"}') or []
    return {str(_labels(s).get("node", "")): _value(s) == 1.0 for s in found}


def counters(cluster: Cluster, metric: str) -> dict[Pair, float]:
    """(node, peer nickname) -> the value of a per-peer series, from every target."""
    found = query(cluster, metric) or []
    return {(str(_labels(s).get("node", "")), str(_labels(s).get("nickname", ""))): _value(s)
            for s in found}  # fmt: skip


def rising(before: dict[Pair, float], after: dict[Pair, float]) -> set[Pair]:
    """The pairs whose counter grew between the two samples."""
    return {pair for pair, value in after.items() if value > before.get(pair, value)}


def check_exposition(cluster: Cluster, i: int) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` over node i's agent's /metrics (read inside the node)."""
    exposition = fetch(cluster.plan.node_ns(i), "http://127.0.0.1:6782/metrics")
    return subprocess.run([PROMTOOL, "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


def _labels(series: dict[str, object]) -> dict[str, object]:
    labels = series.get("metric")
    return labels if isinstance(labels, dict) else {}


def _value(series: dict[str, object]) -> float:
    value = series.get("value")
    return float(value[1]) if isinstance(value, list) and len(value) == 2 else float("nan")


def prove(cluster: Cluster, running: list[Pod]) -> list[Check]:
    """Start Prometheus; it finds every agent; every (node, peer) pair shows its path
    (``weave_py_peer_fastdp``) and per-peer byte counters that rise while every pod pair
    exchanges traffic, whichever path carries it; promtool finds nothing wrong in an agent's
    exposition."""
    start(cluster)
    nodes = {cluster.plan.node_name(i) for i in range(1, cluster.plan.nodes + 1)}
    found = _until(lambda: {n for n, up in targets_up(cluster).items() if up} >= nodes)
    up = sorted(n for n, ok in targets_up(cluster).items() if ok)
    out = [Check("prometheus discovers every agent (role pod, annotations)", found,
                 f"targets up: {', '.join(up)}")]  # fmt: skip
    every = {(a, b) for a in nodes for b in nodes if a != b}
    shown = _until(lambda: set(counters(cluster, "weave_py_peer_fastdp")) >= every)
    fast = {pair for pair, on in counters(cluster, "weave_py_peer_fastdp").items() if on == 1}
    out.append(Check("weave_py_peer_fastdp is there for every node pair", shown,
                     f"{len(fast & every)} of {len(every)} pairs on the fast path"))  # fmt: skip
    for metric in ("weave_py_peer_tx_bytes_total", "weave_py_peer_rx_bytes_total"):
        grew = _rise_under_traffic(cluster, running, metric, every)
        out.append(Check(f"{metric} rises for every node pair", every <= grew,
                         f"{len(every & grew)} of {len(every)} pairs "
                         f"({len(fast & every & grew)} on the fast path)"))  # fmt: skip
    checked = check_exposition(cluster, 1)
    seen = (checked.stdout + checked.stderr).strip() or "clean"
    clean = checked.returncode == 0 and not checked.stdout.strip()
    out.append(Check("promtool check metrics on an agent's /metrics", clean, seen))
    return out


def _rise_under_traffic(
    cluster: Cluster, running: list[Pod], metric: str, pairs: set[Pair]
) -> set[Pair]:
    """The pairs whose ``metric`` grew while every pod pair exchanged traffic."""
    _until(lambda: set(counters(cluster, metric)) >= pairs)
    before = counters(cluster, metric)
    checks.matrix(running)  # traffic between every pod pair, so between every node pair
    grew: set[Pair] = set()

    def all_grew() -> bool:
        grew.update(rising(before, counters(cluster, metric)))
        return pairs <= grew

    _until(all_grew)
    return grew


def _until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True
