"""The agent daemon: wires configuration, node setup, the sleeve and the API together.

Supervision: one TaskGroup; any task that fails takes the agent down loudly (the DaemonSet
restarts it) rather than leaving a half-working node. SIGTERM/SIGINT end it cleanly with exit
status 0, leaving bridge, TUN and routes in place so a restarted agent resumes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, TypeVar

from agent import errors, snapshot
from agent.api import Api
from agent.cluster import Cluster
from agent.cni import server as cni_server
from agent.cni.handler import Handler
from agent.cni.network import KernelPodNetwork
from agent.config import Config, split_hostport
from agent.ipam import Ipam
from agent.peer_name import load_or_create
from agent.report import IpamStatus, Report, Router
from gossip.identity import Identity, name_for, new_identity, peer_id
from overlay import frame, node, udp
from overlay.datapath import Datapath
from overlay.ipam.pool import Allocation
from overlay.netlink import Netlink
from overlay.sleeve import PeerEvent, PeerSpec, Sleeve
from overlay.tun import Tun, open_tun

log = logging.getLogger("weave-py")
DEFAULT_UNDERLAY_MTU = 1500
SHUTDOWN_GRACE = 5.0  # seconds a stop may take before the process exits regardless
ROUTE_GRACE = 10.0  # seconds a restarted agent in gossip mode keeps routes it found
T = TypeVar("T")


def peer_specs(config: Config) -> list[PeerSpec]:
    return [
        PeerSpec(
            peer_id(name_for(p.name)),
            p.name,
            (p.host, p.port),
            p.blocks,
            peer_name=name_for(p.name),
        )
        for p in config.peers
    ]


def first_hosts(config: Config) -> list[str]:
    """Addresses of other nodes we were told about (static peers, then seeds)."""
    return [p.host for p in config.peers] + [s.partition(":")[0] for s in config.seeds]


def detect_underlay_mtu(nl: Netlink, config: Config) -> int:
    """MTU of the interface that carries traffic to the first peer (1500 when unknown)."""
    for host in first_hosts(config):
        link = nl.route_device(ipaddress.IPv4Address(host))
        if link is not None and link.mtu:
            return link.mtu
    return DEFAULT_UNDERLAY_MTU


def detect_advertise_address(nl: Netlink, config: Config) -> str:
    """The address of the interface that routes to the first seed (gossip mode)."""
    if config.advertise_address:
        return config.advertise_address
    for host in first_hosts(config):
        link = nl.route_device(ipaddress.IPv4Address(host))
        if link is not None:
            for address in nl.list_addresses(link.name):
                return str(address.ip)
    raise ValueError("advertise_address is not set and no seed route shows which address to use")


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.gossip = not config.peers
        self.identity: Identity = (
            load_or_create(config.state_dir, config.node_name)
            if self.gossip
            else new_identity(config.node_name)
        )
        self.cluster: Cluster | None = None
        self.kept_routes: frozenset[ipaddress.IPv4Network] = frozenset()
        self.keep_routes_until = 0.0
        self.advertise = ""
        self.incarnation = time.time_ns()
        self.ipam = Ipam(config, self.identity.name, self.incarnation)
        # pyroute2's synchronous API runs an event loop of its own, so every netlink call runs
        # on one worker thread (created after the agent entered its namespace).
        self._netlink_thread = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self.nl: Netlink | None = None
        self.tun: Tun | None = None
        self.sock: socket.socket | None = None
        self.underlay_mtu = DEFAULT_UNDERLAY_MTU
        self.mtu = 0
        self.ready = False
        self.started_at = time.time()
        self.sleeve: Sleeve | None = None
        self.datapath: Datapath | None = None
        self.routes: list[dict[str, str]] = []

    # -- node setup --------------------------------------------------------------------------

    def node_spec(self) -> node.NodeSpec:
        if self.sleeve is not None:
            remote = frozenset(b for p in self.sleeve.peers.values() for b in p.spec.blocks)
        else:
            remote = frozenset(b for p in self.config.peers for b in p.blocks)
        if self.gossip and time.monotonic() < self.keep_routes_until:
            remote |= self.kept_routes  # a restart keeps the old routes while the mesh forms
        return node.NodeSpec(
            bridge=self.config.bridge,
            tun=self.config.tun,
            mtu=self.mtu,
            gso_max_size=self.config.gso_max_size,
            gateways=self.ipam.gateways,
            remote_blocks=remote,
        )

    async def netlink(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the netlink thread (in the node's namespace)."""
        return await asyncio.get_running_loop().run_in_executor(self._netlink_thread, fn, *args)

    def setup_kernel(self) -> None:
        """Bridge, TUN, routes and sysctls (on the netlink thread)."""
        c = self.config
        self.nl = Netlink()
        self.underlay_mtu = detect_underlay_mtu(self.nl, c)
        self.mtu = c.mtu or self.underlay_mtu - frame.OVERHEAD
        if self.gossip:
            self.advertise = detect_advertise_address(self.nl, c)
            self.kept_routes = frozenset(r.destination for r in self.nl.list_routes())
            self.keep_routes_until = time.monotonic() + ROUTE_GRACE
        self.tun = open_tun(c.tun, offload=c.offload)
        log.info("open tun: %s offload=%s", c.tun, self.tun.offload)
        spec = self.node_spec()
        actions = self._reconcile(spec)
        changed = node.ensure_forwarding(spec)
        log.info(
            "reconcile node: %d change(s)%s; mtu %d (underlay %d)",
            len(actions),
            f", sysctl {' '.join(changed)}" if changed else "",
            self.mtu,
            self.underlay_mtu,
        )

    def setup(self) -> None:
        """The sleeve: socket, core and driver (on the event loop)."""
        c = self.config
        assert self.tun is not None
        self.sock = udp.open_udp(c.bind_address, c.port, c.socket_buffer)
        self.sleeve = Sleeve(
            self.identity.peer_id,
            self.identity.uid,
            self.ipam.owned,
            self.mtu,
            router_address=self._router_address(),
            fast_interval=c.heartbeat_interval,
            slow_interval=c.heartbeat_slow_interval,
            timeout=c.heartbeat_timeout,
        )
        self.sleeve.set_peers(peer_specs(c), time.monotonic())
        if self.gossip:
            self.cluster = Cluster(
                c, self.identity, self.advertise, self.incarnation, self.ipam.publish(),
                self.ipam.routable,
            )  # fmt: skip
            self.ipam.kick = self.cluster.changed.set
        self.datapath = Datapath(
            self.sleeve, self.tun.fd, self.sock, self.underlay_mtu, self._event, c.udp_gso,
            connect=lambda peer: udp.open_udp(c.bind_address, 0, c.socket_buffer, peer),
        )  # fmt: skip
        for p in c.peers:
            log.info(
                "add peer: %s(%s) %s:%d blocks %s",
                name_for(p.name),
                p.name,
                p.host,
                p.port,
                ",".join(map(str, p.blocks)),
            )
        self.ready = True

    def _router_address(self) -> bytes:
        gateways = self.ipam.gateways
        return gateways[0].ip.packed if gateways else b"\0\0\0\0"

    def _event(self, event: PeerEvent) -> None:
        p = event.peer
        where = f"sleeve ->[{p.address[0]}:{p.address[1]}|{p.peer_name}({p.name})]"
        if event.kind == "established":
            log.info("%s: data path established (%s), mtu=%d", where, event.detail, self.mtu)
        elif event.kind == "lost":
            log.warning("%s: data path lost: %s", where, event.detail)
        else:
            log.info("%s: peer restarted (%s)", where, event.detail)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.netlink(self.setup_kernel)
        self.setup()
        assert self.datapath is not None
        api = Api(self.snapshot, actions=self)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.close)
            for server in await self._servers(api):
                stack.push_async_callback(_close_server, server)
            if self.config.cni_socket:
                os.makedirs(os.path.dirname(self.config.cni_socket) or ".", exist_ok=True)
                network = KernelPodNetwork(self.config.bridge, self.mtu, self.config.gso_max_size)
                stack.callback(network.close)
                handler = Handler(_PodAddresses(self), network)
                cni = await cni_server.serve(self.config.cni_socket, handler.handle)
                stack.push_async_callback(_close_cni, cni)
            log.info("agent ready: %s, %d peer(s)", self.identity, len(self.config.peers))
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self.datapath.run(), name="datapath")
                    tasks.create_task(self._reconcile_loop(), name="reconcile")
                    tasks.create_task(self._peer_table_loop(), name="peer-table")
                    if self.cluster is not None:
                        tasks.create_task(self.cluster.driver.run(), name="mesh")
                        tasks.create_task(self._follow_cluster(), name="follow-mesh")
                    await stop.wait()
                    _exit_if_stuck(SHUTDOWN_GRACE)
                    if self.cluster is not None:
                        self.cluster.driver.leave()
                        await asyncio.sleep(0.2)  # let the goodbyes leave
                    raise _Stop
            except* _Stop:
                log.info("stop agent: signal received, kernel state kept for restart")

    async def _servers(self, api: Api) -> list[asyncio.AbstractServer]:
        servers: list[asyncio.AbstractServer] = []
        path = self.config.socket_path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        servers.append(await asyncio.start_unix_server(api.handle, path))
        hostport = split_hostport(self.config.http_addr) if self.config.http_addr else None
        if hostport:
            servers.append(await asyncio.start_server(api.handle, *hostport, reuse_address=True))
        hostport = split_hostport(self.config.metrics_addr) if self.config.metrics_addr else None
        if hostport:
            public = Api(self.snapshot, metrics_only=True)
            servers.append(await asyncio.start_server(public.handle, *hostport, reuse_address=True))
        return servers

    def _reconcile(self, spec: node.NodeSpec) -> list[node.Action]:
        assert self.nl is not None
        actions = node.Reconciler(self.nl).run(spec)
        self.routes = [
            {"destination": str(r.destination), "device": r.device} for r in self.nl.list_routes()
        ]
        return actions

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            actions = await self.netlink(self._reconcile, self.node_spec())
            if actions:
                log.warning("reconcile node: repaired drift with %d change(s)", len(actions))

    async def _follow_cluster(self) -> None:
        """Sleeve peers and kernel routes follow the mesh's routes and the space each peer
        owns; our address claim and data-plane exceptions go back into our record."""
        assert self.cluster is not None and self.sleeve is not None
        cluster, sleeve = self.cluster, self.sleeve
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cluster.changed.wait(), self.config.heartbeat_interval)
            # IPAM steps on every change and every heartbeat interval (requests, seeding, grants).
            owned = self.ipam.owned
            if self.ipam.step(cluster.topology.records, cluster.mesh.live()):
                cluster.publish(**self.ipam.publish())
                if self.ipam.owned != owned:
                    cluster.changed.set()  # our space changed: local blocks and routes follow
            if cluster.changed.is_set():
                cluster.changed.clear()
                before = set(sleeve.peers)
                sleeve.set_local_blocks(self.ipam.owned, self._router_address())
                sleeve.set_peers(cluster.peer_specs(), time.monotonic())
                if self.datapath is not None:
                    self.datapath.poke()
                actions = await self.netlink(self._reconcile, self.node_spec())
                if set(sleeve.peers) != before or actions:
                    log.info("update routes: %d peer(s), %d kernel change(s)",
                             len(sleeve.peers), len(actions))  # fmt: skip
            if self.kept_routes and time.monotonic() >= self.keep_routes_until:
                self.kept_routes = frozenset()  # grace over: routes follow the mesh alone
                cluster.changed.set()
            unreachable = sleeve.unreachable(time.monotonic())
            if tuple(unreachable) != cluster.topology.local.unreachable:
                cluster.set_unreachable(unreachable)

    async def _peer_table_loop(self) -> None:
        """A compact peer table in the log every minute, for ``kubectl logs``."""
        while True:
            await asyncio.sleep(60)
            for p in self.snapshot().peers:
                log.info(
                    "peer %s(%s) %s %s tx=%d rx=%d drops=%d",
                    p.name,
                    p.nickname,
                    p.address,
                    p.state,
                    p.tx_packets,
                    p.rx_packets,
                    sum(p.drops.values()),
                )

    def close(self) -> None:
        for closer in (self.sock, self.tun):
            if closer is not None:
                closer.close()
        if self.nl is not None:
            self._netlink_thread.submit(self.nl.close).result()
        self._netlink_thread.shutdown()

    # -- actions the API offers (the CNI plugin's and rmpeer's) ---------------------------------

    async def allocate_address(
        self, container_id: str, ifname: str, persist: bool = True
    ) -> Allocation:
        """A pod address (errors.Refused when there is none); a new block's gateway is on the
        bridge before the address is handed out. ``persist`` False: see Ipam.allocate."""
        gateways = self.ipam.gateways
        a = await self.ipam.allocate(container_id, ifname, persist)
        if self.ipam.gateways != gateways:
            await self._space_changed()
        return a

    async def release_address(self, container_id: str, ifname: str | None) -> list[Allocation]:
        gateways = self.ipam.gateways
        released = self.ipam.release(container_id, ifname)
        if self.ipam.gateways != gateways:
            await self._space_changed()
        return released

    async def allocate(self, container_id: str, ifname: str) -> dict[str, Any]:
        a = await self.allocate_address(container_id, ifname)
        return {"container_id": a.container_id, "ifname": a.ifname,
                "address": str(a.address), "gateway": str(a.gateway)}  # fmt: skip

    async def release(self, container_id: str, ifname: str | None) -> dict[str, Any]:
        released = await self.release_address(container_id, ifname)
        return {"released": [str(a.address) for a in released]}

    async def rmpeer(self, name: str) -> dict[str, Any]:
        live = self.cluster.mesh.live() if self.cluster else set()
        taken = self.ipam.rmpeer(name, live)
        await self._space_changed()
        return {"name": name, "taken": [str(n) for n in taken]}

    async def _space_changed(self) -> None:
        """Gateways, local space and our claim follow the pool and the ring. (Counts alone --
        addresses in use -- go out with the next periodic step, coalesced.)"""
        if self.sleeve is not None:
            self.sleeve.set_local_blocks(self.ipam.owned, self._router_address())
        if self.cluster is not None:
            self.cluster.publish(**self.ipam.publish())
            self.cluster.changed.set()
        if self.nl is not None:
            await self.netlink(self._reconcile, self.node_spec())

    # -- status ------------------------------------------------------------------------------

    def _ipam_status(self) -> IpamStatus:
        if self.cluster is not None:
            records = self.cluster.topology.records
            live: set[str] = self.cluster.mesh.live()
        else:
            records, live = {}, set()
        status = self.ipam.status(records, live, self.identity.nickname)
        return status if isinstance(status, IpamStatus) else IpamStatus.from_json(status)

    def snapshot(self) -> Report:
        """The node's status now, for /report, the views and the metrics."""
        udp_gso = self.datapath is not None and self.datapath.udp_gso
        router = Router(
            name=self.identity.name,
            nickname=self.identity.nickname,
            uid=f"{self.identity.uid:x}",
            port=self.config.port,
            mtu=self.mtu,
            underlay_mtu=self.underlay_mtu,
            offload=self.tun.offload if self.tun else "unknown",
            super_packets="udp-gso" if udp_gso else "ip-fragments",
        )
        return snapshot.take(
            router,
            ready=self.ready,
            uptime_seconds=time.time() - self.started_at,
            ipam=self._ipam_status(),
            sleeve=self.sleeve,
            routes=self.routes,
            control=self.cluster.driver.connections() if self.cluster is not None else (),
        )


class _PodAddresses:  # interim: the lead replaces this
    """The CNI handler's PodAddresses over the agent's IPAM."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def ready(self) -> bool:
        return self.agent.ready and bool(self.agent.ipam.owned or self.agent.ipam.ring)

    async def allocate(self, container_id: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        a = await self.agent.allocate_address(container_id, ifname, persist=False)
        return a.address, a.gateway

    async def persist(self) -> None:
        try:
            await self.agent.ipam.flush()
        except OSError as exc:
            raise errors.StorageFailed("cannot persist the address allocation", str(exc)) from None

    async def release(self, container_id: str, ifname: str | None) -> None:
        await self.agent.release_address(container_id, ifname)

    def held(self) -> list[tuple[str, str]]:
        return [(a.container_id, a.ifname) for a in self.agent.ipam.pool.allocations()]


class _Stop(Exception):
    pass


def _exit_if_stuck(grace: float) -> None:
    """A stop must end the process: if clean shutdown takes longer than ``grace`` seconds,
    say so and exit anyway (kernel state is left in place either way)."""

    def bail() -> None:
        log.error("stop agent: clean shutdown took over %.0fs, exiting now", grace)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(grace, bail)
    timer.daemon = True
    timer.start()


async def _close_cni(server: cni_server.CniServer) -> None:
    server.close()
    await server.wait_closed()


async def _close_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()
