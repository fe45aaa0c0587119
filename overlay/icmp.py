"""ICMPv4 'fragmentation needed' (type 3, code 4), built for packets the sleeve cannot carry.

Only on the error path: the checksum here is plain Python over at most 576 bytes.
"""

from __future__ import annotations

import struct

IPV4 = struct.Struct("!BBHHHBBH4s4s")
ICMP_UNREACH = struct.Struct("!BBHHH")
DF = 0x4000
PROTO_ICMP = 1
MAX_QUOTE = 576 - 20 - 8  # RFC 1812: quote as much as fits in a 576-byte reply


def checksum(data: bytes | bytearray) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frag_needed(packet: bytes | bytearray | memoryview, mtu: int, source: bytes) -> bytes | None:
    """The ICMP reply for ``packet`` (an IPv4 packet) if it has DF set and exceeds ``mtu``.

    ``source`` is the 4-byte address the reply comes from (this node's gateway address).
    Returns None when no reply is due: not IPv4, DF clear, fits, or itself an ICMP error.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    flags = int.from_bytes(packet[6:8], "big")
    if not flags & DF or total <= mtu or ihl < 20 or len(packet) < ihl:
        return None
    if packet[9] == PROTO_ICMP and len(packet) > ihl and packet[ihl] in (3, 4, 5, 11, 12):
        return None  # never answer an ICMP error with another
    quote = bytes(packet[: min(len(packet), MAX_QUOTE)])
    body = bytearray(ICMP_UNREACH.pack(3, 4, 0, 0, mtu) + quote)
    struct.pack_into("!H", body, 2, checksum(body))
    header = bytearray(
        IPV4.pack(0x45, 0xC0, 20 + len(body), 0, 0, 64, PROTO_ICMP, 0, source, bytes(packet[12:16]))
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header + body)
