"""The sleeve driver over the in-tree fakes (overlay/fakes.py): no kernel, no socket. What one
node reads from its TUN, the other writes to its TUN unchanged, whatever the size and however
the datagrams are read; failures are counted and the driver goes on; the event-loop readers
work with the fakes' descriptors."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
import select
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP

from overlay import frame
from overlay.datapath import Datapath
from overlay.fakes import FakeTun, FakeUdp, FakeUnderlay
from overlay.frame import VNET_HEADER, MessageType
from overlay.peer import PeerSpec
from overlay.sleeve import PeerEvent, PeerEventKind, Sleeve

NET = ipaddress.IPv4Network
A_ID, B_ID, C_ID = 0xA1, 0xB2, 0xC3
A_BLOCK, B_BLOCK, C_BLOCK = NET("10.32.1.0/24"), NET("10.32.2.0/24"), NET("10.32.3.0/24")
A_ADDR, B_ADDR, C_ADDR = ("192.0.2.1", 6783), ("192.0.2.2", 6783), ("192.0.2.3", 6783)
A_SPEC = PeerSpec(A_ID, "a", A_ADDR, (A_BLOCK,))
B_SPEC = PeerSpec(B_ID, "b", B_ADDR, (B_BLOCK,))
C_SPEC = PeerSpec(C_ID, "c", C_ADDR, (C_BLOCK,))
UNDERLAY_MTU = 1500
GATEWAY = ipaddress.IPv4Address("10.32.1.1").packed


class Node:
    """A sleeve, its driver, a fake TUN and a fake socket bound at ``addr`` on ``underlay``."""

    def __init__(
        self, underlay: FakeUnderlay, local_id: int, addr: tuple[str, int], block: NET,
        peers: list[PeerSpec], interval: float = 0.5,
    ) -> None:  # fmt: skip
        self.sleeve = Sleeve(
            local_id, local_id, [block], UNDERLAY_MTU - frame.OVERHEAD, GATEWAY,
            fast_interval=interval, slow_interval=10 * interval, rng=random.Random(1),
        )  # fmt: skip
        self.sleeve.set_peers(peers, 0.0)
        self.tun = FakeTun()
        self.sock = underlay.socket(addr)
        self.events: list[PeerEvent] = []
        self.path = Datapath(
            self.sleeve, self.tun, self.sock, UNDERLAY_MTU, self.events.append,
            connect=underlay.connector(addr[0]),
        )  # fmt: skip
        self.path.follow_peers()

    def send(self, *packets: bytes) -> None:
        for p in packets:
            self.tun.inject(p)
        self.path.drain_tun()

    def close(self) -> None:
        self.path.links.sync(set())
        self.sock.close()
        self.tun.close()


@pytest.fixture
def underlay() -> FakeUnderlay:
    return FakeUnderlay()


@pytest.fixture
def nodes(underlay: FakeUnderlay) -> Iterator[tuple[Node, Node]]:
    a = Node(underlay, A_ID, A_ADDR, A_BLOCK, [B_SPEC])
    b = Node(underlay, B_ID, B_ADDR, B_BLOCK, [A_SPEC])
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


def links_of(node: Node) -> list[FakeUdp]:
    """The node's links: the sockets on its host besides its main one."""
    host = node.sock.address[0]
    return [
        s for s in node.sock.underlay.bound.values() if s.address[0] == host and s is not node.sock
    ]


def sent_by_links(node: Node) -> list[tuple[bytes, int | None, tuple[str, int]]]:
    """What the node's links sent since the last call."""
    return [sent for link in links_of(node) for sent in link.take()]


def test_super_packet_crosses_as_one_train_and_arrives_whole(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    pkt = packet(60000, random.Random(1))
    a.send(pkt)
    [(train, segment, to)] = sent_by_links(a)
    assert to == B_ADDR
    assert segment is not None and segment % 8 == 0 and segment <= UNDERLAY_MTU - 28
    assert len(train) > segment  # one GSO send of many chunks, read as one GRO read
    b.path.drain_udp()
    assert b.tun.take() == [pkt]
    assert b.sleeve.paths["gro_train"] == 1
    assert b.sleeve.peers[A_ID].counters.rx_packets == 1
    assert a.sleeve.peers[B_ID].counters.tx_bytes == 60000


@pytest.mark.parametrize("size", [40, 600, 1380, 1436, 1437, 3000, 65000])
def test_every_size_round_trips_split_or_coalesced(nodes: tuple[Node, Node], size: int) -> None:
    """Each sent datagram read alone (no GRO) and, for GSO sends, also read coalesced."""
    a, b = nodes
    pkt = packet(size, random.Random(size))
    a.send(pkt)
    sent = sent_by_links(a)
    assert sent
    b.sock.inbox.clear()
    for payload, segment, _ in sent:
        step = segment or len(payload)
        for at in range(0, len(payload), step):
            b.sock.queue(payload[at : at + step], None, A_ADDR)
    b.path.drain_udp()
    assert b.tun.take() == [pkt]
    for payload, segment, _ in sent:
        b.sock.queue(payload, segment, A_ADDR)
    b.path.drain_udp()
    assert b.tun.take() == [pkt]


def test_small_packets_are_batched_in_one_datagram(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    rng = random.Random(5)
    pkts = [packet(52, rng, gso=False) for _ in range(5)]
    a.send(*pkts)
    [(data, segment, _)] = sent_by_links(a)
    assert segment is None
    assert frame.decode_header(data, len(data)).type == MessageType.DATA
    b.path.drain_udp()
    assert b.tun.take() == pkts


@st.composite
def damaged_reads(draw: st.DrawFn) -> tuple[int, str, int, int, int]:
    """(packet size, what was done, two chunk indexes, a header byte position)."""
    size = draw(st.integers(3000, 62000))
    kind = draw(st.sampled_from(["flip", "copy", "swap", "drop", "repeat"]))
    return size, kind, draw(st.integers(0, 60)), draw(st.integers(0, 60)), draw(st.integers(0, 31))


@settings(max_examples=150, deadline=None)
@given(damaged_reads())
def test_a_read_that_is_not_one_intact_train_never_delivers_a_spliced_packet(
    case: tuple[int, str, int, int, int],
) -> None:
    """Damage as a lossy, reordering underlay (or a broken peer) would, through the whole
    receive path (fast and general): what reaches the TUN is the original packet or nothing;
    the next intact train still gets through."""
    size, kind, i, j, byte = case
    underlay = FakeUnderlay()
    a = Node(underlay, A_ID, A_ADDR, A_BLOCK, [B_SPEC])
    b = Node(underlay, B_ID, B_ADDR, B_BLOCK, [A_SPEC])
    try:
        pkt = packet(size, random.Random(size))
        a.send(pkt)
        [(train, segment, _)] = sent_by_links(a)
        assert segment is not None
        b.sock.inbox.clear()
        chunks = [train[at : at + segment] for at in range(0, len(train), segment)]
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
        b.sock.queue(b"".join(chunks), segment, A_ADDR)
        b.path.drain_udp()
        assert b.tun.take() in ([], [pkt])
        b.sock.queue(train, segment, A_ADDR)
        b.path.drain_udp()
        assert b.tun.take() == [pkt]
    finally:
        a.close()
        b.close()


def test_no_route_and_a_stranger_are_dropped(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.send(packet(20000, random.Random(9), dst="10.32.3.7"))  # nobody's block
    assert sent_by_links(a) == [] and a.sleeve.drops["no_route"] == 1
    a.send(packet(20000, random.Random(9)))
    [(train, segment, _)] = sent_by_links(a)
    assert segment is not None
    b.sock.inbox.clear()
    stranger = bytearray(train)
    for at in range(0, len(train), segment):
        struct.pack_into("!Q", stranger, at + 8, 0xEE)  # source peer id
    b.sock.queue(bytes(stranger), segment, A_ADDR)
    b.path.drain_udp()
    assert b.tun.take() == []
    assert b.sleeve.drops["unknown_peer"] >= 1


def test_without_gso_a_super_packet_is_one_datagram(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.path.udp_gso = False
    pkt = packet(30000, random.Random(4))
    a.send(pkt)
    [(data, segment, _)] = sent_by_links(a)
    assert segment is None
    assert frame.decode_header(data, len(data)).type == MessageType.DATA
    b.path.drain_udp()
    assert b.tun.take() == [pkt]


def test_gso_refused_by_the_kernel_falls_back_for_good(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.send(packet(600, random.Random(1), gso=False))  # opens the link
    [link] = links_of(a)
    link.fail = OSError(errno.EIO, "no tx checksum offload")
    a.send(packet(30000, random.Random(2)))
    assert a.path.udp_gso is False
    assert a.sleeve.peers[B_ID].counters.drops["send_EIO"] == 1
    link.fail = None
    pkt = packet(30000, random.Random(3))
    a.send(pkt)
    b.sock.inbox.clear()
    [(data, segment, _)] = sent_by_links(a)[-1:]
    assert segment is None
    b.sock.queue(data, None, A_ADDR)
    b.path.drain_udp()
    assert b.tun.take() == [pkt]


def test_a_full_send_buffer_and_a_failed_tun_write_are_counted(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.sock.fail = BlockingIOError(errno.EAGAIN, "full")
    a.path.links.sync(set())  # no link: data goes by the main socket
    a.send(packet(60000, random.Random(1)), packet(52, random.Random(2), gso=False))
    assert a.sleeve.peers[B_ID].counters.drops["send_buffer_full"] == 2
    b.tun.fail = OSError(errno.EIO, "device down")
    b.sock.queue(
        frame.encode_data(A_ID, B_ID, [packet(52, random.Random(3), gso=False)]), None, A_ADDR
    )
    b.path.drain_udp()
    assert b.sleeve.peers[A_ID].counters.drops["tun_write_EIO"] == 1
    b.tun.fail = None
    pkt = packet(52, random.Random(4), gso=False)
    b.sock.queue(frame.encode_data(A_ID, B_ID, [pkt]), None, A_ADDR)
    b.path.drain_udp()
    assert b.tun.take() == [pkt]


def test_a_df_packet_too_big_for_the_peer_is_answered_on_the_tun(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    a.send(packet(1437, random.Random(1), gso=False))
    assert sent_by_links(a) == []
    [reply] = a.tun.take()
    assert reply[: frame.VNET_HEADER_SIZE] == bytes(frame.VNET_HEADER_SIZE)
    icmp = IP(reply[frame.VNET_HEADER_SIZE :])
    assert (icmp.src, icmp.dst, icmp[ICMP].type, icmp[ICMP].code) == (
        "10.32.1.1",
        "10.32.1.5",
        3,
        4,
    )
    assert icmp[ICMP].nexthopmtu == 1436


def test_data_goes_by_a_link_and_control_by_the_main_socket(underlay: FakeUnderlay) -> None:
    """Links open on the first data send to a peer endpoint, send from their own port, and
    close when no peer uses the endpoint any more; control datagrams keep the main port."""
    a = Node(underlay, A_ID, A_ADDR, A_BLOCK, [B_SPEC])
    far = underlay.socket(B_ADDR)

    def source_of_data(size: int) -> tuple[str, int]:
        a.send(packet(size, random.Random(size), gso=False))
        data, _, source = far.inbox.popleft()
        assert frame.decode_header(data, len(data)).type == MessageType.DATA
        return source

    try:
        first = source_of_data(52)  # batched
        assert first[0] == A_ADDR[0] and first != A_ADDR
        assert source_of_data(900) == first  # single, by the same link
        [link] = links_of(a)
        a.sleeve.handle_timer(1.0)  # a heartbeat is due
        a.path.drain_udp()  # sends what the core has for the network
        beat, _, source = far.inbox.popleft()
        assert frame.decode_header(beat, len(beat)).type == MessageType.HEARTBEAT
        assert source == A_ADDR
        a.path.links.sync(set())  # B_ADDR is no longer a peer endpoint
        assert link.fileno() == -1  # closed
        assert source_of_data(52) == A_ADDR  # by the main socket
        a.path.follow_peers()  # B's endpoint is one again
        second = source_of_data(52)
        assert second not in (first, A_ADDR)
        a.sleeve.set_peers([], 2.0)
        a.path.follow_peers()
        assert all(s.fileno() == -1 for s in underlay.bound.values() if s.address == second)
        assert second not in underlay.bound
    finally:
        far.close()
        a.close()


def test_a_relay_carries_data_between_nodes_that_cannot_reach_each_other(
    underlay: FakeUnderlay,
) -> None:
    """A reaches C only through B (C's spec says ``via`` B): B forwards the frame with one hop
    less, C writes the packet; B never sends a frame back to the host it came from."""
    a = Node(
        underlay,
        A_ID,
        A_ADDR,
        A_BLOCK,
        [B_SPEC, PeerSpec(C_ID, "c", C_ADDR, (C_BLOCK,), via=B_ADDR)],
    )
    b = Node(underlay, B_ID, B_ADDR, B_BLOCK, [A_SPEC, C_SPEC])
    c = Node(
        underlay,
        C_ID,
        C_ADDR,
        C_BLOCK,
        [B_SPEC, PeerSpec(A_ID, "a", A_ADDR, (A_BLOCK,), via=B_ADDR)],
    )
    try:
        pkts = [
            packet(60, random.Random(2), "10.32.3.9", gso=False),
            packet(30000, random.Random(3), "10.32.3.9"),
        ]
        a.send(*pkts)
        b.path.drain_udp()
        assert b.tun.take() == [] and b.sleeve.peers[C_ID].counters.relayed >= 2
        c.path.drain_udp()
        assert c.tun.take() == pkts
        b.sleeve.set_peers([A_SPEC, PeerSpec(C_ID, "c", ("192.0.2.1", 6799), (C_BLOCK,))], 1.0)
        a.send(pkts[0])
        b.path.drain_udp()  # C is now behind A's host: a loop
        assert b.sleeve.drops["relay_loop"] == 1
    finally:
        for node in (a, b, c):
            node.close()


async def test_run_establishes_and_carries_packets_over_the_fakes(underlay: FakeUnderlay) -> None:
    """The driver's own loop: readers on the fakes' descriptors, heartbeats on its timer."""
    a = Node(underlay, A_ID, A_ADDR, A_BLOCK, [B_SPEC], interval=0.01)
    b = Node(underlay, B_ID, B_ADDR, B_BLOCK, [A_SPEC], interval=0.01)
    tasks = [asyncio.create_task(n.path.run()) for n in (a, b)]
    try:
        async with asyncio.timeout(5):
            while not (a.sleeve.peers[B_ID].established and b.sleeve.peers[A_ID].established):
                await asyncio.sleep(0.005)
            pkt = packet(30000, random.Random(8))
            a.tun.inject(pkt)
            while not b.tun.written:
                await asyncio.sleep(0.005)
        assert b.tun.take() == [pkt]
        assert [e.kind for e in a.events] == [PeerEventKind.ESTABLISHED]
    finally:
        for t in tasks:
            t.cancel()
        async with asyncio.timeout(5):  # run() ends when cancelled
            await asyncio.gather(*tasks, return_exceptions=True)
        a.close()
        b.close()


def test_fakes_keep_packet_boundaries_and_readiness() -> None:
    tun = FakeTun()
    try:
        assert select.select([tun.fileno()], [], [], 0)[0] == []
        tun.inject(b"x" * 10)
        tun.inject(b"y" * 5)
        assert select.select([tun.fileno()], [], [], 0)[0] == [tun.fileno()]
        buf = bytearray(100)
        assert tun.readv([buf]) == 10
        assert tun.readv([memoryview(buf)[:2], memoryview(buf)[2:]]) == 5
        assert buf[:5] == b"y" * 5
        assert select.select([tun.fileno()], [], [], 0)[0] == []
        with pytest.raises(BlockingIOError):
            tun.readv([buf])
    finally:
        tun.close()
