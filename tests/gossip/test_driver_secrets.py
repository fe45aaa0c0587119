"""The mesh driver takes new secrets while running (a rotation without restarts), over real TCP
on 127.0.0.1: a connection that proved a secret no longer accepted is closed and redialled
under one in common, a connection under a kept secret stays, and new handshakes dial under the
new current secret."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gossip.driver import MeshDriver
from gossip.handshake import Hello
from gossip.identity import new_identity
from gossip.mesh import Mesh, MeshConfig
from gossip.secret import Secrets, stretch
from gossip.topology import PeerRecord, Topology

CONFIG = MeshConfig(gossip_interval=0.02, repair_interval=0.2, gc_timeout=2.0)
TIMEOUT = 5.0
A, B = b"the old secret", b"the new secret"
Address = tuple[str, int]
Start = Callable[..., Awaitable[MeshDriver]]


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``await start(nickname, accepted, seeds=())``: a running driver holding ``accepted``."""
    tasks: list[asyncio.Task[None]] = []

    async def run(
        nickname: str, accepted: tuple[bytes, ...], seeds: tuple[Address, ...] = ()
    ) -> MeshDriver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        endpoint: Address = sock.getsockname()
        me = new_identity(nickname)
        hello = Hello(me.name, me.nickname, me.uid, 1, endpoint, endpoint)
        record = PeerRecord(
            name=me.name, nickname=nickname, incarnation=1, version=1, uid=me.uid,
            data_endpoint=endpoint, control_endpoint=endpoint,
        )  # fmt: skip
        mesh = Mesh(Topology(record), CONFIG, random.Random(len(tasks)), seeds)
        driver = MeshDriver(mesh, hello, endpoint, server_socket=sock, secrets=Secrets(accepted))
        tasks.append(asyncio.get_running_loop().create_task(driver.run()))
        return driver

    yield run
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*tasks, return_exceptions=True)


def proved(d: MeshDriver) -> list[bytes]:
    """The stretched secret each of ``d``'s connections proved."""
    return list(d.proved.values())


def joined(a: MeshDriver, b: MeshDriver) -> bool:
    return b.mesh.name in a.mesh.by_name and a.mesh.name in b.mesh.by_name


async def pair(
    start: Start, ours: tuple[bytes, ...], theirs: tuple[bytes, ...]
) -> tuple[MeshDriver, MeshDriver]:
    """``a`` holding ``ours``, ``b`` holding ``theirs`` and dialling ``a``, connected."""
    a = await start("a", ours)
    b = await start("b", theirs, seeds=(a.hello.control_endpoint,))
    await until(lambda: joined(a, b))
    return a, b


async def test_a_connection_under_a_dropped_secret_closes_and_redials_under_the_new_one(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="weave-py.mesh")
    a, b = await pair(start, (A,), (A,))
    first = set(a.proved)
    for step in ((A, B), (B, A)):  # both still accept A: nothing closes
        assert a.accept_secrets(Secrets(step)) == b.accept_secrets(Secrets(step)) == 0
    assert set(a.proved) == first and a.terminations == 0
    assert a.accept_secrets(Secrets((B,))) == 1  # b still holds [B, A]
    await until(lambda: joined(a, b) and set(a.proved) not in (set(), first))
    assert proved(a) == proved(b) == [stretch(B)]
    closed = [m for m in caplog.messages if "close connection" in m]
    assert len(closed) == 1 and "its secret is no longer accepted" in closed[0]
    assert b.mesh.name in closed[0]  # names the peer
    assert not any(x.decode() in m for m in caplog.messages for x in (A, B))


async def test_a_connection_under_a_kept_secret_stays(start: Start) -> None:
    a, b = await pair(start, (A, B), (A, B))
    assert proved(a) == proved(b) == [stretch(A)]
    conns = set(a.proved), set(b.proved)
    assert a.accept_secrets(Secrets((A,))) == 0  # B dropped, A kept
    assert b.accept_secrets(Secrets((A,))) == 0
    await asyncio.sleep(0.2)  # nothing to wait for: give a wrong close the time to show
    assert (set(a.proved), set(b.proved)) == conns
    assert a.terminations == b.terminations == 0 and joined(a, b)


async def test_new_handshakes_dial_under_the_new_current_secret(start: Start) -> None:
    a, b = await pair(start, (A,), (A,))
    for d in (a, b):
        d.accept_secrets(Secrets((B, A)))
    assert proved(a) == proved(b) == [stretch(A)]  # kept: A is still accepted
    [writer] = b.writers.values()
    writer.close()  # the next connection is a new handshake, dialled under B
    await until(lambda: joined(a, b) and proved(a) == [stretch(B)])
    assert proved(b) == [stretch(B)]


async def test_a_peer_that_kept_only_a_dropped_secret_is_refused(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await pair(start, (A,), (A,))
    a.accept_secrets(Secrets((B,)))
    await until(lambda: "handshake_refused" in a.mesh.rejections.counts)
    assert not joined(a, b) and not a.proved
    assert any("uses a different password" in m for m in caplog.messages)


async def test_secrets_are_not_turned_on_or_off_while_running(start: Start) -> None:
    a = await start("a", (A,))
    with pytest.raises(ValueError, match="not be turned on or off"):
        a.accept_secrets(Secrets.none())
    assert a.secrets.accepted == (A,)
