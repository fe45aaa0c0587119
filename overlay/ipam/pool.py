"""Pod addresses inside the space this node owns (sans-IO, pure data).

Theory of operation. The ring decides which address space this node owns (``set_owned``); the
pool hands out single pod addresses from it, keyed by (container id, interface name) -- the key
CNI uses. Owned space is cut into *blocks* of ``block_prefix`` bits. A block's address after its
network address is its gateway (it lives on the node's bridge), so a pod may have any address of
a block except the network, gateway and broadcast address.

Rules the module keeps:

- One key, one address; one address, one key. Allocating a held key returns its allocation
  unchanged (CNI ADD is retried); releasing a free key is a no-op (CNI DEL must succeed twice).
- Lowest first: a new key gets the lowest free address of the *active* blocks; when they are
  full, the lowest owned block not yet active becomes active. The primary block (the lowest
  block holding an address, or with none the lowest owned block) is always active, so a node
  keeps a gateway; any other block is active exactly while it holds an allocation, and space
  added below the blocks in use (reclaimed with rmpeer, say) stays free to give away.
  ``free_space`` (owned minus active) is therefore what the node can give back to the ring
  without renumbering a pod.
- Owned space never shrinks under an allocation: ``set_owned`` refuses to drop an allocated
  address. Running out is not an error: ``allocate`` returns None and the caller asks the ring
  for more space.
- Misuse (a malformed key, space or state document) raises ``PoolError``; a failed call changes
  nothing.

Cost. Owned space may be a /8, so blocks are never enumerated. An active block keeps a count, a
high-water mark (offsets at or above it are unused) and a heap of released offsets below it:
allocate and release are O(log block size). The lowest active block with a free address comes
from a heap with lazy deletion. The lowest inactive block is a binary search over the sorted
active blocks inside each owned CIDR; keeping that list sorted costs a memmove in the number of
active blocks, paid once per block activated or emptied.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from itertools import pairwise
from typing import Any

MIN_BLOCK_PREFIX = 8
MAX_BLOCK_PREFIX = 30  # a /31 or /32 block has no address left for a pod
MAX_CONTAINER_ID = 255
MAX_IFNAME = 15  # IFNAMSIZ - 1
FIRST_OFFSET = 2  # offset 0 is the block's network address, offset 1 its gateway


@dataclass(frozen=True)
class Allocation:
    """One pod address, held by the key (container id, interface name) it was given to."""

    container_id: str
    ifname: str
    address: IPv4Interface  # the pod address with the block's prefix length, e.g. 10.32.0.2/24
    gateway: IPv4Address  # the block's first address, on the node bridge


class PoolError(ValueError):
    """Misuse of the pool: a malformed key, owned space or state document."""


_CONTAINER_ID = re.compile(rf"[!-~]{{1,{MAX_CONTAINER_ID}}}")  # printable ASCII, no space


def _check_text(value: object, noun: str, named: str, limit: int) -> str:
    """``value`` as a non-empty string of at most ``limit`` characters; ``named`` is how the
    length error names it."""
    if not isinstance(value, str):
        raise PoolError(f"{noun} must be a string, got {type(value).__name__}")
    if not value:
        raise PoolError(f"{noun} is empty")
    if len(value) > limit:
        raise PoolError(f"{named} is {len(value)} characters long, at most {limit} allowed")
    return value


def _check_container_id(container_id: object) -> None:
    if isinstance(container_id, str) and _CONTAINER_ID.fullmatch(container_id):
        return
    container_id = _check_text(container_id, "container id", "container id", MAX_CONTAINER_ID)
    for index, char in enumerate(container_id):
        if not "!" <= char <= "~":
            raise PoolError(
                f"container id has {char!r} at index {index}: only printable ASCII without "
                "whitespace is allowed"
            )


def _check_ifname(ifname: object) -> None:
    ifname = _check_text(ifname, "interface name", f"interface name {ifname!r}", MAX_IFNAME)
    if ifname in (".", ".."):
        raise PoolError(f"interface name {ifname!r} is not allowed")
    for index, char in enumerate(ifname):
        if char in "/:" or char.isspace() or not char.isprintable():
            raise PoolError(
                f"interface name {ifname!r} has {char!r} at index {index}: '/', ':', "
                "whitespace and control characters are not allowed"
            )


class _Block:
    """The taken offsets of one active block, without a list of the free ones."""

    __slots__ = ("count", "high", "returned")

    def __init__(self, taken: Iterable[int] = ()) -> None:
        offsets = sorted(taken)
        held = set(offsets)
        self.count = len(offsets)
        self.high = offsets[-1] + 1 if offsets else FIRST_OFFSET  # offsets >= high are free
        self.returned = [o for o in range(FIRST_OFFSET, self.high) if o not in held]  # a heap

    def take(self) -> int:
        """The lowest free offset, now taken (the caller checks that one is free)."""
        self.count += 1
        if self.returned:
            return heapq.heappop(self.returned)
        self.high += 1
        return self.high - 1

    def give(self, offset: int) -> None:
        self.count -= 1
        if self.count == 0:
            self.high, self.returned = FIRST_OFFSET, []
        else:
            heapq.heappush(self.returned, offset)


class Pool:
    """The pod addresses of one node: allocations from the space it owns (see above)."""

    def __init__(self, block_prefix: int = 24) -> None:
        if (
            isinstance(block_prefix, bool)
            or not isinstance(block_prefix, int)
            or not MIN_BLOCK_PREFIX <= block_prefix <= MAX_BLOCK_PREFIX
        ):
            raise PoolError(
                f"block prefix must be an integer {MIN_BLOCK_PREFIX}..{MAX_BLOCK_PREFIX}, "
                f"got {block_prefix!r}"
            )
        self._prefix = block_prefix
        self._size = 1 << (32 - block_prefix)
        self._owned: tuple[IPv4Network, ...] = ()
        self._starts: list[int] = []  # network addresses of _owned
        self._keys: dict[str, dict[str, Allocation]] = {}  # container id -> ifname -> allocation
        self._holders: dict[int, tuple[str, str]] = {}  # address -> key
        self._blocks: dict[int, _Block] = {}  # active blocks by network address
        self._active: list[int] = []  # the same, sorted
        self._open: set[int] = set()  # active blocks with a free address
        self._open_heap: list[int] = []  # _open plus stale entries

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
        return tuple(IPv4Network((block, self._prefix)) for block in self._active)

    @property
    def gateways(self) -> tuple[IPv4Interface, ...]:
        """Each active block's gateway address, for the node's bridge."""
        return tuple(IPv4Interface((block + 1, self._prefix)) for block in self._active)

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
        pieces: list[IPv4Network] = []
        for net in self._owned:
            start, end = int(net.network_address), int(net.broadcast_address) + 1
            lo, hi = bisect_left(self._active, start), bisect_left(self._active, end)
            cursor = start
            for block in self._active[lo:hi]:
                pieces.extend(_range(cursor, block))
                cursor = block + self._size
            pieces.extend(_range(cursor, end))
        return list(ipaddress.collapse_addresses(pieces))

    # -- changes --------------------------------------------------------------------------

    def set_owned(self, owned: Iterable[IPv4Network]) -> None:
        """Replace the owned space; refused if it would drop an allocated address."""
        space = _check_space(owned, "owned", self._prefix)
        starts = [int(net.network_address) for net in space]
        dropped = sorted(a for a in self._holders if not _inside(space, starts, a))
        if dropped:
            first = IPv4Address(dropped[0])
            raise PoolError(
                f"new owned space drops {len(dropped)} allocated address(es), first {first} "
                f"held by {self._holders[dropped[0]]}"
            )
        self._owned, self._starts = space, starts
        primary = self._primary()
        for block, state in list(self._blocks.items()):
            if state.count == 0 and block != primary:
                self._deactivate(block)
        if primary is not None and primary not in self._blocks:
            self._activate(primary)

    def allocate(self, container_id: str, ifname: str) -> Allocation | None:
        """The key's address (the same one while held); None when owned space is full."""
        _check_container_id(container_id)
        _check_ifname(ifname)
        held = self.get(container_id, ifname)
        if held is not None:
            return held
        block = self._lowest_open()
        if block is None:
            block = self._lowest_inactive()
            if block is None:
                return None
            self._activate(block)
        address = block + self._blocks[block].take()
        self._update_open(block)
        return self._record(container_id, ifname, address)

    def release(self, container_id: str, ifname: str | None = None) -> list[Allocation]:
        """Free one interface, or with ifname None every interface, of a container."""
        _check_container_id(container_id)
        if ifname is not None:
            _check_ifname(ifname)
        held = self._keys.get(container_id)
        if held is None:
            return []
        names = list(held) if ifname is None else [ifname] if ifname in held else []
        released = [held.pop(name) for name in names]
        if not held:
            del self._keys[container_id]
        for allocation in released:
            self._free(int(allocation.address.ip))
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
        pool._owned = _check_space(owned, "state.owned", pool._prefix)
        pool._starts = [int(net.network_address) for net in pool._owned]
        taken: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            address = pool._restore(row, f"state.allocations[{index}]")
            block = address - address % pool._size
            taken.setdefault(block, []).append(address - block)
        for block, offsets in taken.items():
            pool._activate(block, offsets)
        primary = pool._primary()
        if primary is not None and primary not in pool._blocks:
            pool._activate(primary)
        return pool

    # -- internals ------------------------------------------------------------------------

    def _primary(self) -> int | None:
        """The lowest block holding an address; with none, the lowest owned block."""
        used = [block for block, state in self._blocks.items() if state.count > 0]
        if used:
            return min(used)
        return int(self._owned[0].network_address) if self._owned else None

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

    def _free(self, address: int) -> None:
        del self._holders[address]
        block = address - address % self._size
        state = self._blocks[block]
        state.give(address - block)
        if state.count == 0 and block != self._primary():
            self._deactivate(block)
            primary = self._primary()
            if primary is not None and primary not in self._blocks:
                self._activate(primary)  # no pods left: back to the lowest owned block
        else:
            self._update_open(block)

    def _restore(self, row: object, where: str) -> int:
        """Record one allocation row of a state document (blocks are built afterwards)."""
        if (
            not isinstance(row, list | tuple)
            or len(row) != 3
            or not all(isinstance(item, str) for item in row)
        ):
            raise PoolError(f"{where}: expected [container id, ifname, address], got {row!r:.80}")
        container_id, ifname, text = row
        try:
            _check_container_id(container_id)
            _check_ifname(ifname)
            address = IPv4Address(text)
        except ValueError as error:  # PoolError or AddressValueError
            raise PoolError(f"{where}: {error}") from None
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

    def _activate(self, block: int, taken: Iterable[int] = ()) -> None:
        self._blocks[block] = _Block(taken)
        insort(self._active, block)
        self._update_open(block)

    def _deactivate(self, block: int) -> None:
        del self._blocks[block]
        del self._active[bisect_left(self._active, block)]
        self._open.discard(block)

    def _update_open(self, block: int) -> None:
        state = self._blocks[block]
        if state.count >= self._size - 3:
            self._open.discard(block)
        elif block not in self._open:
            self._open.add(block)
            heapq.heappush(self._open_heap, block)
            if len(self._open_heap) > 2 * len(self._open) + 64:  # bound the stale entries
                self._open_heap = sorted(self._open)

    def _lowest_open(self) -> int | None:
        while self._open_heap and self._open_heap[0] not in self._open:
            heapq.heappop(self._open_heap)
        return self._open_heap[0] if self._open_heap else None

    def _lowest_inactive(self) -> int | None:
        """The lowest block of owned space that is not active."""
        for net in self._owned:
            start = int(net.network_address)
            lo = bisect_left(self._active, start)
            hi = bisect_left(self._active, start + net.num_addresses)
            if hi - lo == net.num_addresses // self._size:
                continue  # every block of this CIDR is active
            # active[lo + i] == start + i * size holds for a prefix of i: find where it stops
            first, last = 0, hi - lo
            while first < last:
                middle = (first + last) // 2
                if self._active[lo + middle] == start + middle * self._size:
                    first = middle + 1
                else:
                    last = middle
            return start + first * self._size
        return None


def _range(start: int, end: int) -> list[IPv4Network]:
    """The fewest CIDRs covering [start, end)."""
    if start >= end:
        return []
    return list(ipaddress.summarize_address_range(IPv4Address(start), IPv4Address(end - 1)))


def _inside(space: tuple[IPv4Network, ...], starts: list[int], address: int) -> bool:
    index = bisect_right(starts, address) - 1
    return index >= 0 and address <= int(space[index].broadcast_address)


def _check_space(owned: Iterable[object], where: str, prefix: int) -> tuple[IPv4Network, ...]:
    """Owned space, sorted: IPv4 networks (or their text), at least a block each, disjoint."""
    space: list[IPv4Network] = []
    for index, item in enumerate(owned):
        if isinstance(item, str):
            try:
                item = IPv4Network(item)
            except ValueError as error:
                raise PoolError(f"{where}[{index}]: {error}") from None
        if not isinstance(item, IPv4Network):
            raise PoolError(f"{where}[{index}]: expected an IPv4 network, got {item!r:.80}")
        if item.prefixlen > prefix:
            raise PoolError(f"{where}[{index}]: {item} is smaller than a block (/{prefix})")
        space.append(item)
    space.sort()
    for before, after in pairwise(space):
        if before.broadcast_address >= after.network_address:
            raise PoolError(f"{where}: {before} overlaps {after}")
    return tuple(space)
