"""The forwarding core, driven with buffers as the drivers hold them: every verdict, every drop
reason, the counters, the lookup tables, and what it leaves for the TUN. The trust rules'
refusals are crafted frame by frame in tests/overlay/test_trust.py."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, IPerror

from overlay import frame, trust
from overlay.forwarding import DONE, DROP, RELAY, SLOW, WRITE, Forwarding
from overlay.frame import CHUNK_FRAME, RECORD, VNET_HEADER, MessageType
from overlay.peer import PeerSpec, PeerState
from overlay.sleeve import Sleeve

NET = ipaddress.IPv4Network
A_ID, B_ID, C_ID = 0xA1, 0xB2, 0xC3
A_BLOCK, B_BLOCK, C_BLOCK = NET("10.32.1.0/24"), NET("10.32.2.0/24"), NET("10.32.3.0/24")
B_SPEC = PeerSpec(B_ID, "node-b", ("192.0.2.2", 6783), (B_BLOCK,))
C_SPEC = PeerSpec(C_ID, "node-c", ("192.0.2.3", 6783), (C_BLOCK,))
B_HOST = "192.0.2.2"
FROM_B = (B_HOST, 40001)  # B's link: its host, an ephemeral port
GATEWAY = ipaddress.IPv4Address("10.32.1.1").packed
MTU = 1436


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def nonzero(counter: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counter.items() if v}


class Node:
    """Node A's forwarding core over peers B and C; control frames are recorded."""

    def __init__(self) -> None:
        self.peers = {spec.peer_id: PeerState(spec, MTU) for spec in (B_SPEC, C_SPEC)}
        self.control: list[tuple[int, tuple[str, int]]] = []
        self.fw = Forwarding(A_ID, self.peers, self._control)
        self.fw.set_routes(self.peers.values())
        self.fw.set_local([A_BLOCK], GATEWAY)

    def _control(
        self, data: frame.Buffer, header: frame.Header, addr: tuple[str, int], now: float
    ) -> None:
        self.control.append((header.type, addr))


@pytest.fixture
def node() -> Node:
    return Node()


def packet(
    dst: str, size: int = 100, df: bool = True, gso: bool = False, src: str = "10.32.1.5"
) -> bytes:
    """virtio-net header + an IPv4 packet (TCP) of ``size`` bytes."""
    pkt = bytearray(random.Random(size).randbytes(size))
    struct.pack_into("!BBHHHBB", pkt, 0, 0x45, 0, min(size, 0xFFFF), 0, 0x4000 if df else 0, 64, 6)
    pkt[12:16] = ipaddress.IPv4Address(src).packed
    pkt[16:20] = ipaddress.IPv4Address(dst).packed
    vnet = VNET_HEADER.pack(1, 1, 54, 1384, 34, 16) if gso else bytes(10)
    return vnet + bytes(pkt)


def read(pkt: bytes) -> tuple[bytearray, int]:
    """The TUN buffer after a read of ``pkt`` (room for the record length in front)."""
    return bytearray(frame.RECORD_VNET) + pkt, len(pkt)


def data_frame(source: int, destination: int, packets: list[bytes], hops: int = 4) -> memoryview:
    data = bytearray(frame.encode_data(source, destination, packets))
    data[frame.HOPS_AT] = hops
    return memoryview(data)


# -- outbound --------------------------------------------------------------------------------


def test_a_packet_for_a_remote_block_goes_to_its_peer_and_is_counted(node: Node) -> None:
    pkt = packet("10.32.2.9", 700)
    assert node.fw.route(*read(pkt)) is node.peers[B_ID]
    c = node.peers[B_ID].counters
    assert (c.tx_packets, c.tx_bytes) == (1, 700)
    assert node.fw.route(*read(packet("10.32.3.1"))) is node.peers[C_ID]
    assert nonzero(node.fw.drops) == {}


@pytest.mark.parametrize(
    ("pkt", "reason"),
    [
        (packet("10.32.2.9")[:29], "tun_not_ipv4"),  # shorter than an IPv4 header
        (bytes(10) + b"\x60" + bytes(59), "tun_not_ipv4"),  # IPv6
        (packet("10.32.9.9"), "no_route"),
        (packet("10.32.1.7"), "no_route"),  # our own space never goes to a peer
    ],
)
def test_outbound_drops(node: Node, pkt: bytes, reason: str) -> None:
    assert node.fw.route(*read(pkt)) is None
    assert nonzero(node.fw.drops) == {reason: 1}
    assert node.fw.replies() == []


def test_df_packet_over_the_peer_mtu_is_answered_with_frag_needed(node: Node) -> None:
    pkt = packet("10.32.2.9", MTU + 1)
    assert node.fw.route(*read(pkt)) is None
    assert nonzero(node.peers[B_ID].counters.drops) == {"too_big": 1}
    [reply] = node.fw.replies()
    r = IP(reply)
    assert (r.src, r.dst, r[ICMP].type, r[ICMP].code, r[ICMP].nexthopmtu) == (
        "10.32.1.1", "10.32.1.5", 3, 4, MTU,
    )  # fmt: skip
    assert r[IPerror].dst == "10.32.2.9"
    assert node.fw.replies() == []  # handed over once
    assert node.peers[B_ID].counters.tx_packets == 0


@pytest.mark.parametrize(("df", "gso"), [(False, False), (True, True)])
def test_oversize_without_df_or_as_a_super_packet_is_carried(
    node: Node, df: bool, gso: bool
) -> None:
    """Without DF the underlay may fragment; a GSO super-packet is segmented by the kernel."""
    assert node.fw.route(*read(packet("10.32.2.9", 9000, df=df, gso=gso))) is node.peers[B_ID]
    assert node.fw.replies() == []


def test_a_packet_no_record_can_hold_is_dropped(node: Node) -> None:
    assert node.fw.route(*read(packet("10.32.2.9", frame.MAX_PACKET + 1, gso=True))) is None
    assert nonzero(node.fw.drops) == {"too_large": 1}


# -- inbound: DATA ---------------------------------------------------------------------------


def test_data_records_for_our_space_are_written_the_rest_counted(node: Node) -> None:
    mine = [packet("10.32.1.5", 60, src="10.32.2.9"), packet("10.32.1.6", 1200, src="10.32.2.9")]
    theirs = packet("10.32.3.3", 80)
    v6 = bytes(10) + b"\x60" + bytes(59)
    data = data_frame(B_ID, A_ID, [mine[0], theirs, v6, mine[1]])
    assert node.fw.receive(data, FROM_B, 1.0) == WRITE
    assert node.fw.peer is node.peers[B_ID]
    assert [bytes(p) for p in node.fw.packets] == mine
    c = node.peers[B_ID].counters
    assert (c.rx_packets, c.rx_bytes) == (2, 60 + 1200)
    assert nonzero(c.drops) == {"destination": 1, "not_ipv4": 1}


def test_records_before_a_malformed_one_are_written(node: Node) -> None:
    good = packet("10.32.1.5", 60, src="10.32.2.9")
    body = RECORD.pack(len(good) - 10) + good + RECORD.pack(999) + bytes(20)
    data = bytearray(frame.HEADER_SIZE) + body
    frame.encode_header(data, MessageType.DATA, len(body), B_ID, A_ID)
    assert node.fw.receive(memoryview(data), FROM_B, 1.0) == WRITE
    assert [bytes(p) for p in node.fw.packets] == [good]
    assert nonzero(node.fw.drops) == {"record": 1}


def test_data_with_nothing_for_us_is_dropped(node: Node) -> None:
    assert node.fw.receive(data_frame(B_ID, A_ID, [packet("10.32.9.9")]), FROM_B, 1.0) == DROP
    assert node.fw.packets == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x01", "short"),
        (bytes([2]) + bytes(frame.encode_data(B_ID, A_ID, [bytes(30)]))[1:], "version"),
        (frame.encode_data(0xEE, A_ID, [bytes(30)]), "unknown_peer"),
        (frame.encode_heartbeat(MessageType.MTU_PROBE, B_ID, A_ID, 1, 2), "type"),  # reserved
    ],
)
def test_inbound_drops(node: Node, data: bytes, reason: str) -> None:
    assert node.fw.receive(memoryview(bytearray(data)), FROM_B, 1.0) == DROP
    assert nonzero(node.fw.drops) == {reason: 1}
    assert node.control == []


def test_heartbeats_go_to_the_health_core(node: Node) -> None:
    beat = frame.encode_heartbeat(MessageType.HEARTBEAT, B_ID, A_ID, 7, 0x22)
    assert node.fw.receive(memoryview(bytearray(beat)), FROM_B, 1.0) == DONE
    assert node.control == [(MessageType.HEARTBEAT, FROM_B)]


def test_a_sleeve_answers_heartbeats_and_drops_mtu_probes() -> None:
    """Through the Sleeve: a heartbeat is acknowledged, a (reserved) MTU probe is not."""
    s = Sleeve(A_ID, 0x11, [A_BLOCK], MTU)
    s.set_peers([B_SPEC], 0.0)
    for kind in (MessageType.HEARTBEAT, MessageType.MTU_PROBE):
        data = frame.encode_heartbeat(kind, B_ID, A_ID, 9, 0x22)
        s.forwarding.receive(memoryview(bytearray(data)), FROM_B, 1.0)
    [(ack, to)] = s.datagrams_to_send()
    h = frame.decode_header(ack, len(ack))
    assert (h.type, to) == (MessageType.HEARTBEAT_ACK, FROM_B)
    assert nonzero(s.drops) == {"type": 1}


# -- inbound: relay --------------------------------------------------------------------------


def test_a_frame_for_another_peer_is_relayed_with_one_hop_less(node: Node) -> None:
    data = data_frame(B_ID, C_ID, [packet("10.32.3.9")])
    original = bytes(data)
    assert node.fw.receive(data, FROM_B, 1.0) == RELAY
    assert node.fw.peer is node.peers[C_ID]
    assert data[frame.HOPS_AT] == original[frame.HOPS_AT] - 1
    assert bytes(data[frame.HOPS_AT + 1 :]) == original[frame.HOPS_AT + 1 :]
    assert node.peers[C_ID].counters.relayed == 1


@pytest.mark.parametrize(
    ("destination", "hops", "source", "reason"),
    [
        (C_ID, 0, FROM_B, "relay_loop"),  # hops spent
        (0xEE, 4, FROM_B, "wrong_destination"),
    ],
)
def test_relays_refused(
    node: Node, destination: int, hops: int, source: tuple[str, int], reason: str
) -> None:
    data = data_frame(B_ID, destination, [packet("10.32.3.9")], hops=hops)
    assert node.fw.receive(data, source, 1.0) == DROP
    assert nonzero(node.fw.drops) == {reason: 1}
    assert node.peers[C_ID].counters.relayed == 0


def test_a_relay_never_sends_a_frame_back_to_the_host_it_came_from() -> None:
    node = Node()
    node.peers[C_ID].follow(
        PeerSpec(C_ID, "node-c", C_SPEC.address, (C_BLOCK,), via=B_SPEC.address)
    )
    node.fw.set_routes(node.peers.values())
    assert node.fw.receive(data_frame(B_ID, C_ID, [packet("10.32.3.9")]), FROM_B, 1.0) == DROP
    assert nonzero(node.fw.drops) == {"relay_loop": 1}


# -- inbound: chunks and trains --------------------------------------------------------------


def chunks(body: bytes, step: int, source: int = B_ID) -> list[memoryview]:
    out = []
    for at in range(0, len(body), step):
        piece = body[at : at + step]
        data = bytearray(CHUNK_FRAME.size + len(piece))
        CHUNK_FRAME.pack_into(
            data, 0, 1, MessageType.DATA_CHUNK, 0, 4, 8 + len(piece), source, A_ID,
            at, len(body) if at == 0 else 0,
        )  # fmt: skip
        data[CHUNK_FRAME.size :] = piece
        out.append(memoryview(data))
    return out


def record(pkt: bytes) -> bytes:
    return RECORD.pack(len(pkt) - 10) + pkt


def test_chunks_are_reassembled_then_written(node: Node) -> None:
    pkt = packet("10.32.1.5", 5000, gso=True, src="10.32.2.9")
    parts = chunks(record(pkt), 1440)
    verdicts = [node.fw.receive(c, FROM_B, 1.0) for c in parts]
    assert verdicts == [DONE] * (len(parts) - 1) + [WRITE]
    assert [bytes(p) for p in node.fw.packets] == [pkt]
    assert node.fw.paths["reassembled"] == 1


def test_a_chunk_that_breaks_its_rules_is_dropped(node: Node) -> None:
    bad = chunks(record(packet("10.32.1.5", 3000)), 1440)[1]
    struct.pack_into("!I", bad, frame.CHUNK_TOTAL_AT, 5)  # a total in a later chunk
    assert node.fw.receive(bad, FROM_B, 1.0) == DROP
    assert nonzero(node.peers[B_ID].counters.drops) == {"chunk": 1}


def test_reassembly_expires(node: Node) -> None:
    node.fw.receive(chunks(record(packet("10.32.1.5", 3000)), 1440)[0], FROM_B, 1.0)
    node.fw.expire(1.5)
    assert nonzero(node.fw.drops) == {}
    node.fw.expire(2.0)
    assert nonzero(node.fw.drops) == {"chunk_incomplete": 1}


def train_buffer(body: bytes) -> bytearray:
    return bytearray(frame.CHUNK_OVERHEAD) + body


def test_a_whole_train_for_us_is_written(node: Node) -> None:
    pkt = packet("10.32.1.5", 20000, gso=True, src="10.32.2.9")
    body = record(pkt)
    assert node.fw.train(train_buffer(body), frame.CHUNK_OVERHEAD, len(body), B_ID, B_HOST) == WRITE
    assert node.fw.peer is node.peers[B_ID]
    assert node.fw.paths["gro_train"] == 1
    c = node.peers[B_ID].counters
    assert (c.rx_packets, c.rx_bytes) == (1, 20000)


def test_a_train_not_for_our_space_is_dropped(node: Node) -> None:
    body = record(packet("10.32.3.5", 20000, gso=True, src="10.32.2.9"))
    assert node.fw.train(train_buffer(body), frame.CHUNK_OVERHEAD, len(body), B_ID, B_HOST) == DROP
    assert nonzero(node.peers[B_ID].counters.drops) == {"destination": 1}


@pytest.mark.parametrize("case", ["stranger", "two records", "no host"])
def test_other_trains_take_the_general_path(node: Node, case: str) -> None:
    one = record(packet("10.32.1.5", 3000, src="10.32.2.9"))
    body, source, host = {
        "stranger": (one, 0xEE, B_HOST),
        "two records": (one + one, B_ID, B_HOST),
        "no host": (one, B_ID, None),
    }[case]
    assert node.fw.train(train_buffer(body), frame.CHUNK_OVERHEAD, len(body), source, host) == SLOW
    assert nonzero(node.fw.drops) == {} and node.fw.paths == Counter()


# -- lookup tables ---------------------------------------------------------------------------


def table(local: list[NET], specs: list[PeerSpec]) -> Forwarding:
    peers = {s.peer_id: PeerState(s, MTU) for s in specs}
    fw = Forwarding(A_ID, peers, lambda *_: None)
    fw.set_local(local)
    fw.set_routes(peers.values())
    return fw


def test_peer_for_longest_prefix_across_lengths() -> None:
    wide = PeerSpec(0x10, "wide", ("192.0.2.10", 6783), (NET("10.32.0.0/16"),))
    narrow = PeerSpec(0x20, "narrow", ("192.0.2.20", 6783), (NET("10.32.5.0/24"),))
    host = PeerSpec(0x30, "host", ("192.0.2.30", 6783), (NET("10.32.5.77/32"), NET("10.40.0.0/24")))
    everything = PeerSpec(0x40, "default", ("192.0.2.40", 6783), (NET("0.0.0.0/0"),))
    fw = table([NET("10.99.1.0/24")], [wide, narrow, host])

    def owner(addr: str) -> int | None:
        found = fw.peer_for(ip(addr))
        return None if found is None else found.peer_id

    assert owner("10.32.5.7") == 0x20
    assert owner("10.32.5.0") == 0x20
    assert owner("10.32.5.255") == 0x20
    assert owner("10.32.5.77") == 0x30
    assert owner("10.32.4.255") == 0x10
    assert owner("10.32.6.1") == 0x10
    assert owner("10.32.255.255") == 0x10
    assert owner("10.40.0.9") == 0x30
    assert owner("10.33.0.1") is None
    assert owner("10.31.255.255") is None
    # The same blocks given in the other order find the same owners.
    fw = table([NET("10.99.1.0/24")], [host, narrow, wide, everything])
    assert owner("10.32.5.7") == 0x20
    assert owner("10.32.5.77") == 0x30
    assert owner("10.32.9.9") == 0x10
    assert owner("10.33.0.1") == 0x40
    assert owner("8.8.8.8") == 0x40


def test_is_local() -> None:
    fw = table([NET("10.32.1.0/24"), NET("10.32.64.0/18")], [])
    assert fw.is_local(ip("10.32.1.0"))
    assert fw.is_local(ip("10.32.1.255"))
    assert fw.is_local(ip("10.32.100.3"))
    assert not fw.is_local(ip("10.32.2.1"))
    assert not fw.is_local(ip("10.32.128.1"))
    assert fw.peer_for(ip("10.32.1.5")) is None


def test_remembered_answers_follow_changes_and_stay_bounded() -> None:
    """peer_for and is_local remember answers per destination: a change of the blocks or
    peers must show at once, and the memory must not grow with the destinations seen."""
    s = Sleeve(A_ID, 0x11, [NET("10.32.1.0/24")], 1400)
    s.set_peers([B_SPEC], 0.0)
    fw = s.forwarding
    assert fw.is_local(ip("10.32.1.9")) and not fw.is_local(ip("10.32.7.9"))
    s.set_local_blocks([NET("10.32.7.0/24")])
    assert not fw.is_local(ip("10.32.1.9")) and fw.is_local(ip("10.32.7.9"))
    assert fw.peer_for(ip("10.32.2.9")) is s.peers[B_ID]
    s.set_peers([PeerSpec(B_ID, "node-b", B_SPEC.address, (NET("10.32.8.0/24"),))], 1.0)
    assert fw.peer_for(ip("10.32.2.9")) is None
    for k in range(3 * trust.LOOKUP_CACHE):
        assert fw.peer_for(ip("10.32.8.0") + k) is (s.peers[B_ID] if k < 256 else None)
        fw.is_local(ip("10.33.0.0") + k)
    assert len(fw.trust._peer_cache) <= trust.LOOKUP_CACHE
    assert len(fw.trust._local_cache) <= trust.LOOKUP_CACHE
