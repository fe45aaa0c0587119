"""Sans-IO core of path choice: per remote peer, the kernel fast path or the sleeve.

(The ``Paths`` core is being built; the values below are the seam the agent's views and the
probe driver speak.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum


class Path(StrEnum):
    """Which data path carries a peer's pod traffic."""

    FASTDP = "fastdp"  # kernel VXLAN on UDP 6784
    SLEEVE = "sleeve"  # the userspace sleeve on UDP 6783 (TUN)


@dataclass(frozen=True)
class Candidate:
    """A remote peer as path choice sees it. ``vtep``: its fast-path endpoint (overlay/vtep.py)
    when it may use the fast path; None when it may not, and ``reason`` says why ("fast path
    off here", "peer has no fast path", "relayed", "encrypted", ...). ``kept``: its blocks were
    routed through the fast path when this agent started, so it begins there."""

    name: str  # the mesh name "aa:bb:cc:dd:ee:ff"
    nickname: str
    vtep: ipaddress.IPv4Address | None
    reason: str = ""
    kept: bool = False


@dataclass(frozen=True)
class PathState:
    """One peer's path as views show it. ``since``: monotonic seconds of the last switch (None:
    never switched since it appeared); ``rtt``: of the last answered probe, seconds."""

    path: Path
    reason: str
    since: float | None = None
    switches: int = 0
    rtt: float | None = None
    probes_sent: int = 0
    probes_answered: int = 0


@dataclass(frozen=True)
class PathSwitch:
    """A peer's traffic moved to ``path`` because of ``reason``: logged, one line each."""

    name: str
    nickname: str
    path: Path
    reason: str
