"""A stranger host on a lab's underlay: a namespace of its own, plugged into the lab's underlay
bridge with an address no node uses. Its name starts with the lab's prefix, so ``lab down``
removes it with the rest even when the test that made it failed."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.lab.plan import UNDERLAY, LabPlan
from overlay import netlink
from overlay.netlink import Netlink
from overlay.netns import run_in_netns

T = TypeVar("T")
STRANGER_HOST = 66  # 192.168.1.66: outside the nodes' addresses (.7, .8, .9, ...)


@dataclass(frozen=True)
class StrangerHost:
    """One extra host on segment A of a lab's underlay, with nothing of weave-py in it."""

    plan: LabPlan

    @property
    def ns(self) -> str:
        """The stranger's namespace."""
        return f"{self.plan.prefix}-x"

    @property
    def address(self) -> ipaddress.IPv4Interface:
        """Its address on the underlay (192.168.1.66/24)."""
        host = UNDERLAY.network_address + STRANGER_HOST
        return ipaddress.IPv4Interface(f"{host}/{UNDERLAY.prefixlen}")

    @property
    def ip(self) -> str:
        """Its address on the underlay, as a string."""
        return str(self.address.ip)

    def build(self) -> StrangerHost:
        """The namespace, its veth into the underlay bridge, its address; returns self."""
        outer, inner = f"{self.plan.prefix}ux", f"{self.plan.prefix}ex"
        netlink.ensure_netns(self.ns)
        with Netlink(self.plan.underlay_ns) as ul:
            ul.ensure_veth(outer, inner, self.ns)
            ul.set_link(outer, master=self.plan.underlay_bridge, up=True)
        with Netlink(self.ns) as nl:
            nl.set_link("lo", up=True)
            nl.set_link(inner, up=True)
            nl.ensure_address(inner, self.address)
        return self

    def remove(self) -> None:
        """Delete the namespace (its veth goes with it)."""
        netlink.remove_netns(self.ns)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread inside the stranger's namespace."""
        return run_in_netns(self.ns, fn, *args)

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket that lives in the stranger's namespace (usable from any thread)."""
        return self.run(socket.socket, family, kind, proto)
