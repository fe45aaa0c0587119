"""One lab under attack: 3 real agents (pods on nodes 1 and 2, node 3 without pods, so the
attacks that only move a podless node show), the stranger host on its underlay, and the
baseline every attack must leave intact. Built once per test module, torn down also when the
build or a test failed."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from gossip.identity import peer_id
from overlay import netlink
from tests.netns.hostile.evidence import (
    REJECTIONS,
    Baseline,
    Logs,
    counters,
    increased,
    pods_ping,
)
from tests.netns.hostile.host import StrangerHost
from tests.netns.hostile.sleeve import SleeveSender, heartbeat_ack

FAST_HEARTBEATS = (
    "--heartbeat-interval", "0.5", "--heartbeat-slow-interval", "1", "--heartbeat-timeout", "3",
)  # fmt: skip
PODS = ((1, 1), (2, 1))


@dataclass
class Scene:
    """The lab, the stranger and the baseline the tests share."""

    lab: Lab
    host: StrangerHost
    baseline: Baseline

    def address(self, i: int) -> str:
        """Node i's underlay address."""
        return str(self.lab.address(i).ip)

    def name(self, i: int) -> str:
        """Node i's peer name."""
        name: str = self.lab.report(i)["router"]["name"]
        return name

    def peer_id(self, i: int) -> int:
        """Node i's 48-bit id, as its frames carry it."""
        return peer_id(self.name(i))

    def logs(self) -> Logs:
        """A mark in every node's log."""
        return Logs(self.lab)

    def log_tails(self, lines: int = 12) -> str:
        """The last lines of every agent's log, for a failure's message."""
        out = []
        for i in range(1, self.lab.plan.nodes + 1):
            with open(f"{self.lab.plan.node_dir(i)}/agent.log", errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            out.append(f"-- node {i}:\n" + "\n".join(tail))
        return "\n".join(out)

    def problems(self) -> list[str]:
        """How the lab differs from the baseline, pods that no longer reach each other
        included (empty: intact)."""
        found = self.baseline.problems(self.lab)
        if found:
            return found
        return pods_ping(self.lab, [(PODS[0], PODS[1]), (PODS[1], PODS[0])])


def password_file(directory: str) -> str:
    """Where a lab's agents read their secrets from (``--password-file``)."""
    return f"{directory}/password"


def write_secrets(directory: str, accepted: tuple[bytes, ...]) -> None:
    """The secrets file every agent of the lab reads at its start: one secret a line, the
    first used for new connections (a restarted agent picks up what is written now)."""
    path = password_file(directory)
    fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(secret + b"\n" for secret in accepted))
    os.replace(f"{path}.tmp", path)


@contextlib.contextmanager
def scene(
    agent_args: tuple[str, ...] = FAST_HEARTBEATS, accepted: tuple[bytes, ...] = ()
) -> Iterator[Scene]:
    """Build the lab (its agents holding the secrets ``accepted``, if any) and the stranger;
    remove both afterwards, whatever happened."""
    name = "h" + secrets.token_hex(3)
    # A directory of our own, searchable by others: the non-root API test reaches the socket.
    directory = tempfile.mkdtemp(prefix=f"wp{name}-")
    os.chmod(directory, 0o711)
    if accepted:
        write_secrets(directory, accepted)
        agent_args += ("--password-file", password_file(directory))
    lab = Lab(LabPlan(name, 3, 0, directory), agent_args)
    try:
        lab.up()
        for i, j in PODS:
            lab.add_pod(i, j)
        host = StrangerHost(lab.plan).build()
        yield Scene(lab, host, Baseline.capture(lab))
    finally:
        lab.down()
        leftovers = [ns for ns in netlink.list_netns() if ns.startswith(lab.plan.prefix + "-")]
        shutil.rmtree(directory, ignore_errors=True)
        assert not leftovers, f"lab teardown left {leftovers}"


DATA_PLANE = re.compile(r"^weave_py_(peer_)?drops_total|^report:(peers\[[^\]]*\]\.)?drops\.")
SETTLE = 1.5  # seconds for gossip (0.2 s coalescing) and routes to follow an attack
LOG_SUMMARY = 10.0  # seconds: refusals after the first of a kind are logged in a summary this often


def undamaged(s: Scene) -> Scene:
    """The shared scene, or the test fails: an earlier attack may have broken it."""
    before = s.problems()
    if before:
        pytest.fail(f"the lab was already damaged: {before}")
    return s


def assert_intact(s: Scene) -> None:
    """After the attack has settled, the lab is as its baseline (the agents' logs on failure)."""
    time.sleep(SETTLE)
    problems = s.problems()
    assert not problems, f"{problems}\n{s.log_tails()}"


def assert_refused(
    before: dict[str, float], logs: Logs, s: Scene, i: int, *sources: str, sleeve: bool = False
) -> None:
    """Node i counted and logged what it refused since ``before`` and the mark in ``logs``."""
    missing = [m for m in (_uncounted(before, s, i, sleeve), _unlogged(logs, i, sources)) if m]
    assert not missing, "\n".join(missing)


def _uncounted(before: dict[str, float], s: Scene, i: int, sleeve: bool) -> str:
    """Empty when a rejection counter of node i rose: for a gossip attack one outside the data
    plane's drop counters (those rise with ordinary traffic too); for a sleeve attack one of
    them, for a reason the TUN's own traffic does not give."""
    rose = increased(before, counters(s.lab, i), REJECTIONS)
    ours = {k: v for k, v in rose.items() if DATA_PLANE.search(k)}
    relevant = {k: v for k, v in ours.items() if "tun_" not in k} if sleeve else rose.keys() - ours
    return "" if relevant else f"node {i}: no rejection counter rose (rose: {rose})"


def _unlogged(logs: Logs, i: int, sources: tuple[str, ...]) -> str:
    """Empty when node i logged, since the mark, a rejection naming one of ``sources`` (its
    address, its name): not a failed dial towards what the stranger advertised."""
    who = "|".join(re.escape(x) for x in sources)
    pattern = rf"{REJECTIONS}.*({who})|({who}).*{REJECTIONS}"
    line = logs.wait_for(i, pattern, LOG_SUMMARY + 2.0, exclude=r"Errno|retrying")
    if line:
        print(f"node {i} logged: {line}")  # shown with -s: what the agent said
        return ""
    return f"node {i} logged no rejection naming {sources}:\n{logs.since(i)[-2000:]}"


def node3_under_forged_acks(s: Scene, forged_source: str | None = None) -> str:
    """Node 3's agent frozen (its data path silent, its TCP open) while heartbeat acks for every
    sequence, under node 3's id, go to node 1 from the stranger's address (or, with
    ``forged_source``, under that outer source) for up to 8 s: node 1's state of node 3 then."""
    lab = s.lab
    three_id, one_id = s.peer_id(3), s.peer_id(1)
    uid = int(lab.report(3)["router"]["uid"], 16)

    def node3_state() -> str:
        peers = lab.report(1)["peers"]
        return next((p["state"] for p in peers if p["nickname"] == "node3"), "forgotten")

    lab.procs[3].send_signal(signal.SIGSTOP)
    try:
        with SleeveSender(s.host) as sender:
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline and node3_state() == "established":
                for sequence in range(1, 4096):
                    ack = heartbeat_ack(three_id, one_id, sequence, uid)
                    if forged_source is None:
                        sender.send(s.address(1), ack)
                    else:
                        sender.send_as(forged_source, s.address(1), ack)
                time.sleep(0.1)
            return node3_state()
    finally:
        lab.procs[3].send_signal(signal.SIGCONT)
