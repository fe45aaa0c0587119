"""Data-plane routes: the next hop towards every reachable peer, computed alike on every peer.

Rules this module keeps:

- Nodes are the records that have not departed (and, when ``alive`` is given, only those names).
  The local peer is always a node.
- The data path between two nodes is assumed to work. Records list only the exceptions, in
  ``unreachable``; the link a-b is broken when a lists b or b lists a, so both ends agree.
- The next hop to d is d itself when the direct link works, else the first hop of a shortest path
  over working links; among equal-length shortest paths the lowest-named first hop wins.
  Unreachable destinations have no entry.
- Every peer applies the same rule to the same records, so routes are consistent and loop-free:
  a next hop is always one step closer to the destination, so if x routes to d via y, y's route
  to d never comes back through x, and following hops reaches d in at most N - 1 steps.
- Cost: breadth-first search over the complement of the exception graph. The unvisited nodes are
  one set; from u, the newly reached are the unvisited ones whose link to u is not broken. Every
  node looked at is either reached (once in the whole search) or charged to one exception, so a
  search is O(N + exceptions) set work plus sorting each level -- never the O(N²) of walking a
  full mesh edge by edge.
- Tie-break by level: the nodes of one level are expanded in order of their first hop, so the
  first to reach a node of the next level carries the lowest first hop among all its
  shortest-path predecessors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from gossip.topology import PeerRecord

Broken = dict[str, set[str]]

_NONE: frozenset[str] = frozenset()


def next_hops(
    local: str, records: Mapping[str, PeerRecord], alive: Collection[str] | None = None
) -> dict[str, str]:
    """Destination -> next hop for every node reachable from ``local`` (see the module rules)."""
    nodes = _nodes(records, alive)
    nodes.add(local)
    return _search(local, nodes, _broken(nodes, records))


def _nodes(records: Mapping[str, PeerRecord], alive: Collection[str] | None) -> set[str]:
    return {
        name
        for name, record in records.items()
        if not record.departed and (alive is None or name in alive)
    }


def _broken(nodes: set[str], records: Mapping[str, PeerRecord]) -> Broken:
    """The exception graph among ``nodes``, made symmetric."""
    broken: Broken = {}
    for name in nodes:
        record = records.get(name)
        for other in record.unreachable if record is not None else ():
            if other in nodes and other != name:
                broken.setdefault(name, set()).add(other)
                broken.setdefault(other, set()).add(name)
    return broken


def _search(local: str, nodes: set[str], broken: Broken) -> dict[str, str]:
    unvisited = nodes - {local}
    level = sorted(unvisited - broken.get(local, _NONE))
    first = {d: d for d in level}
    unvisited.difference_update(level)
    while level and unvisited:
        level = _expand(level, first, unvisited, broken)
    return first


def _expand(
    level: list[str], first: dict[str, str], unvisited: set[str], broken: Broken
) -> list[str]:
    """Reach the next level from ``level``; records each new node's first hop in ``first``."""
    found: list[str] = []
    for u in sorted(level, key=lambda n: (first[n], n)):
        cut = broken.get(u, _NONE)
        reached = unvisited - cut  # costs |reached| + |unvisited ∩ cut| + |cut|
        if not reached:
            continue
        hop = first[u]
        for v in reached:
            first[v] = hop
        found.extend(reached)
        unvisited.intersection_update(cut)
        if not unvisited:
            break
    return found


def check_routes(
    records: Mapping[str, PeerRecord], tables: Mapping[str, dict[str, str]]
) -> list[str]:
    """Invariant violations across the route tables of all live peers; [] when all hold.

    The peers whose tables are given are the live nodes (minus any departed in ``records``);
    links are judged from ``records``. Checked: every node reachable from a peer has an entry in
    its table; following next hops from any peer towards any entry reaches the destination over
    working links, without a loop and without a relay lacking an entry. Each fault is reported
    once, however many routes run through it.
    """
    nodes = {name for name in tables if not (name in records and records[name].departed)}
    broken = _broken(nodes, records)
    problems = _missing(nodes, tables, broken)
    for dest in sorted(nodes):
        problems += _follow(dest, nodes, tables, broken)
    return list(dict.fromkeys(problems))


def _missing(nodes: set[str], tables: Mapping[str, dict[str, str]], broken: Broken) -> list[str]:
    label = _components(nodes, broken)
    members: dict[str, list[str]] = {}
    for name in sorted(nodes):
        members.setdefault(label[name], []).append(name)
    return [
        f"{source}: no route to reachable {dest}"
        for source in sorted(nodes)
        for dest in members[label[source]]
        if dest != source and dest not in tables[source]
    ]


def _components(nodes: set[str], broken: Broken) -> dict[str, str]:
    """Node -> a representative of its connected component over working links."""
    label: dict[str, str] = {}
    unvisited = set(nodes)
    while unvisited:
        start = unvisited.pop()
        label[start] = start
        todo = [start]
        while todo:
            cut = broken.get(todo.pop(), _NONE)
            reached = unvisited - cut
            unvisited.intersection_update(cut)
            for v in reached:
                label[v] = start
            todo.extend(reached)
    return label


def _follow(
    dest: str, nodes: set[str], tables: Mapping[str, dict[str, str]], broken: Broken
) -> list[str]:
    """Walk every route towards ``dest``; each node's verdict is settled once."""
    settled: dict[str, bool] = {dest: True}
    problems: list[str] = []
    for source in sorted(nodes):
        if source in settled or dest not in tables[source]:
            continue
        path = [source]
        problem = _walk(dest, path, settled, nodes, tables, broken)
        if problem is not None:
            problems.append(problem)
        ok = problem is None and settled[path[-1]]
        settled.update(dict.fromkeys(path, ok))
    return problems


def _walk(
    dest: str,
    path: list[str],
    settled: dict[str, bool],
    nodes: set[str],
    tables: Mapping[str, dict[str, str]],
    broken: Broken,
) -> str | None:
    """Extend ``path`` by next hops until a settled node or a fault, which is returned."""
    while path[-1] not in settled:
        here = path[-1]
        hop = tables[here].get(dest)
        if hop is None:
            return f"route to {dest}: {here} has no entry but {path[-2]} relays through it"
        if hop not in nodes or hop in broken.get(here, _NONE):
            return f"route to {dest}: {here} -> {hop} is not a working link"
        if hop in path:
            cycle = path[path.index(hop) :]
            start = cycle.index(min(cycle))
            return f"route to {dest}: loop {' -> '.join(cycle[start:] + cycle[:start])}"
        path.append(hop)
    return None
