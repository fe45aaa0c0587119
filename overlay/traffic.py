"""Per-peer traffic the kernel carries on the fast path (sans-IO): what the counters of
``overlay.nft_count`` mean, and totals that only grow.

The kernel counts the VXLAN datagrams to and from each peer's host as IPv4 packets: every one
carries ``VXLAN_FRAME`` bytes of headers around the inner packet (outer IPv4, UDP, VXLAN and
the inner Ethernet header). A segmentation-offload super-packet is counted once, headers once,
as the sleeve counts its super-packets; ``inner`` takes the headers off.

A counter of the kernel starts again from zero when its set element is made again (a peer that
left and came back, our table made anew after someone changed it); ``Totals`` notices a fall
of any inner count and keeps what was counted before it, so what the views show never goes
down while the agent runs (a restart it cannot see, one whose counts have all passed the old
ones by the next reading, loses what was counted between the two readings).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, fields
from ipaddress import IPv4Address

VXLAN_FRAME = 20 + 8 + 8 + 14  # outer IPv4, UDP, VXLAN, inner Ethernet


@dataclass(frozen=True)
class Traffic:
    """Packets and bytes sent to a peer (tx) and received from it (rx)."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def fell_from(self, before: Traffic) -> bool:
        """Whether any count is below ``before``'s: the kernel's counter started again."""
        return any(getattr(self, f.name) < getattr(before, f.name) for f in fields(self))


ZERO = Traffic()


def inner(outer: Traffic) -> Traffic:
    """The inner packets' bytes of the datagrams ``outer`` counts."""
    return Traffic(
        outer.tx_packets,
        max(0, outer.tx_bytes - VXLAN_FRAME * outer.tx_packets),
        outer.rx_packets,
        max(0, outer.rx_bytes - VXLAN_FRAME * outer.rx_packets),
    )


class Totals:
    """Each host's traffic since the agent started reading, from readings of counters that may
    start again from zero."""

    def __init__(self) -> None:
        self._last: dict[IPv4Address, Traffic] = {}
        self._before: dict[IPv4Address, Traffic] = {}  # counted before each restart from zero

    def update(self, readings: Mapping[IPv4Address, Traffic], keep: Set[IPv4Address]) -> None:
        """Take one reading of the counters; hosts outside ``keep`` are forgotten (a host
        missing from a reading but kept keeps its total: its counter may come back)."""
        for host, counted in readings.items():
            now, last = inner(counted), self._last.get(host)
            if last is not None and now.fell_from(last):
                self._before[host] = self._before.get(host, ZERO) + last
            self._last[host] = now
        for host in self._last.keys() - keep:
            del self._last[host]
            self._before.pop(host, None)

    def get(self, host: IPv4Address) -> Traffic:
        """The host's inner traffic so far (zero for a host never read)."""
        return self._before.get(host, ZERO) + self._last.get(host, ZERO)


class Dropped:
    """What a kernel drop counter (the fast path's guard, overlay/nftables.py) has dropped, read
    now and then, as a total that never goes down: a reading below the last one means the
    counter started again from zero (its table was made anew), and counts in full. Drops after
    the last reading of a table that is then remade are lost."""

    def __init__(self) -> None:
        self.total = 0
        self._last = 0
        self._told = 0

    def update(self, reading: int | None) -> None:
        """Take a reading of the counter (None: none could be read; nothing changes)."""
        if reading is None:
            return
        self.total += reading - self._last if reading >= self._last else reading
        self._last = reading

    def untold(self) -> int:
        """The drops since the last call (for one log line), none again until there are more."""
        new, self._told = self.total - self._told, self.total
        return new
