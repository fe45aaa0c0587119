"""The sleeve's trust rules (overlay/trust.py) through the sans-IO cores, with crafted frames: every
refusal by its reason, on every path a packet can take in (DATA, reassembled chunks, a GRO train,
a relay, heartbeats) and out (the TUN), and what the host-access rule lets through."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter

import pytest

from overlay import frame, trust
from overlay.forwarding import DONE, DROP, RELAY, WRITE
from overlay.frame import CHUNK_FRAME, RECORD, MessageType
from overlay.peer import PeerSpec
from overlay.sleeve import Sleeve
from overlay.trust import Refused

NET = ipaddress.IPv4Network
A_ID, B_ID, C_ID, D_ID = 0xA1, 0xB2, 0xC3, 0xD4
A_HOST, B_HOST, C_HOST, D_HOST = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"
STRANGER = "198.51.100.66"
A_BLOCKS = (NET("10.32.1.0/24"), NET("10.32.5.0/24"))
GATEWAYS = (ipaddress.IPv4Address("10.32.1.1"), ipaddress.IPv4Address("10.32.5.1"))
B_SPEC = PeerSpec(B_ID, "node-b", (B_HOST, 6783), (NET("10.32.2.0/24"),), peer_name="bb")
C_SPEC = PeerSpec(C_ID, "node-c", (C_HOST, 6783), (NET("10.32.3.0/24"),), (B_HOST, 6783), "cc")
D_SPEC = PeerSpec(D_ID, "node-d", (D_HOST, 6783), (NET("10.32.4.0/24"),), peer_name="dd")
POD_A, POD_B, POD_C = "10.32.1.5", "10.32.2.9", "10.32.3.9"
PATHS = ["data", "chunks", "train"]
DATAGRAMS = {"data": 1, "chunks": 3, "train": 1}  # what take_in sends of an 80-byte packet


def nonzero(counter: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counter.items() if v}


def node() -> Sleeve:
    """Node A: B and D direct, C relayed through B; two blocks with a gateway each."""
    s = Sleeve(A_ID, 0xA, A_BLOCKS, 1436, GATEWAYS[0].packed, rng=random.Random(3),
               host_addresses=[A_HOST])  # fmt: skip
    s.set_local_blocks(A_BLOCKS, gateways=GATEWAYS)
    s.set_peers([B_SPEC, C_SPEC, D_SPEC], 0.0)
    return s


def packet(src: str, dst: str, size: int = 80) -> bytes:
    """virtio-net header + an IPv4 packet from ``src`` to ``dst``."""
    pkt = bytearray(size)
    struct.pack_into("!BBHHHBB", pkt, 0, 0x45, 0, size, 0, 0, 64, 17)
    pkt[12:16] = ipaddress.IPv4Address(src).packed
    pkt[16:20] = ipaddress.IPv4Address(dst).packed
    return bytes(10) + bytes(pkt)


def record(pkt: bytes) -> bytes:
    return RECORD.pack(len(pkt) - 10) + pkt


def chunks(source: int, body: bytes, step: int = 40) -> list[bytes]:
    out = []
    for at in range(0, len(body), step):
        piece = body[at : at + step]
        head = CHUNK_FRAME.pack(1, MessageType.DATA_CHUNK, 0, 4, 8 + len(piece), source, A_ID,
                                at, len(body) if at == 0 else 0)  # fmt: skip
        out.append(head + piece)
    return out


def take_in(s: Sleeve, path: str, source: int, pkt: bytes, host: str) -> int:
    """Hand ``pkt`` from peer ``source`` to the core by ``path``, sent by ``host``; the last
    verdict (and, for the train, its counted packets)."""
    fw = s.forwarding
    if path == "data":
        data = memoryview(bytearray(frame.encode_data(source, A_ID, [pkt])))
        return fw.receive(data, (host, 40001), 1.0)
    if path == "chunks":
        verdicts = [fw.receive(memoryview(bytearray(c)), (host, 40001), 1.0)
                    for c in chunks(source, record(pkt))]  # fmt: skip
        return verdicts[-1]
    body = record(pkt)
    buf = bytearray(frame.CHUNK_OVERHEAD) + body
    return fw.train(buf, frame.CHUNK_OVERHEAD, len(body), source, host)


# -- endpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("host", [STRANGER, D_HOST, C_HOST])
def test_a_direct_peers_frames_come_only_from_its_own_host(path: str, host: str) -> None:
    """B is reached directly: its frames from a stranger, or from another member, are refused
    however good their packets; the same from B's own host are taken."""
    s = node()
    assert take_in(s, path, B_ID, packet(POD_B, POD_A), host) == DROP
    assert nonzero(s.drops) == {"endpoint": DATAGRAMS[path]}  # each chunk refused
    assert nonzero(s.peers[B_ID].counters.drops) == {"endpoint": DATAGRAMS[path]}
    assert s.peers[B_ID].counters.rx_packets == 0
    assert take_in(s, path, B_ID, packet(POD_B, POD_A), B_HOST) == WRITE
    assert s.peers[B_ID].counters.rx_packets == 1


@pytest.mark.parametrize("path", PATHS)
def test_a_relayed_peers_frames_come_from_its_host_or_a_direct_neighbour(path: str) -> None:
    s = node()
    for host in (B_HOST, D_HOST, C_HOST):  # the next hop, another neighbour, C itself
        assert take_in(s, path, C_ID, packet(POD_C, POD_A), host) == WRITE
    assert take_in(s, path, C_ID, packet(POD_C, POD_A), STRANGER) == DROP
    assert nonzero(s.drops) == {"endpoint": DATAGRAMS[path]}
    assert s.peers[C_ID].counters.rx_packets == 3


def test_an_unknown_peer_is_refused_from_any_host() -> None:
    s = node()
    assert take_in(s, "data", 0xEE, packet(POD_B, POD_A), B_HOST) == DROP
    assert nonzero(s.drops) == {"unknown_peer": 1}


def test_a_spoofed_chunk_cannot_break_a_peers_reassembly() -> None:
    s = node()
    fw = s.forwarding
    pkt = packet(POD_B, POD_A, 200)
    first, *rest = chunks(B_ID, record(pkt))
    assert fw.receive(memoryview(bytearray(first)), (B_HOST, 40001), 1.0) == DONE
    forged = chunks(B_ID, record(packet(POD_B, POD_A, 200)))[3]
    assert fw.receive(memoryview(bytearray(forged)), (STRANGER, 40001), 1.0) == DROP
    verdicts = [fw.receive(memoryview(bytearray(c)), (B_HOST, 40001), 1.0) for c in rest]
    assert verdicts[-1] == WRITE
    assert [bytes(p) for p in fw.packets] == [pkt]
    assert nonzero(s.drops) == {"endpoint": 1}


# -- inner source and destination ------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("src", "dst", "reason"),
    [
        (POD_C, POD_A, "source"),  # another peer's space
        (POD_A, "10.32.1.6", "source"),  # our own space, from outside
        ("8.8.8.8", POD_A, "source"),  # nobody's
        (C_HOST, POD_A, "source"),  # another peer's host address
        (POD_B, "10.32.2.10", "destination"),  # back into B's space
        (POD_B, A_HOST, "destination"),  # our host by its underlay address
        (POD_B, "10.33.0.1", "destination"),  # nobody's
        (B_HOST, str(GATEWAYS[0]), "host_access"),  # B's host to our host
        (B_HOST, str(GATEWAYS[1]), "host_access"),
    ],
)
def test_inner_packets_outside_the_rules_are_refused(
    path: str, src: str, dst: str, reason: str
) -> None:
    s = node()
    assert take_in(s, path, B_ID, packet(src, dst), B_HOST) == DROP
    assert nonzero(s.drops) == {reason: 1}
    assert nonzero(s.peers[B_ID].counters.drops) == {reason: 1}
    assert s.peers[B_ID].counters.rx_packets == 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (POD_B, POD_A),  # pod to pod
        (POD_B, "10.32.5.77"),  # pod to pod in our second block
        (POD_B, str(GATEWAYS[1])),  # B's pod to our host
        ("10.32.2.1", POD_A),  # B's gateway (its host, in its space) to our pod
        (B_HOST, POD_A),  # B's host (kube-proxy's SNAT, host-network pods) to our pod
    ],
)
def test_what_the_host_access_rule_lets_through(path: str, src: str, dst: str) -> None:
    s = node()
    pkt = packet(src, dst)
    assert take_in(s, path, B_ID, pkt, B_HOST) == WRITE
    if path != "train":
        assert [bytes(p) for p in s.forwarding.packets] == [pkt]
    assert nonzero(s.drops) == {}


def test_a_batch_keeps_the_good_packets_and_counts_each_refusal() -> None:
    s = node()
    good = [packet(POD_B, POD_A), packet(B_HOST, "10.32.1.7")]
    bad = [packet(POD_C, POD_A), packet(POD_B, "10.32.9.9"), packet(B_HOST, "10.32.1.1")]
    data = frame.encode_data(B_ID, A_ID, [bad[0], good[0], bad[1], bad[2], good[1]])
    assert s.forwarding.receive(memoryview(bytearray(data)), (B_HOST, 40001), 1.0) == WRITE
    assert [bytes(p) for p in s.forwarding.packets] == good
    assert nonzero(s.drops) == {"source": 1, "destination": 1, "host_access": 1}


def test_without_gateways_given_the_router_address_is_the_host() -> None:
    s = Sleeve(A_ID, 0xA, A_BLOCKS[:1], 1436, GATEWAYS[0].packed, rng=random.Random(3))
    s.set_peers([B_SPEC], 0.0)
    assert take_in(s, "data", B_ID, packet(B_HOST, str(GATEWAYS[0])), B_HOST) == DROP
    assert take_in(s, "data", B_ID, packet(B_HOST, POD_A), B_HOST) == WRITE
    assert nonzero(s.drops) == {"host_access": 1}


# -- relays ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "host", "verdict", "reason"),
    [
        (B_ID, B_HOST, RELAY, None),
        (B_ID, STRANGER, DROP, "endpoint"),  # a stranger speaking as B
        (B_ID, C_HOST, DROP, "endpoint"),  # a member speaking as B
        (0xEE, B_HOST, DROP, "unknown_peer"),
        (C_ID, D_HOST, DROP, "relay_loop"),  # C's frame from D's host, for D: back where it came
    ],
)
def test_a_relay_passes_on_only_frames_from_a_host_allowed_for_their_source(
    source: int, host: str, verdict: int, reason: str | None
) -> None:
    s = node()
    data = memoryview(bytearray(frame.encode_data(source, D_ID, [packet("8.8.8.8", "1.1.1.1")])))
    assert s.forwarding.receive(data, (host, 40001), 1.0) == verdict
    assert nonzero(s.drops) == ({} if reason is None else {reason: 1})
    assert s.peers[D_ID].counters.relayed == (1 if verdict == RELAY else 0)


# -- out of the TUN --------------------------------------------------------------------------


def route(s: Sleeve, pkt: bytes) -> int | None:
    buf = bytearray(frame.RECORD_VNET) + pkt
    peer = s.forwarding.route(buf, len(pkt))
    return None if peer is None else peer.peer_id


@pytest.mark.parametrize(
    ("src", "sent"),
    [
        (POD_A, True),
        ("10.32.5.9", True),  # our second block
        (str(GATEWAYS[0]), True),  # our host by its gateway
        (A_HOST, True),  # our host by its underlay address
        (POD_C, False),  # another peer's pod
        (B_HOST, False),  # another peer's host
        ("8.8.8.8", False),
        ("192.0.2.77", False),  # an address of the underlay that is not ours
    ],
)
def test_tun_reads_leave_only_with_a_source_of_ours(src: str, sent: bool) -> None:
    s = node()
    assert route(s, packet(src, POD_B)) == (B_ID if sent else None)
    assert nonzero(s.drops) == ({} if sent else {"tun_source": 1})
    assert s.peers[B_ID].counters.tx_packets == (1 if sent else 0)


def test_host_addresses_follow_the_setting() -> None:
    s = node()
    s.set_host_addresses([])
    assert route(s, packet(A_HOST, POD_B)) is None
    s.set_host_addresses(["192.0.2.101"])
    assert route(s, packet("192.0.2.101", POD_B)) == B_ID


# -- heartbeats ------------------------------------------------------------------------------


def ack(token: int, uid: int = 0xB) -> tuple[bytes, frame.Header]:
    data = frame.encode_heartbeat(MessageType.HEARTBEAT_ACK, B_ID, A_ID, token, uid)
    return data, frame.decode_header(data, len(data))


def beat_b(s: Sleeve, now: float) -> list[int]:
    """Run A's timer at ``now``; the tokens of the heartbeats it sent B."""
    s.handle_timer(now)
    tokens = []
    for data, to in s.datagrams_to_send():
        h = frame.decode_header(data, len(data))
        if to == B_SPEC.address:
            tokens.append(frame.decode_heartbeat(data, h)[0])
    return tokens


def test_an_ack_counts_only_from_the_peers_host_and_with_a_token_we_sent() -> None:
    s = node()
    [token] = beat_b(s, 1.0)
    for host, guess in ((STRANGER, token), (D_HOST, token), (B_HOST, 1), (B_HOST, token ^ 1)):
        s.receive_control(*ack(guess), (host, 6783), 1.1)
    assert not s.peers[B_ID].established and s.peers[B_ID].remote_uid == 0
    assert nonzero(s.peers[B_ID].counters.drops) == {"endpoint": 2, "stale_ack": 2}
    s.receive_control(*ack(token), (B_HOST, 6783), 1.2)
    assert s.peers[B_ID].established and s.peers[B_ID].remote_uid == 0xB


def test_forged_acks_cannot_keep_a_dead_path_established() -> None:
    """After one real answer B goes silent; an attacker acks every heartbeat with what it can
    know (the old sequence numbers, from B's address, with B's uid): B is lost at the timeout."""
    s = node()
    [token] = beat_b(s, 1.0)
    s.receive_control(*ack(token), (B_HOST, 6783), 1.0)
    s.events()
    now, sequence = 1.0, 1
    while now < 1.0 + s.timeout + 1.0:
        now = s.get_timer() or now
        beat_b(s, now)
        sequence += 1
        for guess in range(sequence + 1):
            s.receive_control(*ack(guess), (B_HOST, 6783), now)
    assert not s.peers[B_ID].established
    assert any(e.kind == "lost" and e.peer.peer_id == B_ID for e in s.events())


def test_a_heartbeat_from_another_host_is_not_answered_nor_taken_as_a_restart() -> None:
    s = node()
    beat = frame.encode_heartbeat(MessageType.HEARTBEAT, B_ID, A_ID, 7, 0xB)
    s.receive_control(beat, frame.decode_header(beat, len(beat)), (B_HOST, 6783), 1.0)
    [(_, to)] = s.datagrams_to_send()
    assert to == (B_HOST, 6783)
    forged = frame.encode_heartbeat(MessageType.HEARTBEAT, B_ID, A_ID, 8, 0xBAD)
    s.receive_control(forged, frame.decode_header(forged, len(forged)), (STRANGER, 6783), 2.0)
    assert s.datagrams_to_send() == []  # no reflection towards the forged source
    assert s.events() == [] and s.peers[B_ID].remote_uid == 0xB
    assert nonzero(s.drops) == {"endpoint": 1}


def test_a_new_endpoint_forgets_the_tokens_sent_to_the_old_one() -> None:
    s = node()
    [token] = beat_b(s, 1.0)
    moved = PeerSpec(B_ID, "node-b", ("192.0.2.22", 6783), B_SPEC.blocks, peer_name="bb")
    s.set_peers([moved, C_SPEC, D_SPEC], 1.5)
    s.receive_control(*ack(token), ("192.0.2.22", 6783), 1.6)
    assert not s.peers[B_ID].established
    assert nonzero(s.drops) == {"stale_ack": 1}


# -- what the driver logs --------------------------------------------------------------------


def test_refusals_are_summed_per_source_for_the_log() -> None:
    s = node()
    take_in(s, "data", B_ID, packet(POD_B, POD_A), STRANGER)
    take_in(s, "data", B_ID, packet(POD_B, POD_A), STRANGER)
    take_in(s, "data", 0xEE, packet(POD_B, POD_A), STRANGER)
    take_in(s, "data", B_ID, packet(POD_C, POD_A), B_HOST)
    route(s, packet(POD_C, POD_B))
    assert [str(r) for r in s.take_refused()] == [
        f"refuse sleeve input from {B_HOST} as bb(node-b): source=1",
        f"refuse sleeve input from {STRANGER}: unknown_peer=1",
        f"refuse sleeve input from {STRANGER} as bb(node-b): endpoint=2",
        f"refuse sleeve input from tun ({POD_C}): tun_source=1",
    ]
    assert s.take_refused() == []


def test_the_summary_stays_bounded_under_a_flood_from_many_hosts() -> None:
    s = node()
    for k in range(640):  # 250 hosts in turn
        take_in(s, "data", 0xEE, packet(POD_B, POD_A), f"203.0.113.{k % 250}")
    refused = s.take_refused()
    assert len(refused) == trust.MAX_SOURCES + 1  # the first 64 hosts seen, then the rest
    assert refused[-1] == Refused("other sources", (("unknown_peer", 640 - 64 * 3),))
    assert sum(dict(r.reasons)["unknown_peer"] for r in refused) == 640
    assert s.drops["unknown_peer"] == 640
