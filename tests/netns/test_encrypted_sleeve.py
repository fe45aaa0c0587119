"""The sealed sleeve on the real kernel: two lab nodes whose agents hold a password carry pod
ICMP and TCP across, and a capture on the underlay (an AF_PACKET socket in the lab's underlay
namespace) finds every sleeve datagram sealed and no byte of the pods' payload in clear; a
sealed frame sent again from its sender's host is dropped as a replay and counted; a node
whose password the others do not hold carries nothing (no membership, no pod traffic either
way) and refuses frames sealed under the cluster's password as "unknown_key"."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agent.lab import probe
from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from overlay import frame, netlink
from overlay.netns import enter_netns, run_in_netns
from overlay.seal import AEAD_EXTRA
from tests.netns.test_datapath import assert_matrix_complete, tcp_transfer

pytestmark = pytest.mark.netns

MARKER = b"WP-POD-PAYLOAD-7f3a9c"  # what the pods send; never on the underlay in clear
SLEEVE_PORT = 6783
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
ETHERNET = struct.Struct("!6s6sH")  # destination, source, type


def secret_path(plan: LabPlan, i: int) -> str:
    return os.path.join(plan.directory, f"password-{i}")


class SecretLab(Lab):
    """A lab whose node i reads its password from a file of its own."""

    def agent_command(self, i: int) -> list[str]:
        return [*super().agent_command(i), "--password-file", secret_path(self.plan, i)]


def write_secret(plan: LabPlan, i: int, secret: str) -> None:
    fd = os.open(secret_path(plan, i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


@pytest.fixture
def lab(run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretLab]:
    plan = LabPlan(run_id, 2, 1, str(tmp_path_factory.mktemp(f"lab-{run_id}")))
    for i in (1, 2):
        write_secret(plan, i, "correct horse battery staple")
    built = SecretLab(plan)
    try:
        built.up()
        yield built
    finally:
        built.down()
        leftovers = [ns for ns in netlink.list_netns() if ns.startswith(plan.prefix + "-")]
        shutil.rmtree(plan.directory, ignore_errors=True)
        assert not leftovers, f"lab teardown left {leftovers}"


@dataclass
class Capture:
    """What crossed the underlay while it ran: sleeve datagrams sealed or plain, packets with
    the marker in clear, and the sealed DATA datagrams themselves (unfragmented ones)."""

    sealed: int = 0
    plain: int = 0
    in_clear: int = 0
    packets: int = 0
    data: list[tuple[str, str, bytes]] = field(default_factory=list)  # (src, dst, payload)

    def take(self, packet: bytes) -> None:
        self.packets += 1
        if MARKER in packet:
            self.in_clear += 1
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != socket.IPPROTO_UDP or len(packet) < ihl + 8 + frame.HEADER_SIZE:
            return
        fragment = struct.unpack_from("!H", packet, 6)[0]
        ports = struct.unpack_from("!HH", packet, ihl)
        if fragment & 0x1FFF or SLEEVE_PORT not in ports:
            return
        payload = packet[ihl + 8 :]
        if payload[2] & frame.FLAG_AEAD:
            self.sealed += 1
        else:
            self.plain += 1
        if payload[2] & frame.FLAG_AEAD and payload[1] == 1 and not fragment & 0x2000:
            self.data.append((socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]),
                              payload))  # fmt: skip


@dataclass
class Sniffer:
    """An AF_PACKET capture of the IPv4 frames on every interface of namespace ``ns`` (the
    lab's underlay: bridge ports, so each frame is seen as it enters and leaves the bridge),
    on a thread of its own. ETH_P_ALL: a socket for ETH_P_IP alone sees nothing of what a
    bridge takes."""

    ns: str
    found: Capture = field(default_factory=Capture)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Capture:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "capture did not start"
        return self.found

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        enter_netns(self.ns)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
            s.settimeout(0.1)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    ethernet = s.recv(65535)
                except TimeoutError:
                    continue
                if ETHERNET.unpack_from(ethernet)[2] == ETH_P_IP:
                    self.found.take(ethernet[ETHERNET.size :])


def test_pods_reach_each_other_sealed_and_nothing_crosses_in_clear(lab: SecretLab) -> None:
    p = lab.plan
    assert lab.report(1)["router"]["mtu"] == 1500 - frame.OVERHEAD - AEAD_EXTRA
    payload = MARKER * (4 * 1024 * 1024 // len(MARKER))
    with Sniffer(p.underlay_ns) as seen:
        assert_matrix_complete(lab)  # ICMP and TCP both ways
        dst = str(lab.pod_address(2, 1).ip)
        got = tcp_transfer(p.pod_ns(1, 1), p.pod_ns(2, 1), dst, payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert seen.sealed > 100 and seen.plain == 0, seen
    assert seen.in_clear == 0, f"{seen.in_clear} of {seen.packets} packets carry pod payload"
    assert lab.report(2)["super_packets_received"].get("sealed_train", 0) > 0


def test_a_replayed_sealed_frame_is_dropped_and_counted(lab: SecretLab) -> None:
    p = lab.plan
    one, two = str(p.node_address(1).ip), str(p.node_address(2).ip)
    with Sniffer(p.underlay_ns) as seen:
        assert_matrix_complete(lab)
    frames = {d[2] for d in seen.data if (d[0], d[1]) == (one, two)}
    assert frames, "no sealed DATA datagram from node 1 to node 2 was captured"
    before = lab.report(2)["drops"].get("replay", 0)

    send_from(p.node_ns(1), frames, (two, SLEEVE_PORT))  # node 1's host: only the counter is old
    for _ in range(50):
        if lab.report(2)["drops"].get("replay", 0) - before >= len(frames):
            break
        time.sleep(0.1)
    assert lab.report(2)["drops"].get("replay", 0) - before == len(frames)
    assert_matrix_complete(lab)


def test_a_node_whose_password_the_others_do_not_hold_carries_nothing(lab: SecretLab) -> None:
    p = lab.plan
    one, two = str(p.node_address(1).ip), str(p.node_address(2).ip)
    with Sniffer(p.underlay_ns) as before:
        assert_matrix_complete(lab)
    sealed = {d[2] for d in before.data if (d[0], d[1]) == (one, two)}
    lab.stop_agent(2)
    write_secret(p, 2, "a password nobody else holds")
    lab.start_agent(2)
    answered(lab, 2)  # not ready: it has no data path to node 1, and gets none
    with Sniffer(p.underlay_ns) as seen:
        time.sleep(3)  # heartbeats and gossip get their chance
        pings = [
            probe.ping(p.pod_ns(1, 1), str(lab.pod_address(2, 1).ip), timeout=1.0),
            probe.ping(p.pod_ns(2, 1), str(lab.pod_address(1, 1).ip), timeout=1.0),
        ]
    assert pings == [None, None]
    assert seen.in_clear == 0 and seen.plain == 0, seen
    assert all(peer["rx_packets"] == 0 for peer in lab.report(2)["peers"])
    send_from(p.node_ns(1), sealed, (two, SLEEVE_PORT))  # sealed under the cluster's secret
    for _ in range(50):
        if lab.report(2)["drops"].get("unknown_key", 0) >= len(sealed) > 0:
            break
        time.sleep(0.1)
    assert lab.report(2)["drops"].get("unknown_key", 0) >= len(sealed) > 0
    assert all(lab.procs[i].poll() is None for i in (1, 2))  # both still run


def answered(lab: Lab, i: int, timeout: float = 20.0) -> None:
    """Until node i's agent answers its API."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lab.report(i)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def send_from(ns: str, datagrams: set[bytes], to: tuple[str, int]) -> None:
    """Send ``datagrams`` to ``to`` from a UDP socket in namespace ``ns``."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in datagrams:
                s.sendto(data, to)

    run_in_netns(ns, send)
