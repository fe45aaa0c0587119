"""The pod address pool: idempotent keys, lowest-first blocks, safe ownership changes.

The property test runs the pool against a naive model that lists every address of a small
space, so "lowest free address of the active blocks" is checked literally, step by step.
"""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, collapse_addresses
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from overlay.ipam.pool import Allocation, Pool
from overlay.ipam.validation import PoolError

N = IPv4Network
A = IPv4Address


def pool_of(*cidrs: str, block_prefix: int = 24) -> Pool:
    pool = Pool(block_prefix)
    pool.set_owned([N(c) for c in cidrs])
    return pool


def addr(allocation: Allocation | None) -> str:
    assert allocation is not None
    return str(allocation.address)


# -- allocate and release -----------------------------------------------------------------


def test_first_allocation_is_the_lowest_pod_address_of_the_primary_block() -> None:
    pool = pool_of("10.32.0.0/23")
    got = pool.allocate("c1", "eth0")
    assert got == Allocation("c1", "eth0", IPv4Interface("10.32.0.2/24"), A("10.32.0.1"))
    assert pool.active_blocks == (N("10.32.0.0/24"),)
    assert pool.gateways == (IPv4Interface("10.32.0.1/24"),)
    assert pool.capacity == 2 * 253 and pool.used == 1


def test_primary_block_is_active_before_any_allocation() -> None:
    pool = pool_of("10.32.4.0/22", "10.32.0.0/24")
    assert pool.owned == (N("10.32.0.0/24"), N("10.32.4.0/22"))
    assert pool.active_blocks == (N("10.32.0.0/24"),)
    assert pool.free_space() == [N("10.32.4.0/22")]
    assert Pool().active_blocks == () and Pool().free_space() == []


def test_allocate_is_idempotent_per_key() -> None:
    pool = pool_of("10.32.0.0/24")
    first = pool.allocate("c1", "eth0")
    assert pool.allocate("c1", "eth0") is first
    assert pool.get("c1", "eth0") is first
    assert addr(pool.allocate("c1", "net1")) == "10.32.0.3/24"
    assert addr(pool.allocate("c2", "eth0")) == "10.32.0.4/24"
    assert pool.used == 3
    assert pool.holder(A("10.32.0.3")) == ("c1", "net1")
    assert pool.holder(A("10.32.0.5")) is None


def test_release_one_interface_then_the_whole_container() -> None:
    pool = pool_of("10.32.0.0/24")
    eth0, net1 = pool.allocate("c1", "eth0"), pool.allocate("c1", "net1")
    other = pool.allocate("c2", "eth0")
    assert pool.release("c1", "net1") == [net1]
    assert pool.release("c1", "net1") == []
    assert pool.get("c1", "net1") is None and pool.get("c1", "eth0") is eth0
    net1 = pool.allocate("c1", "net1")
    assert pool.release("c1") == [eth0, net1]
    assert pool.release("c1") == [] and pool.release("never", "eth0") == []
    assert pool.allocations() == [other]


def test_released_addresses_are_reused_lowest_first() -> None:
    pool = pool_of("10.32.0.0/24")
    for i in range(5):
        pool.allocate(f"c{i}", "eth0")
    pool.release("c3")
    pool.release("c1")
    assert addr(pool.allocate("new1", "eth0")) == "10.32.0.3/24"
    assert addr(pool.allocate("new2", "eth0")) == "10.32.0.5/24"
    assert addr(pool.allocate("new3", "eth0")) == "10.32.0.7/24"


def test_allocations_are_sorted_by_address() -> None:
    pool = pool_of("10.32.0.0/24")
    for name in ("z", "a", "m"):
        pool.allocate(name, "eth0")
    pool.release("z")
    pool.allocate("b", "eth0")
    assert [(a.container_id, str(a.address.ip)) for a in pool.allocations()] == [
        ("b", "10.32.0.2"),
        ("a", "10.32.0.3"),
        ("m", "10.32.0.4"),
    ]


def test_a_thousand_random_cycles_leave_a_clean_pool() -> None:
    rng = random.Random(1234)
    pool = pool_of("10.32.0.0/23")
    keys = [(f"c{i}", ifname) for i in range(250) for ifname in ("eth0", "net1")]  # < 506
    holders: dict[IPv4Address, tuple[str, str]] = {}
    most_blocks = 0
    for _ in range(1000):
        container_id, ifname = rng.choice(keys)
        if rng.random() < 0.7:
            got = pool.allocate(container_id, ifname)
            assert got is not None
            assert holders.setdefault(got.address.ip, (container_id, ifname)) == (
                container_id,
                ifname,
            ), f"{got.address} handed to two keys"
        else:
            for gone in pool.release(container_id, rng.choice([ifname, None])):
                assert holders.pop(gone.address.ip) == (gone.container_id, gone.ifname)
        assert pool.used == len(holders)
        most_blocks = max(most_blocks, len(pool.active_blocks))
    assert most_blocks == 2, "the cycle should have spilled into the second block"
    containers = sorted({key[0] for key in keys})
    rng.shuffle(containers)
    for container_id in containers:
        pool.release(container_id)
    assert pool.used == 0 and pool.allocations() == []
    assert pool.active_blocks == (N("10.32.0.0/24"),)
    assert pool.free_space() == [N("10.32.1.0/24")]
    assert addr(pool.allocate("again", "eth0")) == "10.32.0.2/24"


# -- blocks and owned space ---------------------------------------------------------------


def test_a_full_block_activates_the_next_and_an_empty_one_retires() -> None:
    pool = pool_of("10.32.0.0/23")
    for i in range(253):
        pool.allocate(f"c{i}", "eth0")
    assert addr(pool.allocate("c252", "eth0")) == "10.32.0.254/24"
    assert pool.free_space() == [N("10.32.1.0/24")]
    spill = pool.allocate("spill", "eth0")
    assert spill == Allocation("spill", "eth0", IPv4Interface("10.32.1.2/24"), A("10.32.1.1"))
    assert pool.active_blocks == (N("10.32.0.0/24"), N("10.32.1.0/24"))
    assert pool.gateways == (IPv4Interface("10.32.0.1/24"), IPv4Interface("10.32.1.1/24"))
    assert pool.free_space() == []
    pool.release("c7")
    assert addr(pool.allocate("low", "eth0")) == "10.32.0.9/24", "lowest active address first"
    pool.release("spill")
    assert pool.active_blocks == (N("10.32.0.0/24"),)
    assert pool.free_space() == [N("10.32.1.0/24")]


def test_primary_block_stays_active_when_emptied() -> None:
    pool = pool_of("10.32.0.0/23")
    pool.allocate("c", "eth0")
    pool.release("c")
    assert pool.active_blocks == (N("10.32.0.0/24"),)


def test_full_owned_space_returns_none_until_space_grows() -> None:
    pool = pool_of("10.32.0.0/27", block_prefix=28)
    assert pool.capacity == 26
    got = [pool.allocate(f"c{i}", "eth0") for i in range(26)]
    assert all(got) and len({a.address for a in got if a}) == 26
    assert pool.allocate("more", "eth0") is None
    assert pool.get("more", "eth0") is None and pool.used == 26
    pool.set_owned([N("10.32.0.0/27"), N("10.32.0.64/28")])
    assert addr(pool.allocate("more", "eth0")) == "10.32.0.66/28"
    assert pool.capacity == 39


def test_set_owned_refuses_to_drop_an_allocated_address() -> None:
    pool = pool_of("10.32.0.0/27", block_prefix=28)
    for i in range(14):
        pool.allocate(f"c{i}", "eth0")
    with pytest.raises(PoolError, match=r"drops 1 allocated address\(es\), first 10\.32\.0\.18"):
        pool.set_owned([N("10.32.0.0/28"), N("10.32.0.64/28")])
    assert pool.owned == (N("10.32.0.0/27"),), "a refused change changes nothing"
    with pytest.raises(PoolError, match="drops 14"):
        pool.set_owned([])
    pool.release("c13")
    pool.set_owned([N("10.32.0.0/28")])
    assert pool.active_blocks == (N("10.32.0.0/28"),) and pool.free_space() == []


def test_a_new_lower_primary_retires_an_empty_old_one() -> None:
    pool = pool_of("10.32.1.0/24")
    pool.set_owned([N("10.32.0.0/24"), N("10.32.1.0/24")])
    assert pool.active_blocks == (N("10.32.0.0/24"),)
    assert addr(pool.allocate("c", "eth0")) == "10.32.0.2/24"
    with pytest.raises(PoolError, match="drops 1"):
        pool.set_owned([N("10.32.1.0/24")])


def test_space_added_below_the_blocks_in_use_stays_free() -> None:
    # e.g. reclaimed with rmpeer: the node may give it away, so it does not become active
    pool = pool_of("10.32.1.0/24")
    pool.allocate("c", "eth0")
    pool.set_owned([N("10.32.1.0/24"), N("10.32.0.0/24")])
    assert pool.active_blocks == (N("10.32.1.0/24"),)
    assert pool.free_space() == [N("10.32.0.0/24")]
    assert addr(pool.allocate("d", "eth0")) == "10.32.1.3/24"
    pool.release("c")
    pool.release("d")
    assert pool.active_blocks == (N("10.32.0.0/24"),)  # no pods: the lowest owned block


@pytest.mark.parametrize(
    ("owned", "message"),
    [
        (["10.32.0.0/25"], r"owned\[0\]: 10\.32\.0\.0/25 is smaller than a block \(/24\)"),
        (["10.32.0.0/23", "10.32.1.0/24"], r"owned: 10\.32\.0\.0/23 overlaps 10\.32\.1\.0/24"),
        (["10.32.0.0/24", "10.32.0.0/24"], "overlaps"),
        (["10.32.0.1/24"], r"owned\[0\]: 10\.32\.0\.1/24 has host bits set"),
        ([IPv4Address("10.32.0.0")], r"owned\[0\]: expected an IPv4 network"),
    ],
)
def test_bad_owned_space_is_refused(owned: list[Any], message: str) -> None:
    pool = pool_of("10.40.0.0/24")
    with pytest.raises(PoolError, match=message):
        pool.set_owned(owned)
    assert pool.owned == (N("10.40.0.0/24"),)


def test_a_slash_8_is_walked_without_enumerating_blocks() -> None:
    # /30 blocks hold one pod each, so every allocation activates a block
    pool = pool_of("10.0.0.0/8", block_prefix=30)
    assert pool.capacity == 1 << 22
    for i in range(3000):
        assert addr(pool.allocate(f"c{i}", "eth0")) == f"{A(0x0A000002 + 4 * i)}/30"
    for i in (2999, 1500, 7, 1501):
        pool.release(f"c{i}")
    assert [addr(pool.allocate(f"n{i}", "eth0")) for i in range(5)] == [
        "10.0.0.30/30",
        "10.0.23.114/30",
        "10.0.23.118/30",
        "10.0.46.222/30",
        "10.0.46.226/30",
    ]
    assert len(pool.active_blocks) == 3001
    assert pool.free_space()[0] == N("10.0.46.228/30")


@pytest.mark.parametrize("prefix", [7, 31, 32, True, "24"])
def test_block_prefix_is_8_to_30(prefix: Any) -> None:
    with pytest.raises(PoolError, match=r"block prefix must be an integer 8\.\.30"):
        Pool(prefix)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("container_id", "message"),
    [
        ("", "container id is empty"),
        ("a" * 256, "container id is 256 characters long, at most 255 allowed"),
        ("ab c", r"container id has ' ' at index 2: only printable ASCII without whitespace"),
        ("a\tb", r"container id has '\\t' at index 1"),
        ("caf\u00e9", r"container id has '\u00e9' at index 3"),
        (42, "container id must be a string, got int"),
    ],
)
def test_bad_container_ids_are_refused(container_id: Any, message: str) -> None:
    pool = pool_of("10.32.0.0/24")
    with pytest.raises(PoolError, match=message):
        pool.allocate(container_id, "eth0")
    with pytest.raises(PoolError, match=message):
        pool.release(container_id)
    assert pool.used == 0


@pytest.mark.parametrize(
    ("ifname", "message"),
    [
        ("", "interface name is empty"),
        ("a" * 16, "interface name 'aaaaaaaaaaaaaaaa' is 16 characters long, at most 15 allowed"),
        (".", "interface name '.' is not allowed"),
        ("..", "interface name '..' is not allowed"),
        ("a/b", r"interface name 'a/b' has '/' at index 1"),
        ("a:b", r"interface name 'a:b' has ':' at index 1"),
        ("eth 0", r"has ' ' at index 3"),
        ("eth\n", r"has '\\n' at index 3"),
        (None, "interface name must be a string, got NoneType"),
    ],
)
def test_bad_interface_names_are_refused(ifname: Any, message: str) -> None:
    pool = pool_of("10.32.0.0/24")
    with pytest.raises(PoolError, match=message):
        pool.allocate("c1", ifname)
    assert pool.used == 0


def test_longest_valid_keys_are_accepted() -> None:
    pool = pool_of("10.32.0.0/24")
    assert pool.allocate("~" * 255, "e" * 15) is not None


# -- state documents ----------------------------------------------------------------------


def test_state_round_trip_through_json() -> None:
    pool = pool_of("10.32.0.0/23", "10.40.0.0/24")
    for i in range(260):
        pool.allocate(f"c{i}", "eth0")
    pool.release("c3")
    pool.release("c100")
    state = pool.to_state()
    assert state["block_prefix"] == 24
    assert state["owned"] == ["10.32.0.0/23", "10.40.0.0/24"]
    assert state["allocations"][:2] == [["c0", "eth0", "10.32.0.2"], ["c1", "eth0", "10.32.0.3"]]
    back = Pool.from_state(json.loads(json.dumps(state)))
    assert_same(back, pool)
    assert addr(back.allocate("n", "eth0")) == addr(pool.allocate("n", "eth0")) == "10.32.0.5/24"
    assert addr(back.allocate("m", "eth0")) == addr(pool.allocate("m", "eth0")) == "10.32.0.102/24"


def test_from_state_ignores_other_fields() -> None:
    state = {"block_prefix": 26, "owned": [], "allocations": [], "format": 1, "node": "x"}
    assert Pool.from_state(state).block_prefix == 26


def good_state(**change: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "block_prefix": 24,
        "owned": ["10.32.0.0/23"],
        "allocations": [["c1", "eth0", "10.32.0.2"], ["c2", "eth0", "10.32.1.2"]],
    }
    return {**state, **change}


def rows(*extra: Any) -> dict[str, Any]:
    return good_state(allocations=[["c1", "eth0", "10.32.0.2"], *extra])


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([], "state: expected an object, got list"),
        ({"owned": [], "allocations": []}, "state.block_prefix: missing"),
        (good_state(owned=None), "state.owned: expected a list, got NoneType"),
        (good_state(allocations={}), "state.allocations: expected a list, got dict"),
        (good_state(block_prefix=31), "state.block_prefix: block prefix must be an integer"),
        (good_state(block_prefix="24"), "state.block_prefix: block prefix must be an integer"),
        (good_state(owned=["10.32.0.0/33"]), r"state.owned\[0\]: "),
        (good_state(owned=["10.32.0.0/23", 7]), r"state.owned\[1\]: expected an IPv4 network"),
        (good_state(owned=["10.32.0.0/25"]), r"state.owned\[0\]: .* smaller than a block"),
        (good_state(owned=["10.32.0.0/23", "10.32.1.0/24"]), "state.owned: .* overlaps"),
        (rows(["c2", "eth0"]), r"state.allocations\[1\]: expected \[container id, ifname"),
        (rows(["c2", "eth0", 5]), r"state.allocations\[1\]: expected"),
        (rows("c2 eth0 10.32.0.3"), r"state.allocations\[1\]: expected"),
        (rows(["", "eth0", "10.32.0.3"]), r"state.allocations\[1\]: container id is empty"),
        (rows(["c2", "a/b", "10.32.0.3"]), r"state.allocations\[1\]: interface name 'a/b'"),
        (rows(["c2", "eth0", "10.32.0.300"]), r"state.allocations\[1\]: .*10\.32\.0\.300"),
        (rows(["c2", "eth0", "10.33.0.3"]), r"\[1\]: 10\.33\.0\.3 is outside the owned space"),
        (rows(["c2", "eth0", "10.32.1.0"]), r"\[1\]: 10\.32\.1\.0 is the network, gateway"),
        (rows(["c2", "eth0", "10.32.1.1"]), r"\[1\]: 10\.32\.1\.1 is the network, gateway"),
        (rows(["c2", "eth0", "10.32.1.255"]), r"broadcast address of 10\.32\.1\.0/24"),
        (rows(["c1", "eth0", "10.32.0.3"]), r"\[1\]: \('c1', 'eth0'\) is listed twice"),
        (
            rows(["c2", "eth0", "10.32.0.2"]),
            r"\[1\]: 10\.32\.0\.2 is also held by \('c1', 'eth0'\)",
        ),
    ],
)
def test_bad_state_documents_name_the_field(state: Any, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        Pool.from_state(state)


def test_good_state_document_restores_blocks() -> None:
    pool = Pool.from_state(good_state())
    assert pool.active_blocks == (N("10.32.0.0/24"), N("10.32.1.0/24"))
    assert pool.holder(A("10.32.1.2")) == ("c2", "eth0")
    assert addr(pool.allocate("c3", "eth0")) == "10.32.0.3/24"


# -- the pool against a naive model -------------------------------------------------------

SPACE = N("10.32.0.0/24")
PREFIX = 28
CONTAINERS = ["a", "b", "c", "d", "e", "f", "g"]
IFNAMES = ["eth0", "net1", "net2"]


def block_of(address: IPv4Address) -> IPv4Network:
    return N(f"{address}/{PREFIX}", strict=False)


class PoolMachine(RuleBasedStateMachine):
    """Random allocate/release/grow/shrink/restore; the model lists every address."""

    @initialize(first=st.sampled_from(list(SPACE.subnets(new_prefix=PREFIX))))
    def start(self, first: IPv4Network) -> None:
        self.pool = Pool(PREFIX)
        self.pool.set_owned([first])
        self.owned: set[IPv4Network] = {first}
        self.held: dict[tuple[str, str], IPv4Address] = {}

    def model_active(self) -> list[IPv4Network]:
        active = {block_of(address) for address in self.held.values()}
        if self.owned and not active:  # primary: the lowest owned block when none is in use
            active.add(min(b for o in self.owned for b in o.subnets(new_prefix=PREFIX)))
        return sorted(active)

    def model_next(self) -> IPv4Address | None:
        taken = set(self.held.values())
        for block in self.model_active():
            free = [a for a in list(block)[2:-1] if a not in taken]
            if free:
                return free[0]
        active = set(self.model_active())
        blocks = sorted(b for o in self.owned for b in o.subnets(new_prefix=PREFIX))
        for block in blocks:
            if block not in active:
                return list(block)[2]
        return None

    @rule(container_id=st.sampled_from(CONTAINERS), ifname=st.sampled_from(IFNAMES))
    def allocate(self, container_id: str, ifname: str) -> None:
        key = (container_id, ifname)
        expected = self.held[key] if key in self.held else self.model_next()
        got = self.pool.allocate(container_id, ifname)
        if expected is None:
            assert got is None
            return
        assert got is not None and got.address.ip == expected
        assert got.gateway == block_of(expected).network_address + 1
        self.held[key] = expected

    @rule(container_id=st.sampled_from(CONTAINERS), ifname=st.sampled_from([*IFNAMES, None]))
    def release(self, container_id: str, ifname: str | None) -> None:
        gone = {k: a for k, a in self.held.items() if k[0] == container_id}
        if ifname is not None:
            gone = {k: a for k, a in gone.items() if k[1] == ifname}
        released = self.pool.release(container_id, ifname)
        assert {(a.container_id, a.ifname): a.address.ip for a in released} == gone
        for key in gone:
            del self.held[key]

    @rule(data=st.data())
    def grow(self, data: st.DataObject) -> None:
        candidates = [
            net
            for prefix in (26, 27, 28)
            for net in SPACE.subnets(new_prefix=prefix)
            if not any(net.overlaps(o) for o in self.owned)
        ]
        if candidates:
            self.owned.add(data.draw(st.sampled_from(candidates)))
            self.pool.set_owned(self.owned)

    @rule(data=st.data())
    def shrink(self, data: st.DataObject) -> None:
        if not self.owned:
            return
        drop = data.draw(st.sampled_from(sorted(self.owned)))
        rest = self.owned - {drop}
        if any(address in drop for address in self.held.values()):
            with pytest.raises(PoolError, match="drops"):
                self.pool.set_owned(rest)
        else:
            self.pool.set_owned(rest)
            self.owned = rest

    @rule()
    def restore(self) -> None:
        back = Pool.from_state(json.loads(json.dumps(self.pool.to_state())))
        assert_same(back, self.pool)
        self.pool = back

    @invariant()
    def one_holder_per_address(self) -> None:
        allocations = self.pool.allocations()
        assert len({a.address for a in allocations}) == len(allocations) == self.pool.used
        for a in allocations:
            assert self.pool.holder(a.address.ip) == (a.container_id, a.ifname)
            assert self.pool.get(a.container_id, a.ifname) is a
        assert {(a.container_id, a.ifname): a.address.ip for a in allocations} == self.held

    @invariant()
    def blocks_match_the_model(self) -> None:
        assert list(self.pool.active_blocks) == self.model_active()
        assert self.pool.owned == tuple(sorted(self.owned))
        owned_blocks = [b for o in self.owned for b in o.subnets(new_prefix=PREFIX)]
        assert self.pool.capacity == len(owned_blocks) * (2 ** (32 - PREFIX) - 3)
        free = [b for b in owned_blocks if b not in self.model_active()]
        assert self.pool.free_space() == list(collapse_addresses(free))


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def assert_same(a: Pool, b: Pool) -> None:
    assert a.block_prefix == b.block_prefix
    assert a.owned == b.owned
    assert a.allocations() == b.allocations()
    assert a.active_blocks == b.active_blocks
    assert a.gateways == b.gateways
    assert a.free_space() == b.free_space()
    assert (a.used, a.capacity) == (b.used, b.capacity)
    assert a.to_state() == b.to_state()
