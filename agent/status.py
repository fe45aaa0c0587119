"""One status snapshot behind every view: ``/report`` serves it as JSON, the CLI renders it in
Weave's layouts, the Prometheus collector turns it into series.
"""

from __future__ import annotations

from typing import Any

Snapshot = dict[str, Any]


def render_status(s: Snapshot) -> str:
    r = s["router"]
    peers = s["peers"]
    states = [p["state"] for p in peers]
    counts = [f"{states.count(k)} {k}" for k in ("established", "pending", "failed") if k in states]
    rows = [
        ("Version", f"weave-py {s['version']}"),
        ("", ""),
        ("Service", "router"),
        ("Protocol", "weave-py sleeve 1"),
        ("Name", f"{r['name']}({r['nickname']})"),
        ("Encryption", "disabled"),
        ("PeerDiscovery", "disabled (static peers)"),
        ("Targets", str(len(peers))),
        ("Connections", f"{len(peers)}" + (f" ({', '.join(counts)})" if counts else "")),
        ("Peers", str(len(peers) + 1)),
        ("DataPath", f"sleeve, offload {r['offload']}, super-packets {r['super_packets']}"),
        ("MTU", f"{r['mtu']} (underlay {r['underlay_mtu']})"),
        ("", ""),
        ("Service", "ipam"),
        ("Status", "ready" if s["ready"] else "idle"),
        ("Range", s["ipam"]["range"]),
        ("Blocks", ", ".join(s["ipam"]["blocks"]) or "none"),
    ]
    return "\n".join(f"{k:>15}: {v}" if k else "" for k, v in rows) + "\n"


def render_connections(s: Snapshot) -> str:
    lines = []
    for p in s["peers"]:
        state = p["state"]
        detail = (
            f"sleeve {p['name']}({p['nickname']}) mtu={p['mtu']}" if state == "established" else ""
        )
        if p.get("via"):
            detail = f"{detail} relayed via {p['via']}"
        lines.append(f"-> {p['address']:<21} {state:<11} {detail}".rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def render_peers(s: Snapshot) -> str:
    """Every peer with its data-path state and counters (Weave had no such counters)."""
    head = f"{'PEER':<28} {'ADDRESS':<21} {'STATE':<11} {'RTT':>8} {'TX':>16} {'RX':>16} DROPS"
    lines = [head]
    for p in s["peers"]:
        rtt = f"{p['rtt_ms']:.2f}ms" if p["rtt_ms"] is not None else "-"
        tx = f"{p['tx_packets']}p/{_bytes(p['tx_bytes'])}"
        rx = f"{p['rx_packets']}p/{_bytes(p['rx_bytes'])}"
        drops = ",".join(f"{k}={v}" for k, v in sorted(p["drops"].items())) or "0"
        who = f"{p['name']}({p['nickname']})"
        lines.append(
            f"{who:<28} {p['address']:<21} {p['state']:<11} {rtt:>8} {tx:>16} {rx:>16} {drops}"
        )
    other = ",".join(f"{k}={v}" for k, v in sorted(s["drops"].items()))
    if other:
        lines.append(f"drops (all peers): {other}")
    return "\n".join(lines) + "\n"


def render_routes(s: Snapshot) -> str:
    lines = [f"{'DESTINATION':<20} {'VIA':<12} PEER"]
    owners = {b: f"{p['name']}({p['nickname']})" for p in s["peers"] for b in p["blocks"]}
    for r in s["routes"]:
        lines.append(
            f"{r['destination']:<20} {r['device']:<12} {owners.get(r['destination'], '-')}"
        )
    return "\n".join(lines) + "\n"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


VIEWS = {
    "": render_status,
    "connections": render_connections,
    "peers": render_peers,
    "routes": render_routes,
}
