"""Reclaiming a deleted Node's address space (sans-IO): which step is due for which Node.

Theory of operation. When a Node is deleted, every surviving agent that sees it go (by watch
or by the difference between two lists) tries to create one Lease named after that Node object
(its name and uid). Creating is atomic in the apiserver: exactly one create succeeds, and that
agent alone removes the dead peer (``rmpeer`` of the peer whose nickname is the Node's name);
the others get 409 Conflict and do nothing more. The winner retries ``rmpeer`` while its rules
refuse (the peer still reachable, its last claim not yet received), the tries spaced out from
``retry_interval`` doubling to a minute, until ``give_up_timeout``,
then keeps the Lease for ``retention`` seconds (so an agent that sees the deletion late finds
it taken) and deletes it. A Node that appears again under a name whose Lease this agent knows
of has that Lease deleted (by every agent that knew it; a missing Lease is no error), and any
reclaim of that name still in progress here stops.

The driver asks ``due(now)`` for the steps to take, carries each out, reports the outcome
(``lease_taken``, ``removed``, ``lease_deleted``) and sleeps until ``next_at``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from agent.peers.nodes import NodeInfo

LEASE_PREFIX = "weave-py-reclaim"
MAX_NAME = 253  # a Lease's name is a DNS subdomain
RETRY_INTERVAL = 5.0  # seconds before a refused or failed step is tried again; doubled per try
RETRY_MAX_INTERVAL = 60.0  # seconds: the longest wait between two tries
# Seconds the winner keeps asking rmpeer before it gives up: a peer whose host died without a
# word stays live until TCP gives its control connections up (~15 minutes with Linux's
# tcp_retries2), and rmpeer refuses a live peer.
GIVE_UP_TIMEOUT = 3600.0
RETENTION = 3600.0  # seconds a finished reclaim's Lease is kept before it is deleted
MAX_KNOWN = 1024  # deleted Nodes whose Lease names are remembered (the oldest are forgotten)

TAKE, REMOVE, DELETE = "take lease", "remove peer", "delete lease"  # the steps
DONE, RETRY, GAVE_UP = "done", "retry", "give up"  # what follows an rmpeer


@dataclass
class Step:
    """A step due for one Node: ``kind`` is TAKE, REMOVE or DELETE."""

    kind: str
    node: str  # the Node's name (the dead peer's nickname)
    lease: str  # the Lease's name
    at: float = 0.0  # when it is due
    give_up_at: float = 0.0  # REMOVE: when to stop asking
    tries: int = 0  # failed or refused tries so far

    def again(self, now: float, interval: float) -> None:
        """Due again after ``interval`` seconds, doubled per earlier try (to a cap)."""
        self.at = now + min(RETRY_MAX_INTERVAL, interval * 2**self.tries)
        self.tries += 1


def lease_name(node: NodeInfo) -> str:
    """The Lease that decides who reclaims Node object ``node``: its name and its uid's start,
    shortened with a hash when the name is long (both are DNS-subdomain characters)."""
    uid = re.sub(r"[^a-z0-9]", "", node.uid.lower())[:8] or "0"
    name = f"{LEASE_PREFIX}.{node.name}.{uid}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(node.name.encode()).hexdigest()[:16]
    keep = MAX_NAME - len(LEASE_PREFIX) - len(uid) - len(digest) - 4
    return f"{LEASE_PREFIX}.{node.name[:keep].rstrip('.-')}-{digest}.{uid}"


class Reclaims:
    """The reclaims in progress on this agent, one per Node name; ``own`` is this node."""

    def __init__(self, own: str, retry_interval: float = RETRY_INTERVAL,
                 give_up_timeout: float = GIVE_UP_TIMEOUT,
                 retention: float = RETENTION) -> None:  # fmt: skip
        self.own = own
        self.retry_interval = retry_interval
        self.give_up_timeout = give_up_timeout
        self.retention = retention
        self.steps: dict[str, Step] = {}  # by Node name
        self.known: dict[str, str] = {}  # Node name -> Lease name, for deletions seen here

    def node_deleted(self, node: NodeInfo, now: float) -> None:
        """Node object ``node`` went: try to take its Lease now."""
        if node.name == self.own:
            return
        lease = lease_name(node)
        self.known.pop(node.name, None)
        self.known[node.name] = lease
        while len(self.known) > MAX_KNOWN:
            del self.known[next(iter(self.known))]
        self.steps[node.name] = Step(TAKE, node.name, lease, now)

    def node_added(self, node: NodeInfo, now: float) -> None:
        """A Node of this name is here (again): its Lease, if one is known, is deleted and
        any reclaim of the name stops."""
        lease = self.known.get(node.name)
        if lease is None:
            return
        self.steps[node.name] = Step(DELETE, node.name, lease, now)

    def due(self, now: float) -> list[Step]:
        """The steps to take now (each is reported back before it comes due again)."""
        due = [s for s in self.steps.values() if s.at <= now]
        for step in due:
            step.at = float("inf")  # in flight
        return due

    @property
    def next_at(self) -> float:
        """When a step next comes due (inf: nothing to do)."""
        return min((s.at for s in self.steps.values()), default=float("inf"))

    def lease_taken(self, node: str, taken: bool | None, now: float) -> None:
        """The create's outcome: True (ours: remove the peer), False (409: another agent's),
        None (failed: try again)."""
        step = self.steps.get(node)
        if step is None or step.kind != TAKE:
            return
        if taken is None:
            step.again(now, self.retry_interval)
        elif taken:
            self.steps[node] = Step(REMOVE, node, step.lease, now, now + self.give_up_timeout)
        else:
            del self.steps[node]

    def removed(self, node: str, done: bool, now: float) -> str:
        """rmpeer's outcome, done or refused; what follows: DONE, RETRY or GAVE_UP."""
        step = self.steps.get(node)
        if step is None or step.kind != REMOVE:
            return DONE  # the reclaim stopped meanwhile (the Node is back)
        if done or now >= step.give_up_at:
            self.steps[node] = Step(DELETE, node, step.lease, now + self.retention)
            return DONE if done else GAVE_UP
        step.again(now, self.retry_interval)
        return RETRY

    def lease_deleted(self, node: str, done: bool, now: float) -> None:
        """The delete's outcome (a Lease already gone counts as done)."""
        step = self.steps.get(node)
        if step is None or step.kind != DELETE:
            return
        if done:
            del self.steps[node]
            if self.known.get(node) == step.lease:
                del self.known[node]
        else:
            step.again(now, self.retry_interval)
