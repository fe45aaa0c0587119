"""The mesh core in simulation: cold start, changes, kills, restarts, partitions, relays.

Invariants are checked after every simulated event (``local_invariants``) and, once the mesh
has converged, across all peers (``routes.check_routes``).
"""

from __future__ import annotations

import pytest

from gossip import routes
from gossip.mesh import MeshConfig
from gossip.simulation import Sim

CONFIG = MeshConfig(conn_limit=6, gossip_interval=0.1, repair_interval=2.0, gc_timeout=10.0)


def local_invariants(sim: Sim) -> None:
    """Each live peer routes only to peers live in its own view, over data-plane links its
    own view says work, and only through a neighbour it routes to directly."""
    for p in sim.live_peers():
        records = p.mesh.topology.records
        table = p.mesh.routes()
        for dest, hop in table.items():
            assert dest in records and hop in records, (p.name, dest, hop)
            assert table.get(hop) == hop, f"{p.name}: next hop {hop} to {dest} is not direct"
            assert hop not in records[p.name].unreachable
            assert p.name not in records[hop].unreachable


def global_invariants(sim: Sim) -> None:
    for p in sim.live_peers():
        tables = {
            q.name: q.mesh.routes() for q in sim.live_peers() if sim.reachable(p.index, q.index)
        }
        assert routes.check_routes(p.mesh.topology.records, tables) == []


def converge(sim: Sim, limit: float = 60.0) -> float:
    started = sim.now
    done = sim.run_until(Sim.converged, sim.now + limit)
    assert done is not None, "no convergence"
    global_invariants(sim)
    return done - started


@pytest.mark.parametrize("seed", range(5))
def test_cold_start_converges_with_one_seed_each(seed: int) -> None:
    sim = Sim(24, seed=seed, config=CONFIG)
    took = sim.run_until(Sim.converged, 60.0)
    assert took is not None
    sim.run(sim.now + 1.0, check=lambda s: local_invariants(s))
    global_invariants(sim)
    for p in sim.live_peers():
        assert len(p.mesh.conns) <= CONFIG.conn_limit


def test_a_change_reaches_everyone() -> None:
    sim = Sim(30, seed=3, config=CONFIG)
    converge(sim)
    origin = sim.peers[7]
    sim.set_local(origin, blocks=("10.32.7.0/24",))
    version = origin.mesh.topology.local.stamp

    def everyone_has_it(s: Sim) -> bool:
        return all(p.mesh.topology.records[origin.name].stamp == version for p in s.live_peers())

    assert sim.run_until(everyone_has_it, sim.now + 10.0, step=0.01) is not None


def test_killed_peer_leaves_every_route_table_and_restart_is_recognised() -> None:
    sim = Sim(16, seed=5, config=CONFIG)
    converge(sim)
    victim = sim.peers[4]
    old_stamp = victim.mesh.topology.local.stamp
    sim.kill(4)
    gone = sim.run_until(
        lambda s: all(victim.name not in p.mesh.routes() for p in s.live_peers()),
        sim.now + 5.0,
    )
    assert gone is not None
    sim.restart(4)
    converge(sim)
    new = sim.peers[4].mesh.topology.local
    assert new.stamp > old_stamp
    assert all(p.mesh.topology.records[new.name].uid == new.uid for p in sim.live_peers())


def test_partition_keeps_both_sides_working_and_heals() -> None:
    sim = Sim(20, seed=9, config=CONFIG)
    converge(sim)
    left, right = list(range(10)), list(range(10, 20))
    sim.partition([left, right])
    converge(sim, limit=40.0)  # each side converges on its own members
    for p in sim.live_peers():
        side = left if p.index in left else right
        assert set(p.mesh.routes()) == {sim.peers[i].name for i in side} - {p.name}
    sim.heal()
    converge(sim, limit=60.0)


def test_broken_data_path_is_relayed_and_others_stay_direct() -> None:
    sim = Sim(12, seed=2, config=MeshConfig(conn_limit=4, gossip_interval=0.1,
                                             repair_interval=2.0))  # fmt: skip
    converge(sim)
    a, b = sim.peers[1], sim.peers[2]
    sim.set_local(a, unreachable=(b.name,))
    sim.set_local(b, unreachable=(a.name,))

    def relayed(s: Sim) -> bool:
        hop = a.mesh.routes().get(b.name)
        return hop is not None and hop != b.name

    assert sim.run_until(relayed, sim.now + 10.0) is not None
    global_invariants(sim)
    for p in sim.live_peers():
        for dest, hop in p.mesh.routes().items():
            if {p.name, dest} != {a.name, b.name}:
                assert hop == dest, "a working pair was relayed"


@pytest.mark.parametrize("seed", range(20))
def test_random_faults_keep_invariants(seed: int) -> None:
    sim = Sim(14, seed=seed, config=CONFIG)
    sim.run(5.0, check=local_invariants)
    for _ in range(6):
        action = sim.rng.choice(["kill", "restart", "partition", "heal", "drop"])
        victim = sim.rng.randrange(len(sim.peers))
        if action == "kill" and len(sim.live_peers()) > 4:
            sim.kill(victim)
        elif action == "restart":
            sim.restart(victim)
        elif action == "partition":
            cut = sim.rng.randrange(2, len(sim.peers) - 2)
            sim.partition([range(cut), range(cut, len(sim.peers))])
        elif action == "heal":
            sim.heal()
        else:
            sim.drop_links(0.3)
        sim.run(sim.now + 3.0, check=local_invariants)
    sim.heal()
    converge(sim, limit=120.0)


def test_malformed_message_closes_only_that_connection() -> None:
    sim = Sim(6, seed=1, config=CONFIG)
    converge(sim)
    target = sim.peers[0]
    conn = next(iter(target.mesh.conns))
    others = len(target.mesh.conns)
    with pytest.raises(ValueError):
        target.mesh.receive(conn, 3, {"records": "not a list"}, sim.now, sim.wall_ns)
    with pytest.raises(ValueError):
        target.mesh.receive(conn, 4, {"digest": {"x": [1]}}, sim.now, sim.wall_ns)
    with pytest.raises(ValueError):  # an unhashable name is judged, not looked up
        target.mesh.receive(
            conn, 3, {"records": [{"n": [1], "i": 1, "v": 1}]}, sim.now, sim.wall_ns
        )
    sim.close(conn)
    assert len(target.mesh.conns) == others - 1
    converge(sim)
