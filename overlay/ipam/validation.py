"""What the pod address pool (pool.py) accepts from its callers, checked before anything
changes: keys, block sizes, owned space and the rows of a state document.

Rules this module keeps:
- A key is (container id, interface name), the key CNI uses. A container id is 1 to
  ``MAX_CONTAINER_ID`` characters of printable ASCII without whitespace; an interface name is
  1 to ``MAX_IFNAME`` characters, not ``.`` or ``..``, without ``/``, ``:``, whitespace or
  unprintable characters.
- Blocks are /``MIN_BLOCK_PREFIX`` to /``MAX_BLOCK_PREFIX``; owned space is IPv4 networks (or
  their text), each at least one block, none overlapping another.
- Anything else is misuse: a ``PoolError`` whose message names the field and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from itertools import pairwise

MIN_BLOCK_PREFIX = 8
MAX_BLOCK_PREFIX = 30  # a /31 or /32 block has no address left for a pod
MAX_CONTAINER_ID = 255
MAX_IFNAME = 15  # IFNAMSIZ - 1


class PoolError(ValueError):
    """Misuse of the pool: a malformed key, owned space or state document."""


_CONTAINER_ID = re.compile(rf"[!-~]{{1,{MAX_CONTAINER_ID}}}")  # printable ASCII, no space


def check_block_prefix(block_prefix: object) -> None:
    """Refuse a block prefix length that is not an integer in the allowed range."""
    if (
        isinstance(block_prefix, bool)
        or not isinstance(block_prefix, int)
        or not MIN_BLOCK_PREFIX <= block_prefix <= MAX_BLOCK_PREFIX
    ):
        raise PoolError(
            f"block prefix must be an integer {MIN_BLOCK_PREFIX}..{MAX_BLOCK_PREFIX}, "
            f"got {block_prefix!r}"
        )


def check_container_id(container_id: object) -> None:
    """Refuse a container id that is not 1..255 characters of printable ASCII."""
    if isinstance(container_id, str) and _CONTAINER_ID.fullmatch(container_id):
        return
    container_id = _check_text(container_id, "container id", "container id", MAX_CONTAINER_ID)
    for index, char in enumerate(container_id):
        if not "!" <= char <= "~":
            raise PoolError(
                f"container id has {char!r} at index {index}: only printable ASCII without "
                "whitespace is allowed"
            )


def check_ifname(ifname: object) -> None:
    """Refuse an interface name that is empty, too long, ``.``, ``..`` or holds ``/``, ``:``,
    whitespace or unprintable characters."""
    ifname = _check_text(ifname, "interface name", f"interface name {ifname!r}", MAX_IFNAME)
    if ifname in (".", ".."):
        raise PoolError(f"interface name {ifname!r} is not allowed")
    for index, char in enumerate(ifname):
        if char in "/:" or char.isspace() or not char.isprintable():
            raise PoolError(
                f"interface name {ifname!r} has {char!r} at index {index}: '/', ':', "
                "whitespace and control characters are not allowed"
            )


def check_space(owned: Iterable[object], where: str, prefix: int) -> tuple[IPv4Network, ...]:
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


def check_row(row: object, where: str) -> tuple[str, str, IPv4Address]:
    """One allocation row of a state document, [container id, ifname, address], checked on
    its own (the pool checks it against the owned space and the other rows)."""
    if (
        not isinstance(row, list | tuple)
        or len(row) != 3
        or not all(isinstance(item, str) for item in row)
    ):
        raise PoolError(f"{where}: expected [container id, ifname, address], got {row!r:.80}")
    container_id, ifname, text = row
    try:
        check_container_id(container_id)
        check_ifname(ifname)
        address = IPv4Address(text)
    except ValueError as error:  # PoolError or AddressValueError
        raise PoolError(f"{where}: {error}") from None
    return container_id, ifname, address


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
