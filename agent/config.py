"""Agent configuration: the settings, each documented where it is declared.

``Config`` is parsed and validated once and then frozen. Sources, later ones winning: defaults,
an optional TOML file (``--config`` / ``WEAVE_CONFIG``; keys are the field names), environment
variables (Weave's names where Weave had the setting), then command-line flags; each field's
metadata names its variable and flag. agent/config_sources.py reads the sources (``load``), and
agent/config_rules.py holds the rules a configuration keeps (``validate``). The command line
(agent/cli.py) hands the process environment to those two; nothing else reads settings from
``os.environ``. ``reference()`` renders the fields for the README.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from agent.cni.spec import DEFAULT_SOCKET as DEFAULT_CNI_SOCKET


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


def _setting(
    env: str | None, flag: str, doc: str, default: Any = MISSING, secret: bool = False, **kw: Any
) -> Any:
    """A field with its variable, flag and documentation; a ``secret`` one is left out of repr."""
    meta = {"env": env, "flag": flag, "doc": doc}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


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
        "Gossip mode: this node's address as other nodes reach it (control and sleeve); the "
        "DaemonSet sets it from the pod's status.hostIP. Default: with Kubernetes, the own "
        "Node's InternalIP; else the address of the interface that routes to the first seed "
        "that is not this node.",
        "",
    )
    kubernetes: str = _setting(
        "WEAVE_KUBERNETES",
        "--kubernetes",
        "Use the Kubernetes API: 'on', 'off' or 'auto' (on inside a cluster, i.e. with "
        "kube_api_host set and a service-account token, or with a kubeconfig). On: peers are "
        "the Nodes' InternalIPs (list, then watch), the quorum is the Node count, "
        "NetworkUnavailable is cleared once routes are in place, and a deleted Node's space "
        "is reclaimed by one surviving peer.",
        "auto",
    )
    kubeconfig: str = _setting(
        "KUBECONFIG",
        "--kubeconfig",
        "Kubernetes out of cluster: the kubeconfig file to use (its current context). Unset: "
        "the in-cluster service account.",
        "",
    )
    kube_api_host: str = _setting(
        "KUBERNETES_SERVICE_HOST",
        "--kube-api-host",
        "Kubernetes in cluster: the apiserver's address (kubelet sets the variable in every pod).",
        "",
    )
    kube_api_port: int = _setting(
        "KUBERNETES_SERVICE_PORT",
        "--kube-api-port",
        "Kubernetes in cluster: the apiserver's port (kubelet sets the variable).",
        443,
    )
    service_account_dir: str = _setting(
        None,
        "--service-account-dir",
        "Kubernetes in cluster: the directory of the service account's token, ca.crt and "
        "namespace.",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    )
    kube_namespace: str = _setting(
        "WEAVE_KUBE_NAMESPACE",
        "--kube-namespace",
        "Kubernetes: the namespace of the Leases that decide which peer reclaims a deleted "
        "Node's space (the manifest's Role grants them there).",
        "kube-system",
    )
    ipam_mode: str = _setting(
        "WEAVE_IPAM_MODE",
        "--ipam-mode",
        "'gossip': blocks from the cluster range by the gossip ring (or pod_block when given); "
        "'kube': the own Node's spec.podCIDR, assigned by kube-controller-manager "
        "(--allocate-node-cidrs), must lie inside ipalloc_range; the agent waits for it.",
        "gossip",
    )
    conn_limit: int = _setting(
        "CONN_LIMIT",
        "--conn-limit",
        "Gossip mode: most control connections this node holds. It dials about 2 log2(N) of "
        "them; data paths do not depend on them.",
        100,
    )
    password: str = _setting(
        "WEAVE_PASSWORD",
        "--password",
        "Membership secret: only peers that know it complete a handshake (proved without "
        "sending it; fresh X25519 keys per connection). Every node needs the same one; a "
        "long random string (it is stretched with scrypt, but a guessable one can still be "
        "tried offline by whoever sees a handshake). Never logged or reported; the flag shows "
        "in the process list, so prefer the variable or password_file. Gossip mode only. Empty "
        "(default): open membership, as Weave without a password.",
        "",
        secret=True,
    )
    password_file: str = _setting(
        "WEAVE_PASSWORD_FILE",
        "--password-file",
        "A file of membership secrets (a mounted Kubernetes Secret), one a line, surrounding "
        "blanks and empty lines ignored, at most 8: the first is used for new connections, "
        "all are accepted. Read again every 2 s while running: a valid change is taken without "
        "a restart (rotation [A] -> [A, B] -> [B, A] -> [B], each step on every node before "
        "the next; connections under a dropped secret redial under the new one); an invalid "
        "or unreadable file then changes nothing and is logged once. A missing or empty file "
        "stops the start. Not with password.",
        "",
    )
    mtu: int | None = _setting(
        "WEAVE_MTU",
        "--mtu",
        "Overlay MTU in bytes for the bridge, TUN and pods. Default: the MTU of the interface "
        "that holds the advertised address (else the one that reaches the first peer), minus "
        "64 bytes of encapsulation (the sleeve's; the fast path's VXLAN needs 50, so one MTU "
        "fits both), and minus 28 more with a password.",
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
    no_fastdp: bool = _setting(
        "WEAVE_NO_FASTDP",
        "--no-fastdp",
        "Carry all pod traffic over the sleeve: no kernel VXLAN fast path on UDP 6784 here "
        "(peers that have it use the sleeve with this node). With a password the fast path is "
        "never used (it would carry traffic unencrypted).",
        False,
    )
    vxlan_device: str = _setting(
        "WEAVE_VXLAN_DEVICE",
        "--vxlan-device",
        "Name of the fast path's kernel VXLAN device.",
        "vxlan-6784",
    )
    masquerade: bool = _setting(
        "WEAVE_MASQUERADE",
        "--masquerade",
        "Pods' traffic to addresses outside the cluster range (ipalloc_range) leaves with the "
        "node's address (nftables table 'weave-py', nothing else touched); pod-to-pod traffic "
        "never does. 'false' when the network routes the pod range itself.",
        True,
    )
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
    peer_metrics: bool = _setting(
        "WEAVE_PEER_METRICS",
        "--peer-metrics",
        "Per-peer Prometheus series (weave_py_peer_*). Each node exports 9 per remote peer, "
        "plus one per peer and drop reason seen: 9(N-1) per node and 9N(N-1) across a cluster "
        "of N nodes (89,100 at N=100). 'false' leaves them out; the node-wide series stay.",
        True,
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
