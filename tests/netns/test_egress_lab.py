"""Pod egress and hairpin on the real kernel, in a lab: a pod reaches a host outside the
cluster as its node (masquerade), pods reach each other with their own addresses, a pod reaches
itself through a Service-style address (hairpin), and kube-proxy's kind of rules
(iptables-nft, in the node's namespace) survive the agent's reconciles."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest

from agent.lab import probe
from agent.lab.outside import OutsideHost
from agent.lab.plan import POD_RANGE
from overlay import pods
from overlay.netdev import LinkChange, Masquerade, NatTable, UdpGuard
from overlay.netlink import Netlink
from overlay.netns import NETNS_DIR
from overlay.node import NAT_TABLE
from overlay.vtep import FASTDP_PORT

pytestmark = pytest.mark.netns
SERVICE = "10.96.0.10"  # a ClusterIP-style address, outside the pod range


def iptables(netns: str, *args: str) -> str:
    """iptables-nft in a lab namespace (what kube-proxy runs on a node)."""
    command = ["nsenter", f"--net={NETNS_DIR}/{netns}", "iptables-nft", "-w", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


def wait_for(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.1)
    return time.monotonic() - started


def test_egress_leaves_as_the_node_and_pod_traffic_keeps_its_address(lab_factory) -> None:
    lab = lab_factory(nodes=2, pods=1)
    outside = OutsideHost.of(lab.plan)
    outside.build()
    with probe.Responder(outside.netns):
        for i in (1, 2):
            pod = lab.plan.pod_ns(i, 1)
            assert probe.ping(pod, outside.address) is not None
            assert probe.tcp_source(pod, outside.address) == str(lab.address(i).ip)
    pod_ips = lab.pod_ips()
    results = probe.matrix(pod_ips)  # the receiver saw the sender's pod address
    assert all(r.ok(pod_ips[src]) for (src, _), r in results.items()), probe.render(
        pod_ips, results
    )
    with Netlink(lab.plan.node_ns(1)) as nl:  # the fast path's guard: node 2's host, its space
        host = lab.address(2).ip
        spaces = [(host, ipaddress.IPv4Network(host))]
        spaces += [(host, ipaddress.IPv4Network(block)) for block in lab.owned(2)]
        guard = UdpGuard.of(FASTDP_PORT, spaces)
        assert nl.nat_table(NAT_TABLE) == NatTable(True, (Masquerade(POD_RANGE, POD_RANGE),), guard)


def test_without_masquerade_the_outside_cannot_answer(lab_factory) -> None:
    lab = lab_factory(nodes=1, pods=1, agent_args=("--masquerade", "false"))
    outside = OutsideHost.of(lab.plan)
    outside.build()
    with probe.Responder(outside.netns):
        assert probe.tcp_source(lab.plan.pod_ns(1, 1), outside.address, timeout=1.0) is None
    with Netlink(lab.plan.node_ns(1)) as nl:  # no masquerade rule: only the fast path's guard
        assert nl.nat_table(NAT_TABLE) == NatTable(True, (), UdpGuard(FASTDP_PORT, frozenset()))


def test_a_pod_reaches_itself_through_a_service_address(lab_factory) -> None:
    lab = lab_factory(nodes=1, pods=1, agent_args=("--reconcile-interval", "1"))
    node_ns, pod_ns = lab.plan.node_ns(1), lab.plan.pod_ns(1, 1)
    pod_ip = str(lab.pod_address(1, 1).ip)
    gateway = str(ipaddress.IPv4Interface(lab.pod_address(1, 1)).network.network_address + 1)
    # kube-proxy's part for a Service whose one endpoint is the pod: DNAT, and the hairpin
    # connection masqueraded so the pod answers through the bridge
    port = str(probe.TCP_PORT)
    iptables(node_ns, "-t", "nat", "-A", "PREROUTING", "-d", SERVICE, "-p", "tcp",
             "--dport", port, "-j", "DNAT", "--to-destination", f"{pod_ip}:{port}")  # fmt: skip
    iptables(node_ns, "-t", "nat", "-A", "POSTROUTING", "-s", pod_ip, "-d", pod_ip,
             "-j", "MASQUERADE")  # fmt: skip
    before = iptables(node_ns, "-t", "nat", "-S")
    host = pods.host_ifname(lab.plan.pod_ns(1, 1))
    with probe.Responder(pod_ns), Netlink(node_ns) as nl:
        assert probe.tcp_source(pod_ns, SERVICE) == gateway
        nl.set_link_by_name(host, LinkChange(hairpin=False))  # drift: the frame cannot return
        assert probe.tcp_source(pod_ns, SERVICE, timeout=0.5) is None
        took = wait_for(lambda: probe.tcp_source(pod_ns, SERVICE, timeout=0.5) == gateway, 10)
        link = nl.link(host)
        assert link is not None and link.hairpin, "the reconcile did not restore hairpin"
    assert took < 5
    assert iptables(node_ns, "-t", "nat", "-S") == before  # many reconciles later
    with open(f"{lab.plan.node_dir(1)}/agent.log") as log:  # and ours was left alone too:
        repairs = [line for line in log if "repaired drift" in line]
    assert len(repairs) == 1, repairs  # the hairpin, once; never our table beside theirs
