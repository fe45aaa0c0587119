"""The CNI request handler (agent/cni.py) against an in-memory node, and the socket server
(agent/cni_server.py) framing, descriptors and error replies. No root, no kernel."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent import cni, cni_server
from agent.cni import CniError, Code, Handler
from agent.ipam import IpamError
from overlay import pods
from overlay.netlink import NetlinkFailure

T = TypeVar("T")
CID = "c0ffee0000000000000000000000000000000000000000000000000000000001"
FD = 42  # the fake node treats descriptors as namespace ids
MAC = "0a:58:0a:20:00:05"


class FakeNode:
    """NodeOps over dicts: namespaces (fd -> interface names), host veths, allocations."""

    bridge = "weave"
    mtu = 1376
    gso_max_size = 62000

    def __init__(self) -> None:
        self.namespaces: dict[int, dict[str, pods.Attachment]] = {FD: {}}
        self.hosts: set[str] = set()
        self.allocations: dict[tuple[str, str], IPv4Interface] = {}
        self.next_host = 5
        self.is_ready = True
        self.fail_attach: BaseException | None = None
        self.fail_allocate: BaseException | None = None
        self.gate: asyncio.Event | None = None  # allocate waits on it when set
        self.log: list[str] = []

    async def allocate(self, cid: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        self.log.append(f"allocate {cid[:4]}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_allocate is not None:
            raise self.fail_allocate
        if (cid, ifname) not in self.allocations:
            self.allocations[cid, ifname] = IPv4Interface(f"10.32.0.{self.next_host}/24")
            self.next_host += 1
        return self.allocations[cid, ifname], IPv4Address("10.32.0.1")

    async def persist(self) -> None:
        self.persisted = len(self.allocations)

    async def release(self, cid: str, ifname: str) -> None:
        self.log.append(f"release {cid[:4]}")
        self.allocations.pop((cid, ifname), None)

    def list_allocations(self) -> list[tuple[str, str]]:
        return list(self.allocations)

    async def netlink(self, fn: Callable[..., T], *args: Any) -> T:
        self.log.append(fn.__name__)
        result: T = getattr(self, f"fake_{fn.__name__}")(*args)
        return result

    def ready(self) -> bool:
        return self.is_ready

    # -- overlay/pods.py, in memory --------------------------------------------------------

    def fake_has_link(self, fd: int, ifname: str) -> bool:
        return ifname in self.namespaces[fd]

    def fake_attach(self, a: pods.Attachment) -> pods.Attached:
        if a.ifname in self.namespaces[a.netns]:
            raise pods.InterfaceExists(f"interface {a.ifname} already exists")
        if self.fail_attach is not None:
            raise self.fail_attach
        host, _ = pods.veth_names(a.container_id, a.ifname)
        self.hosts.add(host)
        self.namespaces[a.netns][a.ifname] = a
        return pods.Attached(host, "aa:aa:aa:aa:aa:aa", a.mac or "0a:00:00:00:00:01")

    def fake_detach(self, cid: str, ifname: str) -> bool:
        host, _ = pods.veth_names(cid, ifname)
        if host not in self.hosts:
            return False
        self.hosts.discard(host)
        for links in self.namespaces.values():
            if (a := links.get(ifname)) is not None and a.container_id == cid:
                del links[ifname]
        return True

    def fake_check(self, e: pods.Expected) -> list[str]:
        problems = []
        host, _ = pods.veth_names(e.container_id, e.ifname)
        if host not in self.hosts:
            problems.append(f"host veth {host} is missing")
        a = self.namespaces[e.netns].get(e.ifname)
        if a is None:
            return [*problems, f"interface {e.ifname} is missing in the pod's netns"]
        problems += [f"address {x} is missing" for x in e.addresses if x != a.address]
        return problems


def conf(version: str = "1.0.0", **extra: Any) -> str:
    return json.dumps({"cniVersion": version, "name": "weave", "type": "weave-py", **extra})


def request(command: str = "ADD", config: str | None = None, **fields: Any) -> dict[str, Any]:
    frame = {
        "command": command,
        "container_id": CID,
        "netns": "/var/run/netns/cni-1234",
        "ifname": "eth0",
        "args": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        "path": "/opt/cni/bin",
        "config": conf() if config is None else config,
    }
    return frame | fields


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def handler(node: FakeNode) -> Handler:
    return Handler(node)


async def fails(handler: Handler, frame: dict[str, Any], fd: int | None = FD) -> CniError:
    with pytest.raises(CniError) as info:
        await handler.handle(frame, fd)
    return info.value


# -- configuration, environment, arguments -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", Code.DECODE),
        ("[1, 2]", Code.DECODE),
        ("[" * 100_000, Code.DECODE),
        (conf("0.5.0"), Code.INCOMPATIBLE_VERSION),
        (conf(cniVersion=1), Code.INVALID_CONFIG),
        (json.dumps({"cniVersion": "1.0.0", "type": "weave-py"}), Code.INVALID_CONFIG),
        (conf(name="-leading-dash"), Code.INVALID_CONFIG),
        (json.dumps({"cniVersion": "1.0.0", "name": "weave"}), Code.INVALID_CONFIG),
        (conf(mtu="1400"), Code.INVALID_CONFIG),
        (conf(mtu=True), Code.INVALID_CONFIG),
        (conf(mtu=20), Code.INVALID_CONFIG),
        (conf(ipam="host-local"), Code.INVALID_CONFIG),
        (conf(ipam={"type": "../evil"}), Code.INVALID_CONFIG),
        (conf(runtimeConfig=[]), Code.INVALID_CONFIG),
        (conf(runtimeConfig={"mac": "01:00:5e:00:00:01"}), Code.INVALID_CONFIG),  # multicast
        (conf(runtimeConfig={"mac": "nonsense"}), Code.INVALID_CONFIG),
        (conf(prevResult="x"), Code.INVALID_CONFIG),
        (conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": 1}]}), Code.INVALID_CONFIG),
    ],
)
def test_config_errors_carry_the_spec_code(text: str, code: Code) -> None:
    with pytest.raises(CniError) as info:
        cni.parse_config(text)
    assert info.value.code == code


def test_config_tolerates_unknown_keys_and_defaults_the_version() -> None:
    parsed = cni.parse_config(
        json.dumps(
            {
                "name": "weave",
                "type": "weave-py",
                "capabilities": {"portMappings": True},
                "args": {"cni": {"labels": []}},
                "somethingNew": 1,
                "ipam": {"type": "weave-py"},
                "mtu": 1400,
            }
        )
    )
    assert parsed.version == "0.1.0"  # libcni's default
    assert parsed.ipam_type is None
    assert parsed.mtu == 1400


def test_unsupported_version_names_the_supported_ones() -> None:
    with pytest.raises(CniError) as info:
        cni.parse_config(conf("2.0.0"))
    assert "1.1.0" in info.value.details and "0.1.0" in info.value.details


def test_runtime_config_keys_match_case_insensitively() -> None:
    runtime = {"MAC": MAC.upper(), "PortMappings": [{"HostPort": 80, "ContainerPort": 8080}]}
    parsed = cni.parse_config(conf(runtimeConfig=runtime | {"Bandwidth": {}, "DNS": {}}))
    assert parsed.mac == MAC


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        (request(netns=""), Code.INVALID_ENV, "CNI_NETNS"),
        (request(container_id="", ifname=""), Code.INVALID_ENV, "CNI_CONTAINERID CNI_IFNAME"),
        (request("DEL", ifname=""), Code.INVALID_ENV, "CNI_IFNAME"),
        (request("VERSION"), Code.INVALID_ENV, "VERSION"),
        (request(ifname="a-much-too-long-name"), Code.INVALID_ENV, "CNI_IFNAME"),
        (request(ifname="eth/0"), Code.INVALID_ENV, "CNI_IFNAME"),
        (request(container_id="-dash"), Code.INVALID_ENV, "CNI_CONTAINERID"),
        (request("DEL", container_id="a/b"), Code.INVALID_ENV, "CNI_CONTAINERID"),
        (request(netns=7), Code.DECODE, "netns"),
        (request(netns_missing="yes"), Code.DECODE, "netns_missing"),
        (request(args="K8S_POD_NAME=web;garbage"), Code.INVALID_ENV, "CNI_ARGS"),
    ],
)
async def test_request_errors_name_the_variable(
    handler: Handler, frame: dict[str, Any], code: Code, text: str
) -> None:
    error = await fails(handler, frame)
    assert error.code == code
    assert text in error.msg


def test_cni_args_in_any_order() -> None:
    a = cni.parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;;MAC=0a:58:0a:20:00:05;X=a=b")
    b = cni.parse_args("X=a=b;MAC=0a:58:0a:20:00:05;K8S_POD_NAME=web;IgnoreUnknown=1;")
    assert a == b == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "MAC": MAC, "X": "a=b"}


# -- ADD ------------------------------------------------------------------------------------


async def test_add_wires_the_pod_and_answers_in_1_0_0(handler: Handler, node: FakeNode) -> None:
    result = await handler.handle(request(), FD)
    host, _ = pods.veth_names(CID, "eth0")
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": host, "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "eth0", "mac": "0a:00:00:00:00:01", "sandbox": "/var/run/netns/cni-1234"},
        ],
        "ips": [{"address": "10.32.0.5/24", "gateway": "10.32.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        "dns": {},
    }
    a = node.namespaces[FD]["eth0"]
    assert (a.bridge, a.mtu, a.gso_max_size, a.mac) == ("weave", 1376, 62000, None)
    assert a.routes == ()


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
async def test_add_result_0_3_and_0_4_carry_ip_versions(handler: Handler, version: str) -> None:
    result = await handler.handle(request(config=conf(version)), FD)
    assert result is not None
    assert result["cniVersion"] == version
    assert result["ips"] == [
        {"version": "4", "address": "10.32.0.5/24", "gateway": "10.32.0.1", "interface": 1}
    ]
    assert len(result["interfaces"]) == 2


async def test_add_result_1_1_0_is_shaped_like_1_0_0(handler: Handler) -> None:
    result = await handler.handle(request(config=conf("1.1.0")), FD)
    assert result is not None
    assert result["cniVersion"] == "1.1.0"
    assert "version" not in result["ips"][0]


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
async def test_add_result_0_1_and_0_2_use_ip4(handler: Handler, version: str) -> None:
    result = await handler.handle(request(config=conf(version)), FD)
    assert result == {
        "cniVersion": version,
        "ip4": {
            "ip": "10.32.0.5/24",
            "gateway": "10.32.0.1",
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        },
        "dns": {},
    }


async def test_add_carries_prev_result_and_reindexes(handler: Handler) -> None:
    prev: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0", "sandbox": "/var/run/netns/cni-1234"}],
        "ips": [{"address": "192.168.9.9/32", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }
    result = await handler.handle(request(config=conf(prevResult=prev)), FD)
    assert result is not None
    assert [i["name"] for i in result["interfaces"]][0::2] == ["lo0", "eth0"]
    assert result["ips"][0] == prev["ips"][0]
    assert result["ips"][1]["interface"] == 2
    assert result["interfaces"][2]["name"] == "eth0"
    assert result["routes"] == [prev["routes"][0], {"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]
    assert result["dns"] == prev["dns"]


@pytest.mark.parametrize(
    "frame",
    [
        request(args="MAC=0a:58:0a:20:00:05;IgnoreUnknown=1;K8S_POD_NAME=web"),
        request(args="K8S_POD_NAME=web;IgnoreUnknown=1;MAC=0a:58:0a:20:00:05"),
        request(config=conf(runtimeConfig={"Mac": MAC})),
        request(config=conf(runtimeConfig={"mac": MAC}), args="MAC=0a:58:0a:20:00:99"),
    ],
)
async def test_add_sets_the_requested_mac(
    handler: Handler, node: FakeNode, frame: dict[str, Any]
) -> None:
    result = await handler.handle(frame, FD)
    assert result is not None and result["interfaces"][1]["mac"] == MAC
    assert node.namespaces[FD]["eth0"].mac == MAC


async def test_add_uses_the_configured_mtu(handler: Handler, node: FakeNode) -> None:
    await handler.handle(request(config=conf(mtu=1300)), FD)
    assert node.namespaces[FD]["eth0"].mtu == 1300


async def test_add_refuses_an_existing_interface_and_keeps_its_address(
    handler: Handler, node: FakeNode
) -> None:
    await handler.handle(request(), FD)
    before = len(node.log)
    error = await fails(handler, request())
    assert error.code == Code.INTERFACE_EXISTS
    assert "eth0 already exists" in error.msg
    # the idempotent allocation hands back the live pod's address; attach refuses and
    # touches nothing; nothing is released or detached afterwards
    assert node.log[before:] == [f"allocate {CID[:4]}", "attach"]
    assert (CID, "eth0") in node.allocations  # the live pod keeps its address
    assert "eth0" in node.namespaces[FD]


async def test_add_undoes_everything_when_the_kernel_refuses(
    handler: Handler, node: FakeNode
) -> None:
    node.fail_attach = NetlinkFailure("add link wp0123", errno.EPERM)
    error = await fails(handler, request())
    assert (error.code, error.msg) == (Code.KERNEL, "add link wp0123: EPERM")
    assert node.allocations == {}
    assert node.log[-2:] == ["detach", "release c0ff"]


@pytest.mark.parametrize(
    ("ipam_code", "code"),
    [
        (504, Code.TRY_AGAIN_LATER),
        (503, Code.TRY_AGAIN_LATER),
        (507, Code.NO_ADDRESS),
        (400, Code.INVALID_ENV),
        (409, Code.IPAM),
    ],
)
async def test_add_maps_ipam_errors(
    handler: Handler, node: FakeNode, ipam_code: int, code: Code
) -> None:
    node.fail_allocate = IpamError(ipam_code, "no free address: block is full")
    error = await fails(handler, request())
    assert (error.code, error.msg) == (code, "no free address: block is full")
    assert node.hosts == set()


async def test_add_without_a_netns_descriptor(handler: Handler) -> None:
    error = await fails(handler, request(netns_missing=True), fd=None)
    assert error.code == Code.NETNS
    assert "/var/run/netns/cni-1234" in error.msg


@pytest.mark.parametrize(
    "frame",
    [request(args="IP=10.32.0.9"), request(config=conf(runtimeConfig={"IPs": ["10.32.0.9/24"]}))],
)
async def test_add_refuses_requested_addresses_with_own_ipam(
    handler: Handler, frame: dict[str, Any]
) -> None:
    assert (await fails(handler, frame)).code == Code.UNSUPPORTED_FIELD


# -- DEL --------------------------------------------------------------------------------------


async def test_del_undoes_add_and_succeeds_again(handler: Handler, node: FakeNode) -> None:
    await handler.handle(request(), FD)
    assert await handler.handle(request("DEL"), FD) is None
    assert (node.allocations, node.hosts, node.namespaces[FD]) == ({}, set(), {})
    assert await handler.handle(request("DEL"), FD) is None
    assert await handler.handle(request("DEL", netns=""), None) is None


async def test_del_without_netns_and_for_unknown_containers(
    handler: Handler, node: FakeNode
) -> None:
    await handler.handle(request(), FD)
    assert await handler.handle(request("DEL", netns="", netns_missing=True), None) is None
    assert (node.allocations, node.hosts) == ({}, set())
    assert await handler.handle(request("DEL", container_id="never-added"), None) is None


async def test_del_cleans_a_half_done_add(handler: Handler, node: FakeNode) -> None:
    await node.allocate(CID, "eth0")
    node.hosts.add(pods.veth_names(CID, "eth0")[0])
    await handler.handle(request("DEL", config=conf("0.4.0")), None)
    assert (node.allocations, node.hosts) == ({}, set())


# -- CHECK ------------------------------------------------------------------------------------


async def test_check_passes_after_add(handler: Handler) -> None:
    result = await handler.handle(request(), FD)
    assert await handler.handle(request("CHECK", config=conf(prevResult=result)), FD) is None


async def test_check_needs_prev_result_and_version(handler: Handler) -> None:
    await handler.handle(request(), FD)
    error = await fails(handler, request("CHECK"))
    assert (error.code, error.msg) == (Code.PREV_RESULT_MISSING, "Required prevResult missing")
    error = await fails(handler, request("CHECK", config=conf("0.3.1", prevResult={})))
    assert error.code == Code.INCOMPATIBLE_VERSION


async def test_check_names_what_is_missing(handler: Handler, node: FakeNode) -> None:
    result = await handler.handle(request(), FD)
    node.hosts.clear()
    error = await fails(handler, request("CHECK", config=conf(prevResult=result)))
    assert error.code == Code.CHECK_FAILED
    assert "host veth" in error.msg and "missing" in error.msg
    node.allocations.clear()
    error = await fails(handler, request("CHECK", config=conf(prevResult=result)))
    assert "no address is allocated" in error.msg
    error = await fails(handler, request("CHECK", config=conf(prevResult={"interfaces": []})))
    assert "prevResult has no interface eth0" in error.msg


# -- GC and STATUS --------------------------------------------------------------------------------


async def test_gc_releases_what_is_not_listed(handler: Handler, node: FakeNode) -> None:
    for cid in ("keep", "drop1", "drop2"):
        node.namespaces[FD].clear()
        await handler.handle(request(container_id=cid), FD)
    valid = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "other", "ifname": "x"}]
    gc = conf("1.1.0", **{"cni.dev/valid-attachments": valid})
    assert await handler.handle(request("GC", config=gc, container_id="", ifname=""), None) is None
    assert node.list_allocations() == [("keep", "eth0")]
    assert node.hosts == {pods.veth_names("keep", "eth0")[0]}
    await handler.handle(request("GC", config=conf("1.1.0")), None)  # missing list: none valid
    assert (node.allocations, node.hosts) == ({}, set())


async def test_gc_skips_a_container_being_worked_on(handler: Handler, node: FakeNode) -> None:
    await node.allocate("busy", "eth0")
    node.gate = asyncio.Event()
    add = asyncio.create_task(handler.handle(request(container_id="busy"), FD))
    await asyncio.sleep(0)
    await handler.handle(request("GC", config=conf("1.1.0")), None)
    assert ("busy", "eth0") in node.allocations
    node.gate.set()
    await add


async def test_gc_and_status_need_1_1_0(handler: Handler) -> None:
    assert (await fails(handler, request("GC"), None)).code == Code.INCOMPATIBLE_VERSION
    assert (await fails(handler, request("STATUS"), None)).code == Code.INCOMPATIBLE_VERSION


async def test_status_follows_readiness(handler: Handler, node: FakeNode) -> None:
    status = request("STATUS", config=conf("1.1.0"), container_id="", netns="", ifname="")
    assert await handler.handle(status, None) is None
    node.is_ready = False
    assert (await fails(handler, status, None)).code == Code.NOT_READY
    assert (await fails(handler, request())).code == Code.TRY_AGAIN_LATER  # ADD waits too
    assert node.log == []
    assert await handler.handle(request("DEL"), None) is None  # DEL never waits


# -- concurrency ----------------------------------------------------------------------------


async def test_one_container_at_a_time_others_interleave(handler: Handler, node: FakeNode) -> None:
    node.gate = asyncio.Event()
    add = asyncio.create_task(handler.handle(request(), FD))
    delete = asyncio.create_task(handler.handle(request("DEL"), None))
    node.namespaces[43] = {}
    other = asyncio.create_task(handler.handle(request(container_id="other"), 43))
    await asyncio.sleep(0.01)
    assert node.log.count("allocate c0ff") == 1 and "allocate othe" in node.log
    assert "detach" not in node.log  # DEL waits for the ADD of its container
    node.gate.set()
    await asyncio.gather(add, delete, other)
    assert node.list_allocations() == [("other", "eth0")]
    assert not handler._slots  # locks go with their last user


# -- delegated IPAM ---------------------------------------------------------------------------


class FakePlugin:
    """A Delegate that answers like host-local."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes, int | None]] = []
        self.answers = answers or {}

    async def __call__(self, plugin: str, env: Any, stdin: bytes, fd: int | None) -> Any:
        self.calls.append((plugin, dict(env), stdin, fd))
        answer = self.answers.get(env["CNI_COMMAND"])
        if isinstance(answer, CniError):
            raise answer
        return answer


DELEGATED = conf("0.4.0", ipam={"type": "host-local", "subnet": "10.99.0.0/24"})
HOST_LOCAL = {
    "cniVersion": "0.4.0",
    "ips": [
        {"version": "6", "address": "fd00::2/64"},
        {"version": "4", "address": "10.99.0.2/24", "gateway": "10.99.0.1"},
    ],
    "routes": [{"dst": "10.100.0.0/16"}, {"dst": "10.101.0.0/16", "gw": "10.99.0.254"}],
    "dns": {"nameservers": ["10.99.0.53"]},
}


async def test_add_delegates_ipam_with_the_same_env(node: FakeNode) -> None:
    plugin = FakePlugin({"ADD": HOST_LOCAL})
    result = await Handler(node, plugin).handle(request(config=DELEGATED), FD)
    name, env, stdin, fd = plugin.calls[0]
    assert (name, stdin, fd) == ("host-local", DELEGATED.encode(), FD)
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": CID,
        "CNI_NETNS": f"/proc/self/fd/{FD}",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        "CNI_PATH": "/opt/cni/bin",
    }
    assert node.allocations == {}
    a = node.namespaces[FD]["eth0"]
    assert (str(a.address), str(a.gateway)) == ("10.99.0.2/24", "10.99.0.1")
    assert [(str(d), str(g)) for d, g in a.routes] == [
        ("10.100.0.0/16", "10.99.0.1"),
        ("10.101.0.0/16", "10.99.0.254"),
    ]
    assert result is not None
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}, *HOST_LOCAL["routes"]]
    assert result["dns"] == HOST_LOCAL["dns"]


async def test_delegated_add_failure_dels_the_delegate(node: FakeNode) -> None:
    plugin = FakePlugin({"ADD": HOST_LOCAL})
    node.fail_attach = NetlinkFailure("move link", errno.EINVAL)
    await fails(Handler(node, plugin), request(config=DELEGATED))
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["ADD", "DEL"]
    plugin = FakePlugin({"ADD": {"ips": [{"address": "fd00::2/64"}]}})
    error = await fails(Handler(node, plugin), request(config=DELEGATED))
    assert error.code == Code.DELEGATE and "no IPv4 address" in error.msg
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["ADD", "DEL"]


async def test_delegate_errors_pass_through_and_del_delegates(node: FakeNode) -> None:
    plugin = FakePlugin({"ADD": CniError(11, "no IP addresses available in range set")})
    error = await fails(Handler(node, plugin), request(config=DELEGATED))
    assert (error.code, error.msg) == (11, "no IP addresses available in range set")
    assert node.hosts == set()
    await Handler(node, plugin).handle(request("DEL", config=DELEGATED, netns=""), None)
    assert plugin.calls[-1][1]["CNI_COMMAND"] == "DEL"
    assert plugin.calls[-1][1]["CNI_NETNS"] == ""


async def test_delegated_gc_only_when_the_plugin_supports_it(node: FakeNode) -> None:
    gc = request("GC", config=conf("1.1.0", ipam={"type": "host-local"}))
    plugin = FakePlugin({"VERSION": {"supportedVersions": ["0.4.0", "1.0.0"]}})
    await Handler(node, plugin).handle(gc, None)
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["VERSION"]
    plugin = FakePlugin({"VERSION": {"supportedVersions": ["1.0.0", "1.1.0"]}})
    await Handler(node, plugin).handle(gc, None)
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["VERSION", "GC"]


def test_ipam_result_of_every_shape() -> None:
    old = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.7/16", "routes": [{"dst": "0.0.0.0/0"}]}}
    a = cni.parse_ipam_result(old, "x")
    assert (str(a.address), str(a.gateway), a.routes) == (
        "10.1.0.7/16",
        "10.1.0.1",  # no gateway given: the subnet's first address
        ((cni.DEFAULT_ROUTE, None),),
    )
    with pytest.raises(CniError) as info:
        cni.parse_ipam_result({"ips": [{"address": "not-an-address"}]}, "x")
    assert info.value.code == Code.DELEGATE


def write_plugin(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def test_exec_plugin_runs_from_cni_path(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "echo-ipam",
        'cat >/dev/null\necho "{\\"cmd\\": \\"$CNI_COMMAND\\", \\"netns\\": \\"$CNI_NETNS\\"}"\n',
    )
    write_plugin(
        tmp_path, "bad-ipam", 'echo \'{"code": 11, "msg": "busy", "details": "d"}\'\nexit 1\n'
    )
    write_plugin(tmp_path, "crash-ipam", "echo oops >&2\nexit 2\n")
    env = {"CNI_COMMAND": "ADD", "CNI_NETNS": "/proc/self/fd/0", "CNI_PATH": f"/nowhere:{tmp_path}"}
    doc = await cni.exec_plugin("echo-ipam", env, b"{}", None)
    assert doc == {"cmd": "ADD", "netns": "/proc/self/fd/0"}
    with pytest.raises(CniError) as info:
        await cni.exec_plugin("bad-ipam", env, b"{}", None)
    assert (info.value.code, info.value.msg, info.value.details) == (11, "busy", "d")
    with pytest.raises(CniError) as info:
        await cni.exec_plugin("crash-ipam", env, b"{}", None)
    assert (info.value.code, info.value.details) == (Code.DELEGATE, "oops")
    with pytest.raises(CniError) as info:
        await cni.exec_plugin("host-local", env, b"{}", None)
    assert info.value.code == Code.DELEGATE and "failed to find plugin" in info.value.msg


# -- the socket server ------------------------------------------------------------------------


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "cni.sock")


def frame_bytes(doc: Any) -> bytes:
    body = json.dumps(doc).encode()
    return struct.pack("!I", len(body)) + body


def exchange(path: str, data: bytes, fds: Sequence[int] = (), shut: bool = False) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        if fds:
            socket.send_fds(s, [data], list(fds))
        else:
            s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    (length,) = struct.unpack("!I", reply[:4])
    assert len(reply) == 4 + length
    doc: dict[str, Any] = json.loads(reply[4:])
    return doc


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], int | None, bool]] = []

    async def __call__(self, request: dict[str, Any], fd: int | None) -> dict[str, Any] | None:
        self.seen.append((request, fd, fd is not None and _is_open(fd)))
        if request.get("command") == "BOOM":
            raise RuntimeError("kaboom")
        if request.get("command") == "FAIL":
            raise CniError(Code.TRY_AGAIN_LATER, "later", "busy")
        return {"echo": request}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_server_round_trip_with_a_descriptor(socket_path: str) -> None:
    record = Recorder()
    async with cni_server.CniServer(socket_path, record):
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        r, w = os.pipe()
        try:
            reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"a": 1}), [r])
        finally:
            os.close(r)
            os.close(w)
        assert reply == {"ok": True, "result": {"echo": {"a": 1}}}
        _, fd, was_open = record.seen[0]
        assert fd is not None and was_open
        assert not _is_open(fd)  # closed once handled
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"command": "FAIL"}))
        assert reply == {"ok": False, "error": {"code": 11, "msg": "later", "details": "busy"}}
        assert record.seen[-1][1] is None
    assert not os.path.exists(socket_path)


async def test_server_replaces_a_stale_socket_file(socket_path: str) -> None:
    Path(socket_path).write_text("stale")
    async with cni_server.CniServer(socket_path, Recorder()):
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({}))
        assert reply["ok"]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (struct.pack("!I", cni_server.MAX_FRAME + 1), "exceeds"),
        (struct.pack("!I", 3) + b"{{{", "not JSON"),
        (struct.pack("!I", 2) + b"\xff\xfe", "not JSON"),
        (frame_bytes([1, 2]), "not a JSON object"),
        (struct.pack("!I", 10) + b"{}", "closed after 2 of 10"),
        (b"\x00\x00", "closed after 2 of 4"),
    ],
)
async def test_server_answers_malformed_frames_and_keeps_serving(
    socket_path: str, data: bytes, text: str
) -> None:
    async with cni_server.CniServer(socket_path, Recorder()):
        reply = await asyncio.to_thread(exchange, socket_path, data, shut=True)
        assert reply["ok"] is False and reply["error"]["code"] == Code.DECODE
        assert text in reply["error"]["msg"]
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"x": 1}))
        assert reply["ok"]


async def test_server_refuses_several_descriptors_and_closes_them(socket_path: str) -> None:
    record = Recorder()
    async with cni_server.CniServer(socket_path, record):
        r, w = os.pipe()
        try:
            reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({}), [r, w])
        finally:
            os.close(r)
            os.close(w)
        assert reply["error"]["code"] == Code.DECODE and "2 descriptors" in reply["error"]["msg"]
        assert record.seen == []


async def test_server_times_out_a_silent_client(socket_path: str) -> None:
    async with cni_server.CniServer(socket_path, Recorder(), read_timeout=0.1):
        reply = await asyncio.to_thread(exchange, socket_path, b"\x00\x00\x00\x05{")
        assert reply["error"]["code"] == Code.DECODE and "within 0.1s" in reply["error"]["msg"]


async def test_server_reports_handler_crashes_as_code_100(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cni_server.CniServer(socket_path, Recorder()):
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"command": "BOOM"}))
        assert reply == {
            "ok": False,
            "error": {"code": 100, "msg": "RuntimeError: kaboom", "details": ""},
        }
        assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({}))
        assert reply["ok"]


async def test_server_serves_concurrent_clients(socket_path: str) -> None:
    async def slow(request: dict[str, Any], fd: int | None) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return request

    async with cni_server.CniServer(socket_path, slow):
        started = asyncio.get_running_loop().time()
        replies = await asyncio.gather(
            *(asyncio.to_thread(exchange, socket_path, frame_bytes({"n": n})) for n in range(8))
        )
        assert [r["result"]["n"] for r in replies] == list(range(8))
        assert asyncio.get_running_loop().time() - started < 1.5


async def test_server_with_the_handler(socket_path: str, node: FakeNode) -> None:
    async with cni_server.CniServer(socket_path, Handler(node).handle):
        bad = request(config="{")
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes(bad))
        assert reply["error"]["code"] == Code.DECODE
        status = request("STATUS", config=conf("1.1.0"))
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes(status))
        assert reply == {"ok": True, "result": None}


async def test_server_close_cancels_requests_in_flight(socket_path: str) -> None:
    entered, seen = asyncio.Event(), list[int | None]()

    async def stuck(request: dict[str, Any], fd: int | None) -> None:
        seen.append(fd)
        entered.set()
        await asyncio.Event().wait()

    server = cni_server.CniServer(socket_path, stuck)
    await server.start()
    r, w = os.pipe()
    try:
        client = asyncio.create_task(
            asyncio.to_thread(exchange_raw, socket_path, frame_bytes({}), [r])
        )
        await asyncio.wait_for(entered.wait(), 5)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert not os.path.exists(socket_path)
        assert seen[0] is not None and not _is_open(seen[0])
        assert await client == b""  # hung up without a reply: the plugin says "try again"
    finally:
        os.close(r)
        os.close(w)


def exchange_raw(path: str, data: bytes, fds: Sequence[int]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        socket.send_fds(s, [data], list(fds))
        return s.recv(65536)
