"""In-memory fakes of the CNI handler's two seams (agent/cni/seams.py: PodAddresses and
PodNetwork), sharing one call log so tests can assert the order of calls across both."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Interface

from agent import errors
from overlay import pods

FD = 42  # the fake network treats descriptors as namespace ids


def host_side(container_id: str, ifname: str) -> str:
    """The host side's name of the key's veth pair (as the kernel PodNetwork names it)."""
    return pods.host_ifname(pods.pod_key(container_id, ifname))


class FakeAddresses:
    """PodAddresses over a dict; calls are appended to the shared ``log``."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.allocations: dict[tuple[str, str], IPv4Interface] = {}
        self.next_host = 5
        self.is_ready = True
        self.persisted = 0
        self.fail_allocate: errors.Refused | None = None
        self.fail_persist: errors.Refused | None = None
        self.gate: asyncio.Event | None = None  # allocate waits on it when set

    def ready(self) -> bool:
        return self.is_ready

    async def allocate(self, container_id: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        self.log.append(f"allocate {container_id[:4]}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_allocate is not None:
            raise self.fail_allocate
        if (container_id, ifname) not in self.allocations:
            self.allocations[container_id, ifname] = IPv4Interface(f"10.32.0.{self.next_host}/24")
            self.next_host += 1
        return self.allocations[container_id, ifname], IPv4Address("10.32.0.1")

    async def persist(self) -> None:
        if self.fail_persist is not None:
            raise self.fail_persist
        self.persisted = len(self.allocations)

    async def release(self, container_id: str, ifname: str | None) -> None:
        self.log.append(f"release {container_id[:4]}")
        for key in [k for k in self.allocations if k[0] == container_id]:
            if ifname is None or key[1] == ifname:
                del self.allocations[key]

    def held(self) -> list[tuple[str, str]]:
        return list(self.allocations)


class FakeNetwork:
    """PodNetwork over dicts: namespaces (fd -> interface name -> attachment) and host veths."""

    bridge = "weave"
    mtu = 1376
    gso_max_size = 62000

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.namespaces: dict[int, dict[str, pods.Attachment]] = {FD: {}}
        self.hosts: set[str] = set()
        self.fail_attach: errors.Refused | None = None

    async def has_link(self, netns: int, ifname: str) -> bool:
        self.log.append("has_link")
        return ifname in self.namespaces[netns]

    async def attach(self, a: pods.Attachment) -> pods.Attached:
        self.log.append("attach")
        if a.ifname in self.namespaces[a.netns]:
            raise errors.InterfaceExists(f"interface {a.ifname} already exists")
        if self.fail_attach is not None:
            raise self.fail_attach
        host = host_side(a.container_id, a.ifname)
        self.hosts.add(host)
        self.namespaces[a.netns][a.ifname] = a
        return pods.Attached(host, "aa:aa:aa:aa:aa:aa", a.mac or "0a:00:00:00:00:01")

    async def detach(self, container_id: str, ifname: str) -> bool:
        self.log.append("detach")
        host = host_side(container_id, ifname)
        if host not in self.hosts:
            return False
        self.hosts.discard(host)
        for links in self.namespaces.values():
            if (a := links.get(ifname)) is not None and a.container_id == container_id:
                del links[ifname]
        return True

    async def check(self, e: pods.Expected) -> list[str]:
        self.log.append("check")
        problems = []
        host = host_side(e.container_id, e.ifname)
        if host not in self.hosts:
            problems.append(f"host veth {host} is missing")
        a = self.namespaces[e.netns].get(e.ifname)
        if a is None:
            return [*problems, f"interface {e.ifname} is missing in the pod's netns"]
        problems += [f"address {x} is missing" for x in e.addresses if x != a.address]
        return problems
