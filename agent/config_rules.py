"""The rules a configuration keeps, checked once when it is loaded (agent/config_sources.py).

``validate`` runs the rules in a fixed order and raises the first ``ConfigError``, whose message
names the field and the bad value: ``mtu: 70000 is outside 576..65000``. Each rule below checks
one group of related settings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from agent.config import Config, ConfigError, init_count, split_hostport

IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
KUBERNETES = ("auto", "on", "off")
IPAM_MODES = ("gossip", "kube")
MAX_PASSWORD = 4096  # bytes; gossip/secret.py's MAX_SECRET


def validate(c: Config) -> None:
    """Raise ConfigError for the first setting that breaks a rule."""
    for rule in RULES:
        rule(c)


def _bad(name: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{name}: {value!r} {why}")


def _devices(c: Config) -> None:
    """MTU, port and interface names of the node's bridge, TUN and VXLAN device."""
    if c.mtu is not None and not 576 <= c.mtu <= 65000:
        raise _bad("mtu", c.mtu, "is outside 576..65000")
    if not 1 <= c.port <= 65535:
        raise _bad("port", c.port, "is not a port number")
    for name in ("bridge", "tun", "vxlan_device"):
        if not IFNAME.match(getattr(c, name)):
            raise _bad(name, getattr(c, name), "is not a valid interface name (1-15 characters)")
    if c.bridge == c.tun:
        raise _bad("tun", c.tun, "must differ from the bridge name")
    if c.vxlan_device in (c.bridge, c.tun):
        raise _bad("vxlan_device", c.vxlan_device, "must differ from the bridge and TUN names")


def _address_space(c: Config) -> None:
    """The pod block inside the range; block size, seeding and the address request timeout."""
    if c.pod_block is not None:
        if not c.pod_block.subnet_of(c.ipalloc_range):
            raise _bad("pod_block", str(c.pod_block), f"is not inside {c.ipalloc_range}")
        if c.pod_block.num_addresses < 4:
            raise _bad("pod_block", str(c.pod_block), "is too small (at least a /30)")
    widest = max(c.ipalloc_range.prefixlen, 8)
    if not widest <= c.ipalloc_block <= 30:
        why = f"is outside {widest}..30 (range {c.ipalloc_range})"
        raise _bad("ipalloc_block", c.ipalloc_block, why)
    if c.ipalloc_init and init_count(c) < 1:
        raise _bad("ipalloc_init", c.ipalloc_init, "is not consensus=N with N >= 1")
    if c.ipam_timeout <= 0:
        raise _bad("ipam_timeout", c.ipam_timeout, "must be > 0 seconds")


def _static_peers(c: Config) -> None:
    """Static peers: valid ports, blocks apart from ours, and a block of our own."""
    for peer in c.peers:
        if not 1 <= peer.port <= 65535:
            raise _bad("peers", str(peer), "has a port outside 1..65535")
        for block in peer.blocks:
            if c.pod_block is not None and block.overlaps(c.pod_block):
                raise _bad("peers", str(peer), f"overlaps this node's block {c.pod_block}")
    if c.peers and c.pod_block is None:
        raise _bad("pod_block", None, "is required with static peers (no gossip IPAM)")


def _data_path(c: Config) -> None:
    """Super-packet size and the heartbeats' intervals and timeout."""
    if not 1024 <= c.gso_max_size <= 65000:
        raise _bad("gso_max_size", c.gso_max_size, "is outside 1024..65000")
    if c.heartbeat_interval <= 0 or c.heartbeat_slow_interval < c.heartbeat_interval:
        raise _bad("heartbeat_slow_interval", c.heartbeat_slow_interval, "must be >= interval > 0")
    if c.heartbeat_timeout <= c.heartbeat_slow_interval:
        raise _bad("heartbeat_timeout", c.heartbeat_timeout, "must exceed the slow interval")


def _mesh(c: Config) -> None:
    """Gossip: the connection limit and the address other nodes reach us at."""
    if c.conn_limit < 1:
        raise _bad("conn_limit", c.conn_limit, "must be at least 1")
    if c.advertise_address:
        try:
            ipaddress.IPv4Address(c.advertise_address)
        except ValueError:
            raise _bad("advertise_address", c.advertise_address, "is not an IPv4 address") from None


def _membership(c: Config) -> None:
    """The membership secret: from the variable or from a file, not both; and only with gossip
    (static peers hold no handshake and publish no keys)."""
    if c.password and c.password_file:
        raise _bad("password_file", c.password_file, "cannot be used together with password")
    if (c.password or c.password_file) and c.peers:
        raise ConfigError("password: static peers (peers) cannot use one; use gossip (seeds)")
    if len(c.password.encode()) > MAX_PASSWORD:
        raise ConfigError(f"password: longer than {MAX_PASSWORD} bytes")


def _kubernetes(c: Config) -> None:
    """The Kubernetes switch, the API's port, and kube IPAM's need of a podCIDR."""
    if c.kubernetes not in KUBERNETES:
        raise _bad("kubernetes", c.kubernetes, "is not 'auto', 'on' or 'off'")
    if not 1 <= c.kube_api_port <= 65535:
        raise _bad("kube_api_port", c.kube_api_port, "is not a port number")
    if c.ipam_mode not in IPAM_MODES:
        raise _bad("ipam_mode", c.ipam_mode, "is not 'gossip' or 'kube'")
    if c.ipam_mode == "kube" and c.kubernetes == "off" and c.pod_block is None:
        raise _bad("ipam_mode", c.ipam_mode, "needs the Kubernetes API or pod_block")


def _upkeep(c: Config) -> None:
    """Reconciliation interval and the sleeve socket's buffer."""
    if c.reconcile_interval <= 0:
        raise _bad("reconcile_interval", c.reconcile_interval, "must be > 0 seconds")
    if c.socket_buffer < 65536:
        raise _bad("socket_buffer", c.socket_buffer, "is below 65536 bytes")


def _operations(c: Config) -> None:
    """Logs, the local API and the metrics endpoint."""
    if c.log_format not in ("text", "json"):
        raise _bad("log_format", c.log_format, "is not 'text' or 'json'")
    if c.log_level not in LOG_LEVELS:
        raise _bad("log_level", c.log_level, "is not debug, info, warning or error")
    for name in ("http_addr", "metrics_addr"):
        value = getattr(c, name)
        if value and split_hostport(value) is None:
            raise _bad(name, value, "is not HOST:PORT")


RULES: tuple[Callable[[Config], None], ...] = (
    _devices,
    _address_space,
    _static_peers,
    _data_path,
    _mesh,
    _membership,
    _kubernetes,
    _upkeep,
    _operations,
)
