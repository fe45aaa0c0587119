"""The sleeve frame codec: layout, every drop reason, and a differential check against scapy."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from overlay import frame
from overlay.frame import DecodeError, MessageType

OUTER = struct.Struct("!BBBBIQQ")  # the documented layout, written out independently
VNET = struct.Struct("=BBHHHH")
U64 = 2**64 - 1


def raw_header(
    version: int = frame.VERSION,
    msg_type: int = MessageType.DATA,
    flags: int = 0,
    hops: int = 4,
    length: int = 0,
    source: int = 1,
    destination: int = 2,
) -> bytes:
    return OUTER.pack(version, msg_type, flags, hops, length, source, destination)


def datagram(body: bytes = b"", **fields: int) -> bytes:
    fields.setdefault("length", len(body))
    return raw_header(**fields) + body


def decode(data: bytes) -> frame.Header:
    return frame.decode_header(data, len(data))


def records(data: bytes) -> list[tuple[bytes, bytes]]:
    """(virtio-net header, packet) of every record of a DATA datagram."""
    header = decode(data)
    out = []
    for vnet in frame.iter_records(data, header.body_offset, len(data)):
        end = vnet + frame.record_length(data, vnet)
        out.append((data[vnet : vnet + 10], data[vnet + 10 : end]))
    return out


# -- header --------------------------------------------------------------------------------


def test_layout_constants() -> None:
    assert frame.HEADER_SIZE == 24
    assert frame.VNET_HEADER_SIZE == 10
    assert frame.OVERHEAD == 20 + 8 + 24 + 2 + 10
    assert frame.CHUNK_OVERHEAD == 32


def test_named_offsets_point_at_their_fields() -> None:
    """Each offset the data plane uses, checked against fields packed independently."""
    data = OUTER.pack(1, 6, 0, 3, 0x01020304, 11, 12) + struct.pack("!II", 0, 77)
    assert data[frame.TYPE_AT] == 6 and data[frame.HOPS_AT] == 3
    assert struct.unpack_from("!I", data, frame.LENGTH_AT) == (0x01020304,)
    assert struct.unpack_from("!I", data, frame.CHUNK_TOTAL_AT) == (77,)
    assert struct.unpack_from("!Q", data, 8 * frame.CHUNK_WORD) == (77,)  # offset 0, total 77
    pkt = IP(src="10.32.1.5", dst="10.32.2.9", flags="DF") / UDP() / Raw(b"x")
    vnet = VNET.pack(0, 4, 0, 0, 0, 0)
    rec = record(bytes(pkt), vnet)
    assert rec[frame.RECORD_VNET : frame.RECORD_IP] == vnet
    assert rec[frame.RECORD_VNET + frame.VNET_GSO_TYPE_AT] == 4
    ip = rec[frame.RECORD_IP :]
    assert ip[frame.IPV4_FLAGS_AT] & frame.IPV4_DF
    assert frame.ADDRESS.unpack_from(ip, frame.IPV4_DST_AT) == (0x0A200209,)


ACCEPTED = [t for t in MessageType if t in frame.ACCEPTED]


@pytest.mark.parametrize("msg_type", ACCEPTED)
@pytest.mark.parametrize(
    ("source", "destination", "hops"), [(0, 0, 0), (1, 2, 4), (U64, U64 - 1, 255)]
)
def test_header_round_trip(msg_type: MessageType, source: int, destination: int, hops: int) -> None:
    body = bytes(range(37))
    buf = bytearray(frame.HEADER_SIZE + len(body))
    buf[frame.HEADER_SIZE :] = body
    frame.encode_header(buf, msg_type, len(body), source, destination, hops=hops)
    assert OUTER.unpack_from(buf) == (1, msg_type, 0, hops, len(body), source, destination)
    h = frame.decode_header(buf, len(buf))
    assert h == frame.Header(msg_type, 0, hops, len(body), source, destination, 24)
    assert bytes(buf[h.body_offset :]) == body


def test_decode_header_uses_size_not_buffer_length() -> None:
    """The receive buffer is larger than the datagram: only ``size`` bytes count."""
    data = datagram(b"abcd", msg_type=MessageType.HEARTBEAT_ACK)
    buf = bytearray(2048)
    buf[: len(data)] = data
    assert frame.decode_header(buf, len(data)).length == 4
    with pytest.raises(DecodeError) as exc:
        frame.decode_header(buf, len(data) + 1)
    assert exc.value.reason == "length"


def test_sealed_header_names_where_its_body_starts() -> None:
    """A sealed frame's length counts its body only: the extension and the tag are beyond."""
    data = datagram(bytes(12) + b"body" + bytes(16), flags=frame.FLAG_AEAD, length=4)
    h = decode(data)
    assert (h.flags, h.length, h.body_offset) == (frame.FLAG_AEAD, 4, frame.SEALED_BODY_AT)
    assert bytes(data[h.body_offset : h.body_offset + h.length]) == b"body"


def test_a_sealed_trains_chunk_is_framed_like_any_chunk() -> None:
    """Its length counts the chunk fields and slice; only the reassembled whole is sealed."""
    body = frame.CHUNK.pack(0, 100) + bytes(40)
    data = datagram(body, msg_type=MessageType.DATA_CHUNK, flags=frame.FLAG_AEAD)
    h = decode(data)
    assert (h.flags, h.length, h.body_offset) == (frame.FLAG_AEAD, len(body), frame.HEADER_SIZE)
    assert frame.decode_chunk(data, h) == (0, 100)


# -- every drop reason -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (raw_header()[:23], "short"),
        (datagram(version=0), "version"),
        (datagram(version=2), "version"),
        (datagram(flags=0x02), "flags"),
        (datagram(flags=0x80 | frame.FLAG_AEAD), "flags"),
        (datagram(flags=frame.FLAG_AEAD), "length"),  # no room for extension and tag
        (datagram(bytes(28), flags=frame.FLAG_AEAD, length=29), "length"),
        (datagram(msg_type=0), "type"),
        (datagram(msg_type=MessageType.MTU_PROBE), "type"),  # reserved: never accepted
        (datagram(msg_type=MessageType.MTU_PROBE_ACK), "type"),
        (datagram(msg_type=max(MessageType) + 1), "type"),
        (datagram(msg_type=255), "type"),
        (datagram(b"xyz", length=2), "length"),
        (datagram(b"xyz", length=4), "length"),
        (datagram(b"", length=0xFFFFFFFF), "length"),
    ],
)
def test_decode_header_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(data)
    assert exc.value.reason == reason
    assert str(exc.value) == reason


def test_short_wins_over_garbage() -> None:
    with pytest.raises(DecodeError) as exc:
        decode(b"\xff" * 23)
    assert exc.value.reason == "short"


def record(packet: bytes, vnet: bytes = bytes(10)) -> bytes:
    return struct.pack("!H", len(packet)) + vnet + packet


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",  # less than a record header
        bytes(11),  # record header + 9 of the 10 vnet bytes
        struct.pack("!H", 0) + bytes(10),  # empty packet
        struct.pack("!H", 5) + bytes(10) + b"abcd",  # packet runs past the end
        record(b"good") + b"\x00\x01",  # trailing garbage after a good record
    ],
)
def test_iter_records_reason_record(body: bytes) -> None:
    data = datagram(body)
    with pytest.raises(DecodeError) as exc:
        records(data)
    assert exc.value.reason == "record"


def test_iter_records_yields_good_records_before_the_bad_one() -> None:
    data = datagram(record(b"one") + record(b"second") + struct.pack("!H", 99) + bytes(10))
    header = decode(data)
    seen = []
    with pytest.raises(DecodeError):
        for vnet in frame.iter_records(data, header.body_offset, len(data)):
            seen.append(data[vnet + 10 : vnet + frame.record_length(data, vnet)])
    assert seen == [b"one", b"second"]


def test_iter_records_respects_end() -> None:
    """Bytes after ``end`` (stale buffer contents) are never parsed."""
    data = datagram(record(b"abc"))
    buf = bytearray(data) + record(b"stale")
    assert list(frame.iter_records(buf, 24, len(data))) == [26]


def test_empty_data_body_has_no_records() -> None:
    assert records(datagram(b"")) == []


@pytest.mark.parametrize(
    ("msg_type", "body", "decoder", "reason"),
    [
        (MessageType.HEARTBEAT, bytes(15), frame.decode_heartbeat, "heartbeat"),
        (MessageType.HEARTBEAT_ACK, b"", frame.decode_heartbeat, "heartbeat"),
    ],
)
def test_control_body_too_short(
    msg_type: MessageType, body: bytes, decoder: Callable[..., object], reason: str
) -> None:
    data = datagram(body, msg_type=msg_type)
    with pytest.raises(DecodeError) as exc:
        decoder(data, decode(data))
    assert exc.value.reason == reason


# -- DATA records ----------------------------------------------------------------------------


def test_multi_record_round_trip() -> None:
    packets = [
        VNET.pack(0, 0, 0, 0, 0, 0) + b"\x45" + bytes(19),
        VNET.pack(1, 1, 54, 1448, 34, 16) + bytes(range(256)) * 8,
        VNET.pack(0, 0, 0, 0, 0, 0) + b"x",
    ]
    data = frame.encode_data(7, 9, packets)
    h = decode(data)
    assert (h.type, h.source, h.destination, h.hops) == (MessageType.DATA, 7, 9, 4)
    assert h.length == sum(2 + len(p) for p in packets) == len(data) - 24
    offsets = list(frame.iter_records(data, h.body_offset, len(data)))
    assert offsets == [26, 26 + 30 + 2, 26 + 30 + 2 + 10 + 2048 + 2]
    assert [frame.record_length(data, o) for o in offsets] == [len(p) for p in packets]
    assert [v + p for v, p in records(data)] == packets


def test_record_length_reads_the_prefix() -> None:
    data = bytearray(record(b"z" * 300))
    assert frame.record_length(data, 2) == 310
    struct.pack_into("!H", data, 0, 1)
    assert frame.record_length(data, 2) == 11


def test_encode_data_largest_record_length_field() -> None:
    data = frame.encode_data(1, 2, [bytes(10) + b"\x45" * frame.MAX_RECORD_PACKET])
    assert len(data) == frame.MAX_DATAGRAM
    assert struct.unpack_from("!H", data, 24) == (frame.MAX_RECORD_PACKET,)
    assert [len(p) for _, p in records(data)] == [frame.MAX_RECORD_PACKET]


@pytest.mark.parametrize("size", [0, 1, 10, 10 + frame.MAX_PACKET + 1, 10 + 70000])
def test_encode_data_rejects_empty_and_oversize(size: int) -> None:
    with pytest.raises(ValueError, match=f"{size} bytes"):
        frame.encode_data(1, 2, [bytes(size)])


def test_encode_data_rejects_a_bad_packet_among_good_ones() -> None:
    with pytest.raises(ValueError):
        frame.encode_data(1, 2, [bytes(30), bytes(10), bytes(30)])


def test_encode_data_never_returns_an_unsendable_datagram() -> None:
    packet = bytes(10) + bytes(frame.MAX_RECORD_PACKET + 1)
    try:
        data = frame.encode_data(1, 2, [packet])
    except ValueError:
        return
    assert len(data) <= frame.MAX_DATAGRAM


def test_encode_data_fills_max_datagram_exactly() -> None:
    data = frame.encode_data(1, 2, [bytes(10) + bytes(frame.MAX_RECORD_PACKET)])
    assert len(data) == frame.MAX_DATAGRAM


# -- control messages ------------------------------------------------------------------------


@pytest.mark.parametrize("msg_type", [MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK])
def test_heartbeat_round_trip(msg_type: MessageType) -> None:
    data = frame.encode_heartbeat(msg_type, 5, 6, U64, 0x1234567890ABCDEF)
    assert len(data) == 24 + 16
    h = decode(data)
    assert (h.type, h.source, h.destination, h.length) == (msg_type, 5, 6, 16)
    assert frame.decode_heartbeat(data, h) == (U64, 0x1234567890ABCDEF)
    assert data[24:] == struct.pack("!QQ", U64, 0x1234567890ABCDEF)


def test_chunk_without_a_slice() -> None:
    """A DATA_CHUNK body of only the chunk fields is refused."""
    data = datagram(bytes(frame.CHUNK.size), msg_type=MessageType.DATA_CHUNK)
    with pytest.raises(DecodeError) as exc:
        frame.decode_chunk(data, decode(data))
    assert exc.value.reason == "chunk"


# -- robustness ------------------------------------------------------------------------------


def _consume(data: bytes) -> None:
    """What the receive path does with a datagram; only DecodeError may escape."""
    h = decode(data)
    if h.flags and h.type != MessageType.DATA_CHUNK:
        return  # sealed: only a relay reads its header, overlay/seal.py opens it
    if h.type == MessageType.DATA:
        for vnet in frame.iter_records(data, h.body_offset, len(data)):
            assert vnet + frame.record_length(data, vnet) <= len(data)
    elif h.type in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK):
        frame.decode_heartbeat(data, h)
    else:
        frame.decode_chunk(data, h)


@st.composite
def plausible_datagrams(draw: st.DrawFn) -> bytes:
    """Mostly well-formed headers (so the body parsers get exercised) with random bodies."""
    body = draw(st.binary(max_size=200))
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFFFFFF)))
    return (
        OUTER.pack(
            draw(st.sampled_from([1, 1, 1, 0, 2])),
            draw(st.integers(0, 7)),
            draw(st.sampled_from([0, 0, 0, 1, 2])),
            draw(st.integers(0, 255)),
            length,
            draw(st.integers(0, U64)),
            draw(st.integers(0, U64)),
        )
        + body
    )


@st.composite
def data_with_records(draw: st.DrawFn) -> bytes:
    body = b"".join(
        struct.pack("!H", draw(st.integers(0, 40))) + draw(st.binary(min_size=0, max_size=40))
        for _ in range(draw(st.integers(0, 5)))
    )
    return datagram(body)


@given(st.one_of(st.binary(max_size=300), plausible_datagrams(), data_with_records()))
def test_random_input_raises_only_decode_error(data: bytes) -> None:
    try:
        _consume(data)
    except DecodeError as exc:
        assert exc.reason in {
            "short",
            "version",
            "flags",
            "encrypted",
            "type",
            "length",
            "record",
            "heartbeat",
            "chunk",
        }


@given(st.lists(st.binary(min_size=11, max_size=300), max_size=8), st.integers(0, U64))
def test_encode_data_round_trip_property(packets: list[bytes], peer: int) -> None:
    data = frame.encode_data(peer, U64 - peer, packets)
    h = decode(data)
    assert (h.source, h.destination) == (peer, U64 - peer)
    assert [v + p for v, p in records(data)] == packets


# -- differential: scapy builds the inner packets and dissects what comes back ----------------


def tcp_packet() -> tuple[bytes, bytes]:
    payload = b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n" * 40
    pkt = (
        IP(src="10.32.1.5", dst="10.32.2.9", flags="DF", id=4242)
        / TCP(sport=40000, dport=8080, seq=123456, ack=654321, flags="PA")
        / Raw(payload)
    )
    # A TSO super-packet: NEEDS_CSUM, GSO_TCPV4, hdr_len 52, gso_size 1448, csum at 34+16.
    return VNET.pack(1, 1, 52, 1448, 34, 16), bytes(pkt)


def udp_packet() -> tuple[bytes, bytes]:
    pkt = IP(src="10.32.1.6", dst="10.32.3.1", ttl=17) / UDP(sport=5353, dport=53) / Raw(b"q" * 33)
    return VNET.pack(0, 0, 0, 0, 0, 0), bytes(pkt)


def icmp_packet() -> tuple[bytes, bytes]:
    pkt = IP(src="10.32.1.7", dst="10.32.4.4") / ICMP(type=8, id=0x77, seq=3) / Raw(b"ping" * 14)
    return VNET.pack(0, 0, 0, 0, 0, 0), bytes(pkt)


def test_scapy_round_trip_multi_record() -> None:
    inner = [tcp_packet(), udp_packet(), icmp_packet()]
    data = frame.encode_data(0xAABBCCDDEEFF, 0x112233445566, [v + p for v, p in inner])

    # Outer layout decoded by hand, not with the module under test.
    version, msg_type, flags, hops, length, src, dst = OUTER.unpack_from(data)
    assert (version, msg_type, flags, hops) == (1, 1, 0, frame.DEFAULT_HOPS)
    assert length == len(data) - 24
    assert (src, dst) == (0xAABBCCDDEEFF, 0x112233445566)
    pos = 24
    for vnet, pkt in inner:
        (plen,) = struct.unpack_from("!H", data, pos)
        assert plen == len(pkt)
        assert data[pos + 2 : pos + 12] == vnet
        assert data[pos + 12 : pos + 12 + plen] == pkt
        pos += 12 + plen
    assert pos == len(data)

    got = records(data)
    assert [v for v, _ in got] == [v for v, _ in inner]
    assert VNET.unpack(got[0][0]) == (1, 1, 52, 1448, 34, 16)

    tcp = IP(got[0][1])
    assert (tcp.src, tcp.dst, tcp.flags.DF, tcp.id) == ("10.32.1.5", "10.32.2.9", True, 4242)
    assert (tcp[TCP].sport, tcp[TCP].dport, tcp[TCP].seq, tcp[TCP].ack) == (
        40000,
        8080,
        123456,
        654321,
    )
    assert str(tcp[TCP].flags) == "PA"
    assert tcp[Raw].load == b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n" * 40

    udp = IP(got[1][1])
    assert (udp.src, udp.dst, udp.ttl) == ("10.32.1.6", "10.32.3.1", 17)
    assert (udp[UDP].sport, udp[UDP].dport, udp[UDP].len) == (5353, 53, 8 + 33)
    assert udp[Raw].load == b"q" * 33

    icmp = IP(got[2][1])
    assert (icmp.src, icmp.dst, icmp.proto) == ("10.32.1.7", "10.32.4.4", 1)
    assert (icmp[ICMP].type, icmp[ICMP].id, icmp[ICMP].seq) == (8, 0x77, 3)
    assert icmp[Raw].load == b"ping" * 14

    # Checksums survive untouched: scapy recomputes the same values.
    for _, pkt in got:
        again = IP(pkt)
        del again.chksum
        assert bytes(again) == pkt


@pytest.mark.parametrize("build", [tcp_packet, udp_packet, icmp_packet])
def test_scapy_round_trip_single(build: Callable[[], tuple[bytes, bytes]]) -> None:
    vnet, pkt = build()
    data = frame.encode_data(1, 2, [vnet + pkt])
    assert len(data) == 24 + 2 + 10 + len(pkt)
    [(got_vnet, got_pkt)] = records(data)
    assert got_vnet == vnet
    assert IP(got_pkt) == IP(pkt)
    assert IP(got_pkt).len == len(pkt)
