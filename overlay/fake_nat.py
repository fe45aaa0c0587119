"""nftables tables in memory, the NAT part of ``overlay.fake_netns.FakeNetns``: by name, each
exactly our chains with their rules (and the guard's), as ``overlay.kernel.NatTables``
describes them. A replacement is atomic; removing a missing table is ENOENT, as on the kernel.
Reading one costs what it costs on the kernel: one request when it is missing, three when it
is there, five with a guard."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from overlay.netdev import Masquerade, NatTable, NetlinkFailure, UdpGuard


class FakeNatTables:
    """The tables of one namespace; ``requests`` counts what the kernel would be asked."""

    def __init__(self) -> None:
        self._nat: dict[str, NatTable] = {}
        self.requests = 0

    def nat_table(self, name: str) -> NatTable | None:
        """The table as last replaced; None when there is none."""
        found = self._nat.get(name)
        self.requests += 1 if found is None else 3 if found.guard is None else 5
        return found

    def replace_nat_table(
        self, name: str, rules: Sequence[Masquerade], guard: UdpGuard | None = None
    ) -> None:
        """Exactly our chains with ``rules`` and ``guard``."""
        self.requests += 1
        self._nat[name] = NatTable(True, tuple(rules), guard)

    def remove_nat_table(self, name: str) -> None:
        """Delete a table; ENOENT when there is none."""
        self.requests += 1
        if self._nat.pop(name, None) is None:
            raise NetlinkFailure(f"delete nat table {name}", errno.ENOENT)
