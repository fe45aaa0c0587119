"""Every decoder of outside input, fed arbitrary input under hypothesis: only its documented
error type may escape, never another exception, and what it leaves behind stays usable.

The decoders and their documented errors:
- sleeve frames (overlay/frame.py): decode_header, decode_heartbeat, decode_chunk,
  iter_records -> ``frame.DecodeError``; the forwarding core's ``receive`` -> a verdict, never
  an exception (malformed datagrams are counted as drops);
- gossip wire (gossip/wire.py): ``Decoder.feed``, ``decode_body``, ``Preamble.decode`` ->
  ``wire.DecodeError``; a decoder that raised keeps raising it;
- the handshake (gossip/handshake.py): ``Handshake.receive`` -> None or a result, never an
  exception (a peer's fault is a ``Refused``);
- topology records (gossip/record.py): ``PeerRecord.from_wire`` -> ``TopologyError``;
- IPAM claims (overlay/ipam/claim.py): ``decode`` -> ``ClaimError``;
- the IPAM state file: ``StateFile.load`` then ``Ipam(...)`` -> ``ValueError`` (StoreError);
- CNI requests: the server's frame reader (agent/cni/server.py) -> ``FrameError``, and
  agent/cni/spec.py's parse_request/parse_config/parse_args -> ``CniError``;
- the HTTP API (agent/request.py): ``parse_head`` and ``read`` -> ``BadRequest``; a whole
  exchange with ``Api.handle`` -> an answer, never an exception.

Bytes are drawn raw and also behind a valid prefix (a frame header, a preamble, a length), so
the checks past the first one are reached. ``EXAMPLES`` inputs per property keep the module
near 30 s; ``scripts/fuzz`` runs the same targets coverage-guided with atheris for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import tempfile
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import request
from agent.addresses import StateFile
from agent.api import Api
from agent.cni import server as cni_server
from agent.cni import spec as cni_spec
from agent.ipam import Ipam, Settings
from gossip import wire
from gossip.handshake import Handshake, Hello
from gossip.record import PeerRecord, TopologyError
from overlay import frame
from overlay.ipam import claim
from overlay.peer import PeerSpec
from overlay.sleeve import Sleeve
from tests.agent.test_status import REPORT

EXAMPLES = int(os.environ.get("WEAVE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
Net = ipaddress.IPv4Network
A_ID, B_ID = 0xA00000000001, 0xB00000000002

# msgpack-able values, nested: what a peer can put in a message
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=80)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
record_keys = st.sampled_from(["n", "nn", "u", "i", "v", "e", "d", "b", "c", "un", "dp", "m", "sk"])
records = st.dictionaries(record_keys | st.text(max_size=4), values, max_size=14)


# -- sleeve frames ------------------------------------------------------------------------------


def framed(msg_type: int, body: bytes, source: int, destination: int) -> bytes:
    buf = bytearray(frame.HEADER_SIZE + len(body))
    frame.encode_header(buf, msg_type, len(body), source, destination)
    buf[frame.HEADER_SIZE :] = body
    return bytes(buf)


frames = st.binary(max_size=200) | st.builds(
    framed,
    st.sampled_from([int(t) for t in frame.MessageType]) | st.integers(0, 255),
    st.binary(max_size=300),
    st.sampled_from([A_ID, B_ID]) | st.integers(0, 2**64 - 1),
    st.sampled_from([A_ID, B_ID]) | st.integers(0, 2**64 - 1),
)


@FUZZ
@given(frames)
def test_frame_decoders_raise_only_decode_error(data: bytes) -> None:
    try:
        header = frame.decode_header(data, len(data))
    except frame.DecodeError:
        return
    for decode in (frame.decode_heartbeat, frame.decode_chunk):
        with contextlib.suppress(frame.DecodeError):
            decode(data, header)
    try:
        for _ in frame.iter_records(data, header.body_offset, len(data)):
            pass
    except frame.DecodeError:
        pass


def a_sleeve() -> Sleeve:
    sleeve = Sleeve(A_ID, 1, [Net("10.32.1.0/24")], 1400, router_address=bytes([10, 32, 1, 1]))
    peer = PeerSpec(B_ID, "b", ("192.0.2.2", 6783), (Net("10.32.2.0/24"),))
    sleeve.set_peers([peer], 0.0)
    return sleeve


@FUZZ
@given(st.lists(frames, min_size=1, max_size=4), st.sampled_from(["192.0.2.2", "192.0.2.66"]))
def test_forwarding_receive_gives_a_verdict_for_any_datagram(
    datagrams: list[bytes], host: str
) -> None:
    sleeve = a_sleeve()
    for i, data in enumerate(datagrams):
        verdict = sleeve.forwarding.receive(memoryview(bytearray(data)), (host, 6783), float(i))
        assert isinstance(verdict, int)
    sleeve.handle_timer(10.0)  # the core still works after the input
    assert all(n >= 0 for n in sleeve.drops.values())


# -- gossip wire and the handshake ----------------------------------------------------------------


def message(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


streams = st.binary(max_size=300) | st.builds(
    lambda bodies, tail: b"".join(message(b) for b in bodies) + tail,
    st.lists(st.binary(max_size=60) | values.map(msgpack.packb), max_size=4),
    st.binary(max_size=20),
)


@FUZZ
@given(streams, st.integers(1, 50))
def test_wire_decoder_raises_only_decode_error_and_stays_failed(data: bytes, cut: int) -> None:
    decoder = wire.Decoder(max_message=4096)
    try:
        for at in range(0, len(data), cut):
            for _msg_type, fields in decoder.feed(data[at : at + cut]):
                assert isinstance(fields, dict)
    except wire.DecodeError:
        try:
            decoder.feed(b"\x00\x00\x00\x01\xc0")
        except wire.DecodeError:
            return
        raise AssertionError("a failed decoder took more bytes") from None
    with contextlib.suppress(wire.DecodeError):
        wire.decode_body(data)
    with contextlib.suppress(wire.DecodeError):
        wire.Preamble.decode(data[: wire.PREAMBLE_SIZE])


HELLO = Hello(
    name="aa:00:00:00:00:01",
    nickname="alice",
    uid=11,
    incarnation=1,
    data_endpoint=("10.0.0.1", 6783),
    control_endpoint=("10.0.0.1", 6783),
)
PREAMBLE = wire.Preamble(1, 1).encode()
hellos = st.dictionaries(
    st.sampled_from(["name", "nickname", "uid", "incarnation", "data_endpoint",
                     "control_endpoint", "features", "kx", "hints"]) | st.text(max_size=4),
    values,
    max_size=10,
).map(lambda d: {**HELLO.to_fields(), **d})  # fmt: skip
handshake_input = st.binary(max_size=200) | st.builds(
    lambda fields, msg_type, tail: (
        PREAMBLE + message(msgpack.packb({**fields, wire.TYPE_KEY: msg_type})) + tail
    ),
    hellos,
    st.sampled_from([int(t) for t in wire.MessageType]) | st.integers(-5, 300),
    st.binary(max_size=40),
)


@FUZZ
@given(handshake_input, st.booleans(), st.integers(1, 64))
def test_handshake_receive_never_raises(data: bytes, initiator: bool, cut: int) -> None:
    shake = Handshake(HELLO, initiator=initiator)
    shake.start()
    for at in range(0, len(data), cut):
        result = shake.receive(data[at : at + cut])
        if result is not None:
            break


@FUZZ
@given(records)
def test_peer_record_from_wire_raises_only_topology_error(fields: dict[str, Any]) -> None:
    try:
        record = PeerRecord.from_wire(fields)
    except TopologyError:
        return
    assert PeerRecord.from_wire(record.to_wire()) == record  # what it took, it can send on


# -- IPAM ------------------------------------------------------------------------------------------


@FUZZ
@given(
    st.lists(st.text(max_size=20), max_size=4), st.binary(max_size=200) | values.map(msgpack.packb)
)
def test_claim_decode_raises_only_claim_error(blocks: list[str], meta: bytes) -> None:
    with contextlib.suppress(claim.ClaimError):
        claim.decode(blocks, meta)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
documents = st.binary(max_size=100) | st.fixed_dictionaries(
    {"format": st.just(1)},
    optional={"pool": json_values, "ring": json_values, "seeding": json_values},
).map(lambda d: json.dumps(d).encode())


@FUZZ
@given(documents)
def test_state_file_is_loaded_or_refused_with_a_value_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="wp-fuzz-") as directory:
        state = StateFile(directory)
        try:
            with open(state.path, "wb") as f:
                f.write(data)
            try:
                document = state.load()
                Ipam(Settings(Net("10.32.0.0/16"), 24), "aa:00:00:00:00:01", 1, document)
            except ValueError:
                pass
        finally:
            state.close()


# -- CNI ---------------------------------------------------------------------------------------


def cni_frame(body: bytes) -> bytes:
    return cni_spec.LENGTH.pack(len(body)) + body


cni_docs = st.dictionaries(
    st.sampled_from(["command", "containerid", "netns", "ifname", "args", "path", "config",
                     "netns_missing"]) | st.text(max_size=6),
    st.text(max_size=30) | json_values,
    max_size=8,
)  # fmt: skip
cni_bytes = (
    st.binary(max_size=120).map(cni_frame)
    | st.binary(max_size=40)
    | cni_docs.map(lambda d: cni_frame(json.dumps(d).encode()))
)


async def _read_frame(data: bytes) -> dict[str, Any] | None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        fds: list[int] = []
        try:
            return await cni_server.read_request(ours, fds)
        except cni_server.FrameError:
            return None
        finally:
            for fd in fds:
                os.close(fd)


@FUZZ
@given(cni_bytes)
def test_cni_frames_and_requests_raise_only_their_errors(data: bytes) -> None:
    doc = asyncio.run(_read_frame(data))
    if doc is None:
        return
    with contextlib.suppress(cni_spec.CniError):
        cni_spec.parse_request(doc)
    for field, parse in (("config", cni_spec.parse_config), ("args", cni_spec.parse_args)):
        text = doc.get(field)
        if isinstance(text, str):
            with contextlib.suppress(cni_spec.CniError):
                parse(text)


# -- the HTTP API --------------------------------------------------------------------------------

heads = st.binary(max_size=300) | st.builds(
    lambda method, target, headers: (
        method + b" " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    ),
    st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT"]) | st.binary(max_size=8),
    st.sampled_from([b"/healthz", b"/ip/abc?ifname=eth1", b"/peer/x", b"/status/ipam"])
    | st.binary(max_size=40).map(lambda b: b"/" + b),
    st.lists(
        st.sampled_from([b"Content-Length: 3", b"Content-Length: -1", b"Host: x"])
        | st.binary(max_size=30),
        max_size=5,
    ),
)


@FUZZ
@given(heads)
def test_http_request_parsing_raises_only_bad_request(head: bytes) -> None:
    with contextlib.suppress(request.BadRequest):
        request.parse_head(head)
    answer = asyncio.run(_exchange(head))
    assert answer.startswith(b"HTTP/1.1 ")


class _Transport(asyncio.Transport):
    """Collects what the API writes; no socket: ``identify`` sees no unix socket (TCP)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def _exchange(data: bytes) -> bytes:
    api = Api(lambda: REPORT)
    reader = asyncio.StreamReader(limit=request.MAX_HEAD)
    reader.feed_data(data)
    reader.feed_eof()
    transport = _Transport()
    protocol = asyncio.StreamReaderProtocol(reader)
    writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
    await api.handle(reader, writer)
    return bytes(transport.data)
