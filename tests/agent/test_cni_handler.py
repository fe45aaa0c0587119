"""The CNI request handler (agent/cni/handler.py) against in-memory fakes of its two seams
(pod addresses and the pod network), and a delegated IPAM plugin. No root, no kernel."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from agent import errors
from agent.cni.delegate import exec_plugin
from agent.cni.handler import Handler
from agent.cni.seams import cni_error
from agent.cni.spec import CniError, Code
from tests.agent.cni_fakes import FD, FakeAddresses, FakeNetwork, host_side

CID = "c0ffee0000000000000000000000000000000000000000000000000000000001"
MAC = "0a:58:0a:20:00:05"


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
def log() -> list[str]:
    return []


@pytest.fixture
def addresses(log: list[str]) -> FakeAddresses:
    return FakeAddresses(log)


@pytest.fixture
def network(log: list[str]) -> FakeNetwork:
    return FakeNetwork(log)


@pytest.fixture
def handler(addresses: FakeAddresses, network: FakeNetwork) -> Handler:
    return Handler(addresses, network)


async def fails(handler: Handler, frame: dict[str, Any], fd: int | None = FD) -> CniError:
    with pytest.raises(CniError) as info:
        await handler.handle(frame, fd)
    return info.value


# -- the request -------------------------------------------------------------------------------


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


# -- ADD ------------------------------------------------------------------------------------


async def test_add_wires_the_pod_and_answers_in_1_0_0(
    handler: Handler, network: FakeNetwork
) -> None:
    result = await handler.handle(request(), FD)
    host = host_side(CID, "eth0")
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
    a = network.namespaces[FD]["eth0"]
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
    handler: Handler, network: FakeNetwork, frame: dict[str, Any]
) -> None:
    result = await handler.handle(frame, FD)
    assert result is not None and result["interfaces"][1]["mac"] == MAC
    assert network.namespaces[FD]["eth0"].mac == MAC


async def test_add_uses_the_configured_mtu(handler: Handler, network: FakeNetwork) -> None:
    await handler.handle(request(config=conf(mtu=1300)), FD)
    assert network.namespaces[FD]["eth0"].mtu == 1300


async def test_add_refuses_an_existing_interface_and_keeps_its_address(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork, log: list[str]
) -> None:
    await handler.handle(request(), FD)
    before = len(log)
    error = await fails(handler, request())
    assert error.code == Code.INTERFACE_EXISTS
    assert "eth0 already exists" in error.msg
    # the idempotent allocation hands back the live pod's address; attach refuses and
    # touches nothing; nothing is released or detached afterwards
    assert log[before:] == [f"allocate {CID[:4]}", "attach"]
    assert (CID, "eth0") in addresses.allocations  # the live pod keeps its address
    assert "eth0" in network.namespaces[FD]


async def test_add_undoes_everything_when_the_kernel_refuses(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork, log: list[str]
) -> None:
    network.fail_attach = errors.KernelRefused("add link wp0123: EPERM")
    error = await fails(handler, request())
    assert (error.code, error.msg) == (Code.KERNEL, "add link wp0123: EPERM")
    assert addresses.allocations == {}
    assert log[-2:] == ["detach", "release c0ff"]


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (errors.TimedOut, Code.TRY_AGAIN_LATER),
        (errors.TryLater, Code.TRY_AGAIN_LATER),
        (errors.NoAddress, Code.NO_ADDRESS),
        (errors.Invalid, Code.INVALID_ENV),
        (errors.Conflict, Code.IPAM),
        (errors.Refused, Code.IPAM),
    ],
)
async def test_add_maps_address_refusals_to_cni_codes(
    handler: Handler, network: FakeNetwork, addresses: FakeAddresses,
    refusal: type[errors.Refused], code: Code,
) -> None:  # fmt: skip
    addresses.fail_allocate = refusal("no free address: block is full", "range 10.32.0.0/12")
    error = await fails(handler, request())
    assert (error.code, error.msg, error.details) == (
        code, "no free address: block is full", "range 10.32.0.0/12"
    )  # fmt: skip
    assert network.hosts == set()


async def test_add_undoes_everything_when_the_address_is_not_written(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork, log: list[str]
) -> None:
    addresses.fail_persist = errors.StorageFailed("cannot persist the address allocation", "ENOSPC")
    error = await fails(handler, request())
    assert (error.code, error.msg, error.details) == (
        Code.IO_FAILURE, "cannot persist the address allocation", "ENOSPC"
    )  # fmt: skip
    assert (addresses.allocations, network.hosts, network.namespaces[FD]) == ({}, set(), {})
    assert log[-2:] == ["detach", "release c0ff"]


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (errors.Invalid, 4),
        (errors.StorageFailed, 5),
        (errors.TryLater, 11),
        (errors.TimedOut, 11),
        (errors.KernelRefused, 101),
        (errors.InterfaceExists, 102),
        (errors.NoAddress, 103),
        (errors.NotFound, 107),
        (errors.Conflict, 107),
        (errors.Refused, 107),
    ],
)
def test_each_refusal_has_its_cni_code(refusal: type[errors.Refused], code: int) -> None:
    error = cni_error(refusal("why", "what to do"))
    assert (error.code, error.msg, error.details) == (code, "why", "what to do")


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


async def test_del_undoes_add_and_succeeds_again(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork
) -> None:
    await handler.handle(request(), FD)
    assert await handler.handle(request("DEL"), FD) is None
    assert (addresses.allocations, network.hosts, network.namespaces[FD]) == ({}, set(), {})
    assert await handler.handle(request("DEL"), FD) is None
    assert await handler.handle(request("DEL", netns=""), None) is None


async def test_del_without_netns_and_for_unknown_containers(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork
) -> None:
    await handler.handle(request(), FD)
    assert await handler.handle(request("DEL", netns="", netns_missing=True), None) is None
    assert (addresses.allocations, network.hosts) == ({}, set())
    assert await handler.handle(request("DEL", container_id="never-added"), None) is None


async def test_del_cleans_a_half_done_add(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork
) -> None:
    await addresses.allocate(CID, "eth0")
    network.hosts.add(host_side(CID, "eth0"))
    await handler.handle(request("DEL", config=conf("0.4.0")), None)
    assert (addresses.allocations, network.hosts) == ({}, set())


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


async def test_check_names_what_is_missing(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork
) -> None:
    result = await handler.handle(request(), FD)
    network.hosts.clear()
    error = await fails(handler, request("CHECK", config=conf(prevResult=result)))
    assert error.code == Code.CHECK_FAILED
    assert "host veth" in error.msg and "missing" in error.msg
    addresses.allocations.clear()
    error = await fails(handler, request("CHECK", config=conf(prevResult=result)))
    assert "no address is allocated" in error.msg
    error = await fails(handler, request("CHECK", config=conf(prevResult={"interfaces": []})))
    assert "prevResult has no interface eth0" in error.msg


# -- GC and STATUS --------------------------------------------------------------------------------


async def test_gc_releases_what_is_not_listed(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork
) -> None:
    for cid in ("keep", "drop1", "drop2"):
        network.namespaces[FD].clear()
        await handler.handle(request(container_id=cid), FD)
    valid = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "other", "ifname": "x"}]
    gc = conf("1.1.0", **{"cni.dev/valid-attachments": valid})
    assert await handler.handle(request("GC", config=gc, container_id="", ifname=""), None) is None
    assert addresses.held() == [("keep", "eth0")]
    assert network.hosts == {host_side("keep", "eth0")}
    await handler.handle(request("GC", config=conf("1.1.0")), None)  # missing list: none valid
    assert (addresses.allocations, network.hosts) == ({}, set())


async def test_gc_skips_a_container_being_worked_on(
    handler: Handler, addresses: FakeAddresses
) -> None:
    await addresses.allocate("busy", "eth0")
    addresses.gate = asyncio.Event()
    add = asyncio.create_task(handler.handle(request(container_id="busy"), FD))
    await asyncio.sleep(0)
    await handler.handle(request("GC", config=conf("1.1.0")), None)
    assert ("busy", "eth0") in addresses.allocations
    addresses.gate.set()
    await add


async def test_gc_and_status_need_1_1_0(handler: Handler) -> None:
    assert (await fails(handler, request("GC"), None)).code == Code.INCOMPATIBLE_VERSION
    assert (await fails(handler, request("STATUS"), None)).code == Code.INCOMPATIBLE_VERSION


async def test_status_follows_readiness(
    handler: Handler, addresses: FakeAddresses, log: list[str]
) -> None:
    status = request("STATUS", config=conf("1.1.0"), container_id="", netns="", ifname="")
    assert await handler.handle(status, None) is None
    addresses.is_ready = False
    assert (await fails(handler, status, None)).code == Code.NOT_READY
    assert (await fails(handler, request())).code == Code.TRY_AGAIN_LATER  # ADD waits too
    assert log == []
    assert await handler.handle(request("DEL"), None) is None  # DEL never waits


# -- concurrency ----------------------------------------------------------------------------


async def test_one_container_at_a_time_others_interleave(
    handler: Handler, addresses: FakeAddresses, network: FakeNetwork, log: list[str]
) -> None:
    addresses.gate = asyncio.Event()
    add = asyncio.create_task(handler.handle(request(), FD))
    delete = asyncio.create_task(handler.handle(request("DEL"), None))
    network.namespaces[43] = {}
    other = asyncio.create_task(handler.handle(request(container_id="other"), 43))
    await asyncio.sleep(0.01)
    assert log.count("allocate c0ff") == 1 and "allocate othe" in log
    assert "detach" not in log  # DEL waits for the ADD of its container
    addresses.gate.set()
    await asyncio.gather(add, delete, other)
    assert addresses.held() == [("other", "eth0")]
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


async def test_add_delegates_ipam_with_the_same_env(
    addresses: FakeAddresses, network: FakeNetwork
) -> None:
    plugin = FakePlugin({"ADD": HOST_LOCAL})
    result = await Handler(addresses, network, plugin).handle(request(config=DELEGATED), FD)
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
    assert addresses.allocations == {}
    a = network.namespaces[FD]["eth0"]
    assert (str(a.address), str(a.gateway)) == ("10.99.0.2/24", "10.99.0.1")
    assert [(str(d), str(g)) for d, g in a.routes] == [
        ("10.100.0.0/16", "10.99.0.1"),
        ("10.101.0.0/16", "10.99.0.254"),
    ]
    assert result is not None
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}, *HOST_LOCAL["routes"]]
    assert result["dns"] == HOST_LOCAL["dns"]


async def test_delegated_add_failure_dels_the_delegate(
    addresses: FakeAddresses, network: FakeNetwork
) -> None:
    plugin = FakePlugin({"ADD": HOST_LOCAL})
    network.fail_attach = errors.KernelRefused("move link: EINVAL")
    await fails(Handler(addresses, network, plugin), request(config=DELEGATED))
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["ADD", "DEL"]
    plugin = FakePlugin({"ADD": {"ips": [{"address": "fd00::2/64"}]}})
    error = await fails(Handler(addresses, network, plugin), request(config=DELEGATED))
    assert error.code == Code.DELEGATE and "no IPv4 address" in error.msg
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["ADD", "DEL"]


async def test_delegate_errors_pass_through_and_del_delegates(
    addresses: FakeAddresses, network: FakeNetwork
) -> None:
    plugin = FakePlugin({"ADD": CniError(11, "no IP addresses available in range set")})
    error = await fails(Handler(addresses, network, plugin), request(config=DELEGATED))
    assert (error.code, error.msg) == (11, "no IP addresses available in range set")
    assert network.hosts == set()
    await Handler(addresses, network, plugin).handle(
        request("DEL", config=DELEGATED, netns=""), None
    )
    assert plugin.calls[-1][1]["CNI_COMMAND"] == "DEL"
    assert plugin.calls[-1][1]["CNI_NETNS"] == ""


async def test_delegated_gc_only_when_the_plugin_supports_it(
    addresses: FakeAddresses, network: FakeNetwork
) -> None:
    gc = request("GC", config=conf("1.1.0", ipam={"type": "host-local"}))
    plugin = FakePlugin({"VERSION": {"supportedVersions": ["0.4.0", "1.0.0"]}})
    await Handler(addresses, network, plugin).handle(gc, None)
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["VERSION"]
    plugin = FakePlugin({"VERSION": {"supportedVersions": ["1.0.0", "1.1.0"]}})
    await Handler(addresses, network, plugin).handle(gc, None)
    assert [c[1]["CNI_COMMAND"] for c in plugin.calls] == ["VERSION", "GC"]


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
    doc = await exec_plugin("echo-ipam", env, b"{}", None)
    assert doc == {"cmd": "ADD", "netns": "/proc/self/fd/0"}
    with pytest.raises(CniError) as info:
        await exec_plugin("bad-ipam", env, b"{}", None)
    assert (info.value.code, info.value.msg, info.value.details) == (11, "busy", "d")
    with pytest.raises(CniError) as info:
        await exec_plugin("crash-ipam", env, b"{}", None)
    assert (info.value.code, info.value.details) == (Code.DELEGATE, "oops")
    with pytest.raises(CniError) as info:
        await exec_plugin("host-local", env, b"{}", None)
    assert info.value.code == Code.DELEGATE and "failed to find plugin" in info.value.msg
