"""An in-memory kernel for tests without root: network namespaces by name and by open fd,
each an ``overlay.fake_netns.FakeNetns`` (links, addresses, routes behind the netlink seam).

A namespace lives while its name or an fd refers to it, as on the kernel; ``enter`` is the
fake's ``overlay.kernel.EnterNetns``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from overlay.fake_netns import FakeNetns
from overlay.kernel import NetlinkHandle
from overlay.netdev import NetlinkFailure

T = TypeVar("T")


class FakeKernel:
    """Network namespaces in memory: ``host`` (the caller's own), named ones, open fds."""

    def __init__(self) -> None:
        self._named: dict[str, FakeNetns] = {}
        self._fds: dict[int, FakeNetns] = {}
        self._next_fd = 100
        self._next_mac = 1
        self.host = FakeNetns(self)

    def list_netns(self) -> list[str]:
        """The names of the named namespaces."""
        return sorted(self._named)

    def ensure_netns(self, name: str) -> bool:
        """Create the named namespace; False when it was there."""
        if name in self._named:
            return False
        self._named[name] = FakeNetns(self)
        return True

    def remove_netns(self, name: str) -> bool:
        """Drop the name; the namespace and its links go once no fd refers to it."""
        ns = self._named.pop(name, None)
        if ns is None:
            return False
        self._release(ns)
        return True

    def netns(self, name: str) -> FakeNetns:
        """The handle of the named namespace."""
        if name not in self._named:
            raise NetlinkFailure(f"netns {name}", errno.ENOENT)
        return self._named[name]

    def open_netns(self, name: str) -> int:
        """An fd referring to the named namespace (as ``open("/run/netns/NAME")``)."""
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = self.netns(name)
        return fd

    def close_fd(self, fd: int) -> None:
        """Close an fd from ``open_netns``."""
        ns = self._fds.pop(fd)
        self._release(ns)

    def enter(self, netns: int, fn: Callable[[NetlinkHandle], T]) -> T:
        """``overlay.kernel.EnterNetns``: ``fn`` with the handle of the namespace at fd
        ``netns``; EBADF for an fd that is not open."""
        return fn(self.resolve(netns))

    def resolve(self, target: str | int) -> FakeNetns:
        """The namespace a name or an open fd refers to."""
        if isinstance(target, str):
            return self.netns(target)
        if target not in self._fds:
            raise NetlinkFailure(f"enter netns {target}", errno.EBADF)
        return self._fds[target]

    def new_mac(self) -> str:
        """A fresh locally administered unicast MAC."""
        n = self._next_mac
        self._next_mac += 1
        return "02:" + ":".join(f"{(n >> shift) & 0xFF:02x}" for shift in (32, 24, 16, 8, 0))

    def _release(self, ns: FakeNetns) -> None:
        if ns not in self._named.values() and ns not in self._fds.values():
            ns.destroy()
