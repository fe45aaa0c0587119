"""A gossip peer run by the attacker: a TCP connection from the stranger host that speaks our
control protocol with the project's own encoders (gossip/handshake.py, gossip/wire.py,
gossip/topology.py), then sends whatever the attack needs: forged records, requests, raw bytes.
Blocking and single-threaded; each test drives it step by step."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import time
from typing import Any

from gossip import wire
from gossip.handshake import Accepted, Handshake, HandshakeResult, Hello, Refused
from gossip.topology import PeerRecord
from gossip.wire import Message, MessageType
from tests.netns.hostile.host import StrangerHost

PORT = 6783


def stranger_name() -> str:
    """A fresh peer name no node uses (locally administered, like the agents')."""
    return "0e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def hello(host: StrangerHost, name: str, nickname: str, uid: int | None = None) -> Hello:
    """The HELLO a peer at the stranger's address would send."""
    return Hello(name, nickname, uid or secrets.randbits(63), time.time_ns(),
                 (host.ip, PORT), (host.ip, PORT))  # fmt: skip


def own_record(greeting: Hello, **fields: Any) -> PeerRecord:
    """The record a peer with this HELLO would publish, with ``fields`` changed."""
    record = PeerRecord(greeting.name, greeting.nickname, greeting.incarnation, 1, greeting.uid,
                        greeting.data_endpoint, greeting.control_endpoint)  # fmt: skip
    return dataclasses.replace(record, **fields)


class Intruder:
    """One control connection from the stranger host to a node."""

    def __init__(self, host: StrangerHost, greeting: Hello, **options: Any) -> None:
        self.host = host
        self.greeting = greeting
        self.options = options  # passed on to Handshake (say, the secrets it holds)
        self.sock: socket.socket | None = None
        self.decoder: Any = None  # the handshake's: plain, or sealed with a secret
        self.records: dict[str, PeerRecord] = {}  # what the node told us, by name
        self.received = 0  # bytes read after the handshake
        self.remote: Hello | None = None  # the node's HELLO, once accepted

    def connect(self, target: str, timeout: float = 5.0) -> HandshakeResult | None:
        """Dial ``target``:6783 and run the handshake; its outcome (None: the node closed the
        connection or said nothing before ``timeout``)."""
        self.sock = self.host.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((target, PORT))
        handshake = Handshake(self.greeting, initiator=True, **self.options)
        self.sock.sendall(handshake.start())
        result = self._handshake(handshake, time.monotonic() + timeout)
        if isinstance(result, Accepted):
            self.remote = result.remote
            self.decoder = result.decoder
            self._keep(result.messages)
        elif isinstance(result, Refused):
            with contextlib.suppress(OSError):
                self.sock.sendall(handshake.data_to_send())
        return result

    def _handshake(self, handshake: Handshake, deadline: float) -> HandshakeResult | None:
        assert self.sock is not None
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                return None
            if not data:
                return None
            result = handshake.receive(data)
            if result is not None:
                return result
        return None

    def record(self, **fields: Any) -> PeerRecord:
        """Our own record as a live peer publishes it: connected to the node we dialled (the
        mesh takes a peer as live only when both ends list their connection), ``fields``
        changed."""
        assert self.remote is not None
        return own_record(self.greeting, connections=(self.remote.name,), **fields)

    def send(self, data: bytes) -> None:
        """Raw bytes on the connection."""
        assert self.sock is not None
        self.sock.sendall(data)

    def send_records(self, *records: PeerRecord) -> None:
        """One TOPOLOGY message carrying ``records``."""
        self.send(wire.encode(MessageType.TOPOLOGY, records=[r.to_wire() for r in records]))

    def learn(self, timeout: float = 3.0) -> dict[str, PeerRecord]:
        """Ask for everything (an empty DIGEST) and read until every answer is in."""
        self.send(wire.encode(MessageType.DIGEST, digest={}))
        self.read(timeout, until=lambda: len(self.records) >= 2)
        return self.records

    def read(self, timeout: float, until: Any = None) -> list[Message]:
        """Messages received within ``timeout`` (or until ``until()`` holds after a read)."""
        assert self.sock is not None and self.decoder is not None
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                if until is not None and until():
                    break
                continue
            except ConnectionError:
                break
            if not data:
                break
            self.received += len(data)
            messages = self.decoder.feed(data)
            self._keep(messages)
            got += messages
        return got

    def _keep(self, messages: list[Message]) -> None:
        for msg_type, fields in messages:
            if msg_type == MessageType.TOPOLOGY:
                for d in fields.get("records", []):
                    record = PeerRecord.from_wire(d)
                    self.records[record.name] = record

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True when the node closes the connection within ``timeout`` (read and dropped)."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except TimeoutError:
                return False
            except ConnectionError:
                return True
        return False

    def close(self) -> None:
        """Close the connection (repeatable)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Intruder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
