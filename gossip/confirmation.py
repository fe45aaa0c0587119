"""The secret part of one handshake (sans-IO): the hints in our HELLO, the transcript of both
HELLOs, and the CONFIRM MACs that prove each side holds a secret the other accepts.

Rules this module keeps (gossip/handshake.py states the protocol):
- The acceptor reveals nothing derived from a secret before the dialer's hints have named one
  it accepts; it then sends CONFIRM ``{"i": position, "mac": ...}``, the dialer checks that MAC
  and answers with CONFIRM ``{"mac": ...}``.
- Each MAC is keyed by the session's keys over the transcript: both preambles and both HELLOs,
  the dialer's first, as each side knows them.
- Whatever the peer got wrong is a ``Refusal`` with its reason and counter label; the methods
  return the bytes to send the peer (empty when there are none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from hashlib import sha256
from typing import Any

import msgpack

from gossip.hello import Hello
from gossip.secret import MAC_SIZE, Exchange, Secrets, SessionKeys
from gossip.session import FEATURE as SEAL_FEATURE
from gossip.wire import MessageType, encode

CONFIRM = MessageType.CONFIRM
TRANSCRIPT_LABEL = b"weave-py handshake v1"


class Refusal(Exception):
    """The peer is refused: the reason for the log, the label for the counter."""

    def __init__(self, reason: str, label: str, by_peer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.label = label
        self.by_peer = by_peer


class Confirmation:
    """One side's proof of a shared secret: its key exchange, transcript and session keys."""

    def __init__(self, secrets: Secrets, initiator: bool, preamble: bytes) -> None:
        self.secrets = secrets
        self.initiator = initiator
        self.preamble = preamble  # ours, as sent
        self.exchange = Exchange() if secrets.enabled else None
        self.sent: Hello | None = None  # our HELLO, once made
        self.transcript = b""  # its hash, once both HELLOs are known
        self.keys: SessionKeys | None = None
        self.secret_index: int | None = None

    def hello(self, local: Hello, seal: bool) -> Hello:
        """Our HELLO: with a secret, ``local`` with our key, our hints and the seal offer."""
        if self.exchange is None:
            self.sent = local
            return local
        kx = self.exchange.public
        hints = tuple(self.secrets.hints(kx)) if self.initiator else ()
        features = local.features
        if seal and SEAL_FEATURE not in features:
            features += (SEAL_FEATURE,)
        self.sent = replace(local, kx=kx, hints=hints, features=features)
        return self.sent

    def after_hello(self, remote: Hello, their_preamble: bytes) -> bytes:
        """The peer's HELLO, when either side has a secret; the acceptor's CONFIRM to send."""
        if not remote.kx:
            raise Refusal(f"peer {remote} has no password but we do", "no_password")
        if not self.secrets.enabled:
            raise Refusal(f"peer {remote} has a password but we do not", "password_unexpected")
        if self.initiator == bool(remote.hints):
            both = "dialled" if self.initiator else "accepted"
            raise Refusal(f"peer {remote} and we both {both} this connection", "role")
        self.transcript = self._transcript_hash(remote, their_preamble)
        return b"" if self.initiator else self._confirm_first(remote)

    def _confirm_first(self, remote: Hello) -> bytes:
        """Acceptor: pick the dialer's first secret that we accept, and prove we hold it."""
        found = self.secrets.match(list(remote.hints), remote.kx)
        if found is None:
            raise Refusal(f"peer {remote} uses a different password", "password_mismatch")
        position, key = found
        self.secret_index = self.secrets.keys().index(key)
        keys = self.keys = self._session(remote, key)
        mac = keys.confirmation(False, self.transcript)
        return encode(CONFIRM, i=position, mac=mac)

    def check(self, remote: Hello, fields: Mapping[Any, Any]) -> bytes:
        """The peer's CONFIRM; the dialer's answering CONFIRM to send."""
        mac = fields.get("mac")
        if not isinstance(mac, bytes) or len(mac) != MAC_SIZE:
            raise Refusal(f"malformed confirm: field 'mac' is not {MAC_SIZE} bytes", "malformed")
        if self.initiator:
            index = fields.get("i")
            if type(index) is not int or not 0 <= index < len(self.secrets.accepted):
                raise Refusal("malformed confirm: field 'i' names no hint of ours", "malformed")
            self.secret_index = index
            self.keys = self._session(remote, self.secrets.keys()[index])
        if self.keys is None or not self.keys.confirms(not self.initiator, self.transcript, mac):
            why = "its confirmation does not match (tampered or replayed)"
            raise Refusal(f"peer {remote} failed the password check: {why}", "bad_confirm")
        if self.initiator:
            return encode(CONFIRM, mac=self.keys.confirmation(True, self.transcript))
        return b""

    def _session(self, remote: Hello, key: bytes) -> SessionKeys:
        assert self.exchange is not None
        try:
            return self.exchange.session(remote.kx, key, self.transcript)
        except ValueError:
            raise Refusal("malformed hello: field 'kx' is not a usable key", "malformed") from None

    def _transcript_hash(self, remote: Hello, their_preamble: bytes) -> bytes:
        """Both preambles and both HELLOs, the dialer's first, as each side knows them."""
        assert self.sent is not None
        ours = [self.preamble, self.sent.to_fields()]
        theirs = [their_preamble, remote.to_fields()]
        dialer, acceptor = (ours, theirs) if self.initiator else (theirs, ours)
        packed = msgpack.packb([TRANSCRIPT_LABEL, *dialer, *acceptor], use_bin_type=True)
        return sha256(packed).digest()
