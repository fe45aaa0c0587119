"""Sleeve encryption (sans-IO): the keys of a node's sealed frames and the seal and open of
each frame (the sealed layout is overlay/frame.py's FLAG_AEAD).

Theory of operation. Each node holds an X25519 key pair (``KeyPair``), fresh per process and
renewed every ``renew_interval`` (forward secrecy: a key pair's private half is forgotten
``retire_delay`` after its successor came), and publishes its public half with a key id in its
record's ``sleeve_key``. Two nodes that know each other's public keys derive, for each
direction, an AES-256-GCM key and a 32-bit key id from their X25519 shared secret, salted by
the stretched membership secret and bound to both names and public keys (overlay/keys.py); the
key's replay window is overlay/replay.py's. The key is end to end: a relay passes the frame on
by its header and cannot read or forge it. Each of a node's accepted secrets gives a key to
open with; frames are sealed under the current (first) one, so a rolling change of secrets
(gossip/secret.py's ``[A] -> [A, B] -> [B, A] -> [B]``) never leaves two nodes without a key in
common.

Rules this module keeps:
- Nonces are never reused: the nonce is the frame's AEAD extension (u32 key id, u64 counter)
  and the counter is one per keyring, raised for every frame sealed under any key. A new
  process has new key pairs, hence new keys.
- Nothing unauthenticated is parsed beyond the header: ``open`` checks the header
  (frame.decode_header), finds the key by (source id, key id), checks the counter against the
  key's replay window without moving it, authenticates header (hops zeroed: relays lower them),
  extension and body, and only then takes the counter into the window.
- A renewed key pair seals only after ``switch_delay`` (its public key travels by gossip
  meanwhile) and the one before it still opens until ``retire_delay``: frames in flight pass,
  and the key id in a frame picks the key.
- Keys to open with live as long as this node's key pair that derived them, whatever happens to
  the peer set, so a replay window is never reset while its key opens.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gossip.secret import Secrets
from overlay import frame
from overlay.frame import (
    AEAD_EXTENSION,
    DATA,
    FLAG_AEAD,
    HEADER,
    HEADER_SIZE,
    HOPS_AT,
    SEALED_BODY_AT,
    SEALED_OVERHEAD,
    VERSION,
    Buffer,
    DecodeError,
)
from overlay.keys import KeyPair, parse_sleeve_key, session_key
from overlay.peer import PeerSpec
from overlay.replay import ReplayWindow

AEAD_EXTRA = SEALED_OVERHEAD - HEADER_SIZE  # 28: what sealing adds to a frame
FLAGS_AT = 2
DESTINATION = struct.Struct("!Q")
DESTINATION_AT = 16
RENEW_INTERVAL = 120.0  # seconds a key pair seals new frames before a fresh one is made
RENEW_FRAMES = 1 << 24  # frames sealed under one key pair before it is renewed early
SWITCH_DELAY = 5.0  # seconds a renewed key pair waits before sealing (gossip carries it)
RETIRE_DELAY = 60.0  # seconds the key pair before the current one still opens
PEER_KEYS = 2  # a peer's public keys kept: its newest and the one before


@dataclass(slots=True, eq=False)
class Opening:
    """A key frames from ``peer_id`` are opened with, and its replay window."""

    peer_id: int
    aead: AESGCM
    pair: KeyPair
    window: ReplayWindow = field(default_factory=ReplayWindow)


@dataclass(slots=True, eq=False)
class Sealing:
    """The key frames to one peer are sealed with."""

    key_id: int
    aead: AESGCM
    pair: KeyPair


@dataclass
class _Peer:
    name: bytes
    sleeve_key: bytes
    publics: list[tuple[int, bytes]]  # (key id, public key), newest first
    opened: list[int] = field(default_factory=list)  # its keys in Keyring._openings, oldest first


class Keyring:
    """The sleeve keys of the node named ``name`` (its mesh name) holding ``secrets``."""

    def __init__(
        self,
        name: str,
        secrets: Secrets,
        now: float,
        renew_interval: float = RENEW_INTERVAL,
        switch_delay: float = SWITCH_DELAY,
        retire_delay: float = RETIRE_DELAY,
    ) -> None:
        if not secrets.enabled:
            raise ValueError("a keyring needs a secret")
        self.name = name.encode()
        self.renew_interval = renew_interval
        self.switch_delay = switch_delay
        self.retire_delay = retire_delay
        self._secrets = secrets.keys()
        self._pairs = [KeyPair.generate(int.from_bytes(os.urandom(4), "big"), now)]
        self._renewed_at = now
        self._switched = True  # the newest pair seals
        self._peers: dict[int, _Peer] = {}
        self._sealing: dict[int, Sealing] = {}
        self._openings: dict[int, Opening] = {}  # by source id << 32 | key id
        self._counter = 0
        self._out = bytearray(frame.MAX_DATAGRAM + SEALED_OVERHEAD)
        self._out_view = memoryview(self._out)
        self._plain = bytearray(frame.MAX_DATAGRAM)
        self._plain_view = memoryview(self._plain)
        self._aad = bytearray(SEALED_BODY_AT)  # what a frame's tag authenticates beside its body

    @property
    def sleeve_key(self) -> bytes:
        """What our record publishes: the newest key pair's id and public key."""
        return self._pairs[0].sleeve_key()

    @property
    def bodies(self) -> memoryview:
        """Where ``seal`` leaves what follows a sealed frame's header (for a train's chunks)."""
        return self._out_view[HEADER_SIZE:]

    def can_seal(self, peer_id: int) -> bool:
        """Whether frames to ``peer_id`` can be sealed (its key is known)."""
        return peer_id in self._sealing

    @property
    def openings(self) -> int:
        """Keys held to open with."""
        return len(self._openings)

    # -- peers -------------------------------------------------------------------------------

    def follow(self, specs: Iterable[PeerSpec]) -> None:
        """Take the current peers' published keys; sessions with new ones are derived."""
        current: set[int] = set()
        for spec in specs:
            current.add(spec.peer_id)
            peer = self._peers.get(spec.peer_id)
            if peer is None or peer.sleeve_key != spec.sleeve_key:
                self._learn(spec, peer)
        for gone in self._peers.keys() - current:
            del self._peers[gone]
            self._sealing.pop(gone, None)

    def _learn(self, spec: PeerSpec, peer: _Peer | None) -> None:
        name = (spec.peer_name or spec.name).encode()
        if peer is None:
            peer = self._peers[spec.peer_id] = _Peer(name, b"", [])
        peer.sleeve_key = spec.sleeve_key
        parsed = parse_sleeve_key(spec.sleeve_key)
        if parsed is None:  # it publishes no key we read: nothing is sealed for it
            peer.publics = []
            self._sealing.pop(spec.peer_id, None)
            return
        if parsed in peer.publics:
            return
        peer.publics = [parsed, *peer.publics][:PEER_KEYS]
        for pair in self._pairs:
            self._derive_openings(spec.peer_id, peer, pair, parsed[1])
        self._derive_sealing(spec.peer_id, peer)

    def _derive_openings(self, peer_id: int, peer: _Peer, pair: KeyPair, public: bytes) -> None:
        """Keys to open ``public``'s frames with, one per accepted secret. A peer that keeps
        publishing new public keys loses its oldest keys beyond PEER_KEYS + 1 of its public
        keys for each of our two key pairs: memory stays bounded per peer."""
        for secret in self._secrets:
            found = session_key(pair, public, secret, peer.name, self.name, outbound=False)
            if found is not None and (peer_id << 32 | found[0]) not in self._openings:
                self._openings[peer_id << 32 | found[0]] = Opening(peer_id, found[1], pair)
                peer.opened.append(peer_id << 32 | found[0])
        limit = len(self._secrets) * (PEER_KEYS + 1) * 2  # pairs of ours: the current and one
        while len(peer.opened) > limit:
            self._openings.pop(peer.opened.pop(0), None)

    def _derive_sealing(self, peer_id: int, peer: _Peer) -> None:
        self._sealing.pop(peer_id, None)
        if not peer.publics:
            return
        pair = self._pairs[0] if self._switched else self._pairs[1]
        public = peer.publics[0][1]
        found = session_key(pair, public, self._secrets[0], self.name, peer.name, outbound=True)
        if found is not None:
            self._sealing[peer_id] = Sealing(found[0], found[1], pair)

    def accept(self, secrets: Secrets) -> None:
        """Accept ``secrets`` from now on, the first sealing (a rolling change without a
        restart): keys to open with are derived for new secrets and dropped for secrets no
        longer held; a key kept keeps its replay window."""
        if not secrets.enabled:
            raise ValueError("a keyring needs a secret")
        keys = secrets.keys()
        if keys == self._secrets:
            return
        self._secrets, held = keys, self._openings
        self._openings = {}
        for peer_id, peer in self._peers.items():
            peer.opened = []
            for pair in reversed(self._pairs):
                for _, public in reversed(peer.publics):
                    self._derive_openings(peer_id, peer, pair, public)
        for key in self._openings.keys() & held.keys():
            self._openings[key] = held[key]
        self._reseal()

    # -- time --------------------------------------------------------------------------------

    def get_timer(self) -> float:
        """The next renewal, switch or retirement of a key pair."""
        at = self._renewed_at + self.renew_interval
        if not self._switched:
            at = min(at, self._renewed_at + self.switch_delay)
        if len(self._pairs) > 1:
            at = min(at, self._renewed_at + self.retire_delay)
        return at

    def handle_timer(self, now: float) -> bool:
        """Renew, switch or retire key pairs when due; True when ``sleeve_key`` changed (our
        record must publish it)."""
        renewed = False
        newest = self._pairs[0]
        if now >= self._renewed_at + self.renew_interval or newest.sealed >= RENEW_FRAMES:
            self._renew(now)
            renewed = True
        elapsed = now - self._renewed_at
        if not self._switched and elapsed >= self.switch_delay:
            self._switched = True
            self._reseal()
        if len(self._pairs) > 1 and elapsed >= self.retire_delay:
            self._retire(self._pairs.pop())
        return renewed

    def _renew(self, now: float) -> None:
        if len(self._pairs) > 1:
            self._retire(self._pairs.pop())
        old = self._pairs[0]
        pair = KeyPair.generate(old.key_id + 1, now)
        self._pairs.insert(0, pair)
        self._renewed_at = now
        self._switched = False
        for peer_id, peer in self._peers.items():
            for _, public in peer.publics:
                self._derive_openings(peer_id, peer, pair, public)

    def _reseal(self) -> None:
        for peer_id, peer in self._peers.items():
            self._derive_sealing(peer_id, peer)

    def _retire(self, pair: KeyPair) -> None:
        self._openings = {k: o for k, o in self._openings.items() if o.pair is not pair}

    # -- frames ------------------------------------------------------------------------------

    def seal(self, header: Buffer, body: Buffer) -> memoryview | None:
        """The sealed frame of a plaintext frame's ``header`` (whose length is ``body``'s) and
        ``body``: a view of this keyring's buffer, valid until the next call. None when the
        destination's key is not known."""
        destination = DESTINATION.unpack_from(header, DESTINATION_AT)[0]
        sealing = self._sealing.get(destination)
        if sealing is None:
            return None
        out, view = self._out, self._out_view
        out[:HEADER_SIZE] = header
        hops = out[HOPS_AT]
        out[FLAGS_AT] |= FLAG_AEAD
        out[HOPS_AT] = 0
        self._counter += 1
        AEAD_EXTENSION.pack_into(out, HEADER_SIZE, sealing.key_id, self._counter)
        end = SEALED_OVERHEAD + len(body)
        sealing.aead.encrypt_into(
            view[HEADER_SIZE:SEALED_BODY_AT], body, view[:SEALED_BODY_AT],
            view[SEALED_BODY_AT:end],
        )  # fmt: skip
        out[HOPS_AT] = hops
        sealing.pair.sealed += 1
        return view[:end]

    def open(self, data: memoryview) -> memoryview:
        """The plaintext frame of the sealed frame ``data``: a view of this keyring's buffer,
        valid until the next call. DecodeError (the drop reason) when it is malformed, not
        sealed ("plain"), sealed under no key we hold ("unknown_key"), not authentic ("auth")
        or a counter already accepted or too old ("replay")."""
        header = frame.decode_header(data, len(data))
        if not header.flags & FLAG_AEAD:
            raise DecodeError("plain")
        if header.type == frame.DATA_CHUNK:
            raise DecodeError("type")  # a sealed train's chunk: opened once reassembled
        aad = self._aad
        aad[:] = data[:SEALED_BODY_AT]
        aad[HOPS_AT] = 0
        self._decrypt(header.source, aad, data[HEADER_SIZE:], header.length)
        plain = self._plain
        plain[:HEADER_SIZE] = data[:HEADER_SIZE]
        plain[FLAGS_AT] = header.flags & ~FLAG_AEAD
        return self._plain_view[: HEADER_SIZE + header.length]

    def open_train(self, hops: int, source: int, destination: int, sealed: Buffer) -> memoryview:
        """``open`` for the DATA frame of a whole sealed train from ``source`` to
        ``destination``, given what followed its header (``sealed``: extension, ciphertext,
        tag, at least AEAD_EXTRA bytes) and the hops its chunks carried: the header is the one
        the sender sealed, rebuilt from those fields, not copied in front of the body."""
        length = len(sealed) - AEAD_EXTRA
        aad = self._aad
        HEADER.pack_into(aad, 0, VERSION, DATA, FLAG_AEAD, 0, length, source, destination)
        aad[HEADER_SIZE:] = sealed[: AEAD_EXTENSION.size]
        self._decrypt(source, aad, sealed, length)
        HEADER.pack_into(self._plain, 0, VERSION, DATA, 0, hops, length, source, destination)
        return self._plain_view[: HEADER_SIZE + length]

    def _decrypt(self, source: int, aad: bytearray, sealed: Buffer, length: int) -> None:
        """Authenticate and decrypt ``sealed`` (extension, ciphertext of ``length`` bytes,
        tag) from peer ``source`` under ``aad`` (its header, hops zeroed, and extension) into
        the plaintext buffer after its header; the counter is taken into the key's replay
        window only once authenticated. DecodeError as ``open`` says."""
        key_id, counter = AEAD_EXTENSION.unpack_from(sealed, 0)
        opening = self._openings.get(source << 32 | key_id)
        if opening is None:
            raise DecodeError("unknown_key")
        window = opening.window
        if not window.fresh(counter):
            raise DecodeError("replay")
        with memoryview(sealed) as view:
            try:
                opening.aead.decrypt_into(
                    view[: AEAD_EXTENSION.size], view[AEAD_EXTENSION.size :], aad,
                    self._plain_view[HEADER_SIZE : HEADER_SIZE + length],
                )  # fmt: skip
            except InvalidTag:
                raise DecodeError("auth") from None
        window.accept(counter)
