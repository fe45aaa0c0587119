"""What a CNI request says, checked once: the frame the plugin forwards, CNI_ARGS and the
network configuration. Every malformed input is one ``CniError`` with the spec's code.

It also holds the agent's side of the protocol's constants: the versions, the commands and the
variables each needs, the frame's length prefix and limit, the default socket and the codes.
The plugin (agent/cni/plugin/, a Go program) holds the same values; tests/agent/
test_cni_plugin.py compares them with what the built binary prints for ``--constants``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}  # the others: every version
REQUIRED_ENV = {  # set and non-empty, per CNI_COMMAND
    "ADD": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_COMMAND",),
    "STATUS": ("CNI_COMMAND",),
    "VERSION": ("CNI_COMMAND",),
}
COMMANDS = tuple(command for command in REQUIRED_ENV if command != "VERSION")  # the agent's
DEFAULT_SOCKET = "/run/weave-py/cni.sock"  # when neither the conflist nor WEAVE_CNI_SOCKET says
MAX_FRAME_BYTES = 1 << 20  # bytes of JSON in one frame, either direction
LENGTH = struct.Struct(">I")  # the frame's length prefix
OWN_IPAM = "weave-py"
MAX_IFNAME = 15  # IFNAMSIZ - 1

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # network names and container ids alike
_CONTAINER_ID = _NAME
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_FIELDS = {"CNI_CONTAINERID": "container_id", "CNI_NETNS": "netns", "CNI_IFNAME": "ifname"}


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
    INTERNAL = 100  # a bug in the agent: the message names the exception
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
        """The reply's ``error`` object."""
        return {"code": self.code, "msg": self.msg, "details": self.details}


# -- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """The runtime's request as the plugin forwarded it (its CNI_* variables and stdin)."""

    command: str
    container_id: str
    netns: str  # CNI_NETNS as the runtime gave it (the result's "sandbox")
    ifname: str
    args: str  # CNI_ARGS
    path: str  # CNI_PATH
    config: str  # the network configuration, raw JSON text
    netns_missing: bool = False  # the plugin could not open CNI_NETNS


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
    required = REQUIRED_ENV[request.command]
    missing = [env for env in required if env in _FIELDS and not fields[_FIELDS[env]]]
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


def version_key(version: str) -> tuple[int, ...]:
    """A dotted version as numbers, for comparing."""
    return tuple(int(part) for part in version.split("."))


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
    """The network configuration's fields the agent acts on; ``raw`` is all of it."""

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
        """Whether the configuration's cniVersion is ``version`` or newer."""
        return version_key(self.version) >= version_key(version)

    def allows(self, command: str) -> bool:
        """Whether the configuration's cniVersion has ``command`` (CHECK, GC, STATUS are
        newer than the others)."""
        needed = MIN_VERSION.get(command)
        return needed is None or self.at_least(needed)


def parse_config(text: str) -> NetConf:
    """The network configuration, checked (unknown keys are ignored)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CniError(Code.DECODE, f"error unmarshalling network config: {exc}") from None
    if not isinstance(doc, dict):
        raise CniError(Code.DECODE, "network config must be a JSON object")
    name, kind = doc.get("name"), doc.get("type")
    version = _version(doc.get("cniVersion"))
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


def _version(value: Any) -> str:
    version = value or "0.1.0"  # libcni's default for a missing version
    if not isinstance(version, str):
        raise CniError(Code.INVALID_CONFIG, "cniVersion must be a string")
    if version not in SUPPORTED_VERSIONS:
        detail = f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}"
        raise CniError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions", detail)
    return version


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
    """``value`` as a lowercase unicast MAC address, else a ``CniError`` with ``code``."""
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
