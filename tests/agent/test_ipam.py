"""The node's IPAM (agent/ipam.py's core, agent/addresses.py's driver and state file) with real
configurations and state directories: kube/static mode over a fixed pod block, gossip mode
seeding alone, waiting for consensus and sharing the range between two nodes through their
topology records, rmpeer, persistence and status."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config_rules, config_sources, errors
from agent.addresses import STATE_FILE, Addresses, StateFile
from agent.config import Config, StaticPeer
from agent.ipam import Ipam, Settings
from gossip.topology import PeerRecord
from overlay.ipam import space, store
from overlay.ipam.claim import decode
from overlay.ipam.pool import Allocation

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address

A = "aa:00:00:00:00:01"
B = "aa:00:00:00:00:02"
C = "aa:00:00:00:00:03"
RANGE = Net("10.32.0.0/16")
POD_BLOCK = Net("10.32.1.0/28")  # 16 addresses: network, gateway, broadcast and 13 for pods
STATUS_KEYS = {
    "mode", "status", "range", "block_prefix", "blocks", "conflict", "owners", "used",
    "capacity", "pending_allocates", "pending_claims", "unreachable_addresses",
    "unreachable_percentage", "refused",
}  # fmt: skip


def make_config(state_dir: Path, **changes: Any) -> Config:
    state_dir.mkdir(parents=True, exist_ok=True)
    changes.setdefault("ipalloc_range", RANGE)
    config = dataclasses.replace(Config(), state_dir=str(state_dir), **changes)
    config_rules.validate(config)
    return config


class Box:
    """An IPAM core with its state file and address driver, wired as the daemon wires them;
    the core's attributes read through. ``step`` is the daemon's: write the state when the ring
    changed, wake waiting requests, and say whether the claim to publish changed."""

    def __init__(self, config: Config, name: str, incarnation: int) -> None:
        self.config = config
        self.state = StateFile(config.state_dir)
        self.core = Ipam(Settings.of(config), name, incarnation, self.state.load())
        self.state.save(self.core.document())
        self.kicks = 0
        self.published: dict[str, Any] = {}
        self.addresses = Addresses(self.core, self.state, config.ipam_timeout, self._wake,
                                   self._follow)  # fmt: skip
        self.addresses.started = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def _wake(self) -> None:
        self.kicks += 1

    async def _follow(self) -> None:
        pass

    async def allocate(self, container_id: str, ifname: str) -> Allocation:
        allocation = await self.addresses.take(container_id, ifname)
        await self.addresses.persist()
        return allocation

    async def release(self, container_id: str, ifname: str | None) -> list[Allocation]:
        return await self.addresses.free(container_id, ifname)

    def step(self, records: dict[str, PeerRecord], live: set[str]) -> bool:
        if self.core.step(records, live, time.time_ns()):
            self.state.save(self.core.document())
        self.addresses.space_arrived()
        return self.core.record_fields() != self.published

    def publish(self) -> dict[str, Any]:
        self.published = self.core.record_fields()
        return self.published

    def rmpeer(self, name: str, live: set[str]) -> list[Net]:
        taken = self.core.rmpeer(name, live)
        self.state.save(self.core.document())
        return taken

    def status(self, records: dict[str, PeerRecord], live: set[str], nick: str) -> Any:
        return self.core.status(records, live, nick).to_json()


def kube(tmp_path: Path, incarnation: int = 1, **changes: Any) -> Box:
    return Box(make_config(tmp_path, pod_block=POD_BLOCK, **changes), A, incarnation)


class Node:
    """An Ipam with the topology record it publishes (version bumped on every change), built
    from ``Ipam.publish()`` as the agent builds it."""

    def __init__(self, ipam: Box, incarnation: int) -> None:
        self.ipam = ipam
        self.incarnation = incarnation
        self.version = 0
        self._fields: dict[str, Any] | None = None
        self._record: PeerRecord | None = None

    @property
    def name(self) -> str:
        return self.ipam.name

    def record(self) -> PeerRecord:
        fields = self.ipam.publish()
        if self._record is None or fields != self._fields:
            self.version += 1
            self._fields = fields
            self._record = PeerRecord(
                name=self.name,
                nickname=f"node-{self.name[-1]}",
                incarnation=self.incarnation,
                version=self.version,
                uid=self.incarnation,
                data_endpoint=("192.0.2.1", 6783),
                control_endpoint=("192.0.2.1", 6783),
                **fields,
            )
        return self._record


def gossip_node(tmp_path: Path, name: str, incarnation: int, **changes: Any) -> Node:
    config = make_config(tmp_path / name.replace(":", ""), **changes)
    return Node(Box(config, name, incarnation), incarnation)


def exchange(nodes: list[Node], live: set[str], rounds: int = 30) -> None:
    """Step every node with everyone's latest record until nobody's claim changes."""
    for _ in range(rounds):
        records = {n.name: n.record() for n in nodes}
        changed = [n.ipam.step(records, live) for n in nodes]
        if not any(changed):
            return
    raise AssertionError(f"claims still changing after {rounds} rounds")


def settle_alone(ipam: Box, rounds: int = 10) -> None:
    """Step a node that sees nobody else until its claim stops changing (as the agent does:
    it publishes and steps again at once whenever a step changed the claim)."""
    for _ in range(rounds):
        if not ipam.step({}, {ipam.name}):
            return
        ipam.publish()
    raise AssertionError(f"claim still changing after {rounds} steps")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Node, Node]:
    """Two gossip nodes (consensus=2) that have seeded one ring and shared the range."""
    a = gossip_node(tmp_path, A, 1, ipalloc_init="consensus=2")
    b = gossip_node(tmp_path, B, 2, ipalloc_init="consensus=2")
    exchange([a, b], {A, B})
    return a, b


# -- kube mode: a fixed pod block ----------------------------------------------------------------


async def test_kube_allocate_is_idempotent_per_key(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    assert ipam.mode == "kube"
    first = await ipam.allocate("c1", "eth0")
    again = await ipam.allocate("c1", "eth0")
    assert first == again
    assert first.address == ipaddress.IPv4Interface("10.32.1.2/28")
    assert ipam.pool.used == 1


async def test_kube_different_keys_get_different_addresses(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    keys = [("c1", "eth0"), ("c1", "net1"), ("c2", "eth0")]
    allocations = [await ipam.allocate(cid, ifname) for cid, ifname in keys]
    addresses = [a.address.ip for a in allocations]
    assert len(set(addresses)) == 3
    assert all(a.address.network == POD_BLOCK for a in allocations)
    assert [(a.container_id, a.ifname) for a in allocations] == keys


async def test_kube_gateway_is_the_first_address_of_the_block(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    allocation = await ipam.allocate("c1", "eth0")
    assert allocation.gateway == Addr("10.32.1.1")
    assert ipam.gateways == (ipaddress.IPv4Interface("10.32.1.1/28"),)
    assert ipam.owned == [POD_BLOCK]


async def test_kube_release_frees_the_address(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    held = await ipam.allocate("c1", "eth0")
    await ipam.allocate("c2", "eth0")
    released = await ipam.release("c1", None)
    assert released == [held]
    assert ipam.pool.used == 1
    assert await ipam.release("c1", None) == []  # CNI DEL is retried: a second release is a no-op
    reused = await ipam.allocate("c3", "eth0")
    assert reused.address == held.address  # lowest free address first: the released one


async def test_kube_release_of_one_interface_keeps_the_others(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    eth0 = await ipam.allocate("c1", "eth0")
    net1 = await ipam.allocate("c1", "net1")
    assert await ipam.release("c1", "net1") == [net1]
    assert ipam.pool.get("c1", "eth0") == eth0
    assert ipam.pool.get("c1", "net1") is None


async def test_kube_restart_returns_the_same_addresses(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    before = {key: await ipam.allocate(*key) for key in [("c1", "eth0"), ("c2", "eth0")]}
    await ipam.release("c1", "eth0")
    kept = before[("c2", "eth0")]

    restarted = kube(tmp_path, incarnation=2)
    assert restarted.pool.used == 1
    assert await restarted.allocate("c2", "eth0") == kept
    fresh = await restarted.allocate("c4", "eth0")
    assert fresh.address.ip != kept.address.ip


async def test_kube_config_from_the_environment(tmp_path: Path) -> None:
    config = config_sources.load(
        None,
        {"WEAVE_STATE_DIR": str(tmp_path), "WEAVE_POD_BLOCK": str(POD_BLOCK), "HOSTNAME": "n1"},
    )
    ipam = Box(config, A, 1)
    allocation = await ipam.allocate("c1", "eth0")
    assert allocation.address.network == POD_BLOCK
    assert ipam.record_fields() == {"blocks": (str(POD_BLOCK),), "meta": b""}


async def test_kube_full_block_is_507_naming_the_block(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    allocations = [await ipam.allocate(f"c{i}", "eth0") for i in range(13)]
    assert len({a.address.ip for a in allocations}) == 13
    assert {int(a.address.ip) - int(POD_BLOCK.network_address) for a in allocations} == set(
        range(2, 15)
    )
    start = time.monotonic()
    with pytest.raises(errors.NoAddress) as caught:
        await ipam.allocate("c13", "eth0")
    assert time.monotonic() - start < 1.0  # answered at once, not after ipam_timeout
    assert str(POD_BLOCK) in caught.value.message
    assert ipam.pool.used == 13 and ipam.pending == 0
    assert await ipam.allocate("c0", "eth0") == allocations[0]  # held keys still answer
    await ipam.release("c5", None)
    assert (await ipam.allocate("c13", "eth0")).address == allocations[5].address


@pytest.mark.parametrize(
    ("container_id", "ifname"),
    [
        ("", "eth0"),
        ("has space", "eth0"),
        ("x" * 256, "eth0"),
        ("caf\u00e9", "eth0"),
        ("c1", ""),
        ("c1", "a/b"),
        ("c1", "eth:0"),
        ("c1", ".."),
        ("c1", "x" * 16),
    ],
)
async def test_kube_bad_keys_are_400(tmp_path: Path, container_id: str, ifname: str) -> None:
    ipam = kube(tmp_path)
    with pytest.raises(errors.Invalid):
        await ipam.allocate(container_id, ifname)
    with pytest.raises(errors.Invalid):
        await ipam.release(container_id, ifname)
    assert ipam.pool.used == 0


async def test_static_mode_publishes_its_block_and_refuses_rmpeer(tmp_path: Path) -> None:
    other = StaticPeer("other", "192.0.2.2", 6783, (Net("10.32.2.0/24"),))
    ipam = kube(tmp_path, peers=(other,))
    assert ipam.mode == "static"
    assert ipam.record_fields() == {"blocks": (str(POD_BLOCK),), "meta": b""}
    assert ipam.core.step({}, {A}, time.time_ns()) is False  # no ring: nothing to decide
    with pytest.raises(errors.Conflict) as caught:
        ipam.rmpeer(B, {A})
    assert "static" in caught.value.message


# -- gossip mode: a lone node ------------------------------------------------------------------


async def test_lone_node_allocation_waits_for_the_ring_then_completes(tmp_path: Path) -> None:
    ipam = Box(make_config(tmp_path, ipam_timeout=5.0), A, 1)
    task = asyncio.create_task(ipam.allocate("c1", "eth0"))
    await asyncio.sleep(0.05)
    assert not task.done()  # no space before any step
    assert ipam.owned == []
    assert ipam.pending == 1
    assert ipam.kicks  # asked the agent to step
    assert ipam.status({}, {A}, "a")["pending_allocates"] == 1

    start = time.monotonic()
    settle_alone(ipam)
    allocation = await asyncio.wait_for(task, 5.0)
    assert time.monotonic() - start < 5.0
    assert allocation.address.ip in RANGE
    assert allocation.gateway == Addr("10.32.0.1")
    assert ipam.owned == [RANGE]
    assert ipam.pending == 0


async def test_lone_node_owns_the_range_and_publishes_its_ring(tmp_path: Path) -> None:
    ipam = Box(make_config(tmp_path), A, 1)
    assert ipam.record_fields()["blocks"] == ()
    settle_alone(ipam)
    assert ipam.owned == [RANGE]
    fields = ipam.record_fields()
    assert fields["blocks"] == tuple(str(n) for n in ipam.owned)
    claim = decode(fields["blocks"], fields["meta"])
    assert claim.ring is not None
    assert claim.ring[1] == A  # seeded by us
    assert claim.owned == (RANGE,)
    assert ipam.status({}, {A}, "a")["status"] == "ready"


async def test_consensus_of_three_alone_times_out_with_504(tmp_path: Path) -> None:
    timeout = 0.3
    ipam = Box(make_config(tmp_path, ipalloc_init="consensus=3", ipam_timeout=timeout), A, 1)

    async def agent_steps() -> None:  # the agent steps on every heartbeat
        while True:
            if ipam.step({}, {A}):
                ipam.publish()
            await asyncio.sleep(0.02)

    stepper = asyncio.create_task(agent_steps())
    try:
        start = time.monotonic()
        with pytest.raises(errors.TimedOut) as caught:
            await ipam.allocate("c1", "eth0")
        elapsed = time.monotonic() - start
    finally:
        stepper.cancel()
    assert "awaiting consensus" in caught.value.message
    assert "try again later" in caught.value.message
    assert ipam.kicks == 1  # asked for a step once, then waited for the steps to come
    assert timeout * 0.9 <= elapsed < timeout + 1.0
    assert ipam.owned == []
    assert ipam.pending == 0
    assert ipam.pool.used == 0


async def test_lone_node_with_its_range_full_is_507_naming_the_range(tmp_path: Path) -> None:
    small = Net("10.32.0.0/28")  # four /30 blocks with one pod address each
    ipam = Box(make_config(tmp_path, ipalloc_range=small, ipalloc_block=30), A, 1)
    settle_alone(ipam)
    for i in range(4):
        await ipam.allocate(f"c{i}", "eth0")
    ipam.step({}, {A})  # the agent steps: the full node asks for space nobody has
    with pytest.raises(errors.NoAddress) as caught:
        await ipam.allocate("c4", "eth0")
    assert str(small) in caught.value.message


# -- gossip mode: two nodes --------------------------------------------------------------------


def test_two_nodes_share_the_range_disjointly(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert a.ipam.owned and b.ipam.owned
    assert not space.overlaps(a.ipam.owned, b.ipam.owned)
    assert space.size([*a.ipam.owned, *b.ipam.owned]) == RANGE.num_addresses
    claim_a = decode(a.record().blocks, a.record().meta)
    claim_b = decode(b.record().blocks, b.record().meta)
    assert claim_a.ring is not None
    assert claim_a.ring == claim_b.ring  # one ring, seeded once


def test_routable_gives_the_other_nodes_space(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert a.ipam.routable(b.record()) == tuple(b.ipam.owned)
    assert b.ipam.routable(a.record()) == tuple(a.ipam.owned)
    assert not a.ipam.malformed


def test_space_of_another_ring_is_not_routable(pair: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = pair
    c = gossip_node(tmp_path, C, 3, ipalloc_init="consensus=1")
    settle_alone(c.ipam)
    assert c.ipam.owned == [RANGE]  # overlaps everything a routes: must never be routed
    assert a.ipam.routable(c.record()) == ()
    assert a.ipam.malformed[C] == 0  # readable, just not ours


def test_unreadable_claims_are_not_routable_and_counted(pair: tuple[Node, Node]) -> None:
    a, b = pair
    good = b.record()
    garbage = dataclasses.replace(good, version=good.version + 1, meta=b"\xc1")
    assert a.ipam.routable(garbage) == ()
    assert a.ipam.malformed[B] == 1
    assert a.ipam.routable(garbage) == ()
    assert a.ipam.malformed[B] == 2
    bad_blocks = dataclasses.replace(good, version=good.version + 2, blocks=("not-a-cidr",))
    assert a.ipam.routable(bad_blocks) == ()
    assert a.ipam.malformed[B] == 3
    owned = a.ipam.owned
    a.ipam.step({A: a.record(), B: garbage}, {A, B})  # the step ignores it too
    assert a.ipam.owned == owned


# -- rmpeer -----------------------------------------------------------------------------------


def test_rmpeer_is_refused_while_the_peer_is_live(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    owned = a.ipam.owned
    with pytest.raises(errors.Conflict) as caught:
        a.ipam.rmpeer(B, {A, B})
    assert B in caught.value.message
    assert a.ipam.owned == owned
    for name in (A, C):  # ourselves; a peer that owns nothing we know of
        with pytest.raises(errors.Conflict):
            a.ipam.rmpeer(name, {A})


def test_rmpeer_takes_a_dead_peers_space(pair: tuple[Node, Node]) -> None:
    a, b = pair
    theirs = b.ipam.owned
    a.ipam.step({A: a.record(), B: b.record()}, {A})  # b is gone from the live set
    taken = a.ipam.rmpeer(B, {A})
    assert taken == theirs
    assert a.ipam.owned == [RANGE]
    status = a.ipam.status({A: a.record(), B: b.record()}, {A}, "node-1")
    assert [(o["name"], o["local"], o["owned"]) for o in status["owners"]] == [
        (A, True, [str(RANGE)])
    ]
    assert status["unreachable_addresses"] == 0
    # the claim we publish says so, and the reclaimed space survives a restart
    assert decode(a.record().blocks, a.record().meta).removed == ((B, b.incarnation),)
    restarted = Box(a.ipam.config, A, 10)
    assert restarted.owned == [RANGE]


async def test_removed_peer_with_pods_gives_up_the_reclaimed_space(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    await b.ipam.allocate("pod", "eth0")
    exchange([a, b], {A, B})
    b.ipam.step({A: a.record(), B: b.record()}, {B})  # a partition: b sees a as dead
    a.ipam.step({A: a.record(), B: b.record()}, {A})  # and a sees b as dead
    a.ipam.rmpeer(B, {A})
    b.ipam.step({A: a.record(), B: b.record()}, {A, B})  # healed: b learns it was removed
    assert not space.overlaps(b.ipam.owned, a.ipam.owned)
    conflict = b.ipam.status({}, {A, B}, "node-2")["conflict"]
    assert conflict is not None and "rmpeer" in conflict
    assert b.ipam.pool.used == 0  # its pod's address is forgotten, not handed out twice
    assert b.ipam.pool.get("pod", "eth0") is None


# -- persistence ------------------------------------------------------------------------------


async def test_state_file_is_valid_after_each_allocation(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    path = tmp_path / STATE_FILE
    for i in range(3):
        allocation = await ipam.allocate(f"c{i}", "eth0")
        document = store.load(str(path))
        assert document is not None
        rows = document["pool"]["allocations"]
        assert [f"c{i}", "eth0", str(allocation.address.ip)] in rows
        assert len(rows) == i + 1
        assert json.loads(path.read_bytes())["format"] == store.FORMAT


async def test_gossip_state_is_saved_and_restored(tmp_path: Path) -> None:
    ipam = Box(make_config(tmp_path), A, 1)
    settle_alone(ipam)
    allocation = await ipam.allocate("c1", "eth0")
    document = store.load(str(tmp_path / STATE_FILE))
    assert document is not None
    assert document["ring"]["owned"] == [str(RANGE)]

    restarted = Box(ipam.config, A, 2)
    assert restarted.owned == [RANGE]
    assert await restarted.allocate("c1", "eth0") == allocation
    assert restarted.record_fields()["blocks"] == (str(RANGE),)
    claim = decode(restarted.record_fields()["blocks"], restarted.record_fields()["meta"])
    assert claim.ring == decode(ipam.record_fields()["blocks"], ipam.record_fields()["meta"]).ring


async def test_leftover_temp_file_does_not_stop_a_restart(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    kept = await ipam.allocate("c1", "eth0")
    leftover = tmp_path / f".{STATE_FILE}.tmp-99999"
    leftover.write_bytes(b"\x00garbage{")  # a save that crashed half-way
    restarted = kube(tmp_path, incarnation=2)
    assert await restarted.allocate("c1", "eth0") == kept
    assert restarted.pool.used == 1
    assert not leftover.exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_corrupt_state_file_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"{not json")
    with pytest.raises(store.StoreError, match=STATE_FILE):
        kube(tmp_path)


@pytest.mark.parametrize(
    "document",
    [{}, {"ring": None}, {"pool": {"block_prefix": 28, "owned": [], "allocations": []}},
     {"ring": None, "pool": None}, {"ring": [], "pool": {}}],
)  # fmt: skip
def test_a_state_file_without_what_a_node_holds_is_refused_like_a_corrupt_one(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / STATE_FILE
    path.write_text(json.dumps({"format": 1, **document}))
    with pytest.raises(store.StoreError, match=STATE_FILE):
        kube(tmp_path)
    assert json.loads(path.read_text()) == {"format": 1, **document}  # left as it was


async def test_the_state_is_written_off_the_event_loop_in_the_order_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[int, int]] = []
    save = store.save

    def spy(path: str, document: Any) -> None:
        writes.append((threading.get_ident(), document["n"]))
        save(path, document)

    monkeypatch.setattr(store, "save", spy)
    state = StateFile(str(tmp_path))
    await asyncio.gather(*(state.flush({"n": n}) for n in range(6)))
    state.close()
    assert writes and threading.get_ident() not in {thread for thread, _n in writes}
    assert [n for _thread, n in writes] == sorted(n for _thread, n in writes)
    assert writes[-1][1] == 5 and store.load(state.path) == {"n": 5}


# -- status -----------------------------------------------------------------------------------


def test_status_of_a_fresh_gossip_node(tmp_path: Path) -> None:
    ipam = Box(make_config(tmp_path), A, 1)
    status = ipam.status({}, {A}, "node-1")
    assert set(status) == STATUS_KEYS
    assert status["mode"] == "gossip"
    assert status["range"] == str(RANGE)
    assert status["block_prefix"] == 24
    assert status["owners"] == []
    assert (status["used"], status["capacity"]) == (0, 0)
    assert (status["unreachable_addresses"], status["unreachable_percentage"]) == (0, 0.0)


async def test_status_in_kube_mode_counts_unreachable_owners(tmp_path: Path) -> None:
    ipam = kube(tmp_path)
    await ipam.allocate("c1", "eth0")
    ours = PeerRecord(A, "node-1", 1, 1, 1, ("192.0.2.1", 6783), ("192.0.2.1", 6783),
                      blocks=(str(POD_BLOCK),))  # fmt: skip
    other = PeerRecord(B, "node-2", 1, 1, 2, ("192.0.2.2", 6783), ("192.0.2.2", 6783),
                       blocks=("10.32.2.0/24",))  # fmt: skip
    ipam.step({A: ours, B: other}, {A})
    status = ipam.status({A: ours, B: other}, {A}, "node-1")
    assert set(status) == STATUS_KEYS
    assert status["mode"] == "kube"
    assert status["status"] == "ready"
    assert status["conflict"] is None
    assert status["blocks"] == [str(POD_BLOCK)]
    assert (status["used"], status["capacity"]) == (1, 13)
    local, remote = status["owners"]  # our own record is not listed a second time
    assert (local["name"], local["local"], local["reachable"]) == (A, True, True)
    assert local["owned"] == [str(POD_BLOCK)] and local["active"] == 1
    assert (remote["name"], remote["nickname"], remote["reachable"]) == (B, "node-2", False)
    assert remote["addresses"] == 256
    assert status["unreachable_addresses"] == 256
    assert status["unreachable_percentage"] == round(100.0 * 256 / RANGE.num_addresses, 2)

    status = ipam.status({A: ours, B: other}, {A, B}, "node-1")
    assert status["owners"][1]["reachable"] is True
    assert status["unreachable_addresses"] == 0


async def test_status_in_gossip_mode_counts_unreachable_owners(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.ipam.allocate("c1", "eth0")
    records = {A: a.record(), B: b.record()}
    status = a.ipam.status(records, {A, B}, "node-1")
    assert set(status) == STATUS_KEYS
    assert status["status"] == "ready"
    assert status["used"] == 1
    assert status["pending_allocates"] == 0 and status["pending_claims"] == 0
    by_name = {o["name"]: o for o in status["owners"]}
    assert set(by_name) == {A, B}
    assert by_name[B]["owned"] == [str(n) for n in b.ipam.owned]
    assert by_name[B]["nickname"] == b.record().nickname
    assert all(o["reachable"] for o in status["owners"])
    assert status["unreachable_addresses"] == 0

    status = a.ipam.status(records, {A}, "node-1")
    by_name = {o["name"]: o for o in status["owners"]}
    assert by_name[A]["reachable"] is True
    assert by_name[B]["reachable"] is False
    lost = space.size(b.ipam.owned)
    assert status["unreachable_addresses"] == lost
    assert status["unreachable_percentage"] == round(100.0 * lost / RANGE.num_addresses, 2)
