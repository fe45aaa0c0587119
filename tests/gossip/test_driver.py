"""The mesh driver over real TCP on 127.0.0.1: handshakes, gossip, refusals and a clean leave.

Every peer listens on a socket bound to an ephemeral port before its HELLO is built, so the
port it advertises is the one it listens on. Tests wait on conditions with a timeout, never on
the clock alone, and every driver is stopped and every task it made has ended by teardown.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gossip import wire
from gossip.driver import MeshDriver
from gossip.events import (
    MeshEvent,
    PeerForgotten,
    PeerReachable,
    PeerUnreachable,
    RecordUpdated,
    RoutesChanged,
)
from gossip.handshake import Accepted, Handshake, Hello
from gossip.identity import new_identity
from gossip.mesh import Mesh, MeshConfig
from gossip.topology import PeerRecord, Topology

CONFIG = MeshConfig(gossip_interval=0.02, repair_interval=0.2, gc_timeout=2.0)
TIMEOUT = 5.0
Address = tuple[str, int]


@dataclass
class Peer:
    driver: MeshDriver
    task: asyncio.Task[None]
    events: list[MeshEvent] = field(default_factory=list)

    @property
    def mesh(self) -> Mesh:
        return self.driver.mesh

    @property
    def name(self) -> str:
        return self.mesh.name

    @property
    def address(self) -> Address:
        return self.driver.hello.control_endpoint


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def hello_for(nickname: str, endpoint: Address, name: str | None = None) -> Hello:
    me = new_identity(nickname, name)
    return Hello(me.name, me.nickname, me.uid, 1, endpoint, endpoint)


StartPeer = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def start_peer() -> AsyncIterator[StartPeer]:
    """``await start_peer(nickname, seeds=[...], name=None, config=CONFIG)``: a running
    driver."""
    peers: list[Peer] = []
    rng_seeds = itertools.count(1)

    async def start(
        nickname: str,
        seeds: tuple[Address, ...] = (),
        name: str | None = None,
        config: MeshConfig = CONFIG,
    ) -> Peer:
        sock = listening_socket()
        endpoint: Address = sock.getsockname()
        hello = hello_for(nickname, endpoint, name)
        record = PeerRecord(
            name=hello.name, nickname=nickname, incarnation=1, version=1, uid=hello.uid,
            data_endpoint=endpoint, control_endpoint=endpoint,
        )  # fmt: skip
        mesh = Mesh(Topology(record), config, random.Random(next(rng_seeds)), seeds)
        events: list[MeshEvent] = []
        driver = MeshDriver(mesh, hello, endpoint, events.append, server_socket=sock)
        peer = Peer(driver, asyncio.get_running_loop().create_task(driver.run()), events)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await stop(peer)
    current = asyncio.current_task()
    await until(lambda: asyncio.all_tasks() == {current})  # the drivers left no task behind


async def stop(peer: Peer) -> None:
    """Cancel the driver and see it end (a lost cancellation fails here, not hangs)."""
    peer.task.cancel()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.wait([peer.task])
    assert peer.task.cancelled()


def connected(a: Peer, b: Peer) -> bool:
    return b.name in a.mesh.by_name and a.name in b.mesh.by_name


async def test_handshake_connects_two_peers(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    [dialled] = b.driver.connections()
    assert dialled["direction"] == "->"
    assert dialled["address"] == f"127.0.0.1:{a.address[1]}"
    assert (dialled["state"], dialled["name"]) == ("established", a.name)
    [accepted] = a.driver.connections()
    assert (accepted["direction"], accepted["name"]) == ("<-", b.name)
    assert b.driver.observed[a.name] == "127.0.0.1"
    await until(lambda: b.name in a.mesh.routes() and a.name in b.mesh.routes())
    assert PeerReachable(a.name) in b.events and RoutesChanged() in b.events


async def test_a_record_change_reaches_a_peer_two_hops_away(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    c = await start_peer("c", seeds=(b.address,))
    await until(lambda: a.name in c.mesh.topology.records)
    c.events.clear()
    a.mesh.set_local(0.0, blocks=("10.32.1.0/24",))
    a.driver.flush()
    await until(lambda: c.mesh.topology.records[a.name].blocks == ("10.32.1.0/24",))
    assert RecordUpdated(a.name) in c.events


async def test_refused_handshake_closes_only_that_connection(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    impostor = await start_peer("impostor", seeds=(a.address,), name=a.name)
    await until(lambda: impostor.driver.outbound.get(a.address, {}).get("state") == "failed")
    assert "name collision" in impostor.driver.outbound[a.address]["detail"]
    assert impostor.mesh.conns == {}
    assert set(a.mesh.by_name) == {b.name} and connected(a, b)
    await until(lambda: a.driver.terminations >= 1 and impostor.driver.terminations >= 1)
    assert b.driver.terminations == 0  # its connection stayed


async def test_malformed_message_closes_only_that_connection(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b))
    reader, writer = await asyncio.open_connection(*a.address)
    try:
        rogue = hello_for("rogue", ("127.0.0.1", 9))
        shake = Handshake(rogue, initiator=True)
        writer.write(shake.start())
        result = None
        while result is None:
            result = shake.receive(await reader.read(65536))
        assert isinstance(result, Accepted)
        await until(lambda: rogue.name in a.mesh.by_name)
        writer.write(wire.LENGTH.pack(1) + b"\xc1")  # a byte msgpack never uses
        async with asyncio.timeout(TIMEOUT):
            while await reader.read(65536):
                pass  # what a sends until it closes the connection
        await until(lambda: rogue.name not in a.mesh.by_name)
    finally:
        writer.close()
        await writer.wait_closed()
    assert connected(a, b)


async def test_clean_leave_is_seen_at_once_and_forgotten(start_peer: StartPeer) -> None:
    a = await start_peer("a")
    b = await start_peer("b", seeds=(a.address,))
    await until(lambda: connected(a, b) and b.name in a.mesh.routes())
    a.events.clear()
    assert (a.driver.terminations, b.driver.terminations) == (0, 0)
    b.driver.leave()
    await stop(b)
    await until(lambda: PeerForgotten(b.name) in a.events)
    assert a.driver.terminations == 1
    assert a.events.index(RecordUpdated(b.name)) < a.events.index(PeerUnreachable(b.name))
    assert a.mesh.conns == {} and a.mesh.routes() == {}
    assert set(a.mesh.topology.records) == {a.name}


async def test_a_change_published_before_run_dials_only_once_run_starts() -> None:
    """A record published while the agent is still starting (before the driver runs) only
    queues: no dial task exists before run(), so a start that fails leaves none pending."""
    target = listening_socket()
    target.listen()
    endpoint: Address = ("127.0.0.1", 9)
    hello = hello_for("early", endpoint)
    record = PeerRecord(
        name=hello.name, nickname="early", incarnation=1, version=1, uid=hello.uid,
        data_endpoint=endpoint, control_endpoint=endpoint,
    )  # fmt: skip
    mesh = Mesh(Topology(record), CONFIG, random.Random(7), [target.getsockname()])
    driver = MeshDriver(mesh, hello, endpoint, server_socket=listening_socket())
    mesh.set_local(0.0, unreachable=("aa:00:00:00:00:09",))
    driver.flush()
    assert not driver._tasks and driver.outbound == {}
    task = asyncio.get_running_loop().create_task(driver.run())
    try:
        await until(lambda: bool(driver.outbound))  # the seed is dialled once run() runs
    finally:
        task.cancel()
        await asyncio.wait([task])
        target.close()
