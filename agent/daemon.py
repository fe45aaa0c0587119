"""The agent: builds the cores and their drivers for this node, then runs them.

Composition only. The policy lives in the coordinator (agent/coordinator.py); each driver owns
its I/O: the sleeve's datapath, the peer source's (a static list or the gossip mesh), the CNI
server, the HTTP API. ``Agent(config, kernel, identity)`` builds everything from a set-up kernel
(agent/kernel.py), so no member is filled in later; ``run`` wires them and serves.

Supervision (agent/supervisor.py): every long-running task and server is watched; one that
dies is logged with its traceback and named by /healthz (500), so the liveness probe restarts
the agent, while the rest keeps serving. A failing action of a plan (a netlink refusal, a full
disk) fails alone and is retried at the next step (agent/execution.py). SIGTERM/SIGINT always
end the agent with exit status 0, cleanly within ``SHUTDOWN_GRACE`` or else at once, leaving
bridge, TUN and routes in place so a restarted agent resumes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
import time
from typing import Any

from agent import snapshot
from agent.addresses import Addresses, StateFile
from agent.api import Api
from agent.cni.handler import Handler
from agent.cni.network import KernelPodNetwork
from agent.cni.server import serve
from agent.config import Config, split_hostport
from agent.coordinator import ROUTE_GRACE, Coordinator, Plan
from agent.execution import Execution
from agent.fastpath import policy
from agent.ipam import Ipam, Settings
from agent.kernel import NodeKernel
from agent.listeners import listen_tcp, listen_unix
from agent.peer_log import path_switch, peer_event, peer_tables
from agent.peer_name import load_or_create
from agent.peers import kube_api
from agent.peers.source import peer_source
from agent.peers.startup import prepare
from agent.readiness import ReadinessLog, missing
from agent.refusals import LOG_INTERVAL, Tallies
from agent.report import Report, Router
from agent.secret_watch import SecretWatch, watch_secrets
from agent.secrets import load_secrets
from agent.supervisor import Supervisor, close_server, exit_if_stuck
from gossip.identity import Identity
from gossip.secret import Secrets
from overlay import node, udp
from overlay.datapath import REFUSED_INTERVAL, Datapath
from overlay.paths import Paths
from overlay.prober import Prober
from overlay.seal import Keyring
from overlay.sleeve import Sleeve
from overlay.traffic import Dropped, Totals

log = logging.getLogger("weave-py")
GUARD_DROPS = (
    "dropped by the fast path's guard (not from a peer's host, or an inner source outside its "
    "space)"
)
SHUTDOWN_GRACE = 5.0  # seconds a stop may take before the process exits regardless
TRAFFIC_INTERVAL = 1.0  # seconds between readings of the fast path's per-peer counters


class Agent:
    """The node's cores and drivers, built from a set-up ``kernel``."""

    def __init__(self, config: Config, kernel: NodeKernel, identity: Identity) -> None:
        c = self.config = config
        self.kernel, self.identity = kernel, identity
        self.incarnation = time.time_ns()
        self.started_at = time.time()
        self.state = StateFile(c.state_dir)
        self.ipam = Ipam(Settings.of(c), identity.name, self.incarnation, self.state.load())
        self.state.save(self.ipam.document())
        masquerade = c.ipalloc_range if c.masquerade else None
        base = node.NodeSpec(c.bridge, c.tun, kernel.mtu, c.gso_max_size, (), frozenset(),
                             hairpin=True, masquerade=masquerade)  # fmt: skip
        grace = time.monotonic() + ROUTE_GRACE
        self.secrets = load_secrets(c)
        self.secret_watch = (SecretWatch(c.password_file, self.secrets)
                             if c.password_file else None)  # fmt: skip
        address = c.advertise_address or kernel.underlay.address
        fastpath = policy(
            c, address, identity.name, self.secrets.enabled, kernel.underlay.kept_fast
        )
        self.coordinator = Coordinator(self.ipam, base, kernel.underlay.kept, grace,
                                       fastpath=fastpath)  # fmt: skip
        self.paths = Paths()
        self.traffic = Totals()  # the fast path's per-peer counts (the kernel carries it)
        self.guard_dropped = Dropped()  # VXLAN datagrams the kernel's guard refused
        self._guard_told_at = 0.0
        self.prober = (Prober(self.paths, c.vxlan_device, self._paths_changed)
                       if fastpath.template is not None else None)  # fmt: skip
        self.keyring = (Keyring(identity.name, self.secrets, time.monotonic())
                        if self.secrets.enabled else None)  # fmt: skip
        claim = self.ipam.record_fields()
        if self.keyring is not None:
            claim = {**claim, "sleeve_key": self.keyring.sleeve_key}
        self.source = peer_source(c, identity, self.incarnation, kernel.underlay.address,
                                  claim, self._routed, self.rmpeer, self.secrets)  # fmt: skip
        self.sock = udp.open_udp(c.bind_address, c.port, c.socket_buffer)
        hosts = [a for a in (kernel.underlay.address,) if a]  # what peers' pods may see of us
        self.sleeve = Sleeve(identity.peer_id, identity.uid, self.ipam.owned, kernel.mtu,
                             fast_interval=c.heartbeat_interval,
                             slow_interval=c.heartbeat_slow_interval,
                             timeout=c.heartbeat_timeout, host_addresses=hosts)  # fmt: skip
        self.datapath = Datapath(
            self.sleeve, kernel.tun, self.sock, kernel.underlay.mtu,
            lambda event: peer_event(event, kernel.mtu), c.udp_gso,
            connect=lambda peer: udp.open_udp(c.bind_address, 0, c.socket_buffer, peer),
            keyring=self.keyring,
            on_sleeve_key=lambda key: self.source.publish({"sleeve_key": key}),
        )  # fmt: skip
        self.addresses = Addresses(self.ipam, self.state, c.ipam_timeout, self.wake, self.follow)
        self.network = KernelPodNetwork(c.bridge, kernel.mtu, c.gso_max_size)
        self._changed = asyncio.Event()
        self._stepping = asyncio.Lock()
        self.applied = False  # the node's state is in the kernel
        self.cni_serving = not c.cni_socket  # (no socket configured: nothing to wait for)
        self._readiness = ReadinessLog(str(identity))
        self.tallies = Tallies()
        failures = self.tallies.add("plan action", log)
        self.execution = Execution(kernel, self.state.flush, self.ipam.document,
                                   self.source.publish, failures)  # fmt: skip
        self.supervisor = Supervisor()

    # -- the coordinator's driver -------------------------------------------------------------

    def wake(self) -> None:
        """Step the coordinator soon (the source changed, or a request waits for space)."""
        self._changed.set()

    async def follow(self) -> None:
        """Step the coordinator now and carry out its plan."""
        async with self._stepping:
            now = time.monotonic()
            view = self.source.view()
            fast = self.paths.on_fast()
            unreachable = self.sleeve.unreachable(now)
            plan = self.coordinator.step(now, time.time_ns(), view, unreachable, fast)
            if plan.candidates is not None:  # before any await: views see peers with paths
                self._choose_paths(plan, now, fast)
            await self._carry_out(plan, now)
        self.addresses.space_arrived()

    def _choose_paths(self, plan: Plan, now: float, fast: frozenset[str]) -> None:
        """Hand path choice its candidates; step again when that moved a peer at once."""
        assert plan.candidates is not None
        self.paths.set_candidates(plan.candidates, now)
        if self.prober is not None:
            self.prober.poke()
        self._paths_changed()
        if self.paths.on_fast() != fast:
            self.wake()

    def _paths_changed(self) -> None:
        """Path choice moved peers (or has news): log each switch, step the coordinator."""
        for switch in self.paths.events():
            path_switch(switch)
        self.wake()

    async def _carry_out(self, plan: Plan, now: float) -> None:
        if plan.local is not None:
            self.sleeve.set_local_blocks(plan.local.blocks, plan.local.router_address,
                                         plan.local.gateways)  # fmt: skip
            if self.prober is not None:
                self.prober.set_source(plan.local.gateways[0] if plan.local.gateways else None)
        if plan.peers is not None:
            self.sleeve.set_peers(plan.peers, now)
            self.datapath.poke()
        actions = await self.execution.kernel_state(plan, self.coordinator.node, now)
        await self.execution.disk(plan, now)
        self.execution.record(plan, now)
        if plan.peers is not None or actions:
            log.info("update routes: %d peer(s), %d kernel change(s)",
                     len(self.sleeve.peers), len(actions))  # fmt: skip
        self._next_at = self.execution.next_at(plan.next_at, now)

    async def _follow_loop(self) -> None:
        while True:
            timeout = max(0.0, self._next_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            self._changed.clear()
            await self.follow()
            self._note_readiness()

    async def _repair_loop(self) -> None:
        """Apply the desired node state again now and then: repairs drift."""
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            spec = self.coordinator.node
            if spec is None:
                continue
            async with self._stepping:
                actions = await self.execution.repair(spec, time.monotonic())
            if actions:
                log.warning("reconcile node: repaired drift with %d change(s)", len(actions))

    async def _traffic_loop(self) -> None:
        """Read the fast path's per-peer counters and its guard's drops now and then, for the
        views and the log."""
        while True:
            readings = await self.kernel.read_traffic()
            guard = self.coordinator.node.guard if self.coordinator.node is not None else None
            self.traffic.update(readings, guard.hosts if guard is not None else frozenset())
            self.guard_dropped.update(await self.kernel.read_guard_drops())
            if time.monotonic() >= self._guard_told_at and (told := self.guard_dropped.untold()):
                self._guard_told_at = time.monotonic() + REFUSED_INTERVAL
                log.warning("refuse vxlan: %d datagram(s) %s", told, GUARD_DROPS)
            await asyncio.sleep(TRAFFIC_INTERVAL)

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """The first step: the node's state in the kernel before anything is served."""
        self._next_at = time.monotonic()
        await self.follow()
        spec = self.coordinator.node
        assert spec is not None  # the first plan always has one
        if self.execution.node_due:  # nothing is served on a node the kernel refused
            raise OSError("reconcile node: the kernel refused the node's state (see above)")
        changed = await self.kernel.ensure_forwarding(spec)
        log.info(
            "reconcile node: mtu %d (underlay %d)%s",
            self.kernel.mtu,
            self.kernel.underlay.mtu,
            f", sysctl {' '.join(changed)}" if changed else "",
        )
        self.addresses.started = self.applied = True

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        await self.start()
        stop, bail = asyncio.Event(), list[threading.Timer]()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, bail)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.close)
            await self._serve(stack)
            log.info("agent started: %s, peers from %s", self.identity, self.source.kind)
            self._note_readiness()
            tasks = self.supervisor
            tasks.start("datapath", self.datapath.run())
            if self.prober is not None:
                tasks.start("prober", self.prober.run())
                tasks.start("traffic", self._traffic_loop())
            tasks.start(self.source.kind, self.source.run(self.wake))
            tasks.start("follow", self._follow_loop())
            if self.secret_watch is not None:
                tasks.start("secret-watch", watch_secrets(self.secret_watch, self.take_secrets))
            tasks.start("repair", self._repair_loop())
            tasks.start("peer-table", peer_tables(self.report))
            tasks.start("refusal-log", self._refusal_log())
            await stop.wait()
            with contextlib.suppress(Exception):  # a broken source must not block the stop
                self.source.leave()
            await asyncio.sleep(0.2)  # let the goodbyes leave
            await tasks.stop(SHUTDOWN_GRACE / 2)
            log.info("stop agent: signal received, kernel state kept for restart")
        for timer in bail:
            timer.cancel()

    def take_secrets(self, secrets: Secrets) -> None:
        """Accept ``secrets`` from now on (the password file changed), on both planes."""
        self.secrets = secrets
        if self.keyring is not None:
            self.keyring.accept(secrets)
        self.source.accept_secrets(secrets)

    async def _refusal_log(self) -> None:
        """Log the refusals' overdue summaries now and then."""
        while True:
            await asyncio.sleep(LOG_INTERVAL / 4)
            self.tallies.flush(time.monotonic())

    async def _serve(self, stack: contextlib.AsyncExitStack) -> None:
        c = self.config
        api = Api(self.report, False, self, c.peer_metrics, self.tallies, self.supervisor.dead)
        servers = {"api (socket)": await listen_unix(c.socket_path, api.handle)}
        if hostport := split_hostport(c.http_addr) if c.http_addr else None:
            servers["api (http)"] = await listen_tcp(*hostport, api.handle)
        if hostport := split_hostport(c.metrics_addr) if c.metrics_addr else None:
            public = Api(self.report, True, None, c.peer_metrics, self.tallies)
            servers["metrics"] = await listen_tcp(*hostport, public.handle)
        for name, server in servers.items():
            stack.push_async_callback(close_server, server)
            self.supervisor.watch(name, server.is_serving)
        if c.cni_socket:
            cni = await serve(c.cni_socket, Handler(self.addresses, self.network).handle,
                              self.tallies)  # fmt: skip
            self.cni_serving = True
            stack.push_async_callback(close_server, cni)
            self.supervisor.watch("cni", lambda: cni.serving)

    def close(self) -> None:
        self.network.close()
        self.sock.close()
        self.state.close()
        self.kernel.close()

    # -- what the API offers (the CNI plugin's addresses and rmpeer) --------------------------

    async def allocate(self, container_id: str, ifname: str) -> dict[str, Any]:
        """A pod address, durable before it is answered."""
        a = await self.addresses.take(container_id, ifname)
        await self.addresses.persist()
        return {"container_id": a.container_id, "ifname": a.ifname,
                "address": str(a.address), "gateway": str(a.gateway)}  # fmt: skip

    async def release(self, container_id: str, ifname: str | None) -> dict[str, Any]:
        """Free a pod's address(es)."""
        released = await self.addresses.free(container_id, ifname)
        return {"released": [str(a.address) for a in released]}

    async def rmpeer(self, name: str) -> dict[str, Any]:
        """Take over a dead peer's space (errors.Conflict while it is live)."""
        taken = self.ipam.rmpeer(name, self.source.view().live)
        await self.state.flush(self.ipam.document())
        await self.follow()
        return {"name": name, "taken": [str(n) for n in taken]}

    # -- what the views show ------------------------------------------------------------------

    def report(self) -> Report:
        """The status tree every view renders."""
        view = self.source.view()
        router = Router(
            name=self.identity.name, nickname=self.identity.nickname,
            uid=f"{self.identity.uid:x}", port=self.config.port, mtu=self.kernel.mtu,
            underlay_mtu=self.kernel.underlay.mtu, offload=self.kernel.offload,
            super_packets="udp-gso" if self.datapath.udp_gso else "ip-fragments",
            encryption=self.secrets.enabled,
        )  # fmt: skip
        return snapshot.take(
            router, waiting_for=self.readiness(), uptime_seconds=time.time() - self.started_at,
            ipam=self.ipam.status(view.records, view.live, self.identity.nickname),
            sleeve=self.sleeve, routes=self.kernel.routes, control=self.source.connections(),
            terminations=self.source.terminations(), rejected=self.source.rejections(),
            paths=self.paths.states(), wall_offset=time.time() - time.monotonic(),
            traffic=self.traffic, kernel_drops={"vxlan_guard": self.guard_dropped.total},
        )  # fmt: skip

    def readiness(self) -> tuple[str, ...]:
        """What keeps the node from carrying pod traffic (empty: ready; /status answers 200)."""
        return missing(applied=self.applied, space=bool(self.ipam.owned),
                       cni_serving=self.cni_serving)  # fmt: skip

    def _note_readiness(self) -> None:
        space = " ".join(map(str, self.ipam.owned)) or "none"
        self._readiness.note(self.readiness(), self.report, space)

    def _routed(self) -> set[ipaddress.IPv4Network]:
        return {r.destination for r in self.kernel.routes}


async def main(config: Config) -> None:
    """Complete the configuration from the Kubernetes API when it is used, set up the kernel
    side, build the agent and run it."""
    if kube_api.enabled(config):
        config = await prepare(config)
    identity = load_or_create(config.state_dir, config.node_name)
    kernel = await NodeKernel.open(config)
    try:
        agent = Agent(config, kernel, identity)
    except BaseException:
        kernel.close()
        raise
    await agent.run()


def _on_signal(stop: asyncio.Event, bail: list[threading.Timer]) -> None:
    """SIGTERM or SIGINT: stop, and exit regardless once ``SHUTDOWN_GRACE`` has passed."""
    if not stop.is_set():
        bail.append(exit_if_stuck(SHUTDOWN_GRACE))
    stop.set()
