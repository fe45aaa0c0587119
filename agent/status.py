"""One status snapshot behind every view: ``/report`` serves it as JSON, the CLI renders it in
Weave's layouts, the Prometheus collector turns it into series.
"""

from __future__ import annotations

from typing import Any

Snapshot = dict[str, Any]


def render_status(s: Snapshot) -> str:
    r = s["router"]
    peers = s["peers"]
    control = s.get("connections") or []
    states = [c["state"] for c in control] or [p["state"] for p in peers]
    order = ("established", "pending", "retrying", "failed", "connecting")
    counts = [f"{states.count(k)} {k}" for k in order if k in states]
    discovery = "enabled" if control or s.get("gossip") else "disabled (static peers)"
    rows = [
        ("Version", f"weave-py {s['version']}"),
        ("", ""),
        ("Service", "router"),
        ("Protocol", "weave-py sleeve 1"),
        ("Name", f"{r['name']}({r['nickname']})"),
        ("Encryption", "disabled"),
        ("PeerDiscovery", discovery),
        ("Targets", str(len([c for c in control if c["direction"] == "->"]) or len(peers))),
        ("Connections", f"{len(states)}" + (f" ({', '.join(counts)})" if counts else "")),
        ("Peers", str(len(peers) + 1)),
        ("DataPath", f"sleeve, offload {r['offload']}, super-packets {r['super_packets']}"),
        ("MTU", f"{r['mtu']} (underlay {r['underlay_mtu']})"),
        ("", ""),
        *_ipam_rows(s["ipam"]),
    ]
    return "\n".join(f"{k:>15}: {v}" if k else "" for k, v in rows) + "\n"


def _ipam_rows(ipam: dict[str, Any]) -> list[tuple[str, str]]:
    """Weave's ipam service rows, plus this node's active blocks and any seeding conflict."""
    rows = [
        ("Service", "ipam"),
        ("Status", ipam["status"]),
        ("Range", ipam["range"]),
        ("DefaultSubnet", ipam["range"]),
        ("Blocks", ", ".join(ipam["blocks"]) or "none"),
    ]
    if ipam["conflict"]:
        rows.append(("Conflict", ipam["conflict"]))
    return rows


def render_ipam(s: Snapshot) -> str:
    """Weave's ``status ipam``: one line per peer owning address space, local first, then by
    name; the name column padded to the longest name plus three spaces."""
    ipam = s["ipam"]
    owners = sorted(ipam["owners"], key=lambda o: (not o["local"], o["name"]))
    whos = [f"{o['name']}({o['nickname']})" for o in owners]
    width = max(map(len, whos), default=0) + 3
    lines = [_owner_line(o, who, width) for o, who in zip(owners, whos, strict=True)]
    if not owners:
        lines.append(f"{ipam['status']}: no peer owns any of {ipam['range']} yet")
    if ipam["conflict"]:
        lines.append(f"conflict: {ipam['conflict']}")
    return "\n".join(lines) + "\n"


def _owner_line(owner: dict[str, Any], who: str, width: int) -> str:
    line = (
        f"{who:<{width}}{owner['addresses']} IPs ({owner['share']:.1f}% of total) "
        f"({owner['active']} active)"
    )
    if not owner["local"] and not owner["reachable"]:
        line += " - unreachable!"
    return line


def render_connections(s: Snapshot) -> str:
    """Weave's layout: direction, address (21 wide), state (11 wide), then peer or error.
    Gossip mode lists control connections; static mode the configured data paths."""
    if s.get("connections"):
        return _render_control(s["connections"])
    lines = []
    for p in s["peers"]:
        state = p["state"]
        detail = (
            f"sleeve {p['name']}({p['nickname']}) mtu={p['mtu']}" if state == "established" else ""
        )
        if p.get("via"):
            detail = f"{detail} relayed via {p['via']}".strip()
        lines.append(f"-> {p['address']:<21} {state:<11} {detail}".rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def _render_control(connections: list[dict[str, Any]]) -> str:
    lines = []
    for c in connections:
        if c["state"] == "established":
            detail = f"sleeve {c['peer']} mtu={c.get('mtu', '?')}"
        else:
            detail = c.get("peer") or c.get("detail", "")
        lines.append(f"{c['direction']} {c['address']:<21} {c['state']:<11} {detail}".rstrip())
    return "\n".join(lines) + "\n"


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
        state = "relayed" if p.get("via") else p["state"]
        via = f" via {p['via']}" if p.get("via") else ""
        lines.append(
            f"{who:<28} {p['address']:<21} {state:<11} {rtt:>8} {tx:>16} {rx:>16} {drops}{via}"
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
    "ipam": render_ipam,
    "routes": render_routes,
}
