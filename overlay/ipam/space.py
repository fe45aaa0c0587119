"""Address space arithmetic over aligned IPv4 CIDRs: subtract, merge, split, measure.

Ownership is always a set of disjoint aligned CIDRs, each at least one block. Every function
here is pure and returns sorted, collapsed lists, so two peers that hold the same space write
it the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Net = ipaddress.IPv4Network


def collapse(nets: Iterable[Net]) -> list[Net]:
    """The fewest aligned CIDRs covering exactly ``nets``, sorted."""
    return sorted(ipaddress.collapse_addresses(nets))


def subtract(space: Iterable[Net], taken: Iterable[Net]) -> list[Net]:
    """``space`` minus every address of ``taken``, as the fewest aligned CIDRs."""
    out: list[tuple[int, int]] = []
    cuts = _ranges(taken)
    j = 0
    for start, end in _ranges(space):
        while j < len(cuts) and cuts[j][1] <= start:
            j += 1
        k = j
        while k < len(cuts) and cuts[k][0] < end:
            if cuts[k][0] > start:
                out.append((start, cuts[k][0]))
            start = max(start, cuts[k][1])
            k += 1
        if start < end:
            out.append((start, end))
    return _nets(out)


def intersect(a: Iterable[Net], b: Iterable[Net]) -> list[Net]:
    """The addresses in both ``a`` and ``b``, as the fewest aligned CIDRs."""
    ra, rb = _ranges(a), _ranges(b)
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(ra) and j < len(rb):
        start, end = max(ra[i][0], rb[j][0]), min(ra[i][1], rb[j][1])
        if start < end:
            out.append((start, end))
        if ra[i][1] < rb[j][1]:
            i += 1
        else:
            j += 1
    return _nets(out)


def _ranges(nets: Iterable[Net]) -> list[tuple[int, int]]:
    """``nets`` as sorted, disjoint, non-adjacent [start, end) address ranges."""
    spans = sorted((int(n.network_address), int(n.broadcast_address) + 1) for n in nets)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _nets(ranges: list[tuple[int, int]]) -> list[Net]:
    """Sorted, disjoint, non-adjacent ranges as the fewest aligned CIDRs, sorted."""
    out: list[Net] = []
    for start, end in ranges:
        first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end - 1)
        out.extend(ipaddress.summarize_address_range(first, last))
    return out


def size(nets: Iterable[Net]) -> int:
    """Addresses in ``nets`` (counted once even where they overlap)."""
    return sum(n.num_addresses for n in collapse(nets))


def overlaps(a: Iterable[Net], b: Iterable[Net]) -> bool:
    """Whether any network of ``a`` shares an address with any network of ``b``."""
    bs = list(b)
    return any(x.overlaps(y) for x in a for y in bs)


def covers(space: Iterable[Net], net: Net) -> bool:
    """Whether every address of ``net`` lies in ``space``."""
    return not subtract([net], space)


def half_of_largest(free: Iterable[Net], block_prefix: int) -> Net | None:
    """What an owner gives a peer that asks: the upper half of its largest free CIDR (lowest
    address first among equals), or the whole CIDR when it is one block; None when nothing is
    free. Giving half keeps space spread out, as Weave's ring does."""
    pieces = [n for n in collapse(free) if n.prefixlen <= block_prefix]
    if not pieces:
        return None
    largest = min(pieces, key=lambda n: (n.prefixlen, n.network_address))
    if largest.prefixlen == block_prefix:
        return largest
    return list(largest.subnets(prefixlen_diff=1))[1]
