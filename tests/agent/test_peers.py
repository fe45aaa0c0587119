"""Peer sources: the static list, and the gossip source over real TCP on 127.0.0.1 (two sources
joining through a seed, each seeing the other as a member with its record and endpoint, a
publish reaching the other side, the change callback firing)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from agent.config import StaticPeer
from agent.peers import Member, View
from agent.peers.gossip import GossipPeers, seed_address
from agent.peers.static import StaticPeers
from gossip.identity import name_for, new_identity

TIMEOUT = 5.0


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_static_peers_are_members_with_their_configured_blocks() -> None:
    block = ipaddress.IPv4Network("10.32.2.0/24")
    source = StaticPeers((StaticPeer("node-2", "192.0.2.2", 6790, (block,)),))
    assert source.view() == View((Member(name_for("node-2"), "node-2", ("192.0.2.2", 6790),
                                         blocks=(block,)),))  # fmt: skip
    source.publish({"unreachable": ("x",)})  # nothing to publish into: no error either
    assert source.connections() == []


def test_seed_addresses_default_to_the_agents_port() -> None:
    assert seed_address("192.0.2.7", 6783) == ("192.0.2.7", 6783)
    assert seed_address("192.0.2.7:7000", 6783) == ("192.0.2.7", 7000)


class Running:
    """A gossip source on 127.0.0.1, run by the test; ``changes`` counts change callbacks."""

    def __init__(self, nickname: str, seeds: tuple[str, ...] = ()) -> None:
        here = ("127.0.0.1", free_port())
        claim = {"blocks": (), "meta": b""}
        self.source = GossipPeers(new_identity(nickname), 1, here, here, seeds, 8, claim)
        self.changes = 0
        self.task = asyncio.create_task(self.source.run(self._changed))

    def _changed(self) -> None:
        self.changes += 1

    def blocks_seen(self) -> tuple[str, ...]:
        records = [m.record for m in self.source.view().members if m.record is not None]
        return records[0].blocks if records else ()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_gossip_sources_join_and_see_each_other_as_members() -> None:
    a = Running("node-a")
    b = Running("node-b", seeds=(f"127.0.0.1:{a.source.topology.local.data_endpoint[1]}",))
    try:
        await until(lambda: len(a.source.view().members) == len(b.source.view().members) == 1)
        (seen,) = a.source.view().members
        ours, theirs = a.source.topology.local, b.source.topology.local
        assert (seen.name, seen.nickname, seen.endpoint) == (
            theirs.name, "node-b", theirs.data_endpoint,
        )  # fmt: skip
        assert seen.via is None and seen.record is not None
        assert a.source.view().live == {ours.name, theirs.name}
        assert a.changes > 0  # a was told its view changed

        b.source.publish({"blocks": ("10.32.0.0/16",), "unreachable": ("aa:00:00:00:00:09",)})
        await until(lambda: a.blocks_seen() == ("10.32.0.0/16",))
        assert [c["state"] for c in b.source.connections()] == ["established"]
    finally:
        await a.stop()
        await b.stop()
