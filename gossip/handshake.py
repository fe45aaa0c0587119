"""Sans-IO handshake on one control connection: preamble, then one HELLO each way.

Theory of operation: both sides call ``start()`` as soon as the connection is up and send its
bytes (our preamble and HELLO); neither waits for the other. Received bytes go to
``receive(data)``, which returns None until the handshake has an outcome:

- ``Accepted``: the peer's HELLO, the negotiated version, and the connection's ``Decoder``,
  which keeps any partial message that followed the HELLO (continue with ``decoder.feed``);
  complete messages that arrived with the HELLO are in ``messages``.
- ``Refused``: a reason fit for a log line. When we refused, ``data_to_send()`` holds a REFUSE
  message carrying the reason, to send before closing; when the peer refused us (a REFUSE
  arrived), the reason reads "refused by peer: <their reason>" and nothing more is sent.

Rules this module keeps:

- We refuse when the version ranges do not overlap, when the peer uses our name (a collision
  if its uid differs, ourself if it is the same), when the preamble, HELLO or any message
  before it is malformed, and when the first message is not HELLO. The checks are symmetric,
  so both ends of a bad connection reach a reason on their own and each also gets the other's
  REFUSE.
- A REFUSE may trail a HELLO the peer already sent; one in the same batch as the HELLO still
  refuses here. One arriving later is for the caller: turn it into a reason with
  ``peer_refusal``.
- ``initiator`` does not change the protocol: it is reported back for the caller to break ties
  between two connections to the same peer.
- Misuse by the caller (``receive`` before ``start``, or after acceptance) is a RuntimeError;
  anything the peer sends is a ``Refused``, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossip.identity import NAME_PATTERN
from gossip.wire import (
    MAX_MESSAGE,
    OUR_VERSIONS,
    PREAMBLE_SIZE,
    DecodeError,
    Decoder,
    Message,
    MessageType,
    Preamble,
    VersionRange,
    encode,
    negotiate,
)

Endpoint = tuple[str, int]
MAX_REASON = 200  # characters of a peer's refusal reason we repeat in our logs
U64 = 2**64


@dataclass(frozen=True)
class Hello:
    """What a peer says about itself first: who it is, where to reach it, what it supports."""

    name: str  # "aa:bb:cc:dd:ee:ff"
    nickname: str
    uid: int  # random per process start
    incarnation: int
    data_endpoint: Endpoint  # where the peer receives sleeve (UDP) frames
    control_endpoint: Endpoint  # where the peer accepts control (TCP) connections
    features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}({self.nickname})"

    def to_fields(self) -> dict[str, Any]:
        """The HELLO message's fields, as plain msgpack data."""
        return {
            "name": self.name,
            "nickname": self.nickname,
            "uid": self.uid,
            "incarnation": self.incarnation,
            "data_endpoint": list(self.data_endpoint),
            "control_endpoint": list(self.control_endpoint),
            "features": list(self.features),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Hello:
        """Check HELLO fields (unknown ones ignored); ValueError says which field is wrong."""
        name = _field(fields, "name", str)
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"field 'name' is not six hex octets: {name[:40]!r}")
        return cls(
            name=name,
            nickname=_field(fields, "nickname", str),
            uid=_u64(fields, "uid"),
            incarnation=_u64(fields, "incarnation"),
            data_endpoint=_endpoint(fields, "data_endpoint"),
            control_endpoint=_endpoint(fields, "control_endpoint"),
            features=_features(fields, "features"),
        )


def _field(fields: Mapping[Any, Any], key: str, kind: Any) -> Any:
    if key not in fields:
        raise ValueError(f"missing field {key!r}")
    value = fields[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"field {key!r} has the wrong type {type(value).__name__}")
    return value


def _u64(fields: Mapping[Any, Any], key: str) -> int:
    value: int = _field(fields, key, int)
    if not 0 <= value < U64:
        raise ValueError(f"field {key!r} is out of range")
    return value


def _features(fields: Mapping[Any, Any], key: str) -> tuple[str, ...]:
    value = _field(fields, key, list | tuple)
    if not all(isinstance(f, str) for f in value):
        raise ValueError(f"field {key!r} must be a list of str")
    return tuple(value)


def _endpoint(fields: Mapping[Any, Any], key: str) -> Endpoint:
    value = _field(fields, key, list | tuple)
    if (
        len(value) != 2
        or not isinstance(value[0], str)
        or type(value[1]) is not int
        or not 0 <= value[1] <= 0xFFFF
    ):
        raise ValueError(f"field {key!r} must be [host, port]")
    return value[0], value[1]


@dataclass(frozen=True)
class Accepted:
    """The handshake succeeded: the peer's HELLO and how to go on reading the connection."""

    remote: Hello
    version: int
    initiator: bool
    decoder: Decoder  # positioned right after the HELLO; keeps feeding this connection
    messages: list[Message]  # complete messages that arrived with the HELLO, in order


@dataclass(frozen=True)
class Refused:
    """The handshake failed: why, and whether we or the peer refused."""

    reason: str
    by_peer: bool  # True when the peer sent REFUSE; False when we refused
    remote: Hello | None = None  # the peer's HELLO, when it got that far


HandshakeResult = Accepted | Refused


class _Refusal(Exception):
    def __init__(self, reason: str, by_peer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer


def peer_refusal(fields: Mapping[Any, Any]) -> str:
    """The log reason for a REFUSE message's fields: "refused by peer: <their reason>"."""
    reason = fields.get("reason")
    if not isinstance(reason, str) or not reason:
        return "refused by peer: (no reason given)"
    return f"refused by peer: {reason[:MAX_REASON]}"


def _type_name(msg_type: MessageType | int) -> str:
    return msg_type.name if isinstance(msg_type, MessageType) else f"type {msg_type}"


class Handshake:
    """One side of the handshake; bytes in with ``receive``, bytes out with ``data_to_send``."""

    def __init__(
        self,
        local: Hello | Mapping[str, Any],
        initiator: bool,
        versions: VersionRange = OUR_VERSIONS,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.local = local if isinstance(local, Hello) else Hello.from_fields(local)
        self.initiator = initiator
        self.versions = Preamble(*versions)
        self.max_message = max_message
        self.result: HandshakeResult | None = None
        self._started = False
        self._outgoing = bytearray()
        self._head = bytearray()  # the peer's preamble, while incomplete
        self._version = 0
        self._decoder: Decoder | None = None  # exists once the version is agreed
        self._remote: Hello | None = None

    def start(self) -> bytes:
        """Our preamble and HELLO: send them as soon as the connection is up."""
        if self._started:
            raise RuntimeError("handshake already started")
        self._started = True
        self._outgoing += self.versions.encode()
        self._outgoing += encode(MessageType.HELLO, **self.local.to_fields())
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer (a REFUSE after a refusal), drained by this call."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive(self, data: bytes | bytearray | memoryview) -> HandshakeResult | None:
        """Take bytes from the peer; the outcome once there is one, else None."""
        if not self._started:
            raise RuntimeError("call start() before receive()")
        if isinstance(self.result, Accepted):
            raise RuntimeError("handshake accepted: feed further bytes to result.decoder")
        if self.result is None:
            try:
                self.result = self._advance(data)
            except _Refusal as r:
                self.result = self._refuse(r)
        return self.result

    def _refuse(self, refusal: _Refusal) -> Refused:
        if not refusal.by_peer:
            self._outgoing += encode(MessageType.REFUSE, reason=refusal.reason)
        return Refused(refusal.reason, refusal.by_peer, self._remote)

    def _advance(self, data: bytes | bytearray | memoryview) -> HandshakeResult | None:
        if self._decoder is None:
            data = self._take_preamble(data)
        if self._decoder is None:
            return None
        try:
            messages = self._decoder.feed(data)
        except DecodeError as e:
            raise _Refusal(f"malformed message: {e}") from None
        return self._on_messages(messages)

    def _take_preamble(self, data: bytes | bytearray | memoryview) -> bytes:
        """Collect the peer's preamble and agree on a version; return the bytes after it."""
        need = PREAMBLE_SIZE - len(self._head)
        self._head += data[:need]
        if len(self._head) < PREAMBLE_SIZE:
            return b""
        try:
            theirs = Preamble.decode(self._head)
        except DecodeError as e:
            raise _Refusal(f"malformed preamble: {e.detail}") from None
        version = negotiate(self.versions, theirs)
        if version is None:
            ours = self.versions
            raise _Refusal(
                f"protocol version mismatch: ours {ours.min_version}..{ours.max_version}, "
                f"theirs {theirs.min_version}..{theirs.max_version}"
            )
        self._version = version
        self._decoder = Decoder(self.max_message)
        return bytes(data[need:])

    def _on_messages(self, messages: list[Message]) -> Accepted | None:
        after: list[Message] = []
        for msg_type, fields in messages:
            if msg_type == MessageType.REFUSE:
                raise _Refusal(peer_refusal(fields), by_peer=True)
            if self._remote is not None:
                after.append((msg_type, fields))
            elif msg_type == MessageType.HELLO:
                self._remote = self._check_hello(fields)
            else:
                raise _Refusal(f"expected HELLO, got {_type_name(msg_type)}")
        if self._remote is None or self._decoder is None:
            return None
        return Accepted(self._remote, self._version, self.initiator, self._decoder, after)

    def _check_hello(self, fields: Mapping[Any, Any]) -> Hello:
        try:
            remote = Hello.from_fields(fields)
        except ValueError as e:
            raise _Refusal(f"malformed hello: {e}") from None
        self._remote = remote
        if remote.name == self.local.name:
            if remote.uid == self.local.uid:
                raise _Refusal("cannot connect to ourself")
            raise _Refusal(
                f"name collision: peer {remote} and us ({self.local.nickname}) "
                f"both use name {remote.name}"
            )
        return remote
