"""Holdings (overlay/ipam/holdings.py): which claimed space is taken up as a peer's, and the
refusals (overlay/ipam/refusals.py) counted and summed up for the log."""

from __future__ import annotations

import ipaddress

from overlay.ipam.claim import Claim
from overlay.ipam.holdings import Holdings, Refusal
from overlay.ipam.refusals import RefusalLog

Net = ipaddress.IPv4Network
RANGE = Net("10.32.0.0/16")
ME, P, Q, R = "me", "p", "q", "r"
X = Net("10.32.8.0/24")
OURS = [Net("10.32.0.0/21")]


def holdings() -> Holdings:
    return Holdings(ME, RANGE, 24, report_after=0)


def owns(*nets: str, grants: tuple[tuple[str, str], ...] = ()) -> Claim:
    return Claim(owned=tuple(map(Net, nets)), grants=tuple((Net(n), g, 1) for n, g in grants))


def reasons(refusals: list[Refusal]) -> dict[str, str]:
    return {r.peer: r.reason for r in refusals}


def test_the_first_holder_keeps_its_space() -> None:
    h = holdings()
    assert h.update({P: owns("10.32.8.0/24")}, OURS, ()) == []
    new = h.update({P: owns("10.32.8.0/24"), Q: owns("10.32.8.0/23")}, OURS, ())
    assert reasons(new) == {Q: "held"}
    assert h.of(P) == [X] and h.of(Q) == [Net("10.32.9.0/24")]  # the part no one held
    assert h.owned_by(Q, owns("10.32.8.0/23")) == [Net("10.32.9.0/24")]


def test_two_fresh_claims_on_one_block_hold_nothing_until_one_lets_go() -> None:
    h = holdings()
    new = h.update({P: owns("10.32.8.0/24"), Q: owns("10.32.8.0/24")}, OURS, ())
    assert reasons(new) == {P: "contested", Q: "contested"}
    assert h.of(P) == h.of(Q) == []
    assert h.update({P: owns(), Q: owns("10.32.8.0/24")}, OURS, ()) == []
    assert h.of(Q) == [X] and h.refused == {}


def test_space_moves_only_by_its_holders_grant() -> None:
    h = holdings()
    h.update({P: owns("10.32.8.0/23")}, OURS, ())
    granted = owns("10.32.9.0/24", grants=(("10.32.8.0/24", Q),))
    assert h.update({P: granted, Q: owns("10.32.8.0/24")}, OURS, ()) == []
    assert h.of(Q) == [X] and h.of(P) == [Net("10.32.9.0/24")]
    # R claiming P's remaining space, or Q's, holds nothing
    new = h.update({P: owns("10.32.9.0/24"), Q: owns("10.32.8.0/24"), R: owns("10.32.8.0/23")},
                   OURS, ())  # fmt: skip
    assert reasons(new) == {R: "held"} and h.of(R) == []


def test_a_fresh_reader_takes_a_grant_in_flight_as_the_grantees() -> None:
    h = holdings()
    granted = owns("10.32.9.0/24", grants=(("10.32.8.0/24", Q),))
    assert h.update({P: granted, Q: owns("10.32.8.0/24")}, OURS, ()) == []
    assert h.of(Q) == [X] and h.of(P) == [Net("10.32.9.0/24")]


def test_ours_and_our_grants_are_no_one_elses() -> None:
    h = holdings()
    grant = (X, Q, 3)
    new = h.update({P: owns("10.32.0.0/24", "10.32.8.0/24"), Q: owns("10.32.8.0/24")}, OURS,
                   [grant])  # fmt: skip
    assert {(r.peer, r.net, r.reason) for r in new} == {
        (P, Net("10.32.0.0/24"), "ours"),
        (P, X, "ours"),  # our grant is Q's to take, no one else's
    }
    assert h.of(Q) == [X] and h.of(P) == []


def test_a_grant_to_us_we_took_up_is_no_conflict() -> None:
    h = holdings()
    h.update({P: owns("10.32.8.0/23")}, OURS, ())
    granted = owns("10.32.9.0/24", grants=(("10.32.8.0/24", ME),))
    assert h.update({P: granted}, [*OURS, X], ()) == []  # P has not seen our ack yet
    assert h.of(P) == [Net("10.32.9.0/24")]


def test_space_outside_the_range_or_smaller_than_a_block_is_never_held() -> None:
    h = holdings()
    new = h.update({P: owns("10.40.0.0/24", "10.32.9.0/25")}, OURS, ())
    assert sorted(r.reason for r in new) == ["outside_range", "small_block"]
    assert h.of(P) == []


def test_a_standing_refusal_is_reported_once() -> None:
    h = holdings()
    h.update({P: owns("10.32.8.0/24")}, OURS, ())
    claims = {P: owns("10.32.8.0/24"), Q: owns("10.32.8.0/24")}
    assert len(h.update(claims, OURS, ())) == 1
    assert h.update(claims, OURS, ()) == []
    assert len(h.refused) == 1
    h.update({P: owns("10.32.8.0/24")}, OURS, ())
    assert len(h.update(claims, OURS, ())) == 1  # it came back: counted again


def test_a_passing_refusal_is_not_reported_and_a_standing_one_is_after_a_few_updates() -> None:
    h = Holdings(ME, RANGE, 24, report_after=2)
    h.update({P: owns("10.32.8.0/23")}, OURS, ())
    early = {P: owns("10.32.8.0/23"), Q: owns("10.32.8.0/24")}  # before P's grant arrives
    assert h.update(early, OURS, ()) == [] and h.of(Q) == []  # refused, not yet reported
    granted = {P: owns("10.32.9.0/24", grants=(("10.32.8.0/24", Q),)), Q: owns("10.32.8.0/24")}
    assert h.update(granted, OURS, ()) == [] and h.of(Q) == [X] and h.refused == {}
    hostile = {**granted, R: owns("10.32.8.0/24")}
    assert [h.update(hostile, OURS, ()) for _ in range(4)] == [[], [], [h.refused[R, X]], []]


def test_refusals_are_counted_and_logged_at_most_once_per_interval() -> None:
    log = RefusalLog(interval_ns=10)
    bad = [Refusal(f"p{i}", X, "held", f"{X} is held by q") for i in range(100)]
    log.add(bad[:50])
    line = log.summary(0, lambda name: f"{name}(nick)")
    assert line is not None and line.startswith("refuse address claims: 50 (held 50); ")
    assert "p0(nick): 10.32.8.0/24 is held by q" in line and line.endswith("and 47 more")
    log.add(bad[50:])
    assert log.summary(5, str) is None  # within the interval
    later = log.summary(10, str)
    assert later is not None and later.startswith("refuse address claims: 50 ")
    assert log.summary(30, str) is None  # nothing new
    assert log.counts == {"held": 100}


def test_names_and_details_from_peers_are_escaped_in_the_log() -> None:
    log = RefusalLog()
    log.add([Refusal("p\nfake line", X, "held", f"{X} is held by q\x1b[2J")])
    line = log.summary(0, str)
    assert line is not None and "\n" not in line and "\x1b" not in line
    assert "p\\nfake line" in line and "\\x1b[2J" in line


def test_free_beyond_the_claimed_space_is_refused_and_holds_nothing() -> None:
    h = holdings()
    new = h.update({P: Claim(free=2**64 - 1), Q: Claim(owned=(X,), free=256)}, OURS, ())
    assert reasons(new) == {P: "free"}
    assert h.of(P) == [] and h.of(Q) == [X]
    assert h.update({P: Claim(free=0), Q: Claim(owned=(X,), free=256)}, OURS, ()) == []
    assert h.refused == {}
