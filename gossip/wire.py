"""Control-connection wire format: what travels over the TCP connection between two peers.

Layout (network byte order)::

    preamble, once per direction, sent by both sides at once:
        0   4s   MAGIC              b"WPYG"; anything else is a "preamble" error
        4   u8   min version        lowest protocol version the sender speaks
        5   u8   max version        highest; min <= max, else a "preamble" error
    then messages, back to back:
        0   u32  length             bytes of body that follow; at most the decoder's limit
        4        body               one msgpack map: {"t": MessageType, field: value, ...}

The preamble is handled by ``Preamble`` (encode/decode exactly PREAMBLE_SIZE bytes) and
``negotiate``, not by the ``Decoder``: the handshake must agree on a version before it knows how
to read what follows. ``Decoder`` reads only messages.

Rules this module keeps:

- ``MessageType`` is append-only: the numbers are the protocol. Numbers in ``RESERVED`` are
  taken and never reused, though no message of theirs is defined. A decoded message of a type
  we do not know (a reserved one included) is returned with its plain ``int`` type, for the
  caller to skip.
- Fields we do not know are kept in the returned dict; users read only the fields they know.
  Field values are plain msgpack data (str, bytes, int, float, bool, None, list, map).
- A declared length above the limit is rejected as soon as its 4-byte prefix has arrived,
  before any of the body is waited for.
- Every malformed input becomes one ``DecodeError`` whose ``reason`` is a short counter label
  ("too_large", "msgpack", "not_a_map", "no_type", "preamble"); nothing else escapes. After
  one, the decoder refuses all further input with the same error: the connection is dead.
- ``encode`` refuses (ValueError) to build a message the default decoder would reject: a
  sender that has that much to say must split it.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

MAGIC = b"WPYG"
PROTOCOL_MIN = 1
PROTOCOL_MAX = 1
PREAMBLE = struct.Struct("!4sBB")
PREAMBLE_SIZE = PREAMBLE.size  # 6
LENGTH = struct.Struct("!I")
LENGTH_SIZE = LENGTH.size  # 4
MAX_MESSAGE = 4 * 1024 * 1024  # default body limit: a full topology of a few thousand peers
TYPE_KEY = "t"

VersionRange = tuple[int, int]


class MessageType(IntEnum):
    """The type of a control message, its ``"t"`` field; new types take numbers above 11."""

    HELLO = 1  # identity, endpoints and features; first message each way
    REFUSE = 2  # "reason": why the sender closes the connection during the handshake
    TOPOLOGY = 3  # "records": full state or a delta, a list of peer records
    DIGEST = 4  # "digest": name -> [incarnation, version], for anti-entropy
    REQUEST = 5  # "names": records the sender wants in full
    GOODBYE = 6  # clean departure: the sender is shutting down
    KEEPALIVE = 9  # nothing else to say; sent to peers whose HELLO lists the "keepalive" feature
    CONFIRM = 10  # with a secret: the HMAC over the handshake's transcript (gossip/handshake.py)
    SEALED = 11  # with a secret: a sealed piece of the control stream (gossip/session.py)


RESERVED = frozenset({7, 8})  # taken numbers with no message defined: never reuse them


Message = tuple[MessageType | int, dict[Any, Any]]


class DecodeError(Exception):
    """Input we cannot accept; ``reason`` is the counter label, ``detail`` says more for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Preamble(NamedTuple):
    """The first bytes each way: the magic and the protocol versions the sender speaks."""

    min_version: int
    max_version: int

    def encode(self) -> bytes:
        """The PREAMBLE_SIZE bytes to send."""
        return PREAMBLE.pack(MAGIC, self.min_version, self.max_version)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Preamble:
        """Check exactly PREAMBLE_SIZE bytes received from the peer."""
        if len(data) != PREAMBLE_SIZE:
            raise DecodeError("preamble", f"{len(data)} bytes, expected {PREAMBLE_SIZE}")
        magic, low, high = PREAMBLE.unpack(data)
        if magic != MAGIC:
            raise DecodeError("preamble", f"bad magic {bytes(magic)!r}")
        if low > high:
            raise DecodeError("preamble", f"empty version range {low}..{high}")
        return cls(low, high)


OUR_VERSIONS = Preamble(PROTOCOL_MIN, PROTOCOL_MAX)


def negotiate(ours: VersionRange, theirs: VersionRange) -> int | None:
    """The highest protocol version both ranges contain, or None when they do not overlap."""
    best = min(ours[1], theirs[1])
    return best if best >= max(ours[0], theirs[0]) else None


def encode(msg_type: int, **fields: Any) -> bytes:
    """One message, length prefix included. Field values must be plain msgpack data."""
    if TYPE_KEY in fields:
        raise ValueError(f"field {TYPE_KEY!r} is reserved for the message type")
    body = msgpack.packb({TYPE_KEY: int(msg_type), **fields}, use_bin_type=True)
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes exceeds MAX_MESSAGE ({MAX_MESSAGE})")
    return LENGTH.pack(len(body)) + body


def encode_list(msg_type: int, key: str, packed: list[bytes]) -> bytes:
    """A message ``{"t": msg_type, key: [...]}`` whose list items are already msgpack-packed
    (each packed once and sent many times, as topology records are)."""
    if len(packed) < 16:
        head = bytes([0x90 | len(packed)])
    elif len(packed) < 1 << 16:
        head = b"\xdc" + struct.pack("!H", len(packed))
    else:
        head = b"\xdd" + struct.pack("!I", len(packed))
    prefix = msgpack.packb({TYPE_KEY: int(msg_type)}, use_bin_type=True)
    body = bytes([prefix[0] + 1]) + prefix[1:] + msgpack.packb(key) + head + b"".join(packed)
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes exceeds MAX_MESSAGE ({MAX_MESSAGE})")
    return LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """The type and fields (``"t"`` removed) of one message body."""
    try:
        # unpackb bounds every str/bin/array/map length by len(body).
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, OverflowError) as e:  # TypeError: unhashable map key
        raise DecodeError("msgpack", type(e).__name__) from None
    if not isinstance(fields, dict):
        raise DecodeError("not_a_map", type(fields).__name__)
    msg_type = fields.pop(TYPE_KEY, None)
    if type(msg_type) is not int:  # bool is an int subclass: excluded
        raise DecodeError("no_type", type(msg_type).__name__)
    return (MessageType(msg_type) if msg_type in _KNOWN else msg_type), fields


_KNOWN = frozenset(int(t) for t in MessageType)


class Decoder:
    """Sans-IO message decoder for one direction of one connection (after the preamble)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        if max_message < 1:
            raise ValueError(f"max_message must be positive, not {max_message}")
        self.max_message = max_message
        self._buffer = bytearray()
        self._error: DecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Buffer ``data``; return every message it completes, in order."""
        if self._error is not None:
            raise DecodeError(self._error.reason, self._error.detail)
        self._buffer += data
        messages: list[Message] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except DecodeError as e:
            self._error = e
            self._buffer.clear()
            raise
        return messages

    def _next(self) -> Message | None:
        if len(self._buffer) < LENGTH_SIZE:
            return None
        (length,) = LENGTH.unpack_from(self._buffer, 0)
        if length > self.max_message:
            raise DecodeError("too_large", f"declared {length} bytes, limit {self.max_message}")
        end = LENGTH_SIZE + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[LENGTH_SIZE:end])
        del self._buffer[:end]
        return decode_body(body)
