"""Membership secrets and the keys derived from them.

A cluster with a secret admits only peers that prove they know it (gossip/handshake.py). A node
holds a list of accepted secrets, ``Secrets.accepted``: the first, ``current``, is what it uses
when it dials; all of them are accepted from a dialling peer. A rolling change from secret A to
B never leaves two nodes without a common secret when every node steps through
``[A] -> [A, B] -> [B, A] -> [B]``, each step taken by every node before the next begins (a
running node takes a new list without a restart: gossip/driver.py's ``accept_secrets``).

Rules this module keeps:

- A secret is never sent and never shown: ``Secrets``' repr counts them, nothing more. What a
  handshake derives from a secret is ``stretch(secret)`` (scrypt, memory-hard, once per secret
  per process), so a password seen only through a recorded handshake costs an attacker a
  scrypt per guess.
- ``hint`` tells a peer which of its secrets we use without telling anyone who does not hold
  it; it is salted by the sender's ephemeral key, so hints of one secret on two connections do
  not match.
- ``Exchange`` holds one connection's ephemeral X25519 key, made fresh for it and dropped
  with it (forward secrecy). Its ``session`` mixes the Diffie-Hellman result with the stretched
  secret and the hash of the handshake's transcript: both ends get the same ``SessionKeys``
  only when they hold the same secret and saw the same transcript.
- ``derive`` (HKDF-SHA256) is the one way keys are made from key material, here and in the
  data plane; distinct ``info`` labels give independent keys.
"""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAX_SECRETS = 8  # accepted secrets a node may hold, and hints a HELLO may carry
MAX_SECRET = 4096  # bytes of one secret
HINT_SIZE = 8  # bytes of a hint: a false match between different secrets is 2^-64
KEY_SIZE = 32
STRETCH_SALT = b"weave-py membership secret v1"
STRETCH_N = 2**14  # scrypt cost: 16 MiB and ~0.1 s per secret, once per process
HINT_LABEL = b"weave-py hint v1"
SESSION_LABEL = b"weave-py session v1"
PUBLIC_SIZE = 32  # an X25519 public key
MAC_SIZE = 32  # HMAC-SHA256


class SecretError(ValueError):
    """Secrets that cannot be used: none where some are required, too many, too long, repeated."""


@dataclass(frozen=True, repr=False)
class Secrets:
    """The membership secrets this node accepts; the first is the one it uses when it dials."""

    accepted: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.accepted) > MAX_SECRETS:
            raise SecretError(f"{len(self.accepted)} secrets, at most {MAX_SECRETS}")
        for i, secret in enumerate(self.accepted, 1):
            if not isinstance(secret, bytes) or not secret:
                raise SecretError(f"secret {i} is empty or not bytes")
            if len(secret) > MAX_SECRET:
                raise SecretError(f"secret {i} is longer than {MAX_SECRET} bytes")
        if len(set(self.accepted)) != len(self.accepted):
            raise SecretError("the same secret is listed twice")

    def __repr__(self) -> str:
        return f"Secrets({len(self.accepted)} accepted)"

    @classmethod
    def none(cls) -> Secrets:
        """No secret: open membership, as Weave without a password."""
        return cls(())

    @property
    def enabled(self) -> bool:
        """True when peers must prove a secret to join."""
        return bool(self.accepted)

    @property
    def current(self) -> bytes:
        """The secret used for new connections we dial; ValueError when there is none."""
        if not self.accepted:
            raise ValueError("no secret configured")
        return self.accepted[0]

    def keys(self) -> tuple[bytes, ...]:
        """``stretch`` of each accepted secret, in order (computed once per secret)."""
        return tuple(stretch(s) for s in self.accepted)

    def hints(self, salt: bytes) -> list[bytes]:
        """A hint of each accepted secret, in order, salted by ``salt``."""
        return [hint(key, salt) for key in self.keys()]

    def match(self, hints: list[bytes], salt: bytes) -> tuple[int, bytes] | None:
        """The first of a peer's ``hints`` (salted by ``salt``) that names a secret we accept:
        its position in ``hints`` and our stretched key of it; None when none does."""
        ours = {hint(key, salt): key for key in self.keys()}
        for i, h in enumerate(hints):
            for mine, key in ours.items():
                if hmac.compare_digest(mine, h):
                    return i, key
        return None


@functools.lru_cache(maxsize=2 * MAX_SECRETS)
def stretch(secret: bytes) -> bytes:
    """The key a secret stands for in every derivation: scrypt of it, KEY_SIZE bytes."""
    return Scrypt(salt=STRETCH_SALT, length=KEY_SIZE, n=STRETCH_N, r=8, p=1).derive(secret)


def hint(key: bytes, salt: bytes) -> bytes:
    """HINT_SIZE bytes that name a stretched key to whoever holds it, salted by ``salt``."""
    return hmac.new(key, HINT_LABEL + salt, sha256).digest()[:HINT_SIZE]


def derive(key: bytes, info: bytes, salt: bytes = b"", length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256: ``length`` bytes from key material ``key``, bound to ``info`` and ``salt``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(key)


@dataclass(frozen=True, repr=False)
class SessionKeys:
    """What one handshake agreed: a confirmation key per role and the session's own key."""

    dialer_confirm: bytes
    acceptor_confirm: bytes
    session: bytes  # for whoever protects the session's traffic: derive() keys from it

    def confirmation(self, dialer: bool, transcript: bytes) -> bytes:
        """The MAC by which the dialer (or the acceptor) proves it derived these keys."""
        key = self.dialer_confirm if dialer else self.acceptor_confirm
        return hmac.new(key, transcript, sha256).digest()

    def confirms(self, dialer: bool, transcript: bytes, mac: bytes) -> bool:
        """True when ``mac`` is the dialer's (or acceptor's) confirmation of ``transcript``."""
        return hmac.compare_digest(self.confirmation(dialer, transcript), mac)


class Exchange:
    """One connection's ephemeral X25519 key pair; ``public`` goes into our HELLO."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes_raw()

    def session(self, peer_public: bytes, key: bytes, transcript: bytes) -> SessionKeys:
        """The keys of this session: the Diffie-Hellman result with ``peer_public``, salted
        by the stretched secret ``key`` and bound to ``transcript`` (its hash). ValueError
        when the peer's key is not a usable X25519 public key."""
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        okm = derive(shared, SESSION_LABEL + transcript, salt=key, length=3 * KEY_SIZE)
        return SessionKeys(okm[:KEY_SIZE], okm[KEY_SIZE : 2 * KEY_SIZE], okm[2 * KEY_SIZE :])
