"""The changes a node plan makes (``overlay.node``), each executed as one netlink request.

What is already done when a change arrives -- an address there, a port or route gone -- is no
error; anything else the kernel refuses raises ``NetlinkFailure``. Links are addressed by the
indexes the plan's observation holds; a link created here is read back once, for its index.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from overlay import fastdp
from overlay.fastdp import CreateVxlan, FastdpAction, RemoveLink
from overlay.kernel import NetlinkHandle, tolerating
from overlay.netdev import Bridge, LinkChange, Masquerade, NetlinkFailure, UdpGuard
from overlay.routes import AddRoute, RemoveRoute

NAT_TABLE = "weave-py"  # our nftables table (family ip), the only one the agent creates


@dataclass(frozen=True)
class CreateBridge:
    """Create the bridge ``name``."""

    name: str


@dataclass(frozen=True)
class SetLink:
    """Set what is not None on link ``name``."""

    name: str
    mtu: int | None = None
    up: bool | None = None
    gso_max_size: int | None = None
    mac: str | None = None


@dataclass(frozen=True)
class Hairpin:
    """Turn hairpin on for ``port``, a port of the bridge (nothing when it has gone since)."""

    port: str


@dataclass(frozen=True)
class AddAddress:
    """Add ``address`` to ``device`` (with ``scope``; None: global)."""

    device: str
    address: ipaddress.IPv4Interface
    scope: int | None = None


@dataclass(frozen=True)
class RemoveAddress:
    """Remove ``address`` from ``device``."""

    device: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class ReplaceNat:
    """Make our table exactly ``rules`` and ``guard`` (one transaction)."""

    rules: tuple[Masquerade, ...]
    guard: UdpGuard | None = None


@dataclass(frozen=True)
class RemoveNat:
    """Delete our NAT table."""


Action = (
    CreateBridge | SetLink | Hairpin | AddAddress | RemoveAddress | AddRoute | RemoveRoute
    | ReplaceNat | RemoveNat | FastdpAction
)  # fmt: skip


def execute(nl: NetlinkHandle, indexes: dict[str, int], action: Action) -> None:
    """Run ``action``; ``indexes``: link names to indexes, kept up to date as links come and
    go."""
    if isinstance(action, CreateBridge):
        tolerating(lambda: nl.add_link(Bridge(action.name)), errno.EEXIST)
        indexes[action.name] = nl.index(action.name)
    elif isinstance(action, SetLink):
        change = LinkChange(
            mtu=action.mtu, up=action.up, gso_max_size=action.gso_max_size, mac=action.mac
        )
        nl.set_link_index(_index(indexes, action.name), change)
    elif isinstance(action, Hairpin):  # a pod's port may go (DEL) between look and change
        port = LinkChange(hairpin=True)
        index = _index(indexes, action.port)
        tolerating(lambda: nl.set_link_index(index, port), errno.ENODEV, errno.EOPNOTSUPP)
    elif isinstance(action, AddAddress):
        index = _index(indexes, action.device)
        add = nl.add_address_index
        tolerating(lambda: add(index, action.address, action.scope), errno.EEXIST)
    elif isinstance(action, RemoveAddress):
        index = _index(indexes, action.device)
        tolerating(lambda: nl.remove_address_index(index, action.address), errno.EADDRNOTAVAIL)
    elif isinstance(action, AddRoute | RemoveRoute):
        _execute_route(nl, indexes, action)
    elif isinstance(action, ReplaceNat):
        nl.replace_nat_table(NAT_TABLE, action.rules, action.guard)
    elif isinstance(action, RemoveNat):
        tolerating(lambda: nl.remove_nat_table(NAT_TABLE), errno.ENOENT)
    else:
        _execute_fastdp(nl, indexes, action)


def _execute_fastdp(nl: NetlinkHandle, indexes: dict[str, int], action: FastdpAction) -> None:
    fastdp.execute(nl, lambda name: _index(indexes, name), action)
    if isinstance(action, RemoveLink):
        indexes.pop(action.name, None)
    elif isinstance(action, CreateVxlan):
        indexes[action.device.name] = nl.index(action.device.name)


def _execute_route(
    nl: NetlinkHandle, indexes: dict[str, int], action: AddRoute | RemoveRoute
) -> None:
    r = action.route
    if isinstance(action, AddRoute):
        index = _index(indexes, r.device)
        nl.replace_route_index(r.destination, index, r.gateway, onlink=r.onlink)
    else:
        index = _index(indexes, r.device)
        tolerating(lambda: nl.remove_route_index(r.destination, index), errno.ESRCH)


def _index(indexes: dict[str, int], name: str) -> int:
    if name not in indexes:
        raise NetlinkFailure(f"link {name}", errno.ENODEV)
    return indexes[name]
