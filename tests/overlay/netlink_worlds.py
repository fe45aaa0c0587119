"""The two worlds the netlink contract runs in: the in-memory fake and the real kernel (scratch
namespaces, root only). A test takes the ``world`` fixture and runs unchanged in both."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import pytest

from overlay import netlink, tun
from overlay.fake_kernel import FakeKernel
from overlay.kernel import NetlinkHandle
from overlay.netns import NETNS_DIR, run_in_netns

T = TypeVar("T")


class World(Protocol):
    """Namespaces to test in, handles on them, pod-style fds and a way into them."""

    kind: str

    def space(self, suffix: str) -> tuple[str, NetlinkHandle]:
        """A fresh namespace (removed after the test) and a handle on it."""
        ...

    def open(self, name: str) -> int:
        """An fd on the namespace ``name`` (closed after the test)."""
        ...

    def enter(self, netns: int, fn: Callable[[NetlinkHandle], T]) -> T:
        """``overlay.kernel.EnterNetns`` of this world."""
        ...

    def add_tun(self, name: str, device: str) -> None:
        """A TUN device ``device`` in namespace ``name``, as the agent's open_tun leaves it."""
        ...

    def netns_names(self) -> list[str]:
        """The named namespaces."""
        ...

    def remove_netns(self, name: str) -> bool:
        """Remove a named namespace; False when it was gone."""
        ...


class FakeWorld:
    """Everything in one ``FakeKernel``."""

    kind = "fake"

    def __init__(self) -> None:
        self.kernel = FakeKernel()

    def space(self, suffix: str) -> tuple[str, NetlinkHandle]:
        name = f"wpfake-{suffix}"
        self.kernel.ensure_netns(name)
        return name, self.kernel.netns(name)

    def open(self, name: str) -> int:
        return self.kernel.open_netns(name)

    def enter(self, netns: int, fn: Callable[[NetlinkHandle], T]) -> T:
        return self.kernel.enter(netns, fn)

    def add_tun(self, name: str, device: str) -> None:
        self.kernel.netns(name).add_device(device, "tun")

    def netns_names(self) -> list[str]:
        return self.kernel.list_netns()

    def remove_netns(self, name: str) -> bool:
        return self.kernel.remove_netns(name)


class KernelWorld:
    """Scratch namespaces ``wp<run id>-<suffix>`` on the real kernel."""

    kind = "kernel"

    def __init__(self, scratch: Callable[[str], str]) -> None:
        self._scratch = scratch
        self._handles: list[NetlinkHandle] = []
        self._fds: list[int] = []
        self._tuns: list[tun.Tun] = []

    def space(self, suffix: str) -> tuple[str, NetlinkHandle]:
        name = self._scratch(suffix)
        handle = netlink.Netlink(name)
        self._handles.append(handle)
        return name, handle

    def open(self, name: str) -> int:
        fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def enter(self, netns: int, fn: Callable[[NetlinkHandle], T]) -> T:
        return netlink.in_netns(netns, fn)

    def add_tun(self, name: str, device: str) -> None:
        self._tuns.append(run_in_netns(name, tun.open_tun, device, True, True))

    def netns_names(self) -> list[str]:
        return netlink.list_netns()

    def remove_netns(self, name: str) -> bool:
        return netlink.remove_netns(name)

    def close(self) -> None:
        for device in self._tuns:
            device.close()
        for handle in self._handles:
            handle.close()
        for fd in self._fds:
            os.close(fd)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.netns)])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """The fake, then (root only) the real kernel."""
    if request.param == "fake":
        yield FakeWorld()
        return
    kernel = KernelWorld(request.getfixturevalue("scratch_netns"))
    try:
        yield kernel
    finally:
        kernel.close()
