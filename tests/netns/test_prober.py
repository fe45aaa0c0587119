"""The probe driver: its echo codec (no root), and on the real kernel two scratch namespaces
joined by a veth, each with a VXLAN device programmed like the fast path (learning off, a
permanent neighbour and FDB entry and a /32 route for the other's VTEP), a Prober running in
namespace A: the peer is promoted, demoted when B filters UDP 6784 (nftables, by iptables-nft),
promoted again after the hold once the filter is gone, and demoted when A's own filter refuses
the probes (EPERM on send)."""

from __future__ import annotations

import asyncio
import logging
import struct
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
from pyroute2 import IPRoute

from overlay.icmp import checksum
from overlay.netns import NETNS_DIR, run_in_netns
from overlay.paths import HOLD_INTERVAL, Candidate, Path, Paths, PathSwitch
from overlay.prober import (
    ECHO_REPLY,
    PAYLOAD,
    Prober,
    ProbeRejected,
    echo_request,
    parse_reply,
)

IDENT = 0x5EED
SRC = IPv4Address("10.40.2.1")


def reply_packet(
    ident: int = IDENT, sequence: int = 7, kind: int = ECHO_REPLY, options: bytes = b""
) -> bytearray:
    """An IPv4 packet from SRC carrying an echo reply (or ``kind``), checksums valid."""
    icmp = bytearray(echo_request(ident, sequence))
    icmp[0], icmp[2:4] = kind, b"\0\0"
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    ihl = (20 + len(options)) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(icmp), 0, 0, 64, 1, 0,
        SRC.packed, bytes([10, 40, 1, 1]),
    )  # fmt: skip
    return bytearray(header + options + icmp)


def rejected(packet: bytes | bytearray) -> str:
    with pytest.raises(ProbeRejected) as caught:
        parse_reply(bytes(packet), IDENT)
    return caught.value.reason


def test_echo_request_layout_and_checksum() -> None:
    request = echo_request(IDENT, 0xFFFF)
    assert request[:1] == b"\x08" and request[4:8] == b"\x5e\xed\xff\xff"
    assert request[8:] == PAYLOAD and checksum(request) == 0


def test_a_reply_to_us_parses_with_or_without_ip_options() -> None:
    assert parse_reply(bytes(reply_packet()), IDENT) == (SRC, 7)
    assert parse_reply(bytes(reply_packet(options=b"\x01\x01\x01\x00")), IDENT) == (SRC, 7)


def test_anything_else_on_the_probe_socket_is_rejected_with_its_reason() -> None:
    assert rejected(reply_packet()[:19]) == "not_ipv4"
    six = reply_packet()
    six[0] = 0x65
    assert rejected(six) == "not_ipv4"
    short_ihl = reply_packet()
    short_ihl[0] = 0x44
    assert rejected(short_ihl) == "malformed"
    assert rejected(reply_packet()[:27]) == "malformed"  # the echo header cut short
    udp = reply_packet()
    udp[9] = 17
    assert rejected(udp) == "not_icmp"
    assert rejected(reply_packet(kind=8)) == "not_reply"  # someone's request to us
    assert rejected(reply_packet(ident=IDENT ^ 1)) == "other_identifier"
    corrupt = reply_packet()
    corrupt[-1] ^= 0x01
    assert rejected(corrupt) == "checksum"


# -- on the real kernel -------------------------------------------------------------------------

DEVICE = "wpvx"
UNDERLAY = {"a": "198.51.100.1", "b": "198.51.100.2"}
VTEP = {"a": IPv4Address("10.40.1.1"), "b": IPv4Address("10.40.2.1")}
MAC = {"a": "02:00:00:00:0a:01", "b": "02:00:00:00:0b:01"}
B_NAME = "02:00:00:00:0b:01"
DEMOTE_WITHIN = 2.5 + 0.3  # 3 probe intervals + the answer window, and scheduling slack
DROP = ["INPUT", "-p", "udp", "--dport", "6784", "-j", "DROP"]


def _veth(peer_netns: str) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname="wpua", kind="veth", peer="wpub")
        ipr.link("set", index=ipr.link_lookup(ifname="wpub")[0], net_ns_fd=peer_netns)


def _node(me: str) -> None:
    """Underlay address on the veth, the VTEP address on a bridge, as on a node."""
    with IPRoute() as ipr:
        for name in ("lo", f"wpu{me}"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        underlay = ipr.link_lookup(ifname=f"wpu{me}")[0]
        ipr.addr("add", index=underlay, address=UNDERLAY[me], prefixlen=24)
        ipr.link("add", ifname="wpgw", kind="bridge")
        gateway = ipr.link_lookup(ifname="wpgw")[0]
        ipr.addr("add", index=gateway, address=str(VTEP[me]), prefixlen=24)
        ipr.link("set", index=gateway, state="up")


def _vxlan(me: str, other: str) -> None:
    """The fast path's device and its entries for ``other``, as overlay/node.py programs them."""
    with IPRoute() as ipr:
        ipr.link(
            "add", ifname=DEVICE, kind="vxlan", vxlan_id=6784, vxlan_port=6784,
            vxlan_local=UNDERLAY[me], vxlan_learning=0, address=MAC[me], mtu=1400,
        )  # fmt: skip
        index = ipr.link_lookup(ifname=DEVICE)[0]
        ipr.link("set", index=index, state="up")
        ipr.neigh("add", dst=str(VTEP[other]), lladdr=MAC[other], ifindex=index, state=0x80)
        ipr.fdb("append", ifindex=index, lladdr=MAC[other], dst=UNDERLAY[other])
        ipr.route("add", dst=f"{VTEP[other]}/32", oif=index)


def _iptables(netns: str, *args: str) -> None:
    command = ["nsenter", f"--net={NETNS_DIR}/{netns}", "iptables-nft", "-w", *args]
    subprocess.run(command, capture_output=True, check=True, timeout=30)


async def _until(condition: Callable[[], bool], timeout: float) -> float:
    """Poll ``condition`` until it holds; the monotonic time it did. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.01)
    return time.monotonic()


async def _scenario(ns_a: str, ns_b: str) -> None:
    paths = Paths()
    switches: list[tuple[float, PathSwitch]] = []

    def on_change() -> None:
        switches.extend((time.monotonic(), s) for s in paths.events())

    prober = Prober(paths, DEVICE, on_change)
    prober.set_candidates([Candidate(B_NAME, "b", VTEP["b"])])
    prober.set_source(VTEP["a"])
    task = asyncio.create_task(prober.run())
    fast = lambda: B_NAME in paths.on_fast()  # noqa: E731
    try:
        await asyncio.sleep(1.0)  # no device yet: ENODEV, retried
        assert not fast() and prober.counters()["sent"] == 0 and prober.counters()["unsent"] >= 2
        await asyncio.to_thread(run_in_netns, ns_a, _vxlan, "a", "b")
        await _until(fast, 3.0)
        assert switches[-1][1] == PathSwitch(B_NAME, "b", Path.FASTDP, "fast path answered")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(_iptables, ns_b, "-I", *DROP)
        filtered_at = time.monotonic()
        demoted_at = await _until(lambda: not fast(), 4.0)
        assert demoted_at - filtered_at <= DEMOTE_WITHIN
        assert switches[-1][1] == PathSwitch(B_NAME, "b", Path.SLEEVE, "3 probes unanswered")
        await asyncio.to_thread(_iptables, ns_b, "-D", *DROP)
        cleared_at = time.monotonic()
        promoted_at = await _until(fast, HOLD_INTERVAL + 3.0)
        assert HOLD_INTERVAL <= promoted_at - cleared_at <= HOLD_INTERVAL + 1.2
        assert switches[-1][1].reason == "answered steadily for 5.0s"
        unsent = prober.counters()["unsent"]
        await asyncio.to_thread(_iptables, ns_a, "-I", "OUTPUT", "-p", "icmp", "-j", "DROP")
        refused_at = time.monotonic()
        assert await _until(lambda: not fast(), 4.0) - refused_at <= DEMOTE_WITHIN
        assert prober.counters()["unsent"] >= unsent + 3 and not task.done()  # EPERM
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [s.path for _, s in switches] == [Path.FASTDP, Path.SLEEVE] * 2
    counts = prober.counters()
    state = paths.states()[B_NAME]
    assert counts["answered"] == state.probes_answered > 10
    assert counts["sent"] + counts["unsent"] == state.probes_sent
    assert counts["sent"] - counts["answered"] >= 3  # the ones B dropped
    assert counts["unsent"] >= 3 + 3  # no device at first, then refused by A's filter
    assert counts.get("ignored_unexpected", 0) <= 2  # at most the late ones around the filter
    assert state.rtt is not None and state.rtt < 0.1


@pytest.mark.netns
def test_a_peer_is_promoted_demoted_by_a_udp_filter_and_promoted_again_after_the_hold(
    scratch_netns: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="weave-py.paths")
    ns_a, ns_b = scratch_netns("a"), scratch_netns("b")
    run_in_netns(ns_a, _veth, ns_b)
    run_in_netns(ns_a, _node, "a")
    run_in_netns(ns_b, _node, "b")
    run_in_netns(ns_b, _vxlan, "b", "a")
    run_in_netns(ns_a, lambda: asyncio.run(_scenario(ns_a, ns_b)))
    notes = [r.getMessage() for r in caplog.records if r.name == "weave-py.paths"]
    assert notes == [
        f"open probe socket: dev {DEVICE}: ENODEV, retrying every 0.4s",
        f"open probe socket: dev {DEVICE}: open from {VTEP['a']}",
    ]
