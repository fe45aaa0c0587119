"""What ``kubectl logs`` shows about peers: a line per data-path event, a line per path switch
(fast path or sleeve) and a periodic table.

Every line stands alone (a log collector may show any one of them): the peer as
``name(nickname)`` with its address, the event or its state, and counts as ``key=value``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.report import Peer, Report
from gossip.rejections import printable
from overlay.paths import Path, PathSwitch
from overlay.sleeve import PeerEvent, PeerEventKind

log = logging.getLogger("weave-py")
TABLE_INTERVAL = 60.0  # seconds between peer tables


def peer_event(event: PeerEvent, mtu: int) -> None:
    """One line for a peer's data path established, lost or restarted."""
    p = event.peer
    where = f"sleeve ->[{p.address[0]}:{p.address[1]}|{p.peer_name}({p.name})]"
    if event.kind == PeerEventKind.ESTABLISHED:
        log.info("%s: data path established (%s), mtu=%d", where, event.detail, mtu)
    elif event.kind == PeerEventKind.LOST:
        log.warning("%s: data path lost: %s", where, event.detail)
    else:
        log.info("%s: peer restarted (%s)", where, event.detail)


def path_switch(switch: PathSwitch) -> None:
    """One line for a peer's pod traffic moving between the fast path and the sleeve."""
    old = Path.SLEEVE if switch.path == Path.FASTDP else Path.FASTDP
    log.info(
        "switch path: %s(%s) %s -> %s: %s",
        printable(switch.name, 40),
        printable(switch.nickname, 40),
        old.value,
        switch.path.value,
        printable(switch.reason),
    )


def table(report: Report) -> list[str]:
    """The peer table: a heading with the counts, then a line per peer."""
    established = sum(1 for p in report.peers if p.state == "established")
    fast = sum(1 for p in report.peers if p.path == Path.FASTDP)
    heading = (
        f"peer table: {len(report.peers)} peer(s), {established} established, "
        f"{fast} on the fast path; "
        f"ipam {report.ipam.status}; {report.connection_terminations} control connection(s) "
        "terminated"
    )
    return [heading, *(_row(p) for p in report.peers)]


def _row(p: Peer) -> str:
    path = f"via {p.via}" if p.via else "direct"
    rtt = f"{p.rtt_ms:.3f}ms" if p.rtt_ms is not None else "-"
    return (
        f"peer {p.name}({p.nickname}) {p.address} {p.state} {path} rtt={rtt} mtu={p.mtu} "
        f"tx={p.tx_packets}/{p.tx_bytes}B rx={p.rx_packets}/{p.rx_bytes}B "
        f"drops={sum(p.drops.values())} path={p.path} switches={p.path_switches}"
    )


def log_table(report: Report) -> None:
    """The peer table in the log, a line each."""
    for line in table(report):
        log.info("%s", line)


async def peer_tables(report: Callable[[], Report], interval: float = TABLE_INTERVAL) -> None:
    """The peer table in the log every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        log_table(report())
