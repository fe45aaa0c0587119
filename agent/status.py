"""Weave's status layouts, rendered from one status Report (agent/report.py): ``/status`` and
its views serve them and ``weave-py status`` prints them.

Every view takes a Report, or the JSON of one as a client fetched it from ``/report`` (read
with ``Report.from_json``, so a bad document raises ``document.DocumentError``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from agent.report import Connection, IpamStatus, Owner, Peer, Report


def render_status(r: Report) -> str:
    """Weave's ``status``: the router service, then the ipam service, labels right-aligned."""
    control = r.connections
    states = [c.state for c in control] or [p.state for p in r.peers]
    order = ("established", "pending", "retrying", "failed", "connecting")
    counts = [f"{states.count(k)} {k}" for k in order if k in states]
    router = r.router
    rows = [
        ("Version", f"weave-py {r.version}"),
        ("", ""),
        ("Service", "router"),
        ("Protocol", "weave-py sleeve 1"),
        ("Name", f"{router.name}({router.nickname})"),
        ("Encryption", "enabled" if router.encryption else "disabled"),
        ("PeerDiscovery", "enabled" if control else "disabled (static peers)"),
        ("Targets", str(len([c for c in control if c.direction == "->"]) or len(r.peers))),
        ("Connections", f"{len(states)}" + (f" ({', '.join(counts)})" if counts else "")),
        ("Peers", str(len(r.peers) + 1)),
        ("DataPath", f"sleeve, offload {router.offload}, super-packets {router.super_packets}"),
        ("FastPath", f"{sum(p.path == 'fastdp' for p in r.peers)} of {len(r.peers)} peers"),
        ("MTU", f"{router.mtu} (underlay {router.underlay_mtu})"),
        ("", ""),
        *_ipam_rows(r.ipam),
    ]
    return "\n".join(f"{k:>15}: {v}" if k else "" for k, v in rows) + "\n"


def _ipam_rows(ipam: IpamStatus) -> list[tuple[str, str]]:
    """Weave's ipam service rows, plus this node's active blocks and any seeding conflict."""
    rows = [
        ("Service", "ipam"),
        ("Status", ipam.status),
        ("Range", str(ipam.range)),
        ("DefaultSubnet", str(ipam.range)),
        ("Blocks", ", ".join(map(str, ipam.blocks)) or "none"),
    ]
    if ipam.conflict:
        rows.append(("Conflict", ipam.conflict))
    return rows


def render_ipam(r: Report) -> str:
    """Weave's ``status ipam``: one line per peer owning address space, local first, then by
    name; the name column padded to the longest name plus three spaces."""
    ipam = r.ipam
    owners = sorted(ipam.owners, key=lambda o: (not o.local, o.name))
    whos = [f"{o.name}({o.nickname})" for o in owners]
    width = max(map(len, whos), default=0) + 3
    lines = [_owner_line(o, who, width) for o, who in zip(owners, whos, strict=True)]
    if not owners:
        lines.append(f"{ipam.status}: no peer owns any of {ipam.range} yet")
    if ipam.conflict:
        lines.append(f"conflict: {ipam.conflict}")
    return "\n".join(lines) + "\n"


def _owner_line(owner: Owner, who: str, width: int) -> str:
    line = (
        f"{who:<{width}}{owner.addresses} IPs ({owner.share:.1f}% of total) ({owner.active} active)"
    )
    if not owner.local and not owner.reachable:
        line += " - unreachable!"
    return line


def render_connections(r: Report) -> str:
    """Weave's layout: direction, address (21 wide), state (11 wide), then the data path
    ("fastdp" or "sleeve") and peer, or the error. Gossip mode lists control connections;
    static mode the configured data paths."""
    if r.connections:
        return _render_control(r.connections, {p.name: p.path for p in r.peers})
    lines = []
    for p in r.peers:
        detail = f"{p.path} {p.name}({p.nickname}) mtu={p.mtu}" if p.state == "established" else ""
        if p.via:
            detail = f"{detail} relayed via {p.via}".strip()
        lines.append(f"-> {p.address:<21} {p.state:<11} {detail}".rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def _render_control(connections: Sequence[Connection], paths: Mapping[str, str]) -> str:
    lines = []
    for c in connections:
        if c.state == "established":
            path = paths.get(c.name or "", "sleeve")
            detail = f"{path} {c.peer} mtu={'?' if c.mtu is None else c.mtu}"
        else:
            detail = c.peer or c.detail or ""
        lines.append(f"{c.direction} {c.address:<21} {c.state:<11} {detail}".rstrip())
    return "\n".join(lines) + "\n"


def render_peers(r: Report) -> str:
    """Every peer with its data-path state and counters (Weave had no such counters), then its
    path, why, and when it last switched (UTC)."""
    head = f"{'PEER':<28} {'ADDRESS':<21} {'STATE':<11} {'RTT':>8} {'TX':>16} {'RX':>16} DROPS PATH"
    lines = [head]
    for p in r.peers:
        rtt = f"{p.rtt_ms:.2f}ms" if p.rtt_ms is not None else "-"
        tx = f"{p.tx_packets}p/{_bytes(p.tx_bytes)}"
        rx = f"{p.rx_packets}p/{_bytes(p.rx_bytes)}"
        drops = _counts(p.drops) or "0"
        who = f"{p.name}({p.nickname})"
        state = "relayed" if p.via else p.state
        via = f" via {p.via}" if p.via else ""
        lines.append(
            f"{who:<28} {p.address:<21} {state:<11} {rtt:>8} {tx:>16} {rx:>16} {drops} "
            f"{path_text(p)}{via}"
        )
    if r.drops:
        lines.append(f"drops (all peers): {_counts(r.drops)}")
    return "\n".join(lines) + "\n"


def path_text(p: Peer) -> str:
    """The peer's path and why, with the time of its last switch (UTC):
    "fastdp (since 12:03:04: answered steadily for 5.0s)"."""
    why = [p.path_reason] if p.path_reason else []
    if p.path_since is not None:
        why.insert(0, "since " + time.strftime("%H:%M:%S", time.gmtime(p.path_since)))
    return f"{p.path} ({': '.join(why)})" if why else p.path


def render_routes(r: Report) -> str:
    """The kernel routes of the node's table, each with the peer owning its destination."""
    lines = [f"{'DESTINATION':<20} {'VIA':<12} PEER"]
    owners = {b: f"{p.name}({p.nickname})" for p in r.peers for b in p.blocks}
    for route in r.routes:
        who = owners.get(route.destination, "-")
        lines.append(f"{route.destination!s:<20} {route.device:<12} {who}")
    return "\n".join(lines) + "\n"


def _counts(counts: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


VIEWS: dict[str, Callable[[Report], str]] = {
    "": render_status,
    "connections": render_connections,
    "peers": render_peers,
    "ipam": render_ipam,
    "routes": render_routes,
}
