"""The snapshot: a Report taken of the running cores for every view.

It reads the sleeve's peers and counters (with what the kernel counted on the fast path per
peer added), each peer's data path (fast path or sleeve) as path choice last decided it, the
mesh driver's control connections and how many ended, the IPAM status and the kernel routes
the last reconcile listed; the daemon passes them in, with its
router, what the node still lacks to carry pod traffic (``readiness``) and the time it has been
up, and serves the result (agent/report.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from agent import __version__
from agent.report import Connection, IpamStatus, Peer, Report, Route, Router
from overlay import netdev
from overlay.paths import Path, PathState
from overlay.peer import PeerSpec, PeerState
from overlay.sleeve import Sleeve
from overlay.traffic import ZERO, Totals, Traffic


def take(
    router: Router,
    *,
    waiting_for: tuple[str, ...],
    uptime_seconds: float,
    ipam: IpamStatus,
    sleeve: Sleeve,
    routes: Iterable[netdev.Route],
    control: Iterable[Mapping[str, str]],
    terminations: int = 0,
    rejected: Mapping[str, int] | None = None,
    paths: Mapping[str, PathState] | None = None,
    wall_offset: float = 0.0,
    traffic: Totals | None = None,
    kernel_drops: Mapping[str, int] | None = None,
) -> Report:
    """The Report of this moment. ``waiting_for``: ``readiness()``; ``routes``: ours in the
    kernel after the last reconcile; ``control``: the peer source's ``connections()`` (empty
    with static peers), ``terminations`` how many of them ended and ``rejected`` the control
    input the peer source refused, by reason. ``paths``: each peer's path by mesh name (None:
    no path choice runs, every peer is on the sleeve); ``wall_offset``: ``time.time() -
    time.monotonic()``, which turns a switch's monotonic time into unix seconds; ``traffic``:
    what the kernel carried on the fast path per peer host, added to the sleeve's counts;
    ``kernel_drops``: what the kernel dropped for us, by reason, beside the sleeve's drops (a
    reason at zero is left out, as the sleeve's are)."""
    peers = tuple(
        peer_of(state, path_of(state.spec, paths), wall_offset, fast_of(state.spec, traffic))
        for state in sleeve.peers.values()
    )
    return Report(
        version=__version__,
        ready=not waiting_for,
        waiting_for=waiting_for,
        uptime_seconds=round(uptime_seconds, 1),
        router=router,
        ipam=ipam,
        peers=peers,
        drops={**sleeve.drops, **{k: n for k, n in (kernel_drops or {}).items() if n}},
        super_packets_received=dict(sleeve.paths),
        routes=tuple(Route(r.destination, r.device) for r in routes),
        connections=connections_of(control, peers),
        connection_terminations=terminations,
        control_rejected=dict(rejected or {}),
    )


STATIC = PathState(Path.SLEEVE, "static peer")  # no mesh name: no record, no fast path
UNCHOSEN = PathState(Path.SLEEVE, "no path choice for it")


def path_of(spec: PeerSpec, paths: Mapping[str, PathState] | None) -> PathState:
    """The peer's path: path choice's for a mesh peer it knows, else the sleeve."""
    if not spec.peer_name:
        return STATIC
    return (paths or {}).get(spec.peer_name, UNCHOSEN)


def fast_of(spec: PeerSpec, traffic: Totals | None) -> Traffic:
    """The fast path's traffic with the peer: what the kernel counted for its host."""
    if traffic is None or spec.via is not None:  # a relayed peer never takes the fast path
        return ZERO
    try:
        return traffic.get(ipaddress.IPv4Address(spec.address[0]))
    except ValueError:
        return ZERO


def peer_of(
    state: PeerState, path: PathState = UNCHOSEN, wall_offset: float = 0.0, fast: Traffic = ZERO
) -> Peer:
    """A data-plane peer as the views show it: the sleeve's spec, health and counters with the
    ``fast`` path's added, and its ``path`` with the last switch in unix seconds
    (``wall_offset`` added)."""
    spec, counters = state.spec, state.counters
    since = None if path.since is None else round(path.since + wall_offset, 3)
    return Peer(
        name=spec.peer_name,
        via=None if spec.via is None else f"{spec.via[0]}:{spec.via[1]}",
        nickname=spec.name,
        address=f"{spec.address[0]}:{spec.address[1]}",
        blocks=tuple(spec.blocks),
        state="established" if state.established else "pending",
        rtt_ms=None if state.rtt is None else round(state.rtt * 1e3, 3),
        mtu=state.mtu,
        path=path.path.value,
        path_reason=path.reason,
        path_since=since,
        path_switches=path.switches,
        tx_packets=counters.tx_packets + fast.tx_packets,
        tx_bytes=counters.tx_bytes + fast.tx_bytes,
        rx_packets=counters.rx_packets + fast.rx_packets,
        rx_bytes=counters.rx_bytes + fast.rx_bytes,
        relayed=counters.relayed,
        drops=dict(counters.drops),
    )


def connections_of(
    entries: Iterable[Mapping[str, str]], peers: Sequence[Peer]
) -> tuple[Connection, ...]:
    """Control connections with Weave's states: an established one whose peer's data path is
    not established (or not known yet) is "pending"; an established one carries the data
    path's MTU."""
    by_name = {p.name: p for p in peers}
    out = []
    for entry in entries:
        peer = by_name.get(entry.get("name", ""))
        state = entry["state"]
        if state == "established" and (peer is None or peer.state != "established"):
            state = "pending"
        mtu = peer.mtu if peer is not None and state == "established" else None
        out.append(
            Connection(
                direction=entry["direction"],
                address=entry["address"],
                state=state,
                peer=entry.get("peer"),
                name=entry.get("name"),
                detail=entry.get("detail"),
                mtu=mtu,
            )
        )
    return tuple(out)
