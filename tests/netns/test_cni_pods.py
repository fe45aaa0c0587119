"""CNI requests on the real kernel: a scratch "node" namespace with a bridge, scratch "pod"
namespaces, the handler with the kernel PodNetwork (agent/cni/network.py: overlay/pods.py on a
thread of its own inside the node namespace, as the agent runs it) and the socket server end
to end. Pod addresses come from a dict."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.cni.handler import Handler
from agent.cni.network import KernelPodNetwork
from agent.cni.server import CniServer
from agent.cni.spec import CniError, Code
from overlay import netlink, pods
from overlay.netdev import Route
from overlay.netlink import Netlink
from overlay.netns import NETNS_DIR, run_in_netns

pytestmark = pytest.mark.netns
T = TypeVar("T")
GATEWAY = IPv4Interface("10.77.0.1/24")
HOST_LOCAL = "/usr/lib/cni/host-local"
MTU = 1376
GSO_MAX_SIZE = 62000


@dataclass
class Addresses:
    """PodAddresses in memory: the gateway's subnet, handed out in order."""

    allocations: dict[tuple[str, str], IPv4Interface] = field(default_factory=dict)

    def ready(self) -> bool:
        return True

    async def allocate(self, container_id: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        if (container_id, ifname) not in self.allocations:
            used = {a.ip for a in self.allocations.values()}
            ip = next(h for h in GATEWAY.network.hosts() if h != GATEWAY.ip and h not in used)
            self.allocations[container_id, ifname] = IPv4Interface(f"{ip}/24")
        return self.allocations[container_id, ifname], GATEWAY.ip

    async def persist(self) -> None:
        pass  # in memory only

    async def release(self, container_id: str, ifname: str | None) -> None:
        for key in [k for k in self.allocations if k[0] == container_id]:
            if ifname is None or key[1] == ifname:
                del self.allocations[key]

    def held(self) -> list[tuple[str, str]]:
        return list(self.allocations)


@dataclass
class Node:
    """The scratch node: its namespace and bridge, the addresses, the pod networks made."""

    ns: str
    bridge: str
    addresses: Addresses = field(default_factory=Addresses)
    networks: list[KernelPodNetwork] = field(default_factory=list)

    def handler(self, bridge: str | None = None) -> Handler:
        """A handler over a kernel PodNetwork whose thread is in the node's namespace."""
        network = KernelPodNetwork(bridge or self.bridge, MTU, GSO_MAX_SIZE, netns=self.ns)
        self.networks.append(network)
        return Handler(self.addresses, network)

    @property
    def allocations(self) -> dict[tuple[str, str], IPv4Interface]:
        return self.addresses.allocations


@dataclass
class Pod:
    ns: str
    fd: int

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.ns}"


@pytest.fixture
def node(scratch_netns: Callable[[str], str], run_id: str) -> Iterator[Node]:
    made = Node(scratch_netns("node"), f"wp{run_id}br")
    with Netlink(made.ns) as nl:
        nl.set_link("lo", up=True)
        nl.ensure_bridge(made.bridge)
        nl.set_link(made.bridge, mtu=MTU, up=True)
        nl.ensure_address(made.bridge, GATEWAY)
    yield made
    for network in made.networks:
        network.close()


@pytest.fixture
def make_pod(scratch_netns: Callable[[str], str]) -> Iterator[Callable[[str], Pod]]:
    opened: list[Pod] = []

    def make(suffix: str) -> Pod:
        ns = scratch_netns(suffix)
        pod = Pod(ns, os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY | os.O_CLOEXEC))
        opened.append(pod)
        return pod

    yield make
    for pod in opened:
        if pod.fd >= 0:
            os.close(pod.fd)


def conf(version: str = "1.0.0", **extra: Any) -> str:
    return json.dumps({"cniVersion": version, "name": "weave", "type": "weave-py", **extra})


def request(command: str, cid: str, pod: Pod | None, config: str | None = None,
            **fields: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "command": command,
        "container_id": cid,
        "netns": pod.path if pod else "",
        "ifname": "eth0",
        "args": "K8S_POD_NAME=web;IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
        "path": "/usr/lib/cni",
        "config": conf() if config is None else config,
    } | fields


def ip_json(ns: str, *argv: str) -> Any:
    out = subprocess.run(["ip", "-j", "-n", ns, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def in_ns(ns: str, fn: Callable[[Netlink], T]) -> T:
    """``fn`` with a Netlink inside ``ns``, on a thread of its own (pyroute2's synchronous API
    cannot run on the event loop's thread)."""

    def body() -> T:
        with Netlink() as nl:
            return fn(nl)

    return run_in_netns(ns, body)


def link_names(ns: str) -> set[str]:
    return in_ns(ns, lambda nl: {link.name for link in nl.list_links()})


def addresses(ns: str) -> list[IPv4Interface]:
    return in_ns(ns, lambda nl: nl.list_addresses("eth0"))


def host_side(cid: str, ifname: str = "eth0") -> str:
    return pods.host_ifname(pods.pod_key(cid, ifname))


def assert_no_veth(node: Node, pod: Pod | None, cid: str) -> None:
    assert host_side(cid) not in link_names(node.ns)
    if pod is not None:
        assert "eth0" not in link_names(pod.ns)


async def test_add_wires_the_pod_to_the_bridge(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    result = await node.handler().handle(request("ADD", cid, pod), pod.fd)
    assert result is not None
    host = host_side(cid)
    [link] = ip_json(pod.ns, "-d", "link", "show", "dev", "eth0")
    [host_link] = ip_json(node.ns, "link", "show", "dev", host)
    assert result["interfaces"] == [
        {"name": host, "mac": host_link["address"]},
        {"name": "eth0", "mac": link["address"], "sandbox": pod.path},
    ]
    assert result["ips"] == [{"address": "10.77.0.2/24", "gateway": "10.77.0.1", "interface": 1}]
    assert (link["mtu"], link["gso_max_size"], link["operstate"]) == (1376, 62000, "UP")
    assert (host_link["master"], host_link["mtu"]) == (node.bridge, 1376)
    assert addresses(pod.ns) == [IPv4Interface("10.77.0.2/24")]
    default = Route(pods.DEFAULT_ROUTE, "eth0", GATEWAY.ip)
    assert default in in_ns(pod.ns, lambda nl: nl.list_routes(protocol=None))
    # the loopback is the runtime's (CNI's loopback plugin): ADD leaves it alone
    loopback = in_ns(pod.ns, lambda nl: nl.link("lo"))
    assert loopback is not None and not loopback.up
    ping = subprocess.run(["ip", "netns", "exec", pod.ns, "ping", "-c1", "-W2", "10.77.0.1"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert ping.returncode == 0, ping.stdout + ping.stderr


async def test_add_twice_fails_and_keeps_the_pod(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    handler = node.handler()
    await handler.handle(request("ADD", cid, pod), pod.fd)
    with pytest.raises(CniError) as info:
        await handler.handle(request("ADD", cid, pod), pod.fd)
    assert info.value.code == Code.INTERFACE_EXISTS
    assert (cid, "eth0") in node.allocations
    assert addresses(pod.ns) == [IPv4Interface("10.77.0.2/24")]
    other = make_pod("pod2")  # another container whose pod already has an eth0
    in_ns(other.ns, lambda nl: nl.ensure_bridge("eth0"))  # any link will do
    with pytest.raises(CniError) as info:
        await handler.handle(request("ADD", f"wp{run_id}-c2", other), other.fd)
    assert info.value.code == Code.INTERFACE_EXISTS and "eth0 already exists" in info.value.msg
    assert (f"wp{run_id}-c2", "eth0") not in node.allocations


async def test_add_with_mac_and_mtu(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    config = conf("0.4.0", mtu=1300, runtimeConfig={"Mac": "0A:58:0A:4D:00:09"})
    result = await node.handler().handle(request("ADD", cid, pod, config), pod.fd)
    [link] = ip_json(pod.ns, "link", "show", "dev", "eth0")
    assert (link["address"], link["mtu"]) == ("0a:58:0a:4d:00:09", 1300)
    assert result is not None and result["interfaces"][1]["mac"] == "0a:58:0a:4d:00:09"
    assert result["ips"][0]["version"] == "4"


async def test_failed_add_leaves_nothing(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    with pytest.raises(CniError) as info:  # the veth cannot join a missing bridge
        await node.handler(bridge=f"wp{run_id}nobr").handle(request("ADD", cid, pod), pod.fd)
    assert info.value.code == Code.KERNEL and "ENODEV" in info.value.msg
    assert node.allocations == {}
    assert_no_veth(node, pod, cid)


async def test_check_verifies_the_prev_result(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    handler = node.handler()
    result = await handler.handle(request("ADD", cid, pod), pod.fd)
    check = request("CHECK", cid, pod, conf(prevResult=result))
    assert await handler.handle(check, pod.fd) is None
    in_ns(pod.ns, lambda nl: nl.remove_address("eth0", IPv4Interface("10.77.0.2/24")))
    with pytest.raises(CniError) as info:
        await handler.handle(check, pod.fd)
    assert info.value.code == Code.CHECK_FAILED
    assert "address 10.77.0.2/24 is missing on eth0" in info.value.msg
    assert "route 0.0.0.0/0 via 10.77.0.1 is missing" in info.value.msg  # went with the address
    in_ns(node.ns, lambda nl: nl.remove_link(host_side(cid)))
    with pytest.raises(CniError) as info:
        await handler.handle(check, pod.fd)
    assert "host veth" in info.value.msg and "interface eth0 is missing" in info.value.msg


async def test_del_is_idempotent(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    handler = node.handler()
    await handler.handle(request("ADD", cid, pod), pod.fd)
    assert await handler.handle(request("DEL", cid, pod), pod.fd) is None
    assert_no_veth(node, pod, cid)
    assert node.allocations == {}
    assert await handler.handle(request("DEL", cid, pod), pod.fd) is None
    assert await handler.handle(request("DEL", cid, None), None) is None  # empty CNI_NETNS


async def test_del_with_empty_netns_cleans_up(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    handler = node.handler()
    await handler.handle(request("ADD", cid, pod), pod.fd)
    assert await handler.handle(request("DEL", cid, None), None) is None
    assert_no_veth(node, pod, cid)
    assert node.allocations == {}


async def test_del_after_the_pod_netns_is_gone(node: Node, make_pod, run_id: str) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    handler = node.handler()
    await handler.handle(request("ADD", cid, pod), pod.fd)
    os.close(pod.fd)
    pod.fd = -1
    netlink.remove_netns(pod.ns)
    gone = request("DEL", cid, pod, netns_missing=True)
    assert await handler.handle(gone, None) is None
    assert await handler.handle(gone, None) is None
    assert_no_veth(node, None, cid)
    assert node.allocations == {}


@pytest.mark.skipif(not os.access(HOST_LOCAL, os.X_OK), reason="needs containernetworking-plugins")
async def test_delegated_host_local(node: Node, make_pod, run_id: str, tmp_path: Path) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    data = tmp_path / "host-local"
    ipam = {"type": "host-local", "subnet": "10.77.0.0/24", "rangeStart": "10.77.0.100",
            "dataDir": str(data)}  # fmt: skip
    config = conf("1.0.0", ipam=ipam)
    handler = node.handler()
    result = await handler.handle(request("ADD", cid, pod, config), pod.fd)
    assert result is not None
    assert result["ips"] == [{"address": "10.77.0.100/24", "gateway": "10.77.0.1", "interface": 1}]
    assert node.allocations == {}
    assert addresses(pod.ns) == [IPv4Interface("10.77.0.100/24")]
    assert (data / "weave" / "10.77.0.100").exists()
    check = request("CHECK", cid, pod, conf("1.0.0", ipam=ipam, prevResult=result))
    assert await handler.handle(check, pod.fd) is None
    assert await handler.handle(request("DEL", cid, None, config), None) is None
    assert not (data / "weave" / "10.77.0.100").exists()
    assert_no_veth(node, pod, cid)


def exchange(path: str, doc: dict[str, Any], fd: int | None) -> dict[str, Any]:
    """What the plugin does: one frame out (with the netns fd), one frame back."""
    body = json.dumps(doc).encode()
    data = struct.pack("!I", len(body)) + body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        if fd is None:
            s.sendall(data)
        else:
            socket.send_fds(s, [data], [fd])
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    (length,) = struct.unpack("!I", reply[:4])
    answer: dict[str, Any] = json.loads(reply[4 : 4 + length])
    return answer


async def test_server_end_to_end(node: Node, make_pod, run_id: str, tmp_path: Path) -> None:
    pod, cid = make_pod("pod"), f"wp{run_id}-c1"
    path = str(tmp_path / "cni.sock")
    async with CniServer(path, node.handler().handle):
        reply = await asyncio.to_thread(exchange, path, request("ADD", cid, pod), pod.fd)
        assert reply["ok"], reply
        result = reply["result"]
        assert result["ips"][0]["address"] == "10.77.0.2/24"
        assert result["interfaces"][1]["sandbox"] == pod.path
        assert addresses(pod.ns) == [IPv4Interface("10.77.0.2/24")]
        check = request("CHECK", cid, pod, conf(prevResult=result))
        reply = await asyncio.to_thread(exchange, path, check, pod.fd)
        assert reply == {"ok": True, "result": None}
        reply = await asyncio.to_thread(exchange, path, request("ADD", cid, pod), pod.fd)
        assert reply["error"]["code"] == Code.INTERFACE_EXISTS
        reply = await asyncio.to_thread(exchange, path, request("DEL", cid, None), None)
        assert reply == {"ok": True, "result": None}
        assert_no_veth(node, pod, cid)
        not_netns = os.open("/", os.O_RDONLY)
        try:
            reply = await asyncio.to_thread(exchange, path, request("ADD", cid, pod), not_netns)
        finally:
            os.close(not_netns)
        assert reply["error"]["code"] == Code.KERNEL, reply  # setns refuses a non-netns fd
        assert node.allocations == {}


def test_host_names_fit_and_differ() -> None:
    seen = set()
    for cid in ("a", "a.b", "x" * 255):
        assert host_side(cid) == pods.host_ifname(cid)  # eth0: by container id
        for ifname in ("eth0", "eth1", "net1"):
            host = host_side(cid, ifname)
            assert len(host) <= 15 and host.startswith("wp")
            seen.add(host)
    assert len(seen) == 3 * 3
