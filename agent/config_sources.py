"""Where settings come from: a TOML file, the environment and command-line flags, merged in that
order (later ones winning) over the defaults of ``Config`` (agent/config.py), then validated.

Each source gives raw values with the place they came from (``path:key``, the variable's name,
the flag); one parser per field turns a raw value into its type, so a bad value is reported as
``field (from source): bad value ...`` whichever source it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import Field, fields, replace
from typing import Any

from agent.config import Config, ConfigError, StaticPeer
from agent.config_rules import validate

PEER = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)@(?P<host>[0-9.]+)(:(?P<port>\d+))?=(?P<blocks>\S+)$")
LISTS = ("peers", "seeds")  # settings a flag may repeat and a file may give as a list

Raw = dict[str, tuple[str, Any]]  # field name -> (where the value came from, the value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting (``--config`` for the file), each with its field's documentation."""
    parser.add_argument("--config", help="TOML file with settings (keys are field names)")
    for f in fields(Config):
        meta = f.metadata
        action = "append" if f.name in LISTS else "store"
        if f.type in (bool, "bool"):  # a bare flag means true
            parser.add_argument(
                meta["flag"], dest=f.name, nargs="?", const="true", help=meta["doc"]
            )
        else:
            parser.add_argument(meta["flag"], dest=f.name, action=action, help=meta["doc"])


def load(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the configuration from file, environment and flags; raise ConfigError."""
    environ = {} if environ is None else environ
    raw: Raw = {}
    path = (getattr(args, "config", None) if args else None) or environ.get("WEAVE_CONFIG")
    if path:
        raw.update(_read_file(path))
    for f in fields(Config):  # per field: the flag beats the variable
        for given in (_environment_value(f, environ), _flag_value(f, args)):
            if given is not None:
                raw[f.name] = given
    values = {name: _convert(name, source, value) for name, (source, value) in raw.items()}
    config = Config(**values)
    if not config.node_name:
        config = replace(config, node_name=socket.gethostname())
    validate(config)
    return config


def from_environment(name: str, environ: Mapping[str, str]) -> Any:
    """One setting from its variable alone, else its default: for commands that need a single
    setting of the local agent (its sockets), not a whole configuration."""
    f = next(f for f in fields(Config) if f.name == name)
    given = _environment_value(f, environ)
    return f.default if given is None else _convert(name, *given)


def _read_file(path: str) -> Raw:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return {k: (f"{path}:{k}", v) for k, v in data.items()}


def _environment_value(f: Field[Any], environ: Mapping[str, str]) -> tuple[str, Any] | None:
    env = f.metadata["env"]
    return (env, environ[env]) if env and env in environ else None


def _flag_value(f: Field[Any], args: argparse.Namespace | None) -> tuple[str, Any] | None:
    value = getattr(args, f.name, None) if args is not None else None
    return None if value is None else (f.metadata["flag"], value)


def _convert(name: str, source: str, value: Any) -> Any:
    if isinstance(value, list) and name not in LISTS:
        value = value[-1]
    try:
        return PARSERS.get(name, str)(value)
    except ValueError as exc:
        raise ConfigError(f"{name} (from {source}): bad value {value!r}: {exc}") from None


# -- parsers: a raw value (text, or a TOML value) into the field's type -------------------------


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_int(value: Any) -> int:
    """Whole numbers only: TOML's true/false and 6783.9 are errors, not 1 and 6783."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    if isinstance(value, float):
        return int(value)
    return int(str(value).strip())


def _parse_peer(item: Any) -> StaticPeer:
    if isinstance(item, StaticPeer):
        return item
    m = PEER.match(str(item).strip())
    if not m:
        raise ValueError(f"{item!r} is not NAME@HOST[:PORT]=BLOCK[,BLOCK]")
    ipaddress.IPv4Address(m["host"])
    blocks = tuple(ipaddress.IPv4Network(b) for b in m["blocks"].split(","))
    return StaticPeer(m["name"], m["host"], int(m["port"] or 6783), blocks)


def _parse_peers(value: Any) -> tuple[StaticPeer, ...]:
    items = value if isinstance(value, list | tuple) else re.split(r"[;\s]+", str(value))
    return tuple(_parse_peer(i) for i in items if isinstance(i, StaticPeer) or str(i).strip())


def _parse_seed(item: str) -> str:
    host, _, port = item.partition(":")
    ipaddress.IPv4Address(host)
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{item!r} has a bad port")
    return item


def _parse_seeds(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else re.split(r"[;,\s]+", str(value))
    return tuple(_parse_seed(item) for item in (str(i).strip() for i in items) if item)


def _optional(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None or str(v).strip() == "" else parse(str(v))


PARSERS: dict[str, Callable[[Any], Any]] = {
    "ipalloc_range": lambda v: ipaddress.IPv4Network(str(v)),
    "pod_block": _optional(ipaddress.IPv4Network),
    "ipalloc_block": _parse_int,
    "ipam_timeout": float,
    "peers": _parse_peers,
    "mtu": _optional(_parse_int),
    "seeds": _parse_seeds,
    "conn_limit": _parse_int,
    "kube_api_port": _parse_int,
    "port": _parse_int,
    "offload": _parse_bool,
    "udp_gso": _parse_bool,
    "masquerade": _parse_bool,
    "no_fastdp": _parse_bool,
    "peer_metrics": _parse_bool,
    "gso_max_size": _parse_int,
    "socket_buffer": _parse_int,
    "heartbeat_interval": float,
    "heartbeat_slow_interval": float,
    "heartbeat_timeout": float,
    "reconcile_interval": float,
    "netns": _optional(str),
}
