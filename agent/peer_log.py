"""What ``kubectl logs`` shows about peers: a line per data-path event and a periodic table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.report import Report
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


async def peer_tables(report: Callable[[], Report], interval: float = TABLE_INTERVAL) -> None:
    """A compact peer table in the log every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        for p in report().peers:
            log.info("peer %s(%s) %s %s tx=%d rx=%d drops=%d", p.name, p.nickname, p.address,
                     p.state, p.tx_packets, p.rx_packets, sum(p.drops.values()))  # fmt: skip
