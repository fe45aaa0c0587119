"""What the CNI handler (agent/cni.py) needs of the running agent: the bridge, the MTU, pod
addresses from IPAM, and the netlink worker thread."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from agent.daemon import Agent

T = TypeVar("T")


class CniOps:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @property
    def bridge(self) -> str:
        return self.agent.config.bridge

    @property
    def mtu(self) -> int:
        return self.agent.mtu

    @property
    def gso_max_size(self) -> int:
        return self.agent.config.gso_max_size

    async def allocate(self, cid: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        a = await self.agent.allocate_address(cid, ifname, persist=False)
        return a.address, a.gateway

    async def persist(self) -> None:
        """Make the allocations durable (before the result goes to the runtime)."""
        await self.agent.ipam.flush()

    async def release(self, cid: str, ifname: str) -> None:
        await self.agent.release_address(cid, ifname)

    def list_allocations(self) -> list[tuple[str, str]]:
        return [(a.container_id, a.ifname) for a in self.agent.ipam.pool.allocations()]

    async def netlink(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.agent.netlink(fn, *args)

    def ready(self) -> bool:
        return self.agent.ready and bool(self.agent.ipam.owned or self.agent.ipam.ring)
