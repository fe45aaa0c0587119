"""The sealed control stream: after a handshake with a secret, messages travel sealed.

Layout: each SEALED message is an ordinary wire message (gossip/wire.py), so the handshake's
decoder reads it like any other::

    {"t": SEALED, "c": bin}    c = AES-256-GCM(key of the direction, nonce, plain)
        nonce   12 bytes: 4 zero bytes, then the direction's counter as a u64, from 0
        plain   a piece of the plain stream: wire messages (length-prefixed) back to back

Rules this module keeps:

- Each direction has its own key, derived from the session's key by its role, and its own
  counter; a message sealed for one direction never opens in the other.
- Sealed messages open only in the order they were sealed, each once: TCP keeps order, so a
  replayed, dropped, reordered or altered message fails to open, and so does every one after.
- Anything but a SEALED message, or one that does not open, is one ``DecodeError`` ("unsealed",
  "sealed"); the stream is dead after it, as a plain ``Decoder``'s is.
- Pieces of the plain stream need not end on a message boundary: the plain ``Decoder`` inside
  reassembles them, with its own size limit.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gossip.secret import derive
from gossip.wire import MAX_MESSAGE, DecodeError, Decoder, Message, MessageType, encode

SEALED = MessageType.SEALED
FEATURE = "sealed"  # the HELLO feature of peers that seal their control stream
PIECE = 64 * 1024  # most plain bytes in one SEALED message
TAG_SIZE = 16
NONCE = struct.Struct("!4xQ")
MAX_COUNTER = 2**64 - 1
LABELS = {True: b"weave-py control dialer", False: b"weave-py control acceptor"}


def _aead(session_key: bytes, dialer: bool) -> AESGCM:
    return AESGCM(derive(session_key, LABELS[dialer]))


class Sealer:
    """Seals what one side sends: plain wire bytes in, SEALED messages out."""

    def __init__(self, session_key: bytes, dialer: bool) -> None:
        self._aead = _aead(session_key, dialer)
        self._counter = 0

    def seal(self, data: bytes) -> bytes:
        """``data`` (plain wire messages) as SEALED messages, in order."""
        out = bytearray()
        for start in range(0, len(data), PIECE):
            if self._counter >= MAX_COUNTER:
                raise RuntimeError("sealed stream used up its nonces: reconnect")
            nonce = NONCE.pack(self._counter)
            self._counter += 1
            out += encode(SEALED, c=self._aead.encrypt(nonce, data[start : start + PIECE], None))
        return bytes(out)


class SealedDecoder:
    """The ``Decoder`` of a sealed stream: bytes in, the plain messages they carry out."""

    def __init__(
        self, session_key: bytes, dialer: bool, outer: Decoder, max_message: int = MAX_MESSAGE
    ) -> None:
        self._aead = _aead(session_key, dialer)
        self._counter = 0
        self._outer = outer  # reads the SEALED messages themselves
        self._inner = Decoder(max_message)
        self._error: DecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message, sealed or plain."""
        return self._outer.buffered + self._inner.buffered

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Buffer ``data``; return every plain message it completes, in order."""
        if self._error is not None:
            raise DecodeError(self._error.reason, self._error.detail)
        return self.open(self._outer.feed(data))

    def open(self, sealed: list[Message]) -> list[Message]:
        """The plain messages inside SEALED messages already read from the stream."""
        messages: list[Message] = []
        try:
            for msg_type, fields in sealed:
                messages += self._inner.feed(self._open(msg_type, fields))
        except DecodeError as e:
            self._error = e
            raise
        return messages

    def _open(self, msg_type: int, fields: Mapping[Any, Any]) -> bytes:
        if msg_type != SEALED:
            raise DecodeError("unsealed", f"message of type {msg_type} in a sealed stream")
        ciphertext = fields.get("c")
        if not isinstance(ciphertext, bytes) or len(ciphertext) < TAG_SIZE:
            raise DecodeError("sealed", "no sealed bytes")
        if self._counter >= MAX_COUNTER:
            raise DecodeError("sealed", "the stream used up its nonces")
        nonce = NONCE.pack(self._counter)
        self._counter += 1
        try:
            return self._aead.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise DecodeError("sealed", "a sealed message does not open") from None
