"""Coverage-guided fuzzing of the decoders with atheris (libFuzzer), for developers.

The suite's hypothesis properties (tests/fuzz/test_decoders.py) run a few hundred inputs per
decoder; this runs one decoder for as long as asked, steering by coverage. Each target takes
raw bytes and lets only the decoder's documented error pass; anything else is a crash that
atheris reports with the input that caused it (written to ``crash-<sha1>`` in the current
directory: replay it by passing that file instead of a corpus directory).

    scripts/fuzz TARGET [SECONDS] [CORPUS_DIR]      # installs atheris into .venv first
    .venv/bin/python -m tests.fuzz.coverage TARGET -max_total_time=60 CORPUS_DIR

Targets: ``TARGETS`` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import sys
from collections.abc import Callable

from agent import request
from agent.cni import server as cni_server
from agent.cni import spec as cni_spec
from gossip import wire
from gossip.handshake import Handshake, Hello
from gossip.record import PeerRecord, TopologyError
from overlay import frame
from overlay.ipam import claim
from overlay.peer import PeerSpec
from overlay.sleeve import Sleeve

Net = ipaddress.IPv4Network
A_ID, B_ID = 0xA00000000001, 0xB00000000002
HELLO = Hello("aa:00:00:00:00:01", "alice", 11, 1, ("10.0.0.1", 6783), ("10.0.0.1", 6783))


def sleeve_frame(data: bytes) -> None:
    """The sleeve's receive path: header, then the forwarding core's verdict."""
    sleeve = Sleeve(A_ID, 1, [Net("10.32.1.0/24")], 1400, router_address=bytes([10, 32, 1, 1]))
    sleeve.set_peers([PeerSpec(B_ID, "b", ("192.0.2.2", 6783), (Net("10.32.2.0/24"),))], 0.0)
    sleeve.forwarding.receive(memoryview(bytearray(data)), ("192.0.2.2", 6783), 0.0)
    with contextlib.suppress(frame.DecodeError):
        header = frame.decode_header(data, len(data))
        for _ in frame.iter_records(data, header.body_offset, len(data)):
            pass


def gossip_stream(data: bytes) -> None:
    """A control connection's bytes after the handshake."""
    with contextlib.suppress(wire.DecodeError):
        for _, fields in wire.Decoder(max_message=65536).feed(data):
            with contextlib.suppress(TopologyError):
                for record in fields.get("records", ()) if isinstance(fields, dict) else ():
                    PeerRecord.from_wire(record)


def handshake(data: bytes) -> None:
    """A connection's first bytes, as the accepting side reads them."""
    shake = Handshake(HELLO, initiator=False)
    shake.start()
    shake.receive(data)


def ipam_claim(data: bytes) -> None:
    """A peer's published claim (its meta bytes)."""
    with contextlib.suppress(claim.ClaimError):
        claim.decode(["10.32.0.0/24"], data)


def cni_request(data: bytes) -> None:
    """A frame on the CNI socket, then the request in it."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(cni_spec.LENGTH.pack(len(data)) + data)
        theirs.shutdown(socket.SHUT_WR)
        fds: list[int] = []
        try:
            doc = asyncio.run(cni_server.read_request(ours, fds))
        except cni_server.FrameError:
            return
        finally:
            for fd in fds:
                os.close(fd)
    with contextlib.suppress(cni_spec.CniError):
        cni_spec.parse_request(doc)


def http_head(data: bytes) -> None:
    """The local API's request head."""
    with contextlib.suppress(request.BadRequest):
        request.parse_head(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "sleeve": sleeve_frame,
    "gossip": gossip_stream,
    "handshake": handshake,
    "claim": ipam_claim,
    "cni": cni_request,
    "http": http_head,
}


def main(argv: list[str]) -> None:
    """``TARGET [libFuzzer options and corpus directories]``."""
    import atheris  # a developer's tool: not in the suite's dependencies

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus]")
    target = TARGETS[argv[1]]
    atheris.instrument_all()  # coverage of every loaded module: the decoders and below
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
