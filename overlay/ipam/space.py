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
    out = collapse(space)
    for cut in collapse(taken):
        nxt: list[Net] = []
        for net in out:
            if not net.overlaps(cut):
                nxt.append(net)
            elif not cut.supernet_of(net):
                nxt.extend(net.address_exclude(cut))
        out = nxt
    return collapse(out)


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
