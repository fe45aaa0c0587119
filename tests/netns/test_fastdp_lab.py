"""The kernel fast path in the lab, on the real kernel: pods on two nodes talk over the nodes'
VXLAN devices; with UDP 6784 dropped (an nftables table of the test's own inside node 1's
namespace) both nodes move the peer to the sleeve within a few probes and the traffic goes on,
and once the filter is gone they move it back without losing an echo; an agent killed or
stopped and restarted keeps the path in the kernel, so traffic hardly notices; a mixed lab (node
3 with ``--no-fastdp``) reaches every pod pair with node 3 on the sleeve, and after node 3 comes
back without the flag the default lab has every pair on the fast path.

Measured losses are printed (``pytest -s`` shows them)."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from agent.lab.traffic import Echoes, Pinger, Stream
from overlay import netlink
from overlay.netlink import Netlink
from overlay.netns import run_in_netns
from overlay.nft_count import TrafficCounters
from overlay.traffic import Traffic, inner
from overlay.vtep import FASTDP_PORT
from tests.netns.firewall import DropUdp
from tests.netns.test_datapath import assert_matrix_complete

pytestmark = pytest.mark.netns

FAST = "fastdp"
SLEEVE = "sleeve"
BOTH = ((1, 2), (2, 1))
MB = 1 << 20


# -- labs --------------------------------------------------------------------------------------


def built(nodes: int, pods: int, tmp: pytest.TempPathFactory, **kwargs: Any) -> Iterator[Lab]:
    """A lab of the module's own (labs here are shared by the tests of one module), torn down
    also when the build fails, and checked to leave no namespace behind."""
    name = "f" + secrets.token_hex(3)
    plan = LabPlan(name, nodes, pods, str(tmp.mktemp(f"lab-{name}")))
    lab = Lab(plan, **kwargs)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        leftovers = [ns for ns in netlink.list_netns() if ns.startswith(plan.prefix + "-")]
        shutil.rmtree(plan.directory, ignore_errors=True)
        assert not leftovers, f"lab teardown left {leftovers}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two nodes, a pod on each, both with the fast path."""
    yield from built(2, 1, tmp_path_factory)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three nodes, two pods on each; node 3 starts with ``--no-fastdp``."""
    yield from built(3, 2, tmp_path_factory, node_args={3: ["--no-fastdp"]})


def entry(lab: Lab, i: int, k: int) -> dict[str, Any]:
    """Node i's /report entry for peer node k."""
    (found,) = [x for x in lab.report(i)["peers"] if x["nickname"] == lab.plan.node_name(k)]
    return dict(found)


def pairs(lab: Lab, path: str, among: tuple[int, ...] | None = None) -> dict[tuple[int, int], str]:
    """Every ordered pair of the nodes ``among`` (default all) on ``path``."""
    nodes = among or tuple(range(1, lab.plan.nodes + 1))
    return {(i, k): path for i in nodes for k in nodes if i != k}


def route_devices(lab: Lab, i: int) -> dict[int, str]:
    """Node i's routes to each other node's space: node -> the one device they all use."""
    devices: dict[int, set[str]] = {}
    routes = {r["destination"]: r["device"] for r in lab.report(i)["routes"]}
    for k in range(1, lab.plan.nodes + 1):
        if k != i:
            devices[k] = {routes.get(block, "none") for block in lab.owned(k)}
    assert all(len(d) == 1 for d in devices.values()), devices
    return {k: d.pop() for k, d in devices.items()}


class RouteWatch:
    """Node ``netns``'s kernel routes to ``blocks``, read every 10 ms on a thread while inside
    the ``with``: ``seen`` lists (unix time, {block: device}) at every change."""

    def __init__(self, netns: str, blocks: list[str]) -> None:
        self.netns, self.blocks = netns, set(blocks)
        self.seen: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RouteWatch:
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def devices(self) -> set[str]:
        """Every device a watched block was routed through (a block without one: "none")."""
        return {d for _, routes in self.seen for d in routes.values()}

    def _run(self) -> None:
        with Netlink(self.netns) as nl:
            while not self._stop.is_set():
                found = {str(r.destination): r.device for r in nl.list_routes()}
                routes = {block: found.get(block, "none") for block in sorted(self.blocks)}
                if not self.seen or self.seen[-1][1] != routes:
                    self.seen.append((time.time(), routes))
                time.sleep(0.01)


def log_tail(lab: Lab, i: int, lines: int = 15) -> str:
    with open(f"{lab.plan.node_dir(i)}/agent.log", errors="replace") as f:
        return f"-- node {i}:\n" + "\n".join(f.read().splitlines()[-lines:])


def switch_lines(lab: Lab, i: int) -> list[str]:
    """Node i's log lines about path switches."""
    with open(f"{lab.plan.node_dir(i)}/agent.log", errors="replace") as f:
        return [line for line in f if "switch path:" in line]


def device_tx_bytes(lab: Lab, i: int, device: str) -> int:
    """Bytes ``device`` in node i's namespace has sent (its /proc/net/dev line)."""

    def read() -> str:
        with open("/proc/thread-self/net/dev") as f:
            return f.read()

    for line in run_in_netns(lab.plan.node_ns(i), read).splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == device:
            return int(counters.split()[8])
    raise AssertionError(f"no {device} in node {i}")


def kernel_tx_bytes(lab: Lab, i: int, k: int) -> int:
    """Inner bytes node i's kernel counted on the fast path to node k's host so far."""
    counted = TrafficCounters(lab.plan.node_ns(i)).read()
    return inner(counted.get(lab.plan.node_address(k).ip, Traffic())).tx_bytes


def status_peers(lab: Lab, i: int) -> str:
    """``weave-py status peers`` against node i's agent."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "status", "peers", "--socket", lab.plan.socket_path(i)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def measured(what: str, value: float, unit: str = "s") -> None:
    print(f"\nfastdp lab: {what}: {value:.3f} {unit}")


# -- the tests ---------------------------------------------------------------------------------


def test_filtered_fast_path_falls_back_to_the_sleeve_and_returns(pair: Lab) -> None:
    lab, p = pair, pair.plan
    lab.wait_paths(pairs(lab, FAST), 15)
    start = {i: entry(lab, i, k) for i, k in BOTH}
    src, dst_ns, dst = p.pod_ns(1, 1), p.pod_ns(2, 1), str(lab.pod_address(2, 1).ip)
    with Pinger(src, dst) as ping, Stream(src, dst_ns, dst) as stream:
        carried_by_the_kernel(lab, stream)
        filtered_at = time.time()
        with DropUdp(p.node_ns(1), f"{p.prefix}drop", FASTDP_PORT):
            fallen = fall_back(lab, stream, filtered_at)
        removed_at = time.time()
        lab.wait_paths(pairs(lab, FAST), 15)
        back = {i: entry(lab, i, k) for i, k in BOTH}
        back_at = max(x["path_since"] for x in back.values())
        time.sleep(max(0.0, back_at + 2.5 - time.time()))
        moved = stream.received_since(back_at + 0.5)
    echoes = ping.close()
    fallback_loss = echoes.loss_seconds(filtered_at, removed_at)
    measured("ping loss while UDP 6784 was dropped", fallback_loss)
    measured("fast path back after the filter's removal", back_at - removed_at)
    measured("ping loss from the removal to 2 s after the switch back",
             echoes.loss_seconds(removed_at, back_at + 2))  # fmt: skip
    assert fallback_loss <= 3.0, log_tail(lab, 1)
    assert back_at - removed_at <= 15
    assert echoes.count(removed_at, back_at + 2) > 100  # the ping did run through it
    assert stream.error is None and moved > MB, (stream.error, moved)
    for i in (1, 2):
        assert fallen[i]["path_switches"] == start[i]["path_switches"] + 1, fallen[i]
        assert back[i]["path_switches"] == start[i]["path_switches"] + 2, back[i]
        assert back[i]["path_reason"] and back[i]["path_reason"] != fallen[i]["path_reason"]
        lines = switch_lines(lab, i)
        assert any(f"{FAST} -> {SLEEVE}: {fallen[i]['path_reason']}" in x for x in lines), lines
        assert any(f"{SLEEVE} -> {FAST}: {back[i]['path_reason']}" in x for x in lines), lines
    assert f" {FAST}" in status_peers(lab, 1)
    assert echoes.lost(removed_at, back_at + 2) == 0, lost_around(lab, echoes, back, removed_at)


def lost_around(
    lab: Lab, echoes: Echoes, back: dict[int, dict[str, Any]], removed_at: float
) -> str:
    """When the echoes lost at the switch back were sent (seconds after each node's switch),
    and the nodes' drop counters."""
    lost = sorted(at for seq, at in echoes.sent.items()
                  if at >= removed_at and seq not in echoes.answered)  # fmt: skip
    since = {i: back[i]["path_since"] for i in back}
    spans = {i: (round(lost[0] - t, 3), round(lost[-1] - t, 3)) for i, t in since.items()}
    drops = {i: (lab.report(i)["drops"], entry(lab, i, 3 - i)["drops"]) for i in (1, 2)}
    return f"{len(lost)} echoes lost at the switch back, sent at {spans}; drops {drops}"


def carried_by_the_kernel(lab: Lab, stream: Stream) -> None:
    """The stream moves, through node 1's VXLAN device, not into its TUN (the sleeve); node 1's
    per-peer counters for node 2 count what the kernel carried."""
    time.sleep(1.0)
    vxlan, tun = device_tx_bytes(lab, 1, lab.plan.vxlan), device_tx_bytes(lab, 1, lab.plan.tun)
    counted = entry(lab, 1, 2)["tx_bytes"]
    got, start = stream.received, time.time()
    time.sleep(1.0)
    assert stream.received - got > 4 * MB, "the stream does not move"
    sent_vxlan = device_tx_bytes(lab, 1, lab.plan.vxlan) - vxlan
    sent_sleeve = device_tx_bytes(lab, 1, lab.plan.tun) - tun
    measured("stream rate on the fast path", (stream.received - got) / (time.time() - start) / MB,
             "MiB/s")  # fmt: skip
    assert sent_vxlan > 4 * MB and sent_sleeve < MB, (sent_vxlan, sent_sleeve)
    deadline = time.monotonic() + 3  # the agent reads the kernel's counters every second
    while entry(lab, 1, 2)["tx_bytes"] - counted < 0.9 * sent_vxlan:
        assert time.monotonic() < deadline, (entry(lab, 1, 2)["tx_bytes"] - counted, sent_vxlan)
        time.sleep(0.2)


def fall_back(lab: Lab, stream: Stream, filtered_at: float) -> dict[int, dict[str, Any]]:
    """With UDP 6784 dropped: both nodes on the sleeve with a reason, and the stream moving
    again after the switch; each node's entry for the other once on the sleeve."""
    lab.wait_paths(pairs(lab, SLEEVE), 10)
    fallen = {i: entry(lab, i, k) for i, k in BOTH}
    switched_at = max(x["path_since"] for x in fallen.values())
    measured("switch to the sleeve after the filter", switched_at - filtered_at)
    assert all(x["path_reason"] for x in fallen.values()), fallen
    assert all(x["path_since"] >= int(filtered_at) for x in fallen.values()), fallen
    deadline = time.monotonic() + 10
    while stream.received_since(switched_at + 0.5) < MB:
        assert time.monotonic() < deadline, f"stream stalled on the sleeve: {stream.error}"
        time.sleep(0.1)
    view = status_peers(lab, 1)
    assert SLEEVE in view and fallen[1]["path_reason"] in view, view
    return fallen


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_an_agent_restart_keeps_the_fast_path_and_the_flows(pair: Lab, sig: int) -> None:
    lab, p = pair, pair.plan
    lab.wait_paths(pairs(lab, FAST), 15)
    peer_before = entry(lab, 2, 1)
    src, dst_ns, dst = p.pod_ns(1, 1), p.pod_ns(2, 1), str(lab.pod_address(2, 1).ip)
    with Pinger(src, dst) as ping, Stream(src, dst_ns, dst) as stream:
        time.sleep(3.0)  # the kernel's counts then exceed what a restart's seconds carry
        watch = RouteWatch(p.node_ns(1), lab.owned(2)).__enter__()
        counted = kernel_tx_bytes(lab, 1, 2)  # what the kernel counted for node 2 so far
        stopped_at = time.time()
        lab.stop_agent(1, sig)
        lab.start_agent(1)
        lab.wait_ready(20)
        ready_at = time.time()
        first = entry(lab, 1, 2)  # the restarted agent's first view of its peer
        time.sleep(2.0)
        ended_at = time.time()
        watch.__exit__()
        moved = stream.received_since(ready_at)
        unread = stream.received_since(ended_at - 1.2)  # maybe after the agent's last reading
        stall = stream.longest_stall(stopped_at, ended_at)
    echoes = ping.close()
    loss = echoes.loss_seconds(stopped_at, ended_at)
    name = signal.Signals(sig).name
    measured(
        f"{name} and restart of node 1's agent: agent ready again after", ready_at - stopped_at
    )
    measured(f"{name} and restart: ping loss", loss)
    measured(f"{name} and restart: longest stall of the stream", stall)
    assert loss <= 1.0, log_tail(lab, 1)
    assert stream.error is None and moved > MB, (stream.error, moved)
    # kept from the agent before: no detour through the sleeve, in the kernel or the views
    shown = {k: first[k] for k in ("path", "path_reason", "path_since", "path_switches")}
    assert first["path"] == FAST and first["path_switches"] == 0, shown
    seen = [(round(t - stopped_at, 3), routes) for t, routes in watch.seen]
    assert watch.devices() == {p.vxlan}, (
        f"node 1's routes to node 2's space (s after the stop; ready at "
        f"{ready_at - stopped_at:.3f}): {seen}"
    )
    after = entry(lab, 2, 1)
    assert after["path"] == FAST and after["path_switches"] == peer_before["path_switches"], after
    kept = entry(lab, 1, 2)["tx_bytes"]  # the new agent reads on from the kernel's counts (its
    assert kept >= counted + moved - unread, (counted, moved - unread, kept)  # sleeve's from 0)
    lab.wait_paths(pairs(lab, FAST), 0)


def test_a_mixed_lab_reaches_every_pod_pair_with_node3_on_the_sleeve(trio: Lab) -> None:
    lab = trio
    want = {**pairs(lab, SLEEVE), **pairs(lab, FAST, (1, 2))}
    lab.wait_paths(want, 15)
    assert_matrix_complete(lab)
    lab.wait_paths(want, 0)
    reasons = {(i, k): entry(lab, i, k)["path_reason"] for i, k in want if 3 in (i, k)}
    print(f"\nfastdp lab: mixed lab, the reasons node 3's pairs are on the sleeve: {reasons}")
    assert all(reasons.values()), reasons
    assert reasons[1, 3] == reasons[2, 3] != reasons[3, 1] == reasons[3, 2], reasons
    assert all(entry(lab, i, k)["path_switches"] == 0 for i, k in reasons), "node 3 flapped"
    p = lab.plan
    assert route_devices(lab, 1) == {2: p.vxlan, 3: p.tun}
    assert route_devices(lab, 2) == {1: p.vxlan, 3: p.tun}
    assert route_devices(lab, 3) == {1: p.tun, 2: p.tun}


def test_the_default_lab_has_every_pair_on_the_fast_path_and_the_matrix(trio: Lab) -> None:
    # node 3 of the mixed lab restarted without --no-fastdp: the default 3-node, 2-pod lab
    lab = trio
    lab.node_args[3] = ()
    lab.stop_agent(3)
    lab.start_agent(3)
    lab.wait_ready(20)
    started = time.monotonic()
    lab.wait_paths(pairs(lab, FAST), 15)
    measured("node 3 on the fast path after its agent was ready", time.monotonic() - started)
    assert_matrix_complete(lab)
    lab.wait_paths(pairs(lab, FAST), 0)
    for i in (1, 2):
        assert entry(lab, i, 3)["path_switches"] == 1, entry(lab, i, 3)
    for i in (1, 2, 3):
        assert set(route_devices(lab, i).values()) == {lab.plan.vxlan}, lab.report(i)["routes"]
