"""The lab's agent processes: the command line each node's agent runs, and starting and
stopping them. A pid is only ever signalled after its command line shows it is this lab's agent
for that node, so a pid reused by another process is left alone.

Gossip labs give each agent one seed (node 1 is told about node 2, node N about node N-1) and
let gossip IPAM hand out the space; static labs give every agent every peer and a fixed block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from agent.lab.plan import POD_RANGE, LabPlan
from agent.lab.underlay import Underlay


def command(underlay: Underlay, i: int, gossip: bool, extra: Sequence[str] = ()) -> list[str]:
    """Node i's agent command line: names and paths, how it finds peers, then ``extra``."""
    peers = _gossip_args(underlay, i) if gossip else _static_args(underlay.plan, i)
    return [*_node_args(underlay.plan, i), *peers, *extra]


def _node_args(p: LabPlan, i: int) -> list[str]:
    # --kubernetes off: a KUBECONFIG in the caller's shell is not the lab's cluster
    return [sys.executable, "-m", "agent", "run",
            "--netns", p.node_ns(i),
            "--node-name", p.node_name(i),
            "--ipalloc-range", str(POD_RANGE),
            "--bridge", p.bridge,
            "--tun", p.tun,
            "--vxlan-device", p.vxlan,
            "--socket", p.socket_path(i),
            "--cni-socket", p.cni_socket(i),
            "--state-dir", f"{p.node_dir(i)}/state",
            "--kubernetes", "off"]  # fmt: skip


def _gossip_args(underlay: Underlay, i: int) -> list[str]:
    nodes = underlay.plan.nodes
    args = ["--advertise-address", str(underlay.address(i).ip)]
    args += ["--ipalloc-init", f"consensus={nodes}"]
    seed = i - 1 if i > 1 else 2
    if seed <= nodes:
        args += ["--seed", str(underlay.seed_address(i, seed))]
    return args


def _static_args(p: LabPlan, i: int) -> list[str]:
    args = ["--pod-block", str(p.block(i))]  # static peers: fixed blocks (kube-style)
    for k in range(1, p.nodes + 1):
        if k != i:
            args += ["--peer", f"{p.node_name(k)}@{p.node_address(k).ip}=" + str(p.block(k))]
    return args


class Agents:
    """One lab's agent processes by node: the pids, and the handles of those started here."""

    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan
        self.pids: dict[int, int] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int, argv: list[str]) -> int:
        """Start node i's agent, its output appended to the node's agent.log; its pid."""
        with open(f"{self.plan.node_dir(i)}/agent.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=source_root())  # fmt: skip
        self.procs[i] = proc
        self.pids[i] = proc.pid
        return proc.pid

    def exit_status(self, i: int) -> int | None:
        """Node i's agent's exit status if this process started it and it has exited."""
        proc = self.procs.get(i)
        return None if proc is None else proc.poll()

    def stop(self, i: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal node i's agent and wait for it; its exit status (None if it was not ours)."""
        pid = self.pids.pop(i, None)
        proc = self.procs.pop(i, None)
        if pid is None or not is_our_agent(pid, self.plan.node_ns(i)):
            return None
        os.kill(pid, sig)
        if proc is not None:
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # never leave an agent behind, even one that hangs on stop
                proc.wait()
                raise
        wait_gone(pid, timeout)
        return None

    def stop_all(self, saved: Mapping[int, int]) -> None:
        """Stop every agent: ours and those in ``saved`` (a state file's); SIGKILL after 5 s."""
        pids = {**saved, **self.pids}
        for i, pid in pids.items():
            if is_our_agent(pid, self.plan.node_ns(i)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for i, pid in pids.items():
            self._reap(i, pid)
        self.pids.clear()
        self.procs.clear()

    def _reap(self, i: int, pid: int) -> None:
        proc = self.procs.get(i)
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif not wait_gone(pid, 5) and is_our_agent(pid, self.plan.node_ns(i)):
            os.kill(pid, signal.SIGKILL)


def is_our_agent(pid: int, node_ns: str) -> bool:
    """True only for a live agent process this lab started for ``node_ns`` (never a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"agent" in argv and node_ns.encode() in argv


def wait_gone(pid: int, timeout: float) -> bool:
    """Until process ``pid`` is gone (reaped if it is our child); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    return False


def source_root() -> str:
    """The checkout the agents import their code from (their working directory)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
