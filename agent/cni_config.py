"""What a CNI request says, checked once: the frame the plugin forwards, CNI_ARGS, the network
configuration (every malformed input is one ``CniError`` with the spec's code); and what ADD
answers, shaped by the configuration's cniVersion. Pure data: the handler is agent/cni.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from overlay import pods

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
OWN_IPAM = "weave-py"
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
    return checked_mac(value, Code.INVALID_CONFIG, "runtimeConfig mac")


def checked_mac(value: Any, code: Code, what: str) -> str:
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
