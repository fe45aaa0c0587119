"""The node's kernel as the agent finds and keeps it: netlink on a thread of its own, the TUN,
the MTUs, and the routes a previous agent left.

``NodeKernel.open`` returns a complete object: everything later steps need is found before it
returns, so nothing is filled in afterwards. pyroute2's synchronous API runs an event loop of
its own, so every netlink call runs on one worker thread, created in the agent's namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from agent.config import Config
from overlay import fastdp, frame, node
from overlay.actions import NAT_TABLE
from overlay.kernel import NetlinkHandle
from overlay.netdev import NetlinkFailure, Route
from overlay.netlink import Netlink
from overlay.nft_count import TrafficCounters
from overlay.nftables import Nftables
from overlay.seal import AEAD_EXTRA
from overlay.sysctl import ensure_sysctl
from overlay.traffic import Traffic
from overlay.tun import TunDevice, open_tun

log = logging.getLogger("weave-py")
DEFAULT_UNDERLAY_MTU = 1500
LOOPBACK = "lo"
VXLAN_OVERHEAD = 50  # the fast path's outer IPv4, UDP, VXLAN and Ethernet headers
T = TypeVar("T")
Net = ipaddress.IPv4Network


def first_hosts(config: Config) -> list[str]:
    """Addresses of other nodes we were told about (static peers, then seeds)."""
    return [p.host for p in config.peers] + [s.partition(":")[0] for s in config.seeds]


@dataclass(frozen=True)
class Underlay:
    """What the kernel says about the network towards the other nodes."""

    mtu: int  # of the interface that carries peer traffic (1500 when unknown)
    address: str | None  # this node's address on that interface (None when unknown)
    kept: frozenset[Net]  # our sleeve routes already in the kernel (a previous agent's)
    kept_fast: fastdp.KeptFastdp = fastdp.KeptFastdp({}, frozenset())  # its fast-path state


def survey(
    nl: NetlinkHandle, hosts: list[str], advertise: str = "", tun: str = "", vxlan: str = ""
) -> Underlay:
    """The underlay: the interface that holds ``advertise`` when one is given, else the one
    that routes to the first of ``hosts`` that is not this node's own address (a seed list
    shared by every node names each node too, and the route to oneself is ``lo``). With it,
    what a previous agent left: our routes into ``tun`` (all of ours when not given) and the
    fast path's state on the device ``vxlan``."""
    kept = frozenset(r.destination for r in nl.list_routes() if r.device == tun or not tun)
    fast = fastdp.kept_fastdp(nl, vxlan) if vxlan else fastdp.KeptFastdp({}, frozenset())
    return replace(_underlay(nl, hosts, advertise, kept), kept_fast=fast)


def _underlay(
    nl: NetlinkHandle, hosts: list[str], advertise: str, kept: frozenset[Net]
) -> Underlay:
    links = [link for link in nl.list_links() if link.name != LOOPBACK]
    held = {str(a.ip): link for link in links for a in nl.list_addresses_index(link.index)}
    if advertise and advertise in held:
        return Underlay(held[advertise].mtu or DEFAULT_UNDERLAY_MTU, advertise, kept)
    for host in hosts:
        if host in held:
            continue
        link = nl.route_device(ipaddress.IPv4Address(host))
        if link is None or link.name == LOOPBACK:
            continue
        addresses = nl.list_addresses(link.name)
        address = advertise or (str(addresses[0].ip) if addresses else None)
        return Underlay(link.mtu or DEFAULT_UNDERLAY_MTU, address, kept)
    return Underlay(DEFAULT_UNDERLAY_MTU, advertise or None, kept)


@dataclass
class NodeKernel:
    """The set-up kernel side of the node. ``mtu`` is the overlay MTU of bridge, TUN and pods:
    the underlay's less our encapsulation, and less the AEAD extension and tag with a secret."""

    tun: TunDevice
    offload: str  # the TUN's offload mode (overlay/tun.py OFFLOAD_MODES)
    underlay: Underlay
    mtu: int
    _thread: ThreadPoolExecutor
    _reconciler: node.Reconciler
    sysctl: Callable[[str, str], bool] = ensure_sysctl  # sets one, says whether it changed
    routes: tuple[Route, ...] = field(default=())  # ours after the last reconcile
    traffic: TrafficCounters | None = None  # the fast path's per-peer counters (None: none)
    nat: Nftables | None = None  # our table, for its guard's drop counter (None: not read)
    _problems: dict[str, str] = field(default_factory=dict)  # per reading, its last refusal

    @classmethod
    async def open(cls, config: Config) -> NodeKernel:
        """Find the underlay, open the TUN (raises OSError or NetlinkFailure on failure)."""
        thread = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        try:
            hosts = first_hosts(config)
            nl, underlay = await _on(thread, _survey, hosts, config)
            tun = open_tun(config.tun, offload=config.offload)
        except BaseException:
            thread.shutdown()
            raise
        log.info("open tun: %s offload=%s", config.tun, tun.offload)
        sealed = bool(config.password or config.password_file)
        overhead = max(frame.OVERHEAD, VXLAN_OVERHEAD) + (AEAD_EXTRA if sealed else 0)
        mtu = config.mtu or underlay.mtu - overhead
        return cls(tun, tun.offload, underlay, mtu, thread, node.Reconciler(nl),
                   traffic=TrafficCounters(), nat=Nftables())  # fmt: skip

    async def reconcile(self, spec: node.NodeSpec) -> list[node.Action]:
        """Bring bridge, TUN, addresses and routes to ``spec``; the changes made."""
        actions = await _on(self._thread, self._reconciler.run, spec)
        self.routes = self._reconciler.routes
        if self.traffic is not None:
            guard = spec.guard
            port, hosts = (guard.port, guard.hosts) if guard is not None else (None, frozenset())
            await self._counting("count traffic", self.traffic.sync, port, hosts)
        return actions

    async def read_traffic(self) -> dict[ipaddress.IPv4Address, Traffic]:
        """The fast path's counts per peer host (overlay/nft_count.py); empty without them."""
        if self.traffic is None:
            return {}
        return await self._counting("count traffic", self.traffic.read) or {}

    async def read_guard_drops(self) -> int | None:
        """What the fast path's guard dropped since our table was last made; None when it
        cannot be read (no guard, no table, a refusal)."""
        if self.nat is None:
            return None
        return await self._counting("count guard drops", self.nat.guard_drops, NAT_TABLE)

    async def _counting(self, what: str, fn: Callable[..., T], *args: object) -> T | None:
        """``fn`` on the netlink thread; a refusal costs the counts, not the caller, and is
        logged under ``what`` when it first happens and when it ends (each reading apart, so
        one that keeps failing never makes another's lines repeat)."""
        try:
            result = await _on(self._thread, fn, *args)
        except NetlinkFailure as exc:
            if str(exc) != self._problems.get(what):
                log.warning("%s: %s (the fast path's counts stop)", what, exc)
            self._problems[what] = str(exc)
            return None
        if self._problems.pop(what, ""):
            log.info("%s: the fast path's counts work again", what)
        return result

    async def ensure_forwarding(self, spec: node.NodeSpec) -> list[str]:
        """Forwarding and reverse-path sysctls; the ones changed."""
        return await _on(self._thread, node.ensure_forwarding, spec, self.sysctl)

    def close(self) -> None:
        """Close the TUN descriptor and netlink (the devices stay for a restart)."""
        self.tun.close()
        self._thread.submit(self._reconciler.nl.close).result()
        self._thread.shutdown()


def _survey(hosts: list[str], config: Config) -> tuple[Netlink, Underlay]:
    nl = Netlink()
    vxlan = "" if config.no_fastdp else config.vxlan_device
    return nl, survey(nl, hosts, config.advertise_address, config.tun, vxlan)


async def _on(thread: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)
