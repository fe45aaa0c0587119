"""Agent configuration: parsed and validated once into a frozen dataclass.

Sources, later ones winning: defaults, an optional TOML file (``--config`` / ``WEAVE_CONFIG``;
keys are the field names), environment variables (Weave's names where Weave had the setting),
then command-line flags. Nothing else in the project reads ``os.environ``. Every field below
documents its meaning, unit and default; ``reference()`` renders them for the README.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from agent.cni.plugin import DEFAULT_SOCKET as DEFAULT_CNI_SOCKET

IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
PEER = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)@(?P<host>[0-9.]+)(:(?P<port>\d+))?=(?P<blocks>\S+)$")


class ConfigError(ValueError):
    """A bad setting; the message names the field, where it came from and the value."""


@dataclass(frozen=True)
class StaticPeer:
    """A remote node given by configuration (``--peer``): nodes that do not gossip."""

    name: str
    host: str
    port: int
    blocks: tuple[ipaddress.IPv4Network, ...]

    def __str__(self) -> str:
        return f"{self.name}@{self.host}:{self.port}=" + ",".join(map(str, self.blocks))


def _setting(env: str | None, flag: str, doc: str, default: Any = MISSING, **kw: Any) -> Any:
    meta = {"env": env, "flag": flag, "doc": doc}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    node_name: str = _setting(
        "HOSTNAME",
        "--node-name",
        "This node's name (the Kubernetes node name); the peer name derives from it. "
        "Default: the host name.",
        "",
    )
    ipalloc_range: ipaddress.IPv4Network = _setting(
        "IPALLOC_RANGE",
        "--ipalloc-range",
        "Cluster range (CIDR) that pod blocks come from. Default 10.32.0.0/12, as Weave.",
        ipaddress.IPv4Network("10.32.0.0/12"),
    )
    ipalloc_block: int = _setting(
        "IPALLOC_BLOCK",
        "--ipalloc-block",
        "Prefix length of the blocks nodes use for pods (gossip IPAM); each block's first "
        "address is its gateway on the bridge. 24 gives 253 pods a block; a node that fills "
        "one takes another.",
        24,
    )
    ipalloc_init: str = _setting(
        "IPALLOC_INIT",
        "--ipalloc-init",
        "Gossip IPAM seeding: consensus=N, N being how many nodes start the cluster; the "
        "range is seeded once N // 2 + 1 of them agree, so a minority never seeds. Default: "
        "the number of seeds given plus one.",
        "",
    )
    ipam_timeout: float = _setting(
        "WEAVE_IPAM_TIMEOUT",
        "--ipam-timeout",
        "Seconds an address request may wait for the node to obtain space before it fails "
        "with an error (the CNI plugin then reports 'try again later').",
        10.0,
    )
    pod_block: ipaddress.IPv4Network | None = _setting(
        "WEAVE_POD_BLOCK",
        "--pod-block",
        "kube IPAM mode: this node's fixed pod block (the Node's spec.podCIDR), inside the "
        "range; its first address is the gateway. Unset (default): gossip IPAM allocates "
        "blocks. Required with static peers.",
        None,
    )
    peers: tuple[StaticPeer, ...] = _setting(
        "WEAVE_PEERS",
        "--peer",
        "Remote nodes as NAME@HOST[:PORT]=BLOCK[,BLOCK]; repeat the flag, or separate with "
        "spaces or ';' in the variable.",
        default_factory=tuple,
    )
    seeds: tuple[str, ...] = _setting(
        "KUBE_PEERS",
        "--seed",
        "Gossip mode: addresses (HOST or HOST:PORT) of one or more other nodes to join through; "
        "the rest are found by gossip. Repeat the flag, or separate with spaces in the "
        "variable (as Weave's KUBE_PEERS). Used when no static peers are given.",
        default_factory=tuple,
    )
    advertise_address: str = _setting(
        "WEAVE_ADVERTISE_ADDR",
        "--advertise-address",
        "Gossip mode: this node's address as other nodes reach it (control and sleeve). "
        "Default: the address of the interface that routes to the first seed.",
        "",
    )
    conn_limit: int = _setting(
        "CONN_LIMIT",
        "--conn-limit",
        "Gossip mode: most control connections this node holds. It dials about 2 log2(N) of "
        "them; data paths do not depend on them.",
        100,
    )
    mtu: int | None = _setting(
        "WEAVE_MTU",
        "--mtu",
        "Overlay MTU in bytes for the bridge, TUN and pods. Default: the underlay MTU of the "
        "interface that reaches the first peer, minus 64 bytes of encapsulation.",
        None,
    )
    port: int = _setting(
        "WEAVE_PORT", "--port", "UDP port of the sleeve data plane and TCP port of gossip.", 6783
    )
    bind_address: str = _setting(
        "WEAVE_BIND_ADDR", "--bind-address", "IPv4 address the sleeve socket binds.", "0.0.0.0"
    )
    bridge: str = _setting("WEAVE_BRIDGE", "--bridge", "Name of the pod bridge.", "weave")
    tun: str = _setting("WEAVE_TUN", "--tun", "Name of the TUN device.", "weave-tun")
    offload: bool = _setting(
        "WEAVE_OFFLOAD",
        "--offload",
        "Ask the TUN for TSO/USO/checksum offloads (probed, best accepted mode wins); 'false' "
        "moves plain MTU-sized packets only (slower, for kernels that misbehave).",
        True,
    )
    udp_gso: bool = _setting(
        "WEAVE_UDP_GSO",
        "--udp-gso",
        "Send super-packets as a train of MTU-sized chunks with one UDP_SEGMENT (GSO) send; "
        "'false' sends each as one datagram the kernel IP-fragments (~8x slower here). Turns "
        "itself off if the kernel refuses GSO.",
        True,
    )
    gso_max_size: int = _setting(
        "WEAVE_GSO_MAX_SIZE",
        "--gso-max-size",
        "Largest super-packet in bytes the TUN and pod interfaces accept, so one fits in a "
        "single UDP GSO send (44 chunks at a 1500-byte underlay MTU) with our headers.",
        62000,
    )
    socket_buffer: int = _setting(
        "WEAVE_SOCKET_BUFFER",
        "--socket-buffer",
        "Send and receive buffer of the sleeve socket in bytes (forced past rmem_max).",
        8 * 1024 * 1024,
    )
    heartbeat_interval: float = _setting(
        "WEAVE_HEARTBEAT_INTERVAL",
        "--heartbeat-interval",
        "Seconds between UDP heartbeats to a peer until it answers (and when an answer is "
        "overdue).",
        0.5,
    )
    heartbeat_slow_interval: float = _setting(
        "WEAVE_HEARTBEAT_SLOW_INTERVAL",
        "--heartbeat-slow-interval",
        "Seconds between heartbeats to an established peer.",
        5.0,
    )
    heartbeat_timeout: float = _setting(
        "WEAVE_HEARTBEAT_TIMEOUT",
        "--heartbeat-timeout",
        "Seconds without an answer before a peer's data path is no longer established.",
        15.0,
    )
    http_addr: str = _setting(
        "WEAVE_HTTP_ADDR",
        "--http-addr",
        "Local HTTP API (status, report, healthz), HOST:PORT.",
        "127.0.0.1:6784",
    )
    metrics_addr: str = _setting(
        "WEAVE_METRICS_ADDR",
        "--metrics-addr",
        "Prometheus endpoint HOST:PORT; empty disables it.",
        "0.0.0.0:6782",
    )
    socket_path: str = _setting(
        "WEAVE_SOCKET",
        "--socket",
        "Unix socket of the local API (status, report, addresses, rmpeer).",
        "/run/weave-py/weave-py.sock",
    )
    cni_socket: str = _setting(
        "WEAVE_CNI_SOCKET",
        "--cni-socket",
        "Unix socket the CNI plugin hands requests (and the pod's netns) to; empty disables.",
        DEFAULT_CNI_SOCKET,
    )
    state_dir: str = _setting(
        "WEAVE_STATE_DIR", "--state-dir", "Directory for persistent state.", "/var/lib/weave-py"
    )
    log_format: str = _setting("WEAVE_LOG_FORMAT", "--log-format", "'text' or 'json'.", "text")
    log_level: str = _setting(
        "WEAVE_LOG_LEVEL", "--log-level", "debug, info, warning or error.", "info"
    )
    reconcile_interval: float = _setting(
        "WEAVE_RECONCILE_INTERVAL",
        "--reconcile-interval",
        "Seconds between full reconciliations of bridge, TUN and routes (repairs drift).",
        30.0,
    )
    netns: str | None = _setting(
        None,
        "--netns",
        "Run inside this network namespace (a name under /run/netns); for the lab and tests.",
        None,
    )

    @property
    def nickname(self) -> str:
        return self.node_name


# -- parsing -----------------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_peers(value: Any) -> tuple[StaticPeer, ...]:
    items = value if isinstance(value, list | tuple) else re.split(r"[;\s]+", str(value))
    out = []
    for item in items:
        if isinstance(item, StaticPeer):
            out.append(item)
            continue
        if not str(item).strip():
            continue
        m = PEER.match(str(item).strip())
        if not m:
            raise ValueError(f"{item!r} is not NAME@HOST[:PORT]=BLOCK[,BLOCK]")
        ipaddress.IPv4Address(m["host"])
        blocks = tuple(ipaddress.IPv4Network(b) for b in m["blocks"].split(","))
        out.append(StaticPeer(m["name"], m["host"], int(m["port"] or 6783), blocks))
    return tuple(out)


def _parse_seeds(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else re.split(r"[;,\s]+", str(value))
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        host, _, port = item.partition(":")
        ipaddress.IPv4Address(host)
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"{item!r} has a bad port")
        out.append(item)
    return tuple(out)


def _parse_int(value: Any) -> int:
    """Whole numbers only: TOML's true/false and 6783.9 are errors, not 1 and 6783."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    if isinstance(value, float):
        return int(value)
    return int(str(value).strip())


def _optional(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None or str(v).strip() == "" else parse(str(v))


PARSERS: dict[str, Callable[[Any], Any]] = {
    "ipalloc_range": lambda v: ipaddress.IPv4Network(str(v)),
    "pod_block": _optional(ipaddress.IPv4Network),
    "ipalloc_block": _parse_int,
    "ipam_timeout": float,
    "peers": _parse_peers,
    "mtu": _optional(_parse_int),
    "seeds": lambda v: _parse_seeds(v),
    "conn_limit": _parse_int,
    "port": _parse_int,
    "offload": lambda v: v if isinstance(v, bool) else _parse_bool(str(v)),
    "udp_gso": lambda v: v if isinstance(v, bool) else _parse_bool(str(v)),
    "gso_max_size": _parse_int,
    "socket_buffer": _parse_int,
    "heartbeat_interval": float,
    "heartbeat_slow_interval": float,
    "heartbeat_timeout": float,
    "reconcile_interval": float,
    "netns": _optional(str),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with settings (keys are field names)")
    for f in fields(Config):
        meta = f.metadata
        action = "append" if f.name in ("peers", "seeds") else "store"
        parser.add_argument(meta["flag"], dest=f.name, action=action, help=meta["doc"])


def load(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the configuration from file, environment and flags; raise ConfigError."""
    environ = {} if environ is None else environ
    raw: dict[str, tuple[str, Any]] = {}
    path = (getattr(args, "config", None) if args else None) or environ.get("WEAVE_CONFIG")
    if path:
        raw.update(_read_file(path))
    for f in fields(Config):
        env = f.metadata["env"]
        if env and env in environ:
            raw[f.name] = (env, environ[env])
        value = getattr(args, f.name, None) if args is not None else None
        if value is not None:
            raw[f.name] = (f.metadata["flag"], value)
    values = {name: _convert(name, source, value) for name, (source, value) in raw.items()}
    config = Config(**values)
    if not config.node_name:
        config = replace(config, node_name=socket.gethostname())
    validate(config)
    return config


def _read_file(path: str) -> dict[str, tuple[str, Any]]:
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


def _convert(name: str, source: str, value: Any) -> Any:
    if isinstance(value, list) and name not in ("peers", "seeds"):
        value = value[-1]
    try:
        return PARSERS.get(name, str)(value)
    except ValueError as exc:
        raise ConfigError(f"{name} (from {source}): bad value {value!r}: {exc}") from None


def validate(c: Config) -> None:
    def bad(name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{name}: {value!r} {why}")

    if c.mtu is not None and not 576 <= c.mtu <= 65000:
        raise bad("mtu", c.mtu, "is outside 576..65000")
    if not 1 <= c.port <= 65535:
        raise bad("port", c.port, "is not a port number")
    for name in ("bridge", "tun"):
        if not IFNAME.match(getattr(c, name)):
            raise bad(name, getattr(c, name), "is not a valid interface name (1-15 characters)")
    if c.bridge == c.tun:
        raise bad("tun", c.tun, "must differ from the bridge name")
    if c.pod_block is not None:
        if not c.pod_block.subnet_of(c.ipalloc_range):
            raise bad("pod_block", str(c.pod_block), f"is not inside {c.ipalloc_range}")
        if c.pod_block.num_addresses < 4:
            raise bad("pod_block", str(c.pod_block), "is too small (at least a /30)")
    widest = max(c.ipalloc_range.prefixlen, 8)
    if not widest <= c.ipalloc_block <= 30:
        why = f"is outside {widest}..30 (range {c.ipalloc_range})"
        raise bad("ipalloc_block", c.ipalloc_block, why)
    if c.ipalloc_init and init_count(c) < 1:
        raise bad("ipalloc_init", c.ipalloc_init, "is not consensus=N with N >= 1")
    if c.ipam_timeout <= 0:
        raise bad("ipam_timeout", c.ipam_timeout, "must be > 0 seconds")
    for peer in c.peers:
        if not 1 <= peer.port <= 65535:
            raise bad("peers", str(peer), "has a port outside 1..65535")
        for block in peer.blocks:
            if c.pod_block is not None and block.overlaps(c.pod_block):
                raise bad("peers", str(peer), f"overlaps this node's block {c.pod_block}")
    if c.peers and c.pod_block is None:
        raise bad("pod_block", None, "is required with static peers (no gossip IPAM)")
    if not 1024 <= c.gso_max_size <= 65000:
        raise bad("gso_max_size", c.gso_max_size, "is outside 1024..65000")
    if c.heartbeat_interval <= 0 or c.heartbeat_slow_interval < c.heartbeat_interval:
        raise bad("heartbeat_slow_interval", c.heartbeat_slow_interval, "must be >= interval > 0")
    if c.heartbeat_timeout <= c.heartbeat_slow_interval:
        raise bad("heartbeat_timeout", c.heartbeat_timeout, "must exceed the slow interval")
    if c.conn_limit < 1:
        raise bad("conn_limit", c.conn_limit, "must be at least 1")
    if c.advertise_address:
        try:
            ipaddress.IPv4Address(c.advertise_address)
        except ValueError:
            raise bad("advertise_address", c.advertise_address, "is not an IPv4 address") from None
    if c.reconcile_interval <= 0:
        raise bad("reconcile_interval", c.reconcile_interval, "must be > 0 seconds")
    if c.socket_buffer < 65536:
        raise bad("socket_buffer", c.socket_buffer, "is below 65536 bytes")
    if c.log_format not in ("text", "json"):
        raise bad("log_format", c.log_format, "is not 'text' or 'json'")
    if c.log_level not in ("debug", "info", "warning", "error"):
        raise bad("log_level", c.log_level, "is not debug, info, warning or error")
    for name in ("http_addr", "metrics_addr"):
        value = getattr(c, name)
        if value and split_hostport(value) is None:
            raise bad(name, value, "is not HOST:PORT")


def init_count(c: Config) -> int:
    """How many nodes start the cluster (IPALLOC_INIT consensus=N); 0 when malformed."""
    if not c.ipalloc_init:
        return len(c.seeds) + 1
    kind, _, n = c.ipalloc_init.partition("=")
    return int(n) if kind.strip() == "consensus" and n.strip().isdigit() else 0


def split_hostport(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host or "0.0.0.0", int(port)


def reference() -> str:
    """The configuration reference as a Markdown table (the README embeds it)."""
    rows = ["| setting | environment | flag | default | meaning |", "|---|---|---|---|---|"]
    for f in fields(Config):
        env = f"`{f.metadata['env']}`" if f.metadata["env"] else ""
        default = f.default if f.default is not MISSING else ()
        shown = "" if default in (None, "", ()) else f"`{default}`"
        rows.append(
            f"| `{f.name}` | {env} | `{f.metadata['flag']}` | {shown} | {f.metadata['doc']} |"
        )
    return "\n".join(rows)
