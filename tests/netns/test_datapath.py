"""Pods on different lab nodes reach each other through the sleeve (real agents, real kernel)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from agent.lab import probe
from overlay import frame, netlink, pods
from overlay.netlink import Netlink
from overlay.netns import enter_netns, run_in_netns

pytestmark = pytest.mark.netns
SLEEVE = ("--no-fastdp",)  # for what the sleeve itself must show (the fast path: test_fastdp_*)


def pods_of(lab) -> dict[str, str]:
    return lab.pod_ips()


def in_ns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_matrix_complete(lab) -> None:
    pods = pods_of(lab)
    results = probe.matrix(pods)
    bad = {pair: r for pair, r in results.items() if not r.ok(pods[pair[0]])}
    assert not bad, probe.render(pods, results)


def test_two_nodes_icmp_tcp_no_nat_and_bulk_tcp(lab_factory) -> None:
    lab = lab_factory(nodes=2, pods=1, agent_args=SLEEVE)
    assert_matrix_complete(lab)
    p = lab.plan
    payload = random.Random(7).randbytes(32 * 1024 * 1024)
    got = tcp_transfer(p.pod_ns(1, 1), p.pod_ns(2, 1), str(lab.pod_address(2, 1).ip), payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    snap = lab.report(1)
    assert snap["peers"][0]["tx_bytes"] >= len(payload)


def tcp_transfer(src_ns: str, dst_ns: str, dst_ip: str, payload: bytes) -> bytes:
    """Send ``payload`` over one TCP connection with default MSS; return what arrived."""
    received = bytearray()
    ready = threading.Event()

    def serve() -> None:
        enter_netns(dst_ns)
        with socket.create_server(("0.0.0.0", 7788)) as srv:
            ready.set()
            srv.settimeout(20)
            conn, _ = srv.accept()
            with conn:
                while chunk := conn.recv(1 << 20):
                    received.extend(chunk)

    t = threading.Thread(target=serve)
    t.start()
    ready.wait(5)

    def send() -> None:
        with socket.create_connection((dst_ip, 7788), 5) as s:
            s.sendall(payload)

    run_in_netns(src_ns, send)
    t.join(30)
    return bytes(received)


@pytest.mark.parametrize("gossip", [True, False], ids=["gossip", "static-peers"])
def test_three_nodes_two_pods_full_matrix(lab_factory, gossip: bool) -> None:
    lab = lab_factory(nodes=3, pods=2, gossip=gossip)
    assert_matrix_complete(lab)
    for i in (1, 2, 3):
        routes = lab.routed_blocks(i)
        assert routes == {n for k in (1, 2, 3) if k != i for n in lab.owned(k)}
    owned = [ipaddress.IPv4Network(n) for k in (1, 2, 3) for n in lab.owned(k)]
    assert (
        len(owned) >= 3
        and all(  # distinct space, none configured
            not a.overlaps(b) for x, a in enumerate(owned) for b in owned[x + 1 :]
        )
    )


def test_restart_restores_traffic_without_duplicates(lab_factory) -> None:
    lab = lab_factory(nodes=2, pods=1)
    p = lab.plan
    src, dst = p.pod_ns(1, 1), str(lab.pod_address(2, 1).ip)
    assert probe.ping(src, dst) is not None
    lab.wait_paths({(1, 2): "fastdp", (2, 1): "fastdp"}, 15)  # what the restart must keep
    space_1 = lab.owned(1)
    gateways_2 = sorted(f"{ipaddress.ip_network(b).network_address + 1}/{b.split('/')[1]}"
                        for b in lab.report(2)["ipam"]["blocks"])  # fmt: skip
    assert lab.stop_agent(2, signal.SIGTERM) == 0  # clean exit
    lab.start_agent(2)
    started = time.monotonic()
    while probe.ping(src, dst, timeout=0.2) is None:
        assert time.monotonic() - started < 5, "traffic not back within 5 s of the restart"
    with Netlink(p.node_ns(2)) as nl:  # node 1's space (via its VTEP) and the VTEP, once each
        routes = [r for r in nl.list_routes() if r.destination.prefixlen < 32]
        assert sorted(str(r.destination) for r in routes) == sorted(space_1)
        assert {r.device for r in routes} == {p.vxlan}
        assert sorted(str(a) for a in nl.list_addresses(p.bridge)) == gateways_2
    lab.wait_ready(10)
    assert_matrix_complete(lab)
    # The restarted agent kept its allocations: the pod's key gets its address back, and a
    # new pod gets a different one.
    assert lab.allocate(2, p.pod_ns(2, 1))["address"] == str(lab.pod_address(2, 1))
    assert lab.allocate(2, "another-pod")["address"] != str(lab.pod_address(2, 1))


def test_df_ping_fits_and_oversize_gets_frag_needed(lab_factory) -> None:
    lab = lab_factory(nodes=2, pods=1, agent_args=SLEEVE)
    p = lab.plan
    src, dst = p.pod_ns(1, 1), str(lab.pod_address(2, 1).ip)
    mtu = lab.report(1)["router"]["mtu"]
    assert mtu >= 1428
    ok = in_ns(src, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1400", dst)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    full = in_ns(src, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), dst)
    assert full.returncode == 0, full.stdout + full.stderr
    # A pod whose own MTU is larger than the overlay's: the node answers ICMP frag-needed.
    with Netlink(src) as nl:
        nl.set_link("eth0", mtu=1500)
    with Netlink(p.node_ns(1)) as nl:
        nl.set_link(pods.host_ifname(src), mtu=1500)
    big = in_ns(src, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", dst)
    assert big.returncode != 0
    assert f"Frag needed and DF set (mtu = {mtu})" in big.stdout, big.stdout + big.stderr


def test_garbage_datagrams_are_counted_and_harmless(lab_factory) -> None:
    lab = lab_factory(nodes=2, pods=1)
    p = lab.plan
    target = (str(p.node_address(2).ip), 6783)
    rng = random.Random(11)
    node1 = lab.report(1)["router"]
    node2_id = int(lab.report(2)["router"]["name"].replace(":", ""), 16)
    node1_id = int(node1["name"].replace(":", ""), 16)
    good = frame.encode_data(node1_id, node2_id, [bytes(10) + bytes(40)])
    datagrams = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(200)]
    datagrams += [good[:n] for n in range(1, len(good))]  # every truncation
    datagrams += [bytes([2]) + good[1:]]  # unknown version
    probe = bytearray(frame.HEADER_SIZE + 10)  # a reserved type: nobody sends it any more
    frame.encode_header(probe, frame.MessageType.MTU_PROBE, 10, node1_id, node2_id)
    datagrams += [bytes(probe)]

    def blast() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, target)

    run_in_netns(p.node_ns(1), blast)
    deadline = time.monotonic() + 5
    while True:
        snap = lab.report(2)
        drops = sum(snap["drops"].values()) + sum(sum(x["drops"].values()) for x in snap["peers"])
        if drops >= len(datagrams) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert drops >= len(datagrams), snap["drops"]
    assert {"short", "version", "length", "type"} <= set(snap["drops"])
    assert lab.procs[2].poll() is None  # still running
    assert_matrix_complete(lab)


def test_lab_cli_up_and_down(run_id, tmp_path) -> None:
    name, directory = f"{run_id}c", str(tmp_path / "lab")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "agent", "lab"]
    try:
        up = subprocess.run(
            [*cmd, "up", "--name", name, "--nodes", "3", "--pods", "2", "--dir", directory],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert "all 30 pod pairs reach each other" in up.stdout
        assert "FAIL" not in up.stdout and "NAT!" not in up.stdout
    finally:
        down = subprocess.run(
            [*cmd, "down", "--name", name, "--dir", directory],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert not [ns for ns in netlink.list_netns() if ns.startswith(f"wp{name}-")]
    assert not os.path.exists(directory)


def test_pod_addresses_are_not_translated() -> None:
    # The matrix's TCP check compares the source address the receiver saw with the sender's
    # pod address; make sure that comparison can fail.
    r = probe.Result(rtt_ms=0.1, seen_source="192.168.1.7")
    assert not r.ok("10.244.1.2")
    assert probe.Result(rtt_ms=0.1, seen_source="10.244.1.2").ok("10.244.1.2")
    assert ipaddress.IPv4Address("10.244.1.2")


@pytest.mark.parametrize(
    "args",
    [("--udp-gso", "false"), ("--offload", "false")],
    ids=["ip-fragments", "no-tun-offload"],
)
def test_fallback_modes_carry_bulk_tcp(lab_factory, args) -> None:
    lab = lab_factory(nodes=2, pods=1, agent_args=(*SLEEVE, *args))
    snap = lab.report(1)["router"]
    if args[0] == "--udp-gso":
        assert snap["super_packets"] == "ip-fragments"
    else:
        assert snap["offload"] == "off"
    p = lab.plan
    payload = random.Random(3).randbytes(8 * 1024 * 1024)
    got = tcp_transfer(p.pod_ns(2, 1), p.pod_ns(1, 1), str(lab.pod_address(1, 1).ip), payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
