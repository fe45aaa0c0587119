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
  anything the peer sends is a ``Refused``, never an exception. ``Refused.label`` names the
  kind of refusal for a counter; a REFUSE carries it as ``code``.

With a secret (``Secrets``, gossip/secret.py), membership is proved without sending it:

- Each side's HELLO carries ``kx``, a fresh ephemeral X25519 public key; the dialer's also
  carries ``hints``, one per secret it accepts, current first, salted by its ``kx``.
- The acceptor takes the first of the dialer's hints that names a secret it accepts (none:
  "uses a different password", refused) and sends CONFIRM ``{"i": position, "mac": ...}``.
  The dialer checks that MAC and answers with CONFIRM ``{"mac": ...}``, which the acceptor
  checks. Each MAC is keyed by the session's keys (the Diffie-Hellman result, the stretched
  secret) over the transcript: both preambles and both HELLOs, names and keys included. So a
  peer's name is bound to the session, a changed byte of either HELLO fails both checks, and a
  recorded handshake replayed to a fresh one fails (the acceptor's key is new).
- The acceptor reveals nothing derived from a secret before the dialer's hint has shown it
  holds one; nothing else is accepted between HELLO and CONFIRM.
- A side with a secret refuses a peer without one ("has no password but we do") and a side
  without refuses a peer with one ("has a password but we do not"): mixed clusters stay apart
  and each end says what to fix. Without a secret on either side, HELLO carries neither field
  and the handshake is as it always was (peers that predate secrets interoperate).
- ``initiator`` is therefore the role in this exchange: the caller must pass True only on
  connections it dialled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from hashlib import sha256
from typing import Any

import msgpack

from gossip.identity import NAME_PATTERN
from gossip.secret import (
    HINT_SIZE,
    MAC_SIZE,
    MAX_SECRETS,
    PUBLIC_SIZE,
    Exchange,
    Secrets,
    SessionKeys,
)
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
CONFIRM = 9  # the CONFIRM message's type (to be declared in gossip/wire.py's MessageType)
TRANSCRIPT_LABEL = b"weave-py handshake v1"


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
    kx: bytes = b""  # ephemeral X25519 public key: only when the sender has a secret
    hints: tuple[bytes, ...] = ()  # the dialer's hints of the secrets it accepts

    def __str__(self) -> str:
        return f"{self.name}({self.nickname})"

    def to_fields(self) -> dict[str, Any]:
        """The HELLO message's fields, as plain msgpack data."""
        fields: dict[str, Any] = {
            "name": self.name,
            "nickname": self.nickname,
            "uid": self.uid,
            "incarnation": self.incarnation,
            "data_endpoint": list(self.data_endpoint),
            "control_endpoint": list(self.control_endpoint),
            "features": list(self.features),
        }
        if self.kx:
            fields["kx"] = self.kx
        if self.hints:
            fields["hints"] = list(self.hints)
        return fields

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
            kx=_key(fields, "kx"),
            hints=_hints(fields, "hints"),
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


def _key(fields: Mapping[Any, Any], key: str) -> bytes:
    if key not in fields:
        return b""
    value: bytes = _field(fields, key, bytes)
    if len(value) != PUBLIC_SIZE:
        raise ValueError(f"field {key!r} must be {PUBLIC_SIZE} bytes")
    return value


def _hints(fields: Mapping[Any, Any], key: str) -> tuple[bytes, ...]:
    if key not in fields:
        return ()
    value = _field(fields, key, list | tuple)
    if not 0 < len(value) <= MAX_SECRETS:
        raise ValueError(f"field {key!r} must hold 1..{MAX_SECRETS} hints")
    if not all(isinstance(h, bytes) and len(h) == HINT_SIZE for h in value):
        raise ValueError(f"field {key!r} must be a list of {HINT_SIZE}-byte hints")
    if "kx" not in fields:
        raise ValueError(f"field {key!r} without field 'kx'")
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
    decoder: Decoder  # positioned right after the handshake; keeps feeding this connection
    messages: list[Message]  # complete messages that arrived with the handshake, in order
    session_key: bytes | None = None  # with a secret: the session's key (derive() from it)
    secret_index: int | None = None  # with a secret: which of ours, 0 being the current one

    @property
    def authenticated(self) -> bool:
        """True when the peer proved it holds one of our secrets."""
        return self.session_key is not None


@dataclass(frozen=True)
class Refused:
    """The handshake failed: why, and whether we or the peer refused."""

    reason: str
    by_peer: bool  # True when the peer sent REFUSE; False when we refused
    remote: Hello | None = None  # the peer's HELLO, when it got that far
    label: str = "refused"  # the kind, for a counter: see LABELS


HandshakeResult = Accepted | Refused


LABELS = (
    "malformed",  # preamble, HELLO, CONFIRM or any message before them
    "version",  # no protocol version in common
    "unexpected",  # a message other than the one the handshake expects
    "self",  # we connected to ourself
    "collision",  # the peer uses our name
    "no_password",  # we have a secret, the peer has none
    "password_unexpected",  # the peer has a secret, we have none
    "password_mismatch",  # no secret in common
    "bad_confirm",  # the peer's confirmation does not match: wrong keys, tampered or replayed
    "role",  # both sides dialled, or both accepted
    "by_peer",  # the peer refused us, for a reason of its own
)


class _Refusal(Exception):
    def __init__(self, reason: str, label: str, by_peer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.label = label
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
        secrets: Secrets | None = None,
    ) -> None:
        self.local = local if isinstance(local, Hello) else Hello.from_fields(local)
        self.initiator = initiator
        self.versions = Preamble(*versions)
        self.max_message = max_message
        self.secrets = secrets or Secrets.none()
        self.result: HandshakeResult | None = None
        self._started = False
        self._outgoing = bytearray()
        self._head = bytearray()  # the peer's preamble, while incomplete
        self._version = 0
        self._decoder: Decoder | None = None  # exists once the version is agreed
        self._remote: Hello | None = None
        self._exchange = Exchange() if self.secrets.enabled else None
        self._sent = self._hello()
        self._done = False  # the peer is accepted once the messages in hand are read
        self._transcript = b""  # its hash, once both HELLOs are known
        self._keys: SessionKeys | None = None
        self._secret_index: int | None = None

    def _hello(self) -> Hello:
        if self._exchange is None:
            return self.local
        kx = self._exchange.public
        hints = tuple(self.secrets.hints(kx)) if self.initiator else ()
        return replace(self.local, kx=kx, hints=hints)

    def start(self) -> bytes:
        """Our preamble and HELLO: send them as soon as the connection is up."""
        if self._started:
            raise RuntimeError("handshake already started")
        self._started = True
        self._outgoing += self.versions.encode()
        self._outgoing += encode(MessageType.HELLO, **self._sent.to_fields())
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer (a CONFIRM, a REFUSE after a refusal), drained by this
        call: send them after every ``receive``."""
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
            self._outgoing += encode(MessageType.REFUSE, reason=refusal.reason, code=refusal.label)
        return Refused(refusal.reason, refusal.by_peer, self._remote, refusal.label)

    def _advance(self, data: bytes | bytearray | memoryview) -> HandshakeResult | None:
        if self._decoder is None:
            data = self._take_preamble(data)
        if self._decoder is None:
            return None
        try:
            messages = self._decoder.feed(data)
        except DecodeError as e:
            raise _Refusal(f"malformed message: {e}", "malformed") from None
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
            raise _Refusal(f"malformed preamble: {e.detail}", "malformed") from None
        version = negotiate(self.versions, theirs)
        if version is None:
            ours = self.versions
            raise _Refusal(
                f"protocol version mismatch: ours {ours.min_version}..{ours.max_version}, "
                f"theirs {theirs.min_version}..{theirs.max_version}",
                "version",
            )
        self._version = version
        self._decoder = Decoder(self.max_message)
        return bytes(data[need:])

    def _on_messages(self, messages: list[Message]) -> Accepted | None:
        after: list[Message] = []
        for msg_type, fields in messages:
            if msg_type == MessageType.REFUSE:
                raise self._refused_by_peer(fields)
            if self._done:
                after.append((msg_type, fields))
            elif self._remote is None:
                self._expect(msg_type, MessageType.HELLO)
                self._remote = self._check_hello(fields)
                self._done = self._after_hello(self._remote)
            else:
                self._expect(msg_type, CONFIRM)
                self._done = self._check_confirm(self._remote, fields)
        if not self._done or self._remote is None or self._decoder is None:
            return None
        key = self._keys.session if self._keys is not None else None
        return Accepted(self._remote, self._version, self.initiator, self._decoder, after,
                        key, self._secret_index)  # fmt: skip

    def _expect(self, msg_type: MessageType | int, expected: int) -> None:
        if msg_type != expected:
            wanted = "HELLO" if expected == MessageType.HELLO else "CONFIRM"
            raise _Refusal(f"expected {wanted}, got {_type_name(msg_type)}", "unexpected")

    def _refused_by_peer(self, fields: Mapping[Any, Any]) -> _Refusal:
        if fields.get("code") == "password_mismatch" and self._remote is not None:
            reason = f"peer {self._remote} uses a different password"
            return _Refusal(reason, "password_mismatch", by_peer=True)
        return _Refusal(peer_refusal(fields), "by_peer", by_peer=True)

    def _check_hello(self, fields: Mapping[Any, Any]) -> Hello:
        try:
            remote = Hello.from_fields(fields)
        except ValueError as e:
            raise _Refusal(f"malformed hello: {e}", "malformed") from None
        self._remote = remote
        if remote.name == self.local.name:
            if remote.uid == self.local.uid:
                raise _Refusal("cannot connect to ourself", "self")
            raise _Refusal(
                f"name collision: peer {remote} and us ({self.local.nickname}) "
                f"both use name {remote.name}",
                "collision",
            )
        return remote

    # -- with a secret ------------------------------------------------------------------------

    def _after_hello(self, remote: Hello) -> bool:
        """Whether the peer is accepted with its HELLO; else CONFIRMs follow."""
        if not self.secrets.enabled and not remote.kx:
            return True
        if not remote.kx:
            raise _Refusal(f"peer {remote} has no password but we do", "no_password")
        if not self.secrets.enabled:
            raise _Refusal(f"peer {remote} has a password but we do not", "password_unexpected")
        if self.initiator == bool(remote.hints):
            both = "dialled" if self.initiator else "accepted"
            raise _Refusal(f"peer {remote} and we both {both} this connection", "role")
        self._transcript = self._transcript_hash(remote)
        if not self.initiator:
            self._confirm_first(remote)
        return False

    def _confirm_first(self, remote: Hello) -> None:
        """Acceptor: pick the dialer's first secret that we accept, and prove we hold it."""
        found = self.secrets.match(list(remote.hints), remote.kx)
        if found is None:
            raise _Refusal(f"peer {remote} uses a different password", "password_mismatch")
        position, key = found
        self._secret_index = self.secrets.keys().index(key)
        keys = self._keys = self._session(remote, key)
        mac = keys.confirmation(False, self._transcript)
        self._outgoing += encode(CONFIRM, i=position, mac=mac)

    def _check_confirm(self, remote: Hello, fields: Mapping[Any, Any]) -> bool:
        mac = fields.get("mac")
        if not isinstance(mac, bytes) or len(mac) != MAC_SIZE:
            raise _Refusal(f"malformed confirm: field 'mac' is not {MAC_SIZE} bytes", "malformed")
        if self.initiator:
            index = fields.get("i")
            if type(index) is not int or not 0 <= index < len(self.secrets.accepted):
                raise _Refusal("malformed confirm: field 'i' names no hint of ours", "malformed")
            self._secret_index = index
            self._keys = self._session(remote, self.secrets.keys()[index])
        if self._keys is None or not self._keys.confirms(not self.initiator, self._transcript, mac):
            why = "its confirmation does not match (tampered or replayed)"
            raise _Refusal(f"peer {remote} failed the password check: {why}", "bad_confirm")
        if self.initiator:
            self._outgoing += encode(CONFIRM, mac=self._keys.confirmation(True, self._transcript))
        return True

    def _session(self, remote: Hello, key: bytes) -> SessionKeys:
        assert self._exchange is not None
        try:
            return self._exchange.session(remote.kx, key, self._transcript)
        except ValueError:
            raise _Refusal("malformed hello: field 'kx' is not a usable key", "malformed") from None

    def _transcript_hash(self, remote: Hello) -> bytes:
        """Both preambles and both HELLOs, the dialer's first, as each side knows them."""
        ours = [self.versions.encode(), self._sent.to_fields()]
        theirs = [bytes(self._head), remote.to_fields()]
        dialer, acceptor = (ours, theirs) if self.initiator else (theirs, ours)
        packed = msgpack.packb([TRANSCRIPT_LABEL, *dialer, *acceptor], use_bin_type=True)
        return sha256(packed).digest()
