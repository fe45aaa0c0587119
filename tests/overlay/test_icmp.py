"""ICMP 'fragmentation needed' replies, dissected and checksummed by scapy."""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from overlay import icmp

GATEWAY = socket.inet_aton("10.32.1.1")


def udp_of_size(size: int, df: bool = True) -> bytes:
    pkt = (
        IP(src="10.32.1.5", dst="10.32.7.9", flags="DF" if df else 0)
        / UDP(sport=4000, dport=5000)
        / Raw(b"\xab" * (size - 28))
    )
    data = bytes(pkt)
    assert len(data) == size
    return data


def checksums_valid(reply: bytes) -> None:
    """scapy recomputes both checksums from scratch; they must match what we sent."""
    parsed = IP(reply)
    rebuilt = parsed.copy()
    rebuilt.chksum = None
    rebuilt[ICMP].chksum = None
    rebuilt = IP(bytes(rebuilt))
    assert parsed.chksum == rebuilt.chksum
    assert parsed[ICMP].chksum == rebuilt[ICMP].chksum
    assert bytes(rebuilt) == reply


def test_reply_for_df_oversize_udp() -> None:
    original = udp_of_size(1428)
    reply = icmp.frag_needed(original, 1400, GATEWAY)
    assert reply is not None
    r = IP(reply)
    assert (r.version, r.ihl, r.proto, r.ttl, r.tos) == (4, 5, 1, 64, 0xC0)
    assert r.src == "10.32.1.1"
    assert r.dst == "10.32.1.5"  # back to the sender
    assert r.len == len(reply) == 576  # RFC 1812: as much as fits in 576 bytes
    assert (r[ICMP].type, r[ICMP].code, r[ICMP].nexthopmtu) == (3, 4, 1400)
    assert reply[24:26] == b"\0\0"  # unused half of the rest-of-header word
    checksums_valid(reply)
    quoted = reply[28:]
    assert quoted == original[: 576 - 28]
    q = r[IPerror]
    assert (q.src, q.dst, q.len, q.flags.DF) == ("10.32.1.5", "10.32.7.9", 1428, True)
    assert (q[UDPerror].sport, q[UDPerror].dport) == (4000, 5000)
    assert quoted[:20] == original[:20]


def test_small_oversize_packet_is_quoted_whole() -> None:
    original = udp_of_size(300)
    reply = icmp.frag_needed(original, 296, GATEWAY)
    assert reply is not None
    r = IP(reply)
    assert len(reply) == 20 + 8 + 300
    assert reply[28:] == original
    assert r[IPerror].len == 300
    assert r[ICMP].nexthopmtu == 296
    checksums_valid(reply)


def test_odd_length_quote_checksums() -> None:
    original = udp_of_size(301)
    reply = icmp.frag_needed(original, 300, GATEWAY)
    assert reply is not None and len(reply) == 329
    checksums_valid(reply)


@pytest.mark.parametrize("mtu", [576, 1280, 1400, 8900])
def test_next_hop_mtu_is_the_given_mtu(mtu: int) -> None:
    reply = icmp.frag_needed(udp_of_size(mtu + 1), mtu, GATEWAY)
    assert reply is not None
    assert IP(reply)[ICMP].nexthopmtu == mtu
    checksums_valid(reply)


def test_tcp_with_options_and_echo_request_get_replies() -> None:
    tcp = bytes(
        IP(src="10.32.1.8", dst="10.32.9.9", flags="DF")
        / TCP(sport=1, dport=2, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])
        / Raw(b"t" * 1500)
    )
    reply = icmp.frag_needed(tcp, 1400, GATEWAY)
    assert reply is not None and IP(reply).dst == "10.32.1.8"
    ping = bytes(IP(src="10.32.1.9", dst="10.32.9.9", flags="DF") / ICMP(type=8) / Raw(b"p" * 1500))
    reply = icmp.frag_needed(ping, 1400, GATEWAY)
    assert reply is not None and IP(reply).dst == "10.32.1.9"  # echo is not an error: answered
    checksums_valid(reply)


def test_ip_options_quote_the_whole_header() -> None:
    original = bytes(
        IP(src="10.32.1.5", dst="10.32.7.9", flags="DF", options=[b"\x01\x01\x01\x00"])
        / UDP()
        / Raw(b"o" * 1400)
    )
    assert original[0] & 0x0F == 6
    reply = icmp.frag_needed(original, 1400, GATEWAY)
    assert reply is not None
    assert reply[28:52] == original[:24]
    assert IP(reply)[IPerror].ihl == 6


def test_source_address_is_used_verbatim() -> None:
    reply = icmp.frag_needed(udp_of_size(1500), 1400, socket.inet_aton("192.0.2.254"))
    assert reply is not None
    assert IP(reply).src == "192.0.2.254"


@pytest.mark.parametrize(
    ("packet", "mtu"),
    [
        pytest.param(udp_of_size(1500, df=False), 1400, id="df-clear"),
        pytest.param(udp_of_size(1400), 1400, id="fits-exactly"),
        pytest.param(udp_of_size(600), 1400, id="fits"),
        pytest.param(
            bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(bytes(1500))), 1400, id="ipv6"
        ),
        pytest.param(b"", 1400, id="empty"),
        pytest.param(udp_of_size(1500)[:19], 1400, id="truncated-header"),
        pytest.param(bytes([0x4F]) + udp_of_size(1500)[1:20], 1400, id="truncated-options"),
        pytest.param(bytes([0x44]) + udp_of_size(1500)[1:], 1400, id="ihl-too-small"),
        pytest.param(
            bytes(
                IP(src="10.32.1.5", dst="10.32.7.9", flags="DF")
                / ICMP(type=3, code=1)
                / Raw(bytes(1500))
            ),
            1400,
            id="icmp-unreachable",
        ),
        pytest.param(
            bytes(
                IP(src="10.32.1.5", dst="10.32.7.9", flags="DF") / ICMP(type=11) / Raw(bytes(1500))
            ),
            1400,
            id="icmp-time-exceeded",
        ),
    ],
)
def test_no_reply(packet: bytes, mtu: int) -> None:
    assert icmp.frag_needed(packet, mtu, GATEWAY) is None


def test_one_byte_over_the_mtu_gets_a_reply() -> None:
    assert icmp.frag_needed(udp_of_size(1401), 1400, GATEWAY) is not None


def test_accepts_memoryview_of_a_larger_buffer() -> None:
    original = udp_of_size(1500)
    buf = bytearray(10) + original
    reply = icmp.frag_needed(memoryview(buf)[10:], 1400, GATEWAY)
    assert reply == icmp.frag_needed(original, 1400, GATEWAY)


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x01", b"\xff\xff", b"\x12\x34\x56", bytes(range(256)) * 3]
)
def test_checksum_matches_rfc1071(data: bytes) -> None:
    padded = data + b"\0" * (len(data) % 2)
    total = sum((padded[i] << 8) | padded[i + 1] for i in range(0, len(padded), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    assert icmp.checksum(data) == (~total & 0xFFFF)
    # A buffer with its checksum folded in sums to zero.
    if len(data) % 2 == 0:
        assert icmp.checksum(data + icmp.checksum(data).to_bytes(2, "big")) == 0
