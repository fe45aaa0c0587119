"""Gossip at scale, in simulation: ``python -m bench.gossip [--sizes 10,100,1000]``.

For each cluster size N (every peer starts knowing two seed addresses, connection limit 32):
virtual time until every peer knows every other and routes to it after a cold start; time for
one change to reach every peer; control bytes sent per peer per second in steady state; the
largest single message; and, with a few data-plane paths broken on purpose, how many pairs
route direct versus relayed. Ends with one JSON line holding every figure.

The simulation is the test suite's harness (gossip/simulation.py): real mesh cores, real wire
encoding, a virtual clock. Times are virtual seconds; wall time is printed for information.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from gossip.mesh import MeshConfig
from gossip.simulation import Sim

BROKEN_PAIRS = 10


def measure(n: int, seed: int, steady: float) -> dict[str, Any]:
    sim = Sim(n, seed=seed, config=MeshConfig(conn_limit=32), seeds_per_peer=2)
    wall = time.perf_counter()
    cold = sim.run_until(Sim.converged, 600.0, step=0.25)
    if cold is None:
        return {"n": n, "converged": False}
    origin = sim.peers[n // 2]
    sim.set_local(origin, blocks=("10.32.0.0/24",))
    stamp = origin.mesh.topology.local.stamp
    start = sim.now
    spread = sim.run_until(
        lambda s: all(p.mesh.topology.records[origin.name].stamp == stamp for p in s.peers),
        start + 60.0,
        step=0.01,
    )
    before = sum(p.mesh.stats.bytes_sent for p in sim.peers)
    sim.run(sim.now + steady)
    after = sum(p.mesh.stats.bytes_sent for p in sim.peers)
    direct, relayed, broken = _direct_paths(sim)
    return {
        "n": n,
        "converged": True,
        "cold_start_s": round(cold, 2),
        "change_spread_s": None if spread is None else round(spread - start, 3),
        "steady_bytes_per_peer_per_s": round((after - before) / n / steady, 1),
        "largest_message_bytes": max(p.mesh.stats.largest_message for p in sim.peers),
        "max_connections": max(len(p.mesh.conns) for p in sim.peers),
        "pairs_direct": direct,
        "pairs_relayed": relayed,
        "pairs_broken": broken,
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def _direct_paths(sim: Sim) -> tuple[int, int, int]:
    """Break BROKEN_PAIRS data paths, let routes settle, count direct and relayed pairs."""
    names = [p.name for p in sim.peers]
    broken: set[frozenset[str]] = set()
    while len(broken) < min(BROKEN_PAIRS, len(names) // 2):
        a, b = sim.rng.sample(range(len(names)), 2)
        broken.add(frozenset((names[a], names[b])))
    for p in sim.peers:
        mine = tuple(sorted(next(iter(pair - {p.name})) for pair in broken if p.name in pair))
        if mine:
            sim.set_local(p, unreachable=mine)
    sim.run(sim.now + 10.0)
    direct = relayed = 0
    for p in sim.peers:
        for dest, hop in p.mesh.routes().items():
            if hop == dest:
                direct += 1
            else:
                relayed += 1
    return direct, relayed, 2 * len(broken)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip", description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steady", type=float, default=30.0, help="virtual seconds measured")
    args = parser.parse_args(argv)
    rows = []
    head = (f"{'N':>6} {'cold start':>11} {'change':>9} {'B/peer/s':>9} {'largest msg':>12} "
            f"{'conns':>6} {'direct':>8} {'relayed':>8} {'broken':>7} {'wall':>7}")  # fmt: skip
    print(head)
    for n in (int(x) for x in args.sizes.split(",")):
        r = measure(n, args.seed, args.steady)
        rows.append(r)
        if not r["converged"]:
            print(f"{n:>6} did not converge within 600 virtual seconds")
            continue
        print(
            f"{n:>6} {r['cold_start_s']:>10}s {r['change_spread_s']!s:>8}s "
            f"{r['steady_bytes_per_peer_per_s']:>9} {r['largest_message_bytes']:>12} "
            f"{r['max_connections']:>6} {r['pairs_direct']:>8} {r['pairs_relayed']:>8} "
            f"{r['pairs_broken']:>7} {r['wall_s']:>6}s",
            flush=True,
        )
    print(json.dumps({"results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
