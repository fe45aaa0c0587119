"""Gossip mode in the lab: agents that know one seed each find the rest (real kernel)."""

from __future__ import annotations

import re
import signal
import time

import pytest

from agent import status
from agent.lab import probe
from agent.report import Report
from overlay.netns import run_in_netns

pytestmark = pytest.mark.netns


def blocks_routed(lab, i: int) -> set[str]:
    return lab.routed_blocks(i)


SPACE: dict[str, dict[int, list[str]]] = {}  # lab name -> node -> space it owned when asked


def all_blocks_but(lab, i: int, *gone: int) -> set[str]:
    """Space owned by the other nodes (remembered, so it is known after a node is killed)."""
    known = SPACE.setdefault(lab.plan.name, {})
    for k in range(1, lab.plan.nodes + 1):
        if k not in known and k not in gone:
            known[k] = lab.owned(k)
    return {n for k, owned in known.items() if k not in (i, *gone) for n in owned}


def wait_for(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def assert_matrix_complete(lab) -> None:
    pods = lab.pod_ips()
    results = probe.matrix(pods)
    assert all(r.ok(pods[src]) for (src, _), r in results.items()), probe.render(pods, results)


def test_one_seed_each_finds_everyone_within_10s(lab_factory) -> None:
    lab = lab_factory(nodes=3, pods=1)  # up() waits for every data path
    for i in (1, 2, 3):
        wait_for(lambda i=i: blocks_routed(lab, i) == all_blocks_but(lab, i), 10)
    assert_matrix_complete(lab)
    # node 3 was told only about node 2 (and node 1 only about node 2): the rest is gossip
    assert "192.168.1.7" not in " ".join(lab.agent_command(3))


@pytest.mark.parametrize("fastdp", [False, True], ids=["sleeve", "fastdp"])
def test_killed_agent_is_dropped_and_its_restart_rejoins(lab_factory, fastdp: bool) -> None:
    """On the sleeve a killed agent's space stops being routed (nothing carries it); on the
    fast path its node's kernel still forwards, so its space stays routed via its VTEP and its
    pods stay reachable while the agent is down (agent/fastpath.py: LINGER)."""
    args = ("--heartbeat-timeout", "6", *(() if fastdp else ("--no-fastdp",)))
    lab = lab_factory(nodes=3, pods=1, agent_args=args)
    all_blocks_but(lab, 0)  # remember every node's space while all answer
    if fastdp:
        lab.wait_paths({(i, k): "fastdp" for i in (1, 2, 3) for k in (1, 2, 3) if i != k}, 15)
    lab.stop_agent(3, signal.SIGKILL)
    if fastdp:
        time.sleep(8)
        assert all(blocks_routed(lab, i) == all_blocks_but(lab, i) for i in (1, 2))
        pod_3 = str(lab.pod_address(3, 1).ip)
        assert probe.ping(lab.plan.pod_ns(1, 1), pod_3) is not None
        assert "node3" not in {p["nickname"] for p in lab.report(1)["peers"]}
    else:
        took = wait_for(
            lambda: all(blocks_routed(lab, i) == all_blocks_but(lab, i, 3) for i in (1, 2)), 8
        )
        assert took < 8
    first_uid = None
    lab.start_agent(3)
    lab.wait_ready(15)
    for i in (1, 2):
        wait_for(lambda i=i: blocks_routed(lab, i) == all_blocks_but(lab, i), 10)
        node3 = [p for p in lab.report(i)["peers"] if p["nickname"] == "node3"]
        assert node3 and node3[0]["state"] == "established"
        first_uid = first_uid or node3[0]["name"]
    assert first_uid == lab.report(3)["router"]["name"]  # same persisted name after restart
    assert_matrix_complete(lab)


def test_garbage_on_the_control_port_closes_only_that_connection(lab_factory) -> None:
    import os
    import socket
    import struct

    from gossip import wire
    from gossip.handshake import Handshake, Hello

    lab = lab_factory(nodes=3, pods=1)
    target = (str(lab.plan.node_address(2).ip), 6783)
    hello = Hello("02:00:00:00:00:99", "intruder", 99, 1, ("192.168.1.7", 1), ("192.168.1.7", 1))
    preamble = wire.Preamble(wire.PROTOCOL_MIN, wire.PROTOCOL_MAX).encode()
    attacks = [
        os.urandom(4096),
        preamble + b"\x00\x00",  # truncated frame, then silence is cut by our close
        preamble + struct.pack("!I", 1 << 31),  # oversized length prefix
        Handshake(hello, initiator=True).start() + wire.encode(3, records="not a list"),
        Handshake(hello, initiator=True).start() + struct.pack("!I", 3) + b"\xc1\xc1\xc1",
    ]

    def send_all() -> list[str]:
        ports = []
        for data in attacks:
            with socket.create_connection(target, 2) as s:
                ports.append(f"192.168.1.7:{s.getsockname()[1]}")
                s.sendall(data)
                s.settimeout(2)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
        return ports

    run_in_netns(lab.plan.node_ns(1), send_all)
    with open(f"{lab.plan.node_dir(2)}/agent.log") as f:
        logged = f.read()
    # every connection refused is counted; the log is rate-limited (at most two lines per
    # reason and interval), each line naming the source
    # (3 refused in the handshake, 1 closed by us after its truncated frame, 1 malformed)
    rejected = lab.report(2)["control_rejected"]
    assert sum(rejected.values()) >= len(attacks) - 1, rejected
    assert rejected.get("malformed", 0) >= 1 and rejected.get("handshake_refused", 0) >= 2
    lines = [line for line in logged.splitlines() if "WARNING reject " in line]
    assert lines and all("from 192.168.1.7:" in line for line in lines), lines
    for reason in ("bad magic", "not a list"):  # the first of each reason is logged whole
        assert reason in logged, reason
    assert lab.procs[2].poll() is None
    for i in (1, 2, 3):
        assert blocks_routed(lab, i) == all_blocks_but(lab, i)
    assert_matrix_complete(lab)


FAST_HEARTBEATS = (
    "--heartbeat-interval", "0.5", "--heartbeat-slow-interval", "1", "--heartbeat-timeout", "3",
)  # fmt: skip


def test_relay_through_the_node_on_both_segments(lab_factory) -> None:
    lab = lab_factory(nodes=3, pods=1, line=True, agent_args=FAST_HEARTBEATS)
    p = lab.plan
    one, three = p.pod_ns(1, 1), p.pod_ns(3, 1)
    ip1, ip3 = str(lab.pod_address(1, 1).ip), str(lab.pod_address(3, 1).ip)
    assert probe.ping(one, ip3) is not None and probe.ping(three, ip1) is not None
    with probe.Responder(three):
        assert probe.tcp_source(one, ip3) == ip1  # relayed, still no NAT
    view = status.render_peers(Report.from_json(lab.report(1)))
    assert "relayed" in view and "via 192.168.1.8:6783" in view, view
    control = status.render_connections(Report.from_json(lab.report(1)))
    assert re.search(r"(->|<-) 192\.168\.1\.8:\d+ +established (fastdp|sleeve)", control), control
    assert "-> 192.168.2.9:6783      retrying    [Errno 101]" in control, control
    relayed_by_2 = {x["nickname"]: x["relayed"] for x in lab.report(2)["peers"]}
    assert relayed_by_2["node3"] > 0 and relayed_by_2["node1"] > 0
    pids = dict(lab.pids)
    lab.set_uplinks(2, False)
    wait_for(lambda: probe.ping(one, ip3, 0.3) is None, 10)
    # node 1's heartbeats to node 2 go unanswered: its routes drop node 3's block too
    wait_for(lambda: not set(lab.owned(3)) & blocks_routed(lab, 1), 15)
    lab.set_uplinks(2, True)
    wait_for(lambda: probe.ping(one, ip3, 0.3) is not None, 30)
    assert probe.ping(three, ip1) is not None
    assert lab.pids == pids and all(proc.poll() is None for proc in lab.procs.values())


def test_partition_keeps_each_side_working_and_heals(lab_factory) -> None:
    from overlay.netlink import Netlink

    lab = lab_factory(nodes=3, pods=1, line=True, agent_args=FAST_HEARTBEATS)
    p = lab.plan
    pods = {i: (p.pod_ns(i, 1), str(lab.pod_address(i, 1).ip)) for i in (1, 2, 3)}
    with Netlink(p.node_ns(2)) as nl:  # node 1 | nodes 2 and 3
        nl.set_link(f"{p.prefix}e2", up=False)
    space_2 = set(lab.owned(2))
    wait_for(lambda: not space_2 & blocks_routed(lab, 1), 15)
    assert probe.ping(pods[3][0], pods[2][1]) is not None
    assert probe.ping(pods[2][0], pods[3][1]) is not None
    assert probe.ping(pods[1][0], pods[3][1], 0.5) is None
    with Netlink(p.node_ns(2)) as nl:
        nl.set_link(f"{p.prefix}e2", up=True)
    for i in (1, 2, 3):
        wait_for(lambda i=i: blocks_routed(lab, i) == all_blocks_but(lab, i), 30)
    wait_for(lambda: probe.ping(pods[1][0], pods[3][1], 0.3) is not None, 10)
