"""The fast path's policy (sans-IO): which peers may use kernel VXLAN, what our record says of
our endpoint, and the fast-path kernel state for the peers on it.

Theory of operation. Every step the coordinator hands in the members (with the blocks IPAM
lets us route to each), the peers path choice (overlay/paths.py) holds on the fast path and the
time. ``FastPath`` answers with one ``Candidate`` per peer -- eligible with its VTEP, or not with
the reason -- and the desired ``Fastdp`` state: a VTEP (neighbour, FDB entry, /32 route) for
every eligible peer, each fast peer's blocks routed via its VTEP, and each eligible peer's
blocks as the inner sources the guard lets its VXLAN frames carry.

Rules this module keeps:
- Eligible only when both ends run the fast path, this node holds no secret (the kernel would
  carry pod traffic unencrypted), the peer is reached directly (relayed traffic stays on the
  sleeve) and its published endpoint is sound: a VTEP inside the blocks IPAM gives it, a MAC and
  an address no other peer has taken (the first by name keeps it), an IPv4 underlay host.
- Restarts keep traffic moving. A peer that was on the fast path keeps its routes for
  ``LINGER`` seconds after it leaves the mesh's routes (its agent restarting: the records go, the
  kernel still answers our probes) as long as path choice still holds it on the fast path; and
  during the agent's start-up grace the fast routes and VTEPs a previous agent left stay until the
  mesh says otherwise (the peers those routes lead to begin on the fast path: ``kept``).
- Nothing routed here ever overlaps this node's own space or a member's blocks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, replace

from agent.config import Config
from agent.peers import Member
from overlay.fastdp import Fastdp, KeptFastdp
from overlay.paths import Candidate
from overlay.vtep import FASTDP_PORT, FASTDP_VNI, Vtep, encode_vtep, parse_vtep, vtep_mac

Net = ipaddress.IPv4Network
LINGER = 60.0  # seconds a fast peer gone from the mesh's routes keeps its fast routes


@dataclass(frozen=True)
class Remote:
    """A peer as the fast path knows it: its candidacy, VTEP (None: not eligible), blocks and
    when the mesh last routed to it (monotonic seconds)."""

    candidate: Candidate
    vtep: Vtep | None
    blocks: tuple[Net, ...]
    seen: float


class FastPath:
    """The policy for one node: ``template`` is our device (None: the fast path is off here,
    ``off_reason`` says why); ``kept``: what a previous agent left in the kernel."""

    def __init__(
        self, template: Fastdp | None, off_reason: str = "", kept: KeptFastdp | None = None
    ) -> None:
        self.template = template
        self.off_reason = off_reason or ("fast path off here" if template is None else "")
        self.kept = kept or KeptFastdp({}, frozenset())
        self.remotes: dict[str, Remote] = {}
        self._fresh: frozenset[str] = frozenset()  # kept peers path choice has not seen yet

    def record_value(self, gateways: Sequence[ipaddress.IPv4Interface]) -> bytes:
        """What our record publishes: our VTEP (the first gateway) and MAC; empty when the fast
        path is off here or we have no space yet."""
        if self.template is None or not gateways:
            return b""
        return encode_vtep(gateways[0].ip, self.template.mac)

    def update(
        self,
        members: Iterable[tuple[Member, tuple[Net, ...]]],
        fast: Set[str],
        own: Sequence[Net],
        now: float,
        grace: bool,
    ) -> tuple[Candidate, ...]:
        """Take in the members with their routable blocks and the peers on the fast path; the
        candidates for path choice, by name."""
        current = {m.name: self._remote(m, blocks, now, grace) for m, blocks in members}
        routed = [b for r in current.values() for b in r.blocks]
        for name, old in self.remotes.items():
            if name in current or name not in fast or now - old.seen >= LINGER:
                continue
            if not any(b.overlaps(m) for b in old.blocks for m in routed):
                current[name] = old
        _settle_conflicts(current, own)
        fresh = {n for n, r in current.items() if r.candidate.kept and n not in self.remotes}
        self._fresh = frozenset(fresh)
        self.remotes = dict(sorted(current.items()))
        return tuple(r.candidate for r in self.remotes.values())

    def state(self, fast: Set[str], own: Sequence[Net], grace: bool) -> Fastdp | None:
        """The desired fast-path kernel state (None: the fast path is off here). A kept peer
        that has just appeared counts as fast: path choice begins it there once it sees it."""
        if self.template is None:
            return None
        fast = fast | self._fresh
        vteps = {r.vtep for r in self.remotes.values() if r.vtep is not None}
        routes = {
            (block, r.vtep.address)
            for r in self.remotes.values()
            if r.vtep is not None and r.candidate.name in fast
            for block in r.blocks
        }
        if grace:
            vteps, routes = self._with_kept(vteps, routes, own)
        host_of = {v.address: v.host for v in vteps}
        spaces = {(r.vtep.host, b) for r in self.remotes.values() if r.vtep for b in r.blocks}
        spaces |= {(host_of[via], block) for block, via in routes if via in host_of}
        return replace(self.template, vteps=frozenset(vteps), fast_blocks=frozenset(routes),
                       spaces=frozenset(spaces))  # fmt: skip

    def _remote(self, m: Member, blocks: tuple[Net, ...], now: float, grace: bool) -> Remote:
        record = m.record
        why = self.off_reason or _ineligible(m)
        parsed = parse_vtep(record.fastdp) if record is not None and not why else None
        if not why and parsed is None:
            why = "peer has no fast path" if record and not record.fastdp else "bad vtep"
        if parsed is not None and not any(parsed[0] in b for b in blocks):
            why = "peer's vtep is outside its space"
        if why or parsed is None:
            return Remote(Candidate(m.name, m.nickname, None, why), None, blocks, now)
        vtep = Vtep(parsed[0], parsed[1], ipaddress.IPv4Address(m.endpoint[0]))
        kept = grace and any(self.kept.routes.get(b) == vtep.address for b in blocks)
        return Remote(Candidate(m.name, m.nickname, vtep.address, kept=kept), vtep, blocks, now)

    def _with_kept(
        self, vteps: set[Vtep], routes: set[tuple[Net, ipaddress.IPv4Address]], own: Sequence[Net]
    ) -> tuple[set[Vtep], set[tuple[Net, ipaddress.IPv4Address]]]:
        taken = [b for r in self.remotes.values() for b in r.blocks] + list(own)
        addresses = {v.address for v in vteps} | {v.mac for v in vteps}
        vteps |= {v for v in self.kept.vteps if not {v.address, v.mac} & addresses}
        known = {v.address for v in vteps}
        routes |= {
            (block, via)
            for block, via in self.kept.routes.items()
            if via in known and not any(block.overlaps(t) for t in taken)
        }
        return vteps, routes


def policy(
    config: Config, address: str | None, name: str, sealed: bool, kept: KeptFastdp
) -> FastPath:
    """The policy of node ``name`` reached at ``address``: the fast path on unless configured
    off, sealed (with a secret the kernel would carry pod traffic unencrypted) or without
    gossip (static peers publish no endpoint); ``kept``: what a previous agent left."""
    off = (
        "fast path off here" if config.no_fastdp
        else "encrypted: sleeve only" if sealed
        else "static peers" if config.peers
        else "no underlay address" if not address
        else ""
    )  # fmt: skip
    if off or address is None:
        return FastPath(None, off)
    local = ipaddress.IPv4Address(address)
    template = Fastdp(config.vxlan_device, FASTDP_VNI, FASTDP_PORT, local, vtep_mac(name))
    return FastPath(template, kept=kept)


def _ineligible(m: Member) -> str:
    """Why ``m`` may not use the fast path whatever it publishes ("" when it may)."""
    if m.record is None:
        return "static peer"
    if m.via is not None:
        return "relayed"
    try:
        ipaddress.IPv4Address(m.endpoint[0])
    except ValueError:
        return "peer's host is not an ipv4 address"
    return ""


def _settle_conflicts(remotes: dict[str, Remote], own: Sequence[Net]) -> None:
    """A VTEP address or MAC two peers publish stays with the first by name; a remote whose
    blocks overlap our space or another's (a lingering one) loses its fast path."""
    holders: dict[object, str] = {}
    for name in sorted(remotes):
        r = remotes[name]
        if r.vtep is None:
            continue
        clash = holders.get(r.vtep.address) or holders.get(r.vtep.mac)
        overlap = any(b.overlaps(o) for b in r.blocks for o in own)
        if clash is not None or overlap:
            why = f"vtep taken by {clash}" if clash else "blocks overlap ours"
            remotes[name] = replace(r, candidate=replace(r.candidate, vtep=None, reason=why,
                                                         kept=False), vtep=None)  # fmt: skip
            continue
        holders[r.vtep.address] = holders[r.vtep.mac] = name
