"""The sleeve's key agreement (overlay/seal.py uses it): a node's X25519 key pairs, what its
record publishes of one (``sleeve_key``: format, key id, public key), and the key of one
direction between two nodes.

A direction's key and key id are HKDF-SHA256 (gossip/secret.py ``derive``) of the X25519
shared secret, salted by a stretched membership secret, bound to the sender's and receiver's
names and both public keys in that order: whoever lacks the secret, or either private key,
cannot derive it, and the two directions never share a key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gossip.secret import derive

LABEL = b"weave-py sleeve v1"
KEY_FORMAT = 1
SLEEVE_KEY = struct.Struct("!BI32s")  # format, key id, X25519 public key: a record's sleeve_key
KEY_SIZE = 32  # AES-256-GCM
KEY_ID_SIZE = 4
U32 = 1 << 32


@dataclass(eq=False)
class KeyPair:
    """One of this node's X25519 key pairs and the frames sealed under keys it derived."""

    key_id: int
    private: X25519PrivateKey
    made_at: float
    sealed: int = 0

    @classmethod
    def generate(cls, key_id: int, now: float) -> KeyPair:
        """A fresh key pair."""
        return cls(key_id % U32, X25519PrivateKey.generate(), now)

    @property
    def public(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sleeve_key(self) -> bytes:
        """What a record publishes of this key pair."""
        return SLEEVE_KEY.pack(KEY_FORMAT, self.key_id, self.public)


def parse_sleeve_key(data: bytes) -> tuple[int, bytes] | None:
    """(key id, public key) of a record's ``sleeve_key``; None when it is not one we read."""
    if len(data) != SLEEVE_KEY.size:
        return None
    key_format, key_id, public = SLEEVE_KEY.unpack(data)
    return (key_id, public) if key_format == KEY_FORMAT else None


def session_key(
    pair: KeyPair, public: bytes, secret: bytes, sender: bytes, receiver: bytes, outbound: bool
) -> tuple[int, AESGCM] | None:
    """The key id and key of one direction between ``pair`` and a peer's ``public`` key; None
    when the peer's key is not a usable X25519 key (a low-order point)."""
    try:
        shared = pair.private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None
    mine = pair.public
    publics = mine + public if outbound else public + mine
    info = LABEL + sender + b"\0" + receiver + b"\0" + publics
    okm = derive(shared, info, salt=secret, length=KEY_SIZE + KEY_ID_SIZE)
    return int.from_bytes(okm[KEY_SIZE:], "big"), AESGCM(okm[:KEY_SIZE])
