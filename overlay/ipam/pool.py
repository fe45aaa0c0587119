"""Pod addresses inside the space this node owns (sans-IO, pure data).

Theory of operation. The ring decides which address space this node owns (``set_owned``); the
pool hands out single pod addresses from it, keyed by (container id, interface name) -- the key
CNI uses. Owned space is cut into *blocks* of ``block_prefix`` bits; which blocks are in use and
which address each hands out next is active_blocks.py's (lowest first, a primary block always
active for the gateway). A pod may have any address of a block except the network, gateway and
broadcast address.

Rules the module keeps:

- One key, one address; one address, one key. Allocating a held key returns its allocation
  unchanged (CNI ADD is retried); releasing a free key is a no-op (CNI DEL must succeed twice).
- Owned space never shrinks under an allocation: ``set_owned`` refuses to drop an allocated
  address. Running out is not an error: ``allocate`` returns None and the caller asks the ring
  for more space.
- Misuse (a malformed key, space or state document, validation.py) raises ``PoolError``; a
  failed call changes nothing.
- ``to_state`` writes a document ``from_state`` restores exactly, checking every row against
  the owned space and the other rows.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from overlay.ipam.active_blocks import FIRST_OFFSET, ActiveBlocks
from overlay.ipam.validation import (
    PoolError,
    check_block_prefix,
    check_container_id,
    check_ifname,
    check_row,
    check_space,
)


@dataclass(frozen=True)
class Allocation:
    """One pod address, held by the key (container id, interface name) it was given to."""

    container_id: str
    ifname: str
    address: IPv4Interface  # the pod address with the block's prefix length, e.g. 10.32.0.2/24
    gateway: IPv4Address  # the block's first address, on the node bridge


class Pool:
    """The pod addresses of one node: allocations from the space it owns (see above)."""

    def __init__(self, block_prefix: int = 24) -> None:
        check_block_prefix(block_prefix)
        self._prefix = block_prefix
        self._size = 1 << (32 - block_prefix)
        self._owned: tuple[IPv4Network, ...] = ()
        self._starts: list[int] = []  # network addresses of _owned
        self._keys: dict[str, dict[str, Allocation]] = {}  # container id -> ifname -> allocation
        self._holders: dict[int, tuple[str, str]] = {}  # address -> key
        self._blocks = ActiveBlocks(block_prefix)

    # -- queries --------------------------------------------------------------------------

    @property
    def block_prefix(self) -> int:
        """The prefix length of every block (24 for /24 blocks)."""
        return self._prefix

    @property
    def owned(self) -> tuple[IPv4Network, ...]:
        """The space this node owns, sorted."""
        return self._owned

    @property
    def active_blocks(self) -> tuple[IPv4Network, ...]:
        """The blocks in use (the primary one and any holding an address), sorted."""
        return tuple(IPv4Network((block, self._prefix)) for block in self._blocks.active)

    @property
    def gateways(self) -> tuple[IPv4Interface, ...]:
        """Each active block's gateway address, for the node's bridge."""
        return tuple(IPv4Interface((block + 1, self._prefix)) for block in self._blocks.active)

    @property
    def used(self) -> int:
        """How many addresses are allocated."""
        return len(self._holders)

    @property
    def capacity(self) -> int:
        """How many pod addresses the owned space holds in all (allocated ones included)."""
        blocks = sum(net.num_addresses for net in self._owned) // self._size
        return blocks * (self._size - 3)

    def get(self, container_id: str, ifname: str) -> Allocation | None:
        """The allocation held by the key, or None."""
        return self._keys.get(container_id, {}).get(ifname)

    def holder(self, address: IPv4Address) -> tuple[str, str] | None:
        """The key (container id, interface name) holding ``address``, or None."""
        return self._holders.get(int(address))

    def allocations(self) -> list[Allocation]:
        """Every allocation, sorted by address."""
        keys = (self._holders[address] for address in sorted(self._holders))
        return [self._keys[container_id][ifname] for container_id, ifname in keys]

    def free_space(self) -> list[IPv4Network]:
        """Owned space minus the active blocks, as the fewest aligned CIDRs: what may go."""
        return self._blocks.free_space(self._owned)

    # -- changes --------------------------------------------------------------------------

    def set_owned(self, owned: Iterable[IPv4Network]) -> None:
        """Replace the owned space; refused if it would drop an allocated address."""
        space = check_space(owned, "owned", self._prefix)
        starts = [int(net.network_address) for net in space]
        dropped = sorted(a for a in self._holders if not _inside(space, starts, a))
        if dropped:
            first = IPv4Address(dropped[0])
            raise PoolError(
                f"new owned space drops {len(dropped)} allocated address(es), first {first} "
                f"held by {self._holders[dropped[0]]}"
            )
        self._owned, self._starts = space, starts
        self._blocks.follow(space)

    def allocate(self, container_id: str, ifname: str) -> Allocation | None:
        """The key's address (the same one while held); None when owned space is full."""
        check_container_id(container_id)
        check_ifname(ifname)
        held = self.get(container_id, ifname)
        if held is not None:
            return held
        address = self._blocks.take(self._owned)
        if address is None:
            return None
        return self._record(container_id, ifname, address)

    def release(self, container_id: str, ifname: str | None = None) -> list[Allocation]:
        """Free one interface, or with ifname None every interface, of a container."""
        check_container_id(container_id)
        if ifname is not None:
            check_ifname(ifname)
        held = self._keys.get(container_id)
        if held is None:
            return []
        names = list(held) if ifname is None else [ifname] if ifname in held else []
        released = [held.pop(name) for name in names]
        if not held:
            del self._keys[container_id]
        for allocation in released:
            address = int(allocation.address.ip)
            del self._holders[address]
            self._blocks.give(address, self._owned)
        return sorted(released, key=lambda allocation: allocation.address)

    # -- state documents ------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A JSON-able document ``from_state`` restores exactly."""
        return {
            "block_prefix": self._prefix,
            "owned": [str(net) for net in self._owned],
            "allocations": [
                [a.container_id, a.ifname, str(a.address.ip)] for a in self.allocations()
            ],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Pool:
        """Rebuild a pool from ``to_state``'s document; other fields are ignored."""
        if not isinstance(state, Mapping):
            raise PoolError(f"state: expected an object, got {type(state).__name__}")
        for field in ("block_prefix", "owned", "allocations"):
            if field not in state:
                raise PoolError(f"state.{field}: missing")
        try:
            pool = cls(state["block_prefix"])
        except PoolError as error:
            raise PoolError(f"state.block_prefix: {error}") from None
        owned, rows = state["owned"], state["allocations"]
        for field, value in (("owned", owned), ("allocations", rows)):
            if not isinstance(value, list):
                raise PoolError(f"state.{field}: expected a list, got {type(value).__name__}")
        pool._owned = check_space(owned, "state.owned", pool._prefix)
        pool._starts = [int(net.network_address) for net in pool._owned]
        taken: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            address = pool._restore(row, f"state.allocations[{index}]")
            block = address - address % pool._size
            taken.setdefault(block, []).append(address - block)
        pool._blocks.restore(taken, pool._owned)
        return pool

    # -- internals ------------------------------------------------------------------------

    def _record(self, container_id: str, ifname: str, address: int) -> Allocation:
        block = address - address % self._size
        allocation = Allocation(
            container_id,
            ifname,
            IPv4Interface((address, self._prefix)),
            IPv4Address(block + 1),
        )
        self._keys.setdefault(container_id, {})[ifname] = allocation
        self._holders[address] = (container_id, ifname)
        return allocation

    def _restore(self, row: object, where: str) -> int:
        """Record one allocation row of a state document (blocks are built afterwards)."""
        container_id, ifname, address = check_row(row, where)
        if not _inside(self._owned, self._starts, int(address)):
            raise PoolError(f"{where}: {address} is outside the owned space")
        offset = int(address) % self._size
        if not FIRST_OFFSET <= offset <= self._size - 2:
            block = IPv4Network((int(address) - offset, self._prefix))
            raise PoolError(
                f"{where}: {address} is the network, gateway or broadcast address of {block}"
            )
        if self.get(container_id, ifname) is not None:
            raise PoolError(f"{where}: ({container_id!r}, {ifname!r}) is listed twice")
        if int(address) in self._holders:
            raise PoolError(f"{where}: {address} is also held by {self._holders[int(address)]}")
        self._record(container_id, ifname, int(address))
        return int(address)


def _inside(space: tuple[IPv4Network, ...], starts: list[int], address: int) -> bool:
    index = bisect_right(starts, address) - 1
    return index >= 0 and address <= int(space[index].broadcast_address)
