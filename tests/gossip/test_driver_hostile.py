"""The mesh driver against a stranger without a secret, over real TCP on 127.0.0.1: a live
name cannot be taken, connections in their handshake are bounded, timeouts say why, one
connection's failure stays local, a frozen peer is let go, and refusals are counted and logged
without flooding."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import msgpack
import pytest

from gossip import wire
from gossip.admission import Admission
from gossip.driver import MeshDriver
from gossip.handshake import Accepted, Handshake, Hello
from gossip.keepalive import FEATURE
from gossip.mesh import Mesh, MeshConfig
from gossip.record import MAX_STAMP
from gossip.secret import Secrets
from gossip.topology import PeerRecord, Topology
from gossip.wire import MessageType
from tests.gossip.test_driver import (
    TIMEOUT,
    Address,
    Peer,
    StartPeer,
    connected,
    hello_for,
    listening_socket,
    start_peer,
    stop,
    until,
)

__all__ = ["start_peer"]  # the fixture, shared with test_driver.py

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def rogue(target: Address, hello: Hello) -> Stream:
    """A connection to ``target`` that completed the handshake as ``hello``."""
    reader, writer = await asyncio.open_connection(*target)
    shake = Handshake(hello, initiator=True)
    writer.write(shake.start())
    result = None
    while result is None:
        data = await reader.read(65536)
        assert data, "closed during the handshake"
        result = shake.receive(data)
        writer.write(shake.data_to_send())
    assert isinstance(result, Accepted)
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """Read until the far end closes (or resets); True when it did within TIMEOUT."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while await reader.read(65536):
                pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


def close(*streams: Stream) -> None:
    for _, writer in streams:
        writer.close()


def records_message(*records: dict[str, object]) -> bytes:
    packed = [msgpack.packb(r, use_bin_type=True) for r in records]
    return wire.encode_list(MessageType.TOPOLOGY, "records", packed)


async def test_a_second_handshake_with_a_live_name_is_refused_without_a_storm(
    start_peer: StartPeer, caplog: pytest.LogCaptureFixture
) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    caplog.set_level(logging.INFO, logger="weave-py.mesh")
    before = a.driver.terminations
    for _ in range(40):
        impostor = hello_for("impostor", ("127.0.0.1", 9), name=b.name)
        stream = await rogue(a.address, impostor)
        assert await closed_by_peer(stream[0])
        close(stream)
    assert connected(a, b) and a.mesh.by_name[b.name] in a.driver.writers
    assert a.mesh.rejections.counts["name_in_use"] == 40
    assert a.driver.terminations == before  # the live connection never dropped
    refusals = [r for r in caplog.records if "name_in_use" in r.getMessage()]
    assert 1 <= len(refusals) <= 2  # one line at once, the rest summed up later
    assert len(caplog.records) < 20


async def test_connections_in_their_handshake_are_capped_per_host(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    a.driver.admission = Admission(max_pending=8, max_per_host=3)
    await until(lambda: a.driver.running)
    idle = [await asyncio.open_connection(*a.address) for _ in range(3)]
    await until(lambda: a.driver.admission.pending == 3)
    extra = await asyncio.open_connection(*a.address)
    assert await closed_by_peer(extra[0])  # refused before its handshake
    assert a.mesh.rejections.counts["pending_limit"] == 1
    close(extra, *idle)
    await until(lambda: a.driver.admission.pending == 0)


async def test_a_handshake_that_never_ends_is_cut_at_its_byte_bound(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    await until(lambda: a.driver.running)
    reader, writer = await asyncio.open_connection(*a.address)
    writer.write(wire.OUR_VERSIONS.encode() + wire.LENGTH.pack(wire.MAX_MESSAGE))
    chunk = b"\x00" * 65536
    with pytest.raises(ConnectionError):  # closed while we still write
        for _ in range(64):
            writer.write(chunk)
            await writer.drain()
    assert await closed_by_peer(reader)
    writer.close()
    await until(lambda: a.driver.admission.pending == 0)
    assert a.mesh.rejections.counts["handshake_too_large"] == 1
    assert a.driver.admission.buffered == 0


async def test_a_handshake_timeout_says_why(
    start_peer: StartPeer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gossip.handshaking.HANDSHAKE_TIMEOUT", 0.3)
    caplog.set_level(logging.INFO, logger="weave-py.mesh")
    a = await start_peer("a")
    await until(lambda: a.driver.running)
    reader, writer = await asyncio.open_connection(*a.address)
    writer.write(b"WP")
    assert await closed_by_peer(reader)
    writer.close()
    await until(lambda: "handshake_timeout" in a.mesh.rejections.counts)
    [line] = [r.getMessage() for r in caplog.records if "handshake_timeout" in r.getMessage()]
    assert line.startswith("reject handshake_timeout from 127.0.0.1:")
    assert line.endswith(": no handshake within 0.3s (2 bytes received)")


async def test_an_exception_while_handling_a_message_closes_only_that_connection(
    start_peer: StartPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    stranger = hello_for("stranger", ("127.0.0.1", 9))
    reader, writer = await rogue(a.address, stranger)
    await until(lambda: stranger.name in a.mesh.by_name)
    receive = a.mesh.receive

    def broken(
        conn: object, msg_type: int, fields: dict[str, object], now: float, wall_ns: int
    ) -> None:
        if a.mesh.conns.get(conn) == stranger.name:
            raise ZeroDivisionError("a bug of ours")
        receive(conn, msg_type, fields, now, wall_ns)

    monkeypatch.setattr(a.mesh, "receive", broken)
    writer.write(wire.encode(MessageType.REQUEST, names=[a.name]))
    assert await closed_by_peer(reader)
    writer.close()
    await until(lambda: stranger.name not in a.mesh.by_name)
    assert a.mesh.rejections.counts["internal_error"] == 1
    assert not a.task.done() and connected(a, b)


async def test_a_record_of_our_name_at_the_stamp_bounds_does_not_end_the_agent(
    start_peer: StartPeer,
) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    stranger = hello_for("stranger", ("127.0.0.1", 9))
    stream = await rogue(a.address, stranger)
    claim = {**a.mesh.topology.local.to_wire(), "u": 666, "i": 2, "v": MAX_STAMP}
    stream[1].write(records_message(claim))
    await until(lambda: a.mesh.topology.local.stamp == (3, 0))
    await until(lambda: b.mesh.topology.records[a.name].stamp == (3, 0))  # ours spreads
    stream[1].write(records_message({**claim, "i": 4, "v": 2**64 - 1}))
    assert await closed_by_peer(stream[0])
    close(stream)
    assert a.mesh.rejections.counts["malformed"] == 1
    assert not a.task.done() and connected(a, b)
    a.mesh.set_local(0.0, blocks=("10.32.0.0/24",))
    a.driver.flush()
    await until(lambda: b.mesh.topology.records[a.name].blocks == ("10.32.0.0/24",))


@pytest.fixture
async def quick_peer() -> AsyncIterator[Peer]:
    """A running driver whose mesh sends KEEPALIVEs every 0.1 s and closes after 0.5 s."""
    config = MeshConfig(gossip_interval=0.02, repair_interval=0.2, keepalive_interval=0.1,
                        silence_timeout=0.5)  # fmt: skip
    sock = listening_socket()
    endpoint: Address = sock.getsockname()
    hello = hello_for("q", endpoint)
    record = PeerRecord(
        name=hello.name, nickname="q", incarnation=1, version=1, uid=hello.uid,
        data_endpoint=endpoint, control_endpoint=endpoint,
    )  # fmt: skip
    mesh = Mesh(Topology(record), config, random.Random(3))
    driver = MeshDriver(mesh, hello, endpoint, server_socket=sock)
    peer = Peer(driver, asyncio.get_running_loop().create_task(driver.run()))
    yield peer
    await stop(peer)


async def test_a_frozen_peer_is_let_go_and_an_old_one_is_not(quick_peer: Peer) -> None:
    q = quick_peer
    await until(lambda: q.driver.running)
    assert FEATURE in q.driver.hello.features
    frozen = hello_for("frozen", ("127.0.0.1", 9))
    frozen = Hello(frozen.name, "frozen", frozen.uid, 1, frozen.data_endpoint,
                   frozen.control_endpoint, features=(FEATURE,))  # fmt: skip
    old = hello_for("old", ("127.0.0.1", 9))  # no keepalive feature: an older version
    f_stream, o_stream = await rogue(q.address, frozen), await rogue(q.address, old)
    await until(lambda: {frozen.name, old.name} <= q.mesh.by_name.keys())
    assert await closed_by_peer(f_stream[0])  # it sent nothing for 0.5 s
    await until(lambda: frozen.name not in q.mesh.by_name)
    assert q.mesh.rejections.counts == {"silent": 1}
    await asyncio.sleep(1.0)
    assert old.name in q.mesh.by_name
    close(f_stream, o_stream)


async def test_a_nickname_reaches_the_status_escaped(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    await until(lambda: a.driver.running)
    base = hello_for("x", ("127.0.0.1", 9))
    evil = Hello(base.name, "evil\x1b[2J\u202e", base.uid, 1, base.data_endpoint,
                 base.control_endpoint)  # fmt: skip
    stream = await rogue(a.address, evil)
    await until(lambda: evil.name in a.mesh.by_name)
    [entry] = a.driver.connections()
    assert entry["peer"] == f"{evil.name}(evil\\x1b[2J\\u202e)"
    close(stream)


async def start_with_secret(name: str, secret: bytes, seeds: tuple[Address, ...] = ()) -> Peer:
    sock = listening_socket()
    endpoint: Address = sock.getsockname()
    hello = hello_for(name, endpoint)
    record = PeerRecord(
        name=hello.name, nickname=name, incarnation=1, version=1, uid=hello.uid,
        data_endpoint=endpoint, control_endpoint=endpoint,
    )  # fmt: skip
    config = MeshConfig(gossip_interval=0.02, repair_interval=0.2)
    mesh = Mesh(Topology(record), config, random.Random(5), seeds)
    driver = MeshDriver(mesh, hello, endpoint, server_socket=sock, secrets=Secrets((secret,)))
    return Peer(driver, asyncio.get_running_loop().create_task(driver.run()))


async def test_with_a_secret_the_stream_is_sealed_and_a_stranger_is_refused() -> None:
    secret = b"correct horse battery staple"
    a = await start_with_secret("a", secret)
    b = await start_with_secret("b", secret, seeds=(a.address,))
    try:
        await until(lambda: connected(a, b))
        conn = a.mesh.by_name[b.name]
        session = a.driver.seals[conn].__self__  # type: ignore[attr-defined]  # its Accepted
        assert isinstance(session, Accepted) and session.sealed
        a.mesh.set_local(0.0, blocks=("10.32.0.0/24",))
        a.driver.flush()
        await until(lambda: b.mesh.topology.records[a.name].blocks == ("10.32.0.0/24",))
        reader, writer = await asyncio.open_connection(*a.address)
        stranger = Handshake(hello_for("stranger", ("127.0.0.1", 9)), initiator=True)
        writer.write(stranger.start())
        assert await closed_by_peer(reader)
        writer.close()
        await until(lambda: "handshake_refused" in a.mesh.rejections.counts)
        assert set(a.mesh.by_name) == {b.name}
    finally:
        await stop(a)
        await stop(b)
