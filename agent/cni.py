"""CNI requests, handled in the agent: the plugin binary forwards each one (and the pod's netns
as an open file descriptor) over the socket of agent/cni_server.py.

Theory of operation. ``Handler.handle(frame, fd)`` parses the forwarded request and its network
configuration once (``parse_request``, ``parse_config``, ``parse_args``; every malformed input
becomes one ``CniError`` with the spec's code), then runs the command against a ``NodeOps`` --
the agent's IPAM, its netlink thread and its node settings, injected so unit tests run without
a kernel. Kernel work is overlay/pods.py, run on the netlink thread.

Rules this module keeps (CNI.md):

- ADD creates the interface or fails without leaving anything behind: it refuses an interface
  name the pod already has *before* taking an address (a repeated ADD must not release the
  address of a live pod), and undoes veth and address when anything after that fails.
- DEL succeeds when the netns, the interface or the address is already gone, when CNI_NETNS is
  empty and when repeated; it cleans up after an ADD that failed half way. The host side of the
  veth is named from (container id, ifname) alone, so DEL never needs the pod's netns.
- Requests for one container id run one at a time (a lock per container id); different
  containers interleave. GC skips a container whose lock is taken: it is being worked on.
- ADD answers 11 (try again later) while the agent is not ready; DEL always runs.
- Results are in the cniVersion of the configuration; a prevResult is carried forward.
- ``ipam.type`` absent or "weave-py": the agent's own IPAM. Anything else is a plugin executed
  from CNI_PATH with the same environment and configuration (the pod netns as
  /proc/self/fd/N of the descriptor we hold, which the plugin inherits).

Error codes: the spec's (1-11, 50-51); plugin-specific ones from 100 are ``Code``; append-only.
IPAM refusals map as: 503/504 (no space yet, timed out) -> 11 try again later; 507 (range
exhausted) -> 103 no free address; 400 (malformed key) -> 4; anything else -> 107.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Protocol, TypeVar

from agent.ipam import IpamError
from overlay import pods
from overlay.netlink import NetlinkFailure

log = logging.getLogger("weave-py.cni")
T = TypeVar("T")

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
OWN_IPAM = "weave-py"
DELEGATE_TIMEOUT = 60.0  # seconds an IPAM plugin may run
MAX_IFNAME = 15  # IFNAMSIZ - 1
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # network names and container ids alike
_CONTAINER_ID = _NAME
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class Code(IntEnum):
    """CNI error codes. The numbers are the protocol: append only."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_READY = 50  # STATUS: not ready for ADD
    LIMITED_CONNECTIVITY = 51
    # plugin-specific
    INTERNAL = 100  # an unexpected failure in the agent (a bug): the message has the exception
    KERNEL = 101  # the kernel refused a netlink operation
    INTERFACE_EXISTS = 102  # ADD: the pod already has CNI_IFNAME
    NO_ADDRESS = 103  # the agent's IPAM has no free address
    CHECK_FAILED = 104  # CHECK: something ADD made is missing or different
    DELEGATE = 105  # the delegated IPAM plugin is missing, crashed or printed nonsense
    NETNS = 106  # the pod's netns was not passed (the plugin could not open CNI_NETNS)
    IPAM = 107  # any other refusal of the agent's IPAM
    PREV_RESULT_MISSING = 999  # CHECK without prevResult: the reference plugins' code (ErrInternal)


class CniError(Exception):
    """A request that fails with a CNI error (the reply the plugin prints)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg, "details": self.details}


# -- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    command: str
    container_id: str
    netns: str  # CNI_NETNS as the runtime gave it (the result's "sandbox")
    ifname: str
    args: str  # CNI_ARGS
    path: str  # CNI_PATH
    config: str  # the network configuration, raw JSON text
    netns_missing: bool = False  # the plugin could not open CNI_NETNS


_REQUIRED = {
    "ADD": ("container_id", "netns", "ifname"),
    "CHECK": ("container_id", "netns", "ifname"),
    "DEL": ("container_id", "ifname"),
    "GC": (),
    "STATUS": (),
}
_ENV = {"container_id": "CNI_CONTAINERID", "netns": "CNI_NETNS", "ifname": "CNI_IFNAME"}


def parse_request(frame: Mapping[str, Any]) -> Request:
    """The forwarded request, checked as the plugin's environment would be."""
    fields = {}
    for key in ("command", "container_id", "netns", "ifname", "args", "path", "config"):
        value = frame.get(key, "")
        if not isinstance(value, str):
            raise CniError(Code.DECODE, f"request field {key} must be a string")
        fields[key] = value
    missing_netns = frame.get("netns_missing", False)
    if not isinstance(missing_netns, bool):
        raise CniError(Code.DECODE, "request field netns_missing must be a boolean")
    request = Request(**fields, netns_missing=missing_netns)
    if request.command not in COMMANDS:
        raise CniError(Code.INVALID_ENV, f"CNI_COMMAND {request.command!r} is not supported")
    missing = [_ENV[k] for k in _REQUIRED[request.command] if not fields[k]]
    if missing:
        raise CniError(Code.INVALID_ENV, f"required env variables [{' '.join(missing)}] missing")
    if request.container_id and not _CONTAINER_ID.fullmatch(request.container_id):
        raise CniError(
            Code.INVALID_ENV,
            f"CNI_CONTAINERID {request.container_id!r} is invalid",
            "it must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (as libcni checks)",
        )
    if request.ifname:
        _check_ifname(request.ifname)
    return request


def _check_ifname(name: str) -> None:
    bad = (
        len(name) > MAX_IFNAME
        or name in (".", "..")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    )
    if bad:
        raise CniError(Code.INVALID_ENV, f"CNI_IFNAME {name!r} is not a valid interface name")


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS ``K=V;K=V`` in any order; empty segments are skipped."""
    out = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}")
        out[key] = value
    return out


# -- the network configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class NetConf:
    version: str
    name: str
    type: str
    raw: str  # the configuration text, as given to a delegated IPAM plugin
    mtu: int | None = None  # overrides the agent's overlay MTU for the pod
    ipam_type: str | None = None  # None: the agent's own IPAM
    mac: str | None = None  # runtimeConfig "mac"
    requested_ips: tuple[str, ...] = ()  # runtimeConfig "ips"
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: frozenset[tuple[str, str]] = frozenset()  # GC

    def at_least(self, version: str) -> bool:
        return _version(self.version) >= _version(version)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def parse_config(text: str) -> NetConf:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CniError(Code.DECODE, f"error unmarshalling network config: {exc}") from None
    if not isinstance(doc, dict):
        raise CniError(Code.DECODE, "network config must be a JSON object")
    version = doc.get("cniVersion") or "0.1.0"  # libcni's default for a missing version
    if not isinstance(version, str):
        raise CniError(Code.INVALID_CONFIG, "cniVersion must be a string")
    if version not in SUPPORTED_VERSIONS:
        supported = f"plugin supports {list(SUPPORTED_VERSIONS)}"
        detail = f"config is {version!r}, {supported}"
        raise CniError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions", detail)
    name, kind = doc.get("name"), doc.get("type")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CniError(Code.INVALID_CONFIG, f"network name {name!r} is missing or invalid")
    if not isinstance(kind, str) or not kind:
        raise CniError(Code.INVALID_CONFIG, "network config has no type")
    runtime = _lower_keys(_object(doc, "runtimeConfig"))
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(Code.INVALID_CONFIG, "prevResult must be an object")
    return NetConf(
        version,
        name,
        kind,
        text,
        mtu=_mtu(doc.get("mtu")),
        ipam_type=_ipam_type(_object(doc, "ipam")),
        mac=_runtime_mac(runtime.get("mac")),
        requested_ips=_requested_ips(runtime.get("ips")),
        prev_result=prev,
        valid_attachments=_attachments(doc.get("cni.dev/valid-attachments")),
    )


def _object(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(Code.INVALID_CONFIG, f"{key} must be an object")
    return value


def _lower_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """runtimeConfig keys match case-insensitively (containerd sends ``HostPort``...)."""
    return {key.lower(): value for key, value in doc.items()}


def _mtu(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        raise CniError(Code.INVALID_CONFIG, f"mtu {value!r} is not an integer in 68..65535")
    return value


def _ipam_type(ipam: Mapping[str, Any]) -> str | None:
    kind = ipam.get("type")
    if kind in (None, "", OWN_IPAM):
        return None
    if not isinstance(kind, str) or "/" in kind or kind in (".", ".."):
        raise CniError(Code.INVALID_CONFIG, f"ipam type {kind!r} is not a plugin name")
    return kind


def _runtime_mac(value: Any) -> str | None:
    if value is None:
        return None
    return _checked_mac(value, Code.INVALID_CONFIG, "runtimeConfig mac")


def _checked_mac(value: Any, code: Code, what: str) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value) or int(value[:2], 16) & 1:
        raise CniError(code, f"{what} {value!r} is not a unicast MAC address")
    return value.lower()


def _requested_ips(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CniError(Code.INVALID_CONFIG, "runtimeConfig ips must be a list of strings")
    return tuple(value)


def _attachments(value: Any) -> frozenset[tuple[str, str]]:
    if value is None:
        return frozenset()
    out = set()
    for entry in value if isinstance(value, list) else [None]:
        cid = entry.get("containerID") if isinstance(entry, dict) else None
        ifname = entry.get("ifname") if isinstance(entry, dict) else None
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise CniError(
                Code.INVALID_CONFIG,
                'cni.dev/valid-attachments must be a list of {"containerID": ..., "ifname": ...}',
            )
        out.add((cid, ifname))
    return frozenset(out)


# -- results ------------------------------------------------------------------------------------

Routes = tuple[tuple[IPv4Network, IPv4Address | None], ...]


@dataclass(frozen=True)
class Addressing:
    """The pod's address: from our IPAM or a delegated plugin's (abbreviated) result."""

    address: IPv4Interface
    gateway: IPv4Address
    routes: Routes = ()  # besides the default route via the gateway; None: via the gateway
    dns: Mapping[str, Any] | None = None


def parse_ipam_result(doc: Any, plugin: str) -> Addressing:
    """The first IPv4 address of an IPAM result (any cniVersion's shape)."""
    try:
        if isinstance(doc, dict) and "ip4" in doc:  # 0.1.0 / 0.2.0
            ip4 = doc["ip4"]
            entries = [{"address": ip4["ip"], "gateway": ip4.get("gateway")}]
            routes = ip4.get("routes") or []
        else:
            entries = [e for e in doc.get("ips") or [] if e.get("version", "4") == "4"]
            routes = doc.get("routes") or []
        entries = [e for e in entries if ipaddress.ip_interface(e["address"]).version == 4]
        if not entries:
            raise CniError(Code.DELEGATE, f"ipam plugin {plugin} returned no IPv4 address")
        address = IPv4Interface(entries[0]["address"])
        gw = entries[0].get("gateway")
        gateway = IPv4Address(gw) if gw else address.network.network_address + 1
        parsed = tuple(
            (IPv4Network(r["dst"]), IPv4Address(r["gw"]) if r.get("gw") else None)
            for r in routes
            if ipaddress.ip_network(r["dst"]).version == 4
        )
        dns = doc.get("dns") if isinstance(doc.get("dns"), dict) else None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CniError(
            Code.DELEGATE,
            f"ipam plugin {plugin} returned a malformed result",
            f"{type(exc).__name__}: {exc}",
        ) from None
    return Addressing(address, gateway, parsed, dns)


def add_result(
    conf: NetConf, sandbox: str, ifname: str, a: Addressing, attached: pods.Attached
) -> dict[str, Any]:
    """The ADD result in the configuration's cniVersion, after the prevResult's entries."""
    routes = [{"dst": str(dst), **({"gw": str(gw)} if gw else {})} for dst, gw in a.routes]
    if not any(dst == DEFAULT_ROUTE for dst, _ in a.routes):
        routes.insert(0, {"dst": str(DEFAULT_ROUTE), "gw": str(a.gateway)})
    if not conf.at_least("0.3.0"):
        ip4 = {"ip": str(a.address), "gateway": str(a.gateway), "routes": routes}
        return {"cniVersion": conf.version, "ip4": ip4, "dns": dict(a.dns or {})}
    prev = conf.prev_result or {}
    interfaces = list(prev.get("interfaces") or [])
    ours = len(interfaces)
    interfaces += [
        {"name": attached.host, "mac": attached.host_mac},
        {"name": ifname, "mac": attached.pod_mac, "sandbox": sandbox},
    ]
    ip: dict[str, Any] = {} if conf.at_least("1.0.0") else {"version": "4"}
    ip |= {"address": str(a.address), "gateway": str(a.gateway), "interface": ours + 1}
    return {
        "cniVersion": conf.version,
        "interfaces": interfaces,
        "ips": [*(prev.get("ips") or []), ip],
        "routes": [*(prev.get("routes") or []), *routes],
        "dns": dict(a.dns or prev.get("dns") or {}),
    }


def expected_from(conf: NetConf, request: Request, bridge: str, fd: int) -> pods.Expected:
    """What CHECK verifies: our interface in prevResult, its addresses, the IPv4 routes."""
    prev = conf.prev_result or {}
    try:
        interfaces = prev.get("interfaces") or []
        ours = [
            i
            for i, e in enumerate(interfaces)
            if e.get("name") == request.ifname and e.get("sandbox")
        ]
        if not ours:
            raise CniError(Code.CHECK_FAILED, f"prevResult has no interface {request.ifname}")
        addresses = tuple(
            IPv4Interface(e["address"])
            for e in prev.get("ips") or []
            if e.get("interface") == ours[-1] and ipaddress.ip_interface(e["address"]).version == 4
        )
        if not addresses:
            raise CniError(Code.CHECK_FAILED, f"prevResult has no address for {request.ifname}")
        routes = tuple(
            (IPv4Network(r["dst"]), IPv4Address(r["gw"]) if r.get("gw") else None)
            for r in prev.get("routes") or []
            if ipaddress.ip_network(r["dst"]).version == 4
        )
        mac = interfaces[ours[-1]].get("mac") or None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CniError(Code.INVALID_CONFIG, f"prevResult is malformed: {exc}") from None
    return pods.Expected(fd, request.container_id, request.ifname, bridge, addresses, routes, mac)


# -- delegated IPAM ----------------------------------------------------------------------------


class Delegate(Protocol):
    """Runs an IPAM plugin: returns its parsed stdout (None when empty) or raises CniError."""

    async def __call__(
        self, plugin: str, env: Mapping[str, str], stdin: bytes, fd: int | None
    ) -> Any: ...


def find_plugin(plugin: str, path: str) -> str:
    for directory in filter(None, path.split(":")):
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(Code.DELEGATE, f"failed to find plugin {plugin!r} in path [{path}]")


async def exec_plugin(plugin: str, env: Mapping[str, str], stdin: bytes, fd: int | None) -> Any:
    """The Delegate that executes ``plugin`` from CNI_PATH; ``fd`` is inherited as is."""
    exe = find_plugin(plugin, env.get("CNI_PATH", ""))
    proc = await asyncio.create_subprocess_exec(
        exe,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        pass_fds=() if fd is None else (fd,),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), DELEGATE_TIMEOUT)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise CniError(
                Code.DELEGATE, f"ipam plugin {plugin} did not answer within {DELEGATE_TIMEOUT:g}s"
            ) from None
        raise
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
        if proc.returncode == 0:
            raise CniError(
                Code.DELEGATE,
                f"ipam plugin {plugin} printed no JSON",
                out.decode(errors="replace")[:1000],
            ) from None
    if proc.returncode != 0:
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            raise CniError(doc["code"], str(doc.get("msg", "")), str(doc.get("details", "")))
        text = (err or out).decode(errors="replace").strip()[:1000]
        raise CniError(
            Code.DELEGATE, f"ipam plugin {plugin} failed with status {proc.returncode}", text
        )
    return doc


# -- the node ----------------------------------------------------------------------------------


class NodeOps(Protocol):
    """What the handler needs of the agent."""

    @property
    def bridge(self) -> str:
        """The node bridge the host side of each veth joins."""
        ...

    @property
    def mtu(self) -> int:
        """The overlay MTU pods get unless the network configuration sets ``mtu``."""
        ...

    @property
    def gso_max_size(self) -> int: ...

    async def allocate(self, cid: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        """Raises agent.ipam.IpamError."""
        ...

    async def release(self, cid: str, ifname: str) -> None: ...

    async def persist(self) -> None:
        """Make what ``allocate`` handed out durable; ADD awaits it before answering."""
        ...

    def list_allocations(self) -> list[tuple[str, str]]: ...

    async def netlink(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the agent's netlink thread (in the node's netns)."""
        ...

    def ready(self) -> bool: ...


def ipam_error(exc: IpamError) -> CniError:
    if exc.code in (503, 504):
        return CniError(Code.TRY_AGAIN_LATER, exc.message)
    if exc.code == 507:
        return CniError(Code.NO_ADDRESS, exc.message)
    if exc.code == 400:
        return CniError(Code.INVALID_ENV, exc.message)
    return CniError(Code.IPAM, exc.message)


@dataclass
class _Slot:
    lock: asyncio.Lock
    users: int = 0


class Handler:
    """Handles forwarded CNI requests; ``handle`` is what cni_server.CniServer calls."""

    def __init__(self, ops: NodeOps, delegate: Delegate = exec_plugin) -> None:
        self.ops = ops
        self.delegate = delegate
        self._slots: dict[str, _Slot] = {}

    async def handle(self, frame: Mapping[str, Any], fd: int | None) -> dict[str, Any] | None:
        request = parse_request(frame)
        conf = parse_config(request.config)
        if request.command == "STATUS":
            await self._status(request, conf)
            return None
        if request.command == "GC":
            await self._gc(request, conf)
            return None
        args = parse_args(request.args)
        if request.command == "ADD" and not self.ops.ready():
            raise CniError(Code.TRY_AGAIN_LATER, "the weave-py agent is not ready")
        async with self._serialized(request.container_id):
            if request.command == "ADD":
                return await self._add(request, conf, args, fd)
            if request.command == "DEL":
                await self._del(request, conf, fd)
            else:
                await self._check(request, conf, fd)
        return None

    @contextlib.asynccontextmanager
    async def _serialized(self, cid: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(cid, _Slot(asyncio.Lock()))
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[cid]

    # -- commands ---------------------------------------------------------------------------------

    async def _add(
        self, r: Request, conf: NetConf, args: dict[str, str], fd: int | None
    ) -> dict[str, Any]:
        fd = _netns(r, fd)
        mac = conf.mac or (
            _checked_mac(args["MAC"], Code.INVALID_ENV, "CNI_ARGS MAC") if args.get("MAC") else None
        )
        if conf.ipam_type is None and (conf.requested_ips or args.get("IP")):
            msg = "weave-py IPAM cannot assign a requested address (IP= or runtimeConfig ips)"
            raise CniError(Code.UNSUPPORTED_FIELD, msg, "delegate to an IPAM plugin instead")
        if conf.ipam_type is not None and await self._node(pods.has_link, fd, r.ifname):
            raise CniError(  # before the delegate allocates anything
                Code.INTERFACE_EXISTS, f"interface {r.ifname} already exists in netns {r.netns}"
            )
        # Our own IPAM is idempotent per key: a repeated ADD gets the live pod's address back,
        # which a failure here must then not release.
        held = conf.ipam_type is None and (r.container_id, r.ifname) in set(
            self.ops.list_allocations()
        )
        addressing = await self._address(r, conf, fd)
        attachment = pods.Attachment(
            fd,
            r.container_id,
            r.ifname,
            self.ops.bridge,
            addressing.address,
            addressing.gateway,
            conf.mtu or self.ops.mtu,
            self.ops.gso_max_size,
            tuple((dst, gw or addressing.gateway) for dst, gw in addressing.routes),
            mac,
        )
        # The allocation's write overlaps the veth work; the result waits for both.
        persisting = asyncio.ensure_future(self.ops.persist()) if conf.ipam_type is None else None
        try:
            try:
                attached = await self._node(pods.attach, attachment)
            finally:
                if persisting is not None:
                    await asyncio.wait([persisting])  # never left running, whatever happened
            if persisting is not None and persisting.exception() is not None:
                raise CniError(Code.IO_FAILURE, "cannot persist the address allocation",
                               str(persisting.exception()))  # fmt: skip
        except CniError as exc:
            if exc.code == Code.INTERFACE_EXISTS:  # attach touched nothing: the pod is live
                if not held:
                    await self._undo(r, conf, fd, veth=False)
                raise CniError(exc.code, f"interface {r.ifname} already exists in netns "
                               f"{r.netns}", exc.msg) from None  # fmt: skip
            await self._undo(r, conf, fd)
            raise
        except BaseException:
            await self._undo(r, conf, fd)
            raise
        log.info(
            "add pod: %s %s %s on %s (%s)",
            _pod(args, r),
            r.ifname,
            addressing.address,
            attached.host,
            r.container_id[:12],
        )
        return add_result(conf, r.netns, r.ifname, addressing, attached)

    async def _address(self, r: Request, conf: NetConf, fd: int) -> Addressing:
        if conf.ipam_type is None:
            try:
                address, gateway = await self.ops.allocate(r.container_id, r.ifname)
            except IpamError as exc:
                raise ipam_error(exc) from None
            return Addressing(address, gateway)
        doc = await self._delegate("ADD", r, conf, fd)
        try:
            return parse_ipam_result(doc, conf.ipam_type)
        except BaseException:
            await self._undo(r, conf, fd, veth=False)
            raise

    async def _undo(self, r: Request, conf: NetConf, fd: int, veth: bool = True) -> None:
        """After a failed ADD: veth and address go again; failures here are only logged (the
        ADD's own error is what the runtime needs, and its DEL will try again)."""
        try:
            if veth:
                await self._node(pods.detach, r.container_id, r.ifname)
            await self._unaddress(r, conf, fd)
        except Exception as exc:
            log.warning("undo add: %s %s: %s", r.container_id[:12], r.ifname, exc)

    async def _unaddress(self, r: Request, conf: NetConf, fd: int | None) -> None:
        if conf.ipam_type is None:
            await self._release(r.container_id, r.ifname)
        else:
            await self._delegate("DEL", r, conf, fd)

    async def _release(self, cid: str, ifname: str) -> None:
        try:
            await self.ops.release(cid, ifname)
        except IpamError as exc:
            raise ipam_error(exc) from None

    async def _del(self, r: Request, conf: NetConf, fd: int | None) -> None:
        removed = await self._node(pods.detach, r.container_id, r.ifname)
        await self._unaddress(r, conf, fd)
        log.info(
            "delete pod: %s %s%s", r.container_id[:12], r.ifname, "" if removed else " (no veth)"
        )

    async def _check(self, r: Request, conf: NetConf, fd: int | None) -> None:
        if not conf.at_least("0.4.0"):
            raise CniError(Code.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
        if conf.prev_result is None:
            raise CniError(Code.PREV_RESULT_MISSING, "Required prevResult missing")
        fd = _netns(r, fd)
        expected = expected_from(conf, r, self.ops.bridge, fd)
        if conf.ipam_type is not None:
            await self._delegate("CHECK", r, conf, fd)
        elif (r.container_id, r.ifname) not in self.ops.list_allocations():
            raise CniError(
                Code.CHECK_FAILED,
                f"no address is allocated to container {r.container_id} interface {r.ifname}",
            )
        problems = await self._node(pods.check, expected)
        if problems:
            raise CniError(Code.CHECK_FAILED, "; ".join(problems))

    async def _gc(self, r: Request, conf: NetConf) -> None:
        if not conf.at_least("1.1.0"):
            raise CniError(Code.INCOMPATIBLE_VERSION, "config version does not allow GC")
        if conf.ipam_type is not None:
            if await self._delegate_supports(r, conf, "1.1.0"):
                await self._delegate("GC", r, conf, None)
            return
        stale = [a for a in self.ops.list_allocations() if a not in conf.valid_attachments]
        for cid, ifname in stale:
            if cid in self._slots:
                continue  # a request for it is running: not garbage
            async with self._serialized(cid):
                await self._node(pods.detach, cid, ifname)
                await self._release(cid, ifname)
            log.info("gc pod: %s %s", cid[:12], ifname)

    async def _status(self, r: Request, conf: NetConf) -> None:
        if not conf.at_least("1.1.0"):
            raise CniError(Code.INCOMPATIBLE_VERSION, "config version does not allow STATUS")
        if not self.ops.ready():
            raise CniError(Code.NOT_READY, "the weave-py agent is not ready")
        if conf.ipam_type is not None and await self._delegate_supports(r, conf, "1.1.0"):
            await self._delegate("STATUS", r, conf, None)

    # -- helpers --------------------------------------------------------------------------------

    async def _node(self, fn: Callable[..., T], *args: Any) -> T:
        """Kernel work on the netlink thread; the kernel's refusals become CniErrors."""
        try:
            return await self.ops.netlink(fn, *args)
        except pods.InterfaceExists as exc:
            raise CniError(Code.INTERFACE_EXISTS, str(exc)) from None
        except NetlinkFailure as exc:
            raise CniError(Code.KERNEL, str(exc)) from None

    async def _delegate(self, command: str, r: Request, conf: NetConf, fd: int | None) -> Any:
        assert conf.ipam_type is not None
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": r.container_id,
            "CNI_NETNS": r.netns if fd is None else f"/proc/self/fd/{fd}",
            "CNI_IFNAME": r.ifname,
            "CNI_ARGS": r.args,
            "CNI_PATH": r.path,
        }
        return await self.delegate(conf.ipam_type, env, conf.raw.encode(), fd)

    async def _delegate_supports(self, r: Request, conf: NetConf, version: str) -> bool:
        assert conf.ipam_type is not None
        env = {"CNI_COMMAND": "VERSION", "CNI_PATH": r.path}
        stdin = json.dumps({"cniVersion": conf.version}).encode()
        doc = await self.delegate(conf.ipam_type, env, stdin, None)
        return isinstance(doc, dict) and version in (doc.get("supportedVersions") or [])


def _netns(r: Request, fd: int | None) -> int:
    if fd is None:
        raise CniError(
            Code.NETNS, f"failed to open netns {r.netns!r}", "the plugin passed no netns descriptor"
        )
    return fd


def _pod(args: Mapping[str, str], r: Request) -> str:
    name = args.get("K8S_POD_NAME")
    return f"{args.get('K8S_POD_NAMESPACE', '')}/{name}" if name else r.container_id[:12]
