"""Longest-prefix lookup of IPv4 addresses over address blocks (sans-IO): the sleeve's
forwarding table (remote block -> peer) and its set of local blocks."""

from __future__ import annotations

import ipaddress


class BlockTable:
    """One dict per prefix length, tried longest first: a lookup costs one dict probe per
    distinct length in the table, whatever the number of blocks."""

    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, object]] = {}
        self._order: list[tuple[int, dict[int, object]]] = []

    def add(self, block: ipaddress.IPv4Network, value: object) -> None:
        """Map every address of ``block`` to ``value`` (a longer prefix wins)."""
        table = self._by_len.setdefault(block.prefixlen, {})
        table[int(block.network_address)] = value
        self._order = [
            (0xFFFFFFFF ^ ((1 << (32 - n)) - 1), self._by_len[n])
            for n in sorted(self._by_len, reverse=True)
        ]

    def lookup(self, address: int) -> object | None:
        """The value of the longest block holding ``address`` (an int), or None."""
        for mask, table in self._order:
            found = table.get(address & mask)
            if found is not None:
                return found
        return None
