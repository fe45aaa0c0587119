"""A live peer's name over real TCP on 127.0.0.1: a handshake with its real uid does not take
it, and a restarted peer gets it back -- at once when its old connection closed, within about
the silence timeout when the old connection never closed (a frozen or vanished process)."""

from __future__ import annotations

import dataclasses
import time

from gossip.handshake import Hello
from gossip.keepalive import FEATURE
from gossip.mesh import MeshConfig
from tests.gossip.test_driver import (
    TIMEOUT,
    StartPeer,
    connected,
    hello_for,
    start_peer,
    stop,
    until,
)
from tests.gossip.test_driver_hostile import close, closed_by_peer, rogue

__all__ = ["start_peer"]  # the fixture, shared with test_driver.py

QUICK = MeshConfig(
    gossip_interval=0.02, repair_interval=0.2, gc_timeout=2.0, backoff_initial=0.2,
    keepalive_interval=0.1, silence_timeout=0.5, settle_interval=0.2,
)  # fmt: skip
HIGH, LOW = "0a:00:00:00:00:0a", "01:00:00:00:00:01"


def as_peer(hello: Hello, uid: int) -> Hello:
    """``hello`` under another uid, keeping connections alive like a current peer."""
    return dataclasses.replace(hello, uid=uid, features=(FEATURE,))


async def test_a_handshake_with_the_real_uid_of_a_live_peer_is_refused(
    start_peer: StartPeer,
) -> None:
    b = await start_peer("b", name=LOW, config=QUICK)
    a = await start_peer("a", seeds=(b.address,), name=HIGH, config=QUICK)  # a dials b
    await until(lambda: connected(a, b))
    real = a.mesh.by_name[LOW]
    deadline = time.monotonic() + QUICK.settle_interval  # past it, no tie-break applies
    await until(lambda: time.monotonic() > deadline)
    impostor = as_peer(b.driver.hello, b.driver.hello.uid)
    for _ in range(5):
        stream = await rogue(a.address, impostor)
        assert await closed_by_peer(stream[0])
        close(stream)
    assert a.mesh.by_name[LOW] == real and connected(a, b)
    assert a.mesh.rejections.counts["name_in_use"] == 5


async def test_a_restarted_peer_is_back_at_once_when_its_old_connection_closed(
    start_peer: StartPeer,
) -> None:
    a = await start_peer("a", config=QUICK)
    b = await start_peer("b", seeds=(a.address,), name=LOW, config=QUICK)
    await until(lambda: connected(a, b))
    await stop(b)
    started = time.monotonic()
    again = await start_peer("b", seeds=(a.address,), name=LOW, config=QUICK)
    await until(lambda: connected(a, again))
    assert time.monotonic() - started < 2.0
    assert a.mesh.topology.records[LOW].uid == again.driver.hello.uid


async def test_a_restarted_peer_is_back_within_the_silence_timeout_when_its_old_one_froze(
    start_peer: StartPeer,
) -> None:
    a = await start_peer("a", config=QUICK)
    await until(lambda: a.driver.running)
    old = as_peer(hello_for("b", ("127.0.0.1", 9), LOW), 4321)  # the previous process
    frozen = await rogue(a.address, old)  # it never sends again
    await until(lambda: LOW in a.mesh.by_name)
    started = time.monotonic()
    again = await start_peer("b", seeds=(a.address,), name=LOW, config=QUICK)
    await until(lambda: connected(a, again), TIMEOUT)
    took = time.monotonic() - started
    assert took < QUICK.silence_timeout + 4 * QUICK.backoff_initial + 1.0, took
    assert await closed_by_peer(frozen[0])
    assert a.mesh.rejections.counts["silent"] == 1
    close(frozen)
