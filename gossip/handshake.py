"""Sans-IO handshake on one control connection: preamble, then one HELLO each way (then one
CONFIRM each way when there is a secret).

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
- Without a secret, ``initiator`` does not change the protocol: it is reported back for the
  caller to break ties between two connections to the same peer.
- Misuse by the caller (``receive`` before ``start``, or after acceptance) is a RuntimeError;
  anything the peer sends is a ``Refused``, never an exception. ``Refused.label`` names the
  kind of refusal for a counter; a REFUSE carries it as ``code``.

With a secret (``Secrets``, gossip/secret.py), membership is proved without sending it
(gossip/confirmation.py keeps that part):

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
- With ``seal``, our HELLO offers the "sealed" feature; when both offered it (inside the
  transcript, so it cannot be stripped), the session continues sealed (gossip/session.py):
  ``Accepted.decoder`` opens what arrives and the caller writes ``Accepted.seal(data)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gossip.confirmation import CONFIRM, Confirmation, Refusal
from gossip.confirmation import TRANSCRIPT_LABEL as TRANSCRIPT_LABEL
from gossip.hello import Hello
from gossip.secret import Secrets
from gossip.session import FEATURE as SEAL_FEATURE
from gossip.session import SealedDecoder, Sealer
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

MAX_REASON = 200  # characters of a peer's refusal reason we repeat in our logs


@dataclass(frozen=True)
class Accepted:
    """The handshake succeeded: the peer's HELLO and how to go on reading the connection."""

    remote: Hello
    version: int
    initiator: bool
    decoder: Decoder | SealedDecoder  # positioned after the handshake; keeps feeding it
    messages: list[Message]  # complete messages that arrived with the handshake, in order
    session_key: bytes | None = None  # with a secret: the session's key (derive() from it)
    secret_index: int | None = None  # with a secret: which of ours, 0 being the current one
    sealer: Sealer | None = None  # a sealed session's: what we send goes through seal()

    @property
    def authenticated(self) -> bool:
        """True when the peer proved it holds one of our secrets."""
        return self.session_key is not None

    @property
    def sealed(self) -> bool:
        """True when both directions of the control stream travel sealed."""
        return self.sealer is not None

    def seal(self, data: bytes) -> bytes:
        """What to write for plain wire bytes ``data``: sealed in a sealed session."""
        return data if self.sealer is None else self.sealer.seal(data)


@dataclass(frozen=True)
class Refused:
    """The handshake failed: why, and whether we or the peer refused."""

    reason: str
    by_peer: bool  # True when the peer sent REFUSE; False when we refused
    remote: Hello | None = None  # the peer's HELLO, when it got that far
    label: str = "by_peer"  # the kind, for a counter: one of LABELS


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
        seal: bool = False,
    ) -> None:
        self.local = local if isinstance(local, Hello) else Hello.from_fields(local)
        self.seal = seal  # offer to seal the control stream (the caller then writes seal())
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
        self._proof = Confirmation(self.secrets, initiator, self.versions.encode())
        self._sent = self._proof.hello(self.local, seal)
        self._done = False  # the peer is accepted once the messages in hand are read

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
            except Refusal as r:
                self.result = self._refuse(r)
        return self.result

    def _refuse(self, refusal: Refusal) -> Refused:
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
            raise Refusal(f"malformed message: {e}", "malformed") from None
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
            raise Refusal(f"malformed preamble: {e.detail}", "malformed") from None
        version = negotiate(self.versions, theirs)
        if version is None:
            ours = self.versions
            raise Refusal(
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
                self._outgoing += self._proof.check(self._remote, fields)
                self._done = True
        if not self._done or self._remote is None or self._decoder is None:
            return None
        if self._proof.keys is None:
            return Accepted(self._remote, self._version, self.initiator, self._decoder, after)
        return self._accepted(self._remote, self._decoder, self._proof.keys.session, after)

    def _accepted(
        self, remote: Hello, decoder: Decoder, key: bytes, after: list[Message]
    ) -> Accepted:
        """Accepted with a secret: sealed when both HELLOs offered it."""
        accepted = Accepted(remote, self._version, self.initiator, decoder, after, key,
                            self._proof.secret_index)  # fmt: skip
        if SEAL_FEATURE not in self._sent.features or SEAL_FEATURE not in remote.features:
            return accepted
        opener = SealedDecoder(key, not self.initiator, decoder, self.max_message)
        try:
            after = opener.open(after)
        except DecodeError as e:
            raise Refusal(f"malformed message: {e}", "malformed") from None
        return replace(accepted, decoder=opener, messages=after,
                       sealer=Sealer(key, self.initiator))  # fmt: skip

    def _expect(self, msg_type: MessageType | int, expected: int) -> None:
        if msg_type != expected:
            wanted = "HELLO" if expected == MessageType.HELLO else "CONFIRM"
            raise Refusal(f"expected {wanted}, got {_type_name(msg_type)}", "unexpected")

    def _refused_by_peer(self, fields: Mapping[Any, Any]) -> Refusal:
        if fields.get("code") == "password_mismatch" and self._remote is not None:
            reason = f"peer {self._remote} uses a different password"
            return Refusal(reason, "password_mismatch", by_peer=True)
        return Refusal(peer_refusal(fields), "by_peer", by_peer=True)

    def _check_hello(self, fields: Mapping[Any, Any]) -> Hello:
        try:
            remote = Hello.from_fields(fields)
        except ValueError as e:
            raise Refusal(f"malformed hello: {e}", "malformed") from None
        self._remote = remote
        if remote.name == self.local.name:
            if remote.uid == self.local.uid:
                raise Refusal("cannot connect to ourself", "self")
            raise Refusal(
                f"name collision: peer {remote} and us ({self.local.nickname}) "
                f"both use name {remote.name}",
                "collision",
            )
        return remote

    def _after_hello(self, remote: Hello) -> bool:
        """Whether the peer is accepted with its HELLO; else CONFIRMs follow."""
        if not self.secrets.enabled and not remote.kx:
            return True
        self._outgoing += self._proof.after_hello(remote, bytes(self._head))
        return False
