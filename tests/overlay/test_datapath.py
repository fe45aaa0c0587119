"""The sleeve driver without a kernel tunnel: a UNIX datagram socket pair stands in for the TUN
(one read is one packet, as on a TUN) and a fake UDP socket records what is sent and replays it
as one GRO read. Checks that what one node sends, the other writes to its TUN unchanged, and
that a train whose chunk headers were damaged is never delivered as anything but the original.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import frame
from overlay.datapath import Datapath
from overlay.frame import VNET_HEADER, MessageType
from overlay.sleeve import PeerSpec, Sleeve
from overlay.udp import SOL_UDP, UDP_GRO, UDP_SEGMENT

NET = ipaddress.IPv4Network
A_ID, B_ID = 0xA1, 0xB2
A_BLOCK, B_BLOCK = NET("10.32.1.0/24"), NET("10.32.2.0/24")
A_ADDR, B_ADDR = ("192.0.2.1", 6783), ("192.0.2.2", 6783)
UNDERLAY_MTU = 1500


class FakeUdp:
    """Records sendmsg calls; replays queued reads to recvmsg_into, then EAGAIN."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int | None]] = []  # (payload, GSO segment size)
        self.reads: list[tuple[bytes, int | None]] = []  # (payload, GRO segment size)
        self.source = A_ADDR  # where reads say they came from

    def fileno(self) -> int:
        return -1

    def sendmsg(self, parts, cmsgs=(), flags=0, addr=None) -> int:
        segment = None
        for level, kind, data in cmsgs:
            if (level, kind) == (SOL_UDP, UDP_SEGMENT):
                segment = struct.unpack("=H", data)[0]
        payload = b"".join(bytes(p) for p in parts)
        self.sent.append((payload, segment))
        return len(payload)

    def recvmsg_into(self, buffers, ancsize):
        if not self.reads:
            raise BlockingIOError
        data, gro = self.reads.pop(0)
        buffers[0][: len(data)] = data
        anc = [] if gro is None else [(SOL_UDP, UDP_GRO, struct.pack("=i", gro))]
        return len(data), anc, 0, self.source


class Node:
    def __init__(self, local_id: int, block: NET, peer: PeerSpec) -> None:
        self.sleeve = Sleeve(local_id, local_id, [block], UNDERLAY_MTU - frame.OVERHEAD)
        self.sleeve.set_peers([peer], 0.0)
        self.tun, self.app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.tun, self.app):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.tun.setblocking(False)
        self.app.setblocking(False)
        self.udp = FakeUdp()
        self.path = Datapath(self.sleeve, self.tun.fileno(), self.udp, UNDERLAY_MTU)  # type: ignore[arg-type]

    def written(self) -> list[bytes]:
        """Everything the driver wrote to its TUN since the last call."""
        out = []
        while True:
            try:
                out.append(self.app.recv(1 << 17))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.tun.close()
        self.app.close()


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    a = Node(A_ID, A_BLOCK, PeerSpec(B_ID, "b", B_ADDR, (B_BLOCK,)))
    b = Node(B_ID, B_BLOCK, PeerSpec(A_ID, "a", A_ADDR, (A_BLOCK,)))
    yield a, b
    a.close()
    b.close()


def packet(size: int, rng: random.Random, dst: str = "10.32.2.5", gso: bool = True) -> bytes:
    """virtio-net header + an IPv4 packet of ``size`` bytes (TCP, DF) to ``dst``."""
    ip = bytearray(rng.randbytes(size))
    ip[0], ip[1] = 0x45, 0
    struct.pack_into("!HHH", ip, 2, min(size, 0xFFFF), 0, 0x4000)
    ip[8], ip[9] = 64, 6
    ip[12:16] = ipaddress.IPv4Address("10.32.1.5").packed
    ip[16:20] = ipaddress.IPv4Address(dst).packed
    vnet = VNET_HEADER.pack(1, 1, 54, 1384, 34, 16) if gso else bytes(10)
    return vnet + bytes(ip)


def send(node: Node, pkt: bytes) -> list[tuple[bytes, int | None]]:
    node.app.send(pkt)
    node.path._drain_tun()
    sent, node.udp.sent = node.udp.sent, []
    return sent


def test_super_packet_crosses_as_one_train_and_arrives_whole(nodes) -> None:
    a, b = nodes
    pkt = packet(60000, random.Random(1))
    sent = send(a, pkt)
    assert len(sent) == 1
    train, segment = sent[0]
    assert segment is not None and segment % 8 == 0 and segment <= UNDERLAY_MTU - 28
    b.udp.reads.append((train, segment))
    b.path.receiver.drain()
    assert b.written() == [pkt]
    assert b.sleeve.paths["gro_train"] == 1
    assert b.sleeve.peers[A_ID].counters.rx_packets == 1


@pytest.mark.parametrize("size", [40, 600, 1380, 1436, 1437, 3000, 65000])
def test_every_size_round_trips_split_or_coalesced(nodes, size: int) -> None:
    """Each sent datagram read alone (no GRO) and, for GSO sends, also read coalesced."""
    a, b = nodes
    pkt = packet(size, random.Random(size))
    sent = send(a, pkt)
    assert sent
    for payload, segment in sent:
        step = segment or len(payload)
        for at in range(0, len(payload), step):
            b.udp.reads.append((payload[at : at + step], None))
    b.path.receiver.drain()
    assert b.written() == [pkt]
    for payload, segment in sent:
        b.udp.reads.append((payload, segment))
    b.path.receiver.drain()
    assert b.written() == [pkt]


def test_small_packets_are_batched_in_one_datagram(nodes) -> None:
    a, b = nodes
    rng = random.Random(5)
    pkts = [packet(52, rng, gso=False) for _ in range(5)]
    for p in pkts:
        a.app.send(p)
    a.path._drain_tun()
    assert len(a.udp.sent) == 1
    b.udp.reads.append((a.udp.sent[0][0], None))
    b.path.receiver.drain()
    assert b.written() == pkts


def chunks_of(train: bytes, segment: int) -> list[bytes]:
    return [train[at : at + segment] for at in range(0, len(train), segment)]


@st.composite
def damaged_reads(draw: st.DrawFn) -> tuple[int, str, int, int, int]:
    """(packet size, what was done, two chunk indexes, a header byte position)."""
    size = draw(st.integers(3000, 62000))
    kind = draw(st.sampled_from(["flip", "copy", "swap", "drop", "repeat"]))
    return size, kind, draw(st.integers(0, 60)), draw(st.integers(0, 60)), draw(st.integers(0, 31))


@settings(max_examples=300, deadline=None)
@given(damaged_reads())
def test_a_read_that_is_not_one_intact_train_never_delivers_a_spliced_packet(case) -> None:
    """Damage as a lossy, reordering underlay (or a broken peer) would: a flipped header
    byte, a chunk copied over another, two swapped, one lost, one repeated. What reaches the
    TUN is the original packet or nothing; the next intact train still gets through."""
    size, kind, i, j, byte = case
    a = Node(A_ID, A_BLOCK, PeerSpec(B_ID, "b", B_ADDR, (B_BLOCK,)))
    b = Node(B_ID, B_BLOCK, PeerSpec(A_ID, "a", A_ADDR, (A_BLOCK,)))
    try:
        pkt = packet(size, random.Random(size))
        (train, segment), *_ = send(a, pkt)
        assert segment is not None
        chunks = chunks_of(train, segment)
        full = len(chunks) - 1  # every chunk but the last is exactly one segment long
        i, j = i % full, j % full
        if kind == "flip":
            damaged = bytearray(chunks[i])
            damaged[byte] ^= 0x5A
            chunks[i] = bytes(damaged)
        elif kind == "copy" and i != j:
            chunks[i] = chunks[j]
        elif kind == "swap":
            chunks[i], chunks[j] = chunks[j], chunks[i]
        elif kind == "drop":
            del chunks[i]
        elif kind == "repeat":
            chunks.insert(i, chunks[i])
        b.udp.reads.append((b"".join(chunks), segment))
        b.path.receiver.drain()
        assert b.written() in ([], [pkt])
        b.udp.reads.append((train, segment))
        b.path.receiver.drain()
        assert b.written() == [pkt]
    finally:
        a.close()
        b.close()


def test_train_for_another_node_or_from_a_stranger_is_dropped(nodes) -> None:
    a, b = nodes
    pkt = packet(20000, random.Random(9), dst="10.32.3.7")  # nobody's block
    assert send(a, pkt) == []
    assert a.sleeve.drops["no_route"] == 1
    pkt = packet(20000, random.Random(9))
    (train, segment), *_ = send(a, pkt)
    stranger = bytearray(train)
    for at in range(0, len(train), segment or len(train)):
        struct.pack_into("!Q", stranger, at + 8, 0xEE)  # source peer id
    b.udp.reads.append((bytes(stranger), segment))
    b.path.receiver.drain()
    assert b.written() == []
    assert b.sleeve.drops["unknown_peer"] >= 1


def test_gso_refused_falls_back_to_one_datagram(nodes) -> None:
    a, b = nodes
    a.path.udp_gso = False
    pkt = packet(30000, random.Random(4))
    sent = send(a, pkt)
    assert [segment for _, segment in sent] == [None]
    assert frame.decode_header(sent[0][0], len(sent[0][0])).type == MessageType.DATA
    b.udp.reads.append((sent[0][0], None))
    b.path.receiver.drain()
    assert b.written() == [pkt]


def test_fake_tun_keeps_packet_boundaries() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        right.send(b"x" * 10)
        right.send(b"y" * 5)
        buf = bytearray(100)
        assert os.readv(left.fileno(), [buf]) == 10
        assert os.readv(left.fileno(), [buf]) == 5


def test_data_goes_by_a_connected_link_and_control_by_the_main_socket() -> None:
    """Links open on the first data send to a peer endpoint, send from their own port, and
    close when no peer uses the endpoint any more; control datagrams keep the main port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as far:
        far.bind(("127.0.0.1", 0))
        far.settimeout(2)
        peer = PeerSpec(B_ID, "b", far.getsockname(), (B_BLOCK,))
        sleeve = Sleeve(A_ID, A_ID, [A_BLOCK], UNDERLAY_MTU - frame.OVERHEAD)
        sleeve.set_peers([peer], 0.0)
        tun, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        main.bind(("127.0.0.1", 0))
        main.setblocking(False)
        opened: list[socket.socket] = []

        def connect(addr: tuple[str, int]) -> socket.socket:
            link = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            link.bind(("127.0.0.1", 0))
            link.connect(addr)
            link.setblocking(False)
            opened.append(link)
            return link

        with tun, app, main:
            tun.setblocking(False)
            path = Datapath(sleeve, tun.fileno(), main, UNDERLAY_MTU, connect=connect)
            path.links.sync({peer.address})
            for size in (52, 900):  # a batched and a single packet
                app.send(packet(size, random.Random(size), gso=False))
                path._drain_tun()
                data, source = far.recvfrom(65536)
                assert frame.decode_header(data, len(data)).type == MessageType.DATA
                assert source == opened[0].getsockname() != main.getsockname()
            assert len(opened) == 1
            path._send((b"control",), peer.address, None)
            assert far.recvfrom(100) == (b"control", main.getsockname())
            path.links.sync(set())
            assert opened[0].fileno() == -1  # closed
            app.send(packet(52, random.Random(1), gso=False))
            path._drain_tun()  # no longer a peer endpoint: the main socket sends
            assert far.recvfrom(65536)[1] == main.getsockname()


def test_frames_for_another_peer_are_relayed_but_never_back_to_their_host() -> None:
    """A relay forwards a frame with one hop less to the destination's endpoint; a frame
    whose next hop is on the host it came from (data arrives from a peer's link port, so
    only the host tells) is a loop and is dropped, as is one with no hops left."""
    c_id, c_block = 0xC3, NET("10.32.3.0/24")
    far = PeerSpec(c_id, "c", ("192.0.2.3", 6783), (c_block,))
    back = PeerSpec(c_id, "c", ("192.0.2.1", 6783), (c_block,))  # C reached via A's host
    for spec, relayed in ((far, True), (back, False)):
        node = Node(B_ID, B_BLOCK, PeerSpec(A_ID, "a", A_ADDR, (A_BLOCK,)))
        try:
            node.sleeve.set_peers([PeerSpec(A_ID, "a", A_ADDR, (A_BLOCK,)), spec], 0.0)
            sent: list[tuple[bytes, tuple[str, int]]] = []

            def record(parts, addr, peer, sent=sent) -> None:
                sent.append((b"".join(bytes(p) for p in parts), addr))

            node.path.receiver.send = record
            node.udp.source = (A_ADDR[0], 40001)  # A's link: its host, an ephemeral port
            data = frame.encode_data(A_ID, c_id, [packet(60, random.Random(2), "10.32.3.9")])
            node.udp.reads.append((data, None))
            node.path.receiver.drain()
            if relayed:
                assert [addr for _, addr in sent] == [far.address]
                assert sent[0][0][3] == frame.DEFAULT_HOPS - 1 and sent[0][0][4:] == data[4:]
                assert node.sleeve.peers[c_id].counters.relayed == 1
            else:
                assert sent == [] and node.sleeve.drops["relay_loop"] == 1
            spent = bytearray(data)
            spent[3] = 0  # no hops left
            node.udp.reads.append((bytes(spent), None))
            node.path.receiver.drain()
            assert len(sent) == (1 if relayed else 0)
        finally:
            node.close()
