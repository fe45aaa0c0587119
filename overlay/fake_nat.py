"""nftables tables in memory, the NAT part of ``overlay.fake_netns.FakeNetns``: by name, each
exactly our chain with its rules, as ``overlay.kernel.NatTables`` describes them. A replacement
is atomic; removing a missing table is ENOENT, as on the kernel."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from overlay.netdev import Masquerade, NatTable, NetlinkFailure


class FakeNatTables:
    """The tables of one namespace; ``requests`` counts what the kernel would be asked."""

    def __init__(self) -> None:
        self._nat: dict[str, NatTable] = {}
        self.requests = 0

    def nat_table(self, name: str) -> NatTable | None:
        """The table as last replaced; None when there is none."""
        found = self._nat.get(name)
        self.requests += 1 if found is None else 3
        return found

    def replace_nat_table(self, name: str, rules: Sequence[Masquerade]) -> None:
        """Exactly our chain with ``rules``."""
        self.requests += 1
        self._nat[name] = NatTable(True, tuple(rules))

    def remove_nat_table(self, name: str) -> None:
        """Delete a table; ENOENT when there is none."""
        self.requests += 1
        if self._nat.pop(name, None) is None:
            raise NetlinkFailure(f"delete nat table {name}", errno.ENOENT)
