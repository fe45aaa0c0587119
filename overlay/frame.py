"""Sleeve wire format: one UDP datagram carries one frame. Every offset the data plane reads or
writes is named here; the drivers and the forwarding core use these names, never numbers.

Layout (network byte order)::

    0   u8   version            VERSION; anything else is dropped as "version"
    1   u8   type               MessageType (append-only: the numbers are the protocol)
    2   u8   flags              FLAG_AEAD: an AEAD extension follows and a tag ends the frame
    3   u8   hops               hops left before a relaying peer must drop the frame
    4   u32  length             bytes of body after the header (and extension), tag excluded
    8   u64  source peer id
    16  u64  destination peer id
   [24  u32  key id, u64 counter nonce]            only with FLAG_AEAD
    body
   [16-byte AEAD tag]                               only with FLAG_AEAD

A DATA body is a sequence of records, each ``u16 packet length`` followed by the 10-byte
virtio-net header and the packet exactly as the TUN device returned them. Records are never
split across datagrams; a TSO super-packet travels as one record in one (IP-fragmented) datagram.

A super-packet whose frame would not fit one underlay packet may instead travel as a *train* of
DATA_CHUNK frames, sent together with one ``sendmsg`` + ``UDP_SEGMENT`` (GSO) so the kernel
moves them as one unit: each chunk's body is ``u32 offset, u32 total`` and a slice of what would
have been the DATA body; ``total`` is set in the chunk at offset 0 only (zero in the others, so
every header but two is the same for every train and is prebuilt: overlay/train.py). Chunks of
one body are sent in order; a receiver that reads a whole train coalesced (``UDP_GRO``) checks
it with a few word compares (overlay/train.py), else appends the chunks per source
(overlay/reassembly.py). A sealed super-packet's train has FLAG_AEAD in every chunk header and
its slices carry what follows the sealed DATA frame's header (extension, ciphertext, tag): the
chunk fields are framing, not authenticated; the reassembled frame is (overlay/seal.py).

HEARTBEAT and HEARTBEAT_ACK bodies are ``u64 sequence, u64 sender uid``. The sender puts a
random token in ``sequence`` and the acknowledgement echoes it unchanged (overlay/sleeve.py).

Every decoder turns malformed input into one DecodeError whose ``reason`` is a short
counter label; nothing else escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum
from typing import NamedTuple

Buffer = bytes | bytearray | memoryview  # what the codecs and drivers accept
VERSION = 1
DEFAULT_HOPS = 4
FLAG_AEAD = 0x01
KNOWN_FLAGS = FLAG_AEAD

# The frame header, offsets from the start of the datagram.
HEADER = struct.Struct("!BBBBIQQ")
HEADER_SIZE = HEADER.size  # 24
TYPE_AT, HOPS_AT, LENGTH_AT = 1, 3, 4
AEAD_EXTENSION = struct.Struct("!IQ")
AEAD_TAG_SIZE = 16
SEALED_BODY_AT = HEADER_SIZE + AEAD_EXTENSION.size  # 36: where a sealed frame's body starts
SEALED_OVERHEAD = SEALED_BODY_AT + AEAD_TAG_SIZE  # 52: a sealed frame's bytes beyond its body

# A DATA record, offsets from the record's start; the inner IPv4 header, from the packet's.
RECORD = struct.Struct("!H")
RECORD_SIZE = RECORD.size  # 2
VNET_HEADER = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
VNET_HEADER_SIZE = VNET_HEADER.size  # 10
RECORD_VNET = RECORD_SIZE  # where the virtio-net header starts
RECORD_IP = RECORD_VNET + VNET_HEADER_SIZE  # where the IP packet starts
VNET_GSO_TYPE_AT = 1  # 0: not a GSO super-packet
IPV4_MIN = 20
IPV4_FLAGS_AT = 6
IPV4_DF = 0x40  # "don't fragment", in the byte at IPV4_FLAGS_AT
IPV4_SRC_AT = 12
IPV4_DST_AT = 16
ADDRESS = struct.Struct("!I")  # an IPv4 address as an int
ADDRESSES = struct.Struct("!II")  # source and destination, from IPV4_SRC_AT

# A DATA_CHUNK frame: the header, then ``u32 offset, u32 total``, then the slice.
CHUNK = struct.Struct("!II")
CHUNK_FRAME = struct.Struct("!BBBBIQQII")  # header + chunk fields, packed in one go
CHUNK_OVERHEAD = CHUNK_FRAME.size  # 32
CHUNK_TOTAL_AT = HEADER_SIZE + 4
CHUNK_WORD = HEADER_SIZE // 8  # the (offset, total) pair as the chunk's 8-byte word
U32 = struct.Struct("!I")

HEARTBEAT = struct.Struct("!QQ")
MAX_PACKET = 0xFFFF
MAX_BODY = RECORD_SIZE + VNET_HEADER_SIZE + MAX_PACKET
UNDERLAY_HEADERS = 20 + 8  # outer IPv4 + UDP
OVERHEAD = UNDERLAY_HEADERS + HEADER_SIZE + RECORD_SIZE + VNET_HEADER_SIZE  # 64 bytes
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4
MAX_RECORD_PACKET = MAX_DATAGRAM - HEADER_SIZE - RECORD_SIZE - VNET_HEADER_SIZE


class MessageType(IntEnum):
    """Frame types. Append-only: the numbers are the protocol, and a retired number stays
    reserved so it can never mean something else to an older peer."""

    DATA = 1
    HEARTBEAT = 2
    HEARTBEAT_ACK = 3
    MTU_PROBE = 4  # reserved, never sent: a received one is dropped as "type"
    MTU_PROBE_ACK = 5  # reserved, likewise
    DATA_CHUNK = 6


ACCEPTED = frozenset(
    int(t) for t in (MessageType.DATA, MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK,
                     MessageType.DATA_CHUNK)
)  # fmt: skip
DATA = int(MessageType.DATA)  # plain ints: hot path
DATA_CHUNK = int(MessageType.DATA_CHUNK)


class DecodeError(Exception):
    """A datagram we cannot accept; ``reason`` is the drop counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Header(NamedTuple):  # a tuple: built per datagram, so it must be cheap
    """A checked frame header (decode_header)."""

    type: int
    flags: int
    hops: int
    length: int
    source: int
    destination: int
    body_offset: int


def encode_header(
    buf: bytearray | memoryview,
    msg_type: int,
    length: int,
    source: int,
    destination: int,
    hops: int = DEFAULT_HOPS,
) -> None:
    """Write a plaintext header into the first HEADER_SIZE bytes of ``buf``."""
    HEADER.pack_into(buf, 0, VERSION, msg_type, 0, hops, length, source, destination)


def decode_header(data: Buffer, size: int) -> Header:
    """Check the header of a received datagram of ``size`` bytes held in ``data``."""
    if size < HEADER_SIZE:
        raise DecodeError("short")
    version, msg_type, flags, hops, length, source, destination = HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError("version")
    if flags & ~KNOWN_FLAGS:
        raise DecodeError("flags")
    if msg_type not in ACCEPTED:
        raise DecodeError("type")
    if flags & FLAG_AEAD and msg_type != DATA_CHUNK:  # sealed: overlay/seal.py opens it
        if length != size - SEALED_OVERHEAD:
            raise DecodeError("length")
        return Header(msg_type, flags, hops, length, source, destination, SEALED_BODY_AT)
    if length != size - HEADER_SIZE:
        raise DecodeError("length")
    return Header(msg_type, flags, hops, length, source, destination, HEADER_SIZE)


def iter_records(data: Buffer, start: int, end: int) -> Iterator[int]:
    """Yield the offset of each record's virtio-net header; its packet follows it.

    The record's packet length is read back with ``record_length``. Raises DecodeError on the
    first record that does not fit, after yielding the good ones before it.
    """
    pos = start
    while pos < end:
        stop = record_end(data, pos, end)
        yield pos + RECORD_VNET
        pos = stop


def record_end(data: Buffer, pos: int, end: int) -> int:
    """Where the record starting at ``pos`` ends; DecodeError unless it fits before ``end``
    and holds a packet. The hot path walks a body with this, no generator."""
    if end - pos < RECORD_IP:
        raise DecodeError("record")
    stop = pos + RECORD_IP + ((data[pos] << 8) | data[pos + 1])
    if stop > end or stop == pos + RECORD_IP:
        raise DecodeError("record")
    return stop


def record_length(data: Buffer, vnet_offset: int) -> int:
    """Length of vnet header + packet for the record whose vnet header is at ``vnet_offset``."""
    (plen,) = RECORD.unpack_from(data, vnet_offset - RECORD_VNET)
    return int(VNET_HEADER_SIZE + plen)


def encode_data(source: int, destination: int, packets: list[bytes]) -> bytes:
    """A whole DATA datagram; each packet is virtio-net header + IP packet. Not the hot path."""
    body = bytearray()
    for p in packets:
        if len(p) <= VNET_HEADER_SIZE or len(p) - VNET_HEADER_SIZE > MAX_PACKET:
            raise ValueError(f"packet of {len(p)} bytes cannot be framed")
        body += RECORD.pack(len(p) - VNET_HEADER_SIZE)
        body += p
    if HEADER_SIZE + len(body) > MAX_DATAGRAM:
        raise ValueError(f"{len(body)} bytes of records do not fit one UDP datagram")
    out = bytearray(HEADER_SIZE)
    encode_header(out, MessageType.DATA, len(body), source, destination)
    return bytes(out + body)


def encode_heartbeat(
    msg_type: MessageType, source: int, destination: int, sequence: int, uid: int
) -> bytes:
    """A HEARTBEAT or HEARTBEAT_ACK datagram."""
    out = bytearray(HEADER_SIZE + HEARTBEAT.size)
    encode_header(out, msg_type, HEARTBEAT.size, source, destination)
    HEARTBEAT.pack_into(out, HEADER_SIZE, sequence, uid)
    return bytes(out)


def decode_heartbeat(data: Buffer, header: Header) -> tuple[int, int]:
    """(sequence, sender uid) of a HEARTBEAT or HEARTBEAT_ACK."""
    if header.length < HEARTBEAT.size:
        raise DecodeError("heartbeat")
    sequence, uid = HEARTBEAT.unpack_from(data, header.body_offset)
    return int(sequence), int(uid)


def decode_chunk(data: Buffer, header: Header) -> tuple[int, int]:
    """(offset, total) of a DATA_CHUNK (total 0 unless offset is 0); the slice follows."""
    if header.length <= CHUNK.size:
        raise DecodeError("chunk")
    offset, total = CHUNK.unpack_from(data, header.body_offset)
    if offset == 0:
        if total > MAX_BODY or header.length - CHUNK.size > total:
            raise DecodeError("chunk")
    elif total != 0 or offset >= MAX_BODY:
        raise DecodeError("chunk")
    return int(offset), int(total)
