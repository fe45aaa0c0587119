"""What one peer's ring holds: the fields the ring core (ring.py) works on, the claim it
publishes from them, and the state document that carries them across restarts (sans-IO).

Rules this module keeps:
- ``to_state()`` holds everything a restart needs and nothing the peer must learn again: of
  the others' claims only those that hold space of our ring are kept (for status and
  ``rmpeer``), with their incarnation, nickname, ring and the space we accepted as theirs
  (holdings.py), never more than they held: a claim refused before a restart stays refused.
- A document is checked as a whole before it is used: a missing or malformed field, or a range
  other than the configured one (changing ``IPALLOC_RANGE`` needs fresh state on every node),
  is a ``ValueError`` naming it.
- Removal markers for our name at or above the incarnation that saved the document concern this
  life of the peer (``removed_since``): it may have been removed while it was down.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from overlay.ipam import space
from overlay.ipam.claim import Ballot, Claim, Grant, RingId
from overlay.ipam.holdings import Holdings, Refusal
from overlay.ipam.seeding import Seeding

Net = ipaddress.IPv4Network


@dataclass(frozen=True)
class View:
    """A peer's claim as we last saw it, with its record's stamp."""

    incarnation: int
    version: int
    claim: Claim
    nickname: str = ""


class RingState:
    """The state of this peer's part in block ownership, restored from ``state`` if given."""

    def __init__(
        self,
        name: str,
        cluster_range: Net,
        block_prefix: int,
        quorum: int,
        incarnation: int,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if block_prefix < cluster_range.prefixlen:
            raise ValueError(f"blocks (/{block_prefix}) are larger than the range {cluster_range}")
        self.name = name
        self.range = cluster_range
        self.block_prefix = block_prefix
        self.quorum = max(1, quorum)
        self.incarnation = incarnation
        self.ring: RingId | None = None  # the ring our space belongs to
        self.owned: list[Net] = []
        self.grants: list[Grant] = []  # space given away, until the grantee acknowledges it
        self.serial = 0  # of our latest grant
        self.acks: dict[str, int] = {}  # granter -> highest serial we took up
        self.want: str | None = None  # the owner we ask for space
        self.seeding = Seeding(name, self.quorum)
        self.removed: list[tuple[str, int]] = []  # peers we reclaimed, with their incarnation
        self.known: dict[str, View] = {}  # the others' claims as last seen
        # Removal markers for our name below this concern earlier lives of this peer.
        self.removed_since = incarnation
        self.conflict: str | None = None  # what the operator must do, if anything
        self.status = "idle"
        self.holdings = Holdings(name, cluster_range, block_prefix)  # what the others hold
        self.refusals: list[Refusal] = []  # new since the caller last took them
        self.steady: set[str] = set()  # live, unbroken, since a claim not removing us
        self._refusing: set[Refusal] = set()  # the ring's own refusals standing this step
        self._refused_before: set[Refusal] = set()  # and the step before
        if state:
            self._load(state)

    def take_refusals(self) -> list[Refusal]:
        """The claims and grants refused since the last call (for counters and the log)."""
        out, self.refusals = self.refusals, []
        return out

    def routable(self, name: str) -> tuple[Net, ...]:
        """What peer ``name`` holds of the space its claim owns (empty: nothing to route)."""
        view = self.known.get(name)
        if view is None or self.ring is None or view.claim.ring != self.ring:
            return ()
        return tuple(self.holdings.owned_by(name, view.claim))

    @property
    def promised(self) -> Ballot | None:
        """The highest ballot we promised as a seeding acceptor."""
        return self.seeding.promised

    @property
    def accepted(self) -> tuple[Ballot, RingId] | None:
        """The ballot and ring id we accepted as a seeding acceptor."""
        return self.seeding.accepted

    @property
    def proposal(self) -> Ballot | None:
        """Our ballot as the seeding proposer."""
        return self.seeding.proposal

    @property
    def accept(self) -> tuple[Ballot, RingId] | None:
        """What we ask the acceptors to accept as the seeding proposer."""
        return self.seeding.accept

    def claim(self, used: int = 0, free: int = 0) -> Claim:
        """The claim to publish, with the pool's counts of addresses in use and to spare."""
        return Claim(
            owned=tuple(self.owned),
            ring=self.ring,
            grants=tuple(self.grants),
            acks=tuple(sorted(self.acks.items())),
            want=self.want,
            promised=self.seeding.promised,
            accepted=self.seeding.accepted,
            proposal=self.seeding.proposal,
            accept=self.seeding.accept,
            removed=tuple(self.removed),
            used=used,
            free=free,
        )

    def _fingerprint(self) -> tuple[Any, ...]:
        """Everything that is persisted or published (besides the pool's counts)."""
        seeding = self.seeding
        return (self.ring, tuple(self.owned), tuple(self.grants), self.serial,
                tuple(sorted(self.acks.items())), self.want, seeding.promised, seeding.accepted,
                seeding.proposal, seeding.accept, tuple(self.removed), tuple(seeding.seeded),
                self.removed_since)  # fmt: skip

    def to_state(self) -> dict[str, Any]:
        """Everything a restart needs, as a JSON-ready document (the ``state`` argument)."""
        return {
            "range": str(self.range),
            "incarnation": self.incarnation,
            "ring": list(self.ring) if self.ring else None,
            "owned": [str(n) for n in self.owned],
            "grants": [[str(n), who, s] for n, who, s in self.grants],
            "serial": self.serial,
            "acks": dict(self.acks),
            "promised": list(self.seeding.promised) if self.seeding.promised else None,
            "accepted": _pair_out(self.seeding.accepted),
            "removed": [list(r) for r in self.removed],
            "seeded": [list(r) for r in self.seeding.seeded],
            "removed_since": self.removed_since,
            "known": {
                n: _known_out(v, held) for n, v in self.known.items() if (held := self.routable(n))
            },
        }

    def _load(self, d: Mapping[str, Any]) -> None:
        seeding = self.seeding
        try:
            if d["range"] != str(self.range):
                raise ValueError(
                    f"the state holds range {d['range']}, configuration says {self.range}; "
                    f"changing IPALLOC_RANGE needs a fresh state directory on every node"
                )
            self.ring = _ring(d["ring"])
            self.owned = space.collapse(Net(n) for n in d["owned"])
            self.grants = [(Net(n), str(who), int(s)) for n, who, s in d["grants"]]
            self.serial = int(d["serial"])
            self.acks = {str(k): int(v) for k, v in d["acks"].items()}
            seeding.promised = _ballot(d["promised"])
            acc = d["accepted"]
            seeding.accepted = None if acc is None else (_ballot(acc[0]), _ring(acc[1]))  # type: ignore[assignment]
            self.removed = [(str(n), int(i)) for n, i in d["removed"]]
            seeding.seeded = [r for r in (_ring(x) for x in d["seeded"]) if r is not None]
            # Removal markers at or above the incarnation that saved this state concern us now.
            self.removed_since = min(int(d["removed_since"]), int(d["incarnation"]))
            for n, k in d["known"].items():
                claim = Claim(owned=tuple(Net(o) for o in k["owned"]), ring=_ring(k["ring"]))
                self.known[str(n)] = View(int(k["incarnation"]), 0, claim, str(k["nickname"]))
                if claim.ring is not None and claim.ring == self.ring:
                    self.holdings.held[str(n)] = space.collapse(claim.owned)
            self._check_holdings()
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"IPAM state: {e}") from None

    def _check_holdings(self) -> None:
        """Saved holdings that overlap ours or each other's (a file of an older agent, which
        kept whatever was claimed) are no one's: the claims are read again, by the rules."""
        saved, kept = self.holdings.held, {}
        for name, nets in saved.items():
            inside = [n for n in nets if n.subnet_of(self.range)]
            others = [n for other, h in saved.items() if other != name for n in h]
            kept[name] = space.subtract(inside, [*others, *self.owned])
            view = self.known[name]
            self.known[name] = replace(view, claim=replace(view.claim, owned=tuple(kept[name])))
        self.holdings.held = {n: h for n, h in kept.items() if h}


def _known_out(v: View, held: tuple[Net, ...]) -> dict[str, Any]:
    """What we remember of another owner across restarts (for status and rmpeer): the space
    we accepted as its, not whatever it claimed."""
    return {
        "incarnation": v.incarnation,
        "nickname": v.nickname,
        "ring": list(v.claim.ring) if v.claim.ring else None,
        "owned": [str(o) for o in held],
    }


def _ring(value: Any) -> RingId | None:
    return None if value is None else (int(value[0]), str(value[1]))


def _ballot(value: Any) -> Ballot | None:
    return None if value is None else (int(value[0]), str(value[1]))


def _pair_out(value: tuple[Ballot, RingId] | None) -> list[Any] | None:
    return None if value is None else [list(value[0]), list(value[1])]
