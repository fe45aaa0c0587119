"""The blocks of a node's owned space that are in use, and which address each hands out next
(sans-IO, pure data; the pool in pool.py keeps who holds which address).

Owned space is cut into blocks of ``block_prefix`` bits. In a block, offset 0 is the network
address, offset 1 the gateway (on the node's bridge) and the last offset the broadcast address;
pods get the offsets from ``FIRST_OFFSET`` up to the one before the broadcast address.

Rules this module keeps:
- Lowest first: an address is taken from the lowest *active* block with one free, at its
  lowest free offset; when every active block is full, the lowest owned block not yet active
  becomes active.
- The primary block (the lowest block holding an address, or with none the lowest owned block)
  is always active, so a node keeps a gateway; any other block is active exactly while it holds
  an address, and space added below the blocks in use (reclaimed with rmpeer, say) stays free
  to give away. ``free_space`` (owned minus active) is therefore what the node can give back to
  the ring without renumbering a pod.

Cost. Owned space may be a /8, so blocks are never enumerated. An active block keeps a count, a
high-water mark (offsets at or above it are unused) and a heap of released offsets below it:
taking and giving back an address are O(log block size). The lowest active block with a free
address comes from a heap with lazy deletion. The lowest inactive block is a binary search over
the sorted active blocks inside each owned CIDR; keeping that list sorted costs a memmove in the
number of active blocks, paid once per block activated or emptied.
"""

from __future__ import annotations

import heapq
import ipaddress
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

FIRST_OFFSET = 2  # offset 0 is the block's network address, offset 1 its gateway

Space = tuple[IPv4Network, ...]  # owned space: sorted, disjoint, at least a block each


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


class ActiveBlocks:
    """The active blocks of one node's owned space, by network address (see above)."""

    def __init__(self, block_prefix: int) -> None:
        self._size = 1 << (32 - block_prefix)
        self._blocks: dict[int, _Block] = {}  # active blocks by network address
        self.active: list[int] = []  # the same, sorted
        self._open: set[int] = set()  # active blocks with a free address
        self._open_heap: list[int] = []  # _open plus stale entries

    def take(self, owned: Space) -> int | None:
        """The lowest free address of ``owned`` (activating a block if need be), now taken;
        None when ``owned`` is full."""
        block = self._lowest_open()
        if block is None:
            block = self._lowest_inactive(owned)
            if block is None:
                return None
            self._activate(block)
        address = block + self._blocks[block].take()
        self._update_open(block)
        return address

    def give(self, address: int, owned: Space) -> None:
        """Take back ``address`` (taken earlier); its block stays active only if it must."""
        block = address - address % self._size
        state = self._blocks[block]
        state.give(address - block)
        if state.count == 0 and block != self._primary(owned):
            self._deactivate(block)
            primary = self._primary(owned)
            if primary is not None and primary not in self._blocks:
                self._activate(primary)  # no pods left: back to the lowest owned block
        else:
            self._update_open(block)

    def follow(self, owned: Space) -> None:
        """``owned`` replaced the owned space (keeping every taken address): keep active only
        the primary block and the blocks holding an address."""
        primary = self._primary(owned)
        for block, state in list(self._blocks.items()):
            if state.count == 0 and block != primary:
                self._deactivate(block)
        if primary is not None and primary not in self._blocks:
            self._activate(primary)

    def restore(self, taken: Mapping[int, list[int]], owned: Space) -> None:
        """Activate the blocks of a restored pool: block -> its taken offsets, then the primary
        block if it is not among them."""
        for block, offsets in taken.items():
            self._activate(block, offsets)
        primary = self._primary(owned)
        if primary is not None and primary not in self._blocks:
            self._activate(primary)

    def free_space(self, owned: Space) -> list[IPv4Network]:
        """``owned`` minus the active blocks, as the fewest aligned CIDRs: what may go."""
        pieces: list[IPv4Network] = []
        for net in owned:
            start, end = int(net.network_address), int(net.broadcast_address) + 1
            lo, hi = bisect_left(self.active, start), bisect_left(self.active, end)
            cursor = start
            for block in self.active[lo:hi]:
                pieces.extend(_range(cursor, block))
                cursor = block + self._size
            pieces.extend(_range(cursor, end))
        return list(ipaddress.collapse_addresses(pieces))

    def _primary(self, owned: Space) -> int | None:
        """The lowest block holding an address; with none, the lowest owned block."""
        used = [block for block, state in self._blocks.items() if state.count > 0]
        if used:
            return min(used)
        return int(owned[0].network_address) if owned else None

    def _activate(self, block: int, taken: Iterable[int] = ()) -> None:
        self._blocks[block] = _Block(taken)
        insort(self.active, block)
        self._update_open(block)

    def _deactivate(self, block: int) -> None:
        del self._blocks[block]
        del self.active[bisect_left(self.active, block)]
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

    def _lowest_inactive(self, owned: Space) -> int | None:
        """The lowest block of owned space that is not active."""
        for net in owned:
            start = int(net.network_address)
            lo = bisect_left(self.active, start)
            hi = bisect_left(self.active, start + net.num_addresses)
            if hi - lo == net.num_addresses // self._size:
                continue  # every block of this CIDR is active
            # active[lo + i] == start + i * size holds for a prefix of i: find where it stops
            first, last = 0, hi - lo
            while first < last:
                middle = (first + last) // 2
                if self.active[lo + middle] == start + middle * self._size:
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
