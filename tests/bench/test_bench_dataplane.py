"""The data-plane benchmark without a lab: the path check against the agents' reports, how it
starts the baseline's agents and checks which code they would import, the order of turns, and
the capture's count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.lab.lab import Lab
from bench import dataplane, revision
from bench.dataplane import Case, Pair, bench_plan
from bench.revision import OldCodeLab


class Reports:
    """A stand-in for a lab: node -> the peers' paths its /report gives, changed at will."""

    def __init__(self, path1: str | None, path2: str | None, switches: int = 0) -> None:
        self.plan = bench_plan("paths")
        self.paths = {1: path1, 2: path2}
        self.switches = switches

    def report(self, i: int) -> dict[str, Any]:
        peer = {"name": "aa:bb", "nickname": f"node{3 - i}", "path_switches": self.switches,
                "path_reason": f"reason {i}"}  # fmt: skip
        if self.paths[i] is not None:
            peer["path"] = self.paths[i]
        return {"peers": [{"nickname": "other", "path": "sleeve"}, peer]}


def case(lab: Reports, name: str = "weave-py") -> Case:
    paths = dataplane.EXPECTED_PATHS[name]
    return Case(name, Pair("", "", ""), 1436, lab=lab, paths=paths)  # type: ignore[arg-type]


def test_both_ends_must_be_on_the_cases_path() -> None:
    seen = dataplane.checked_paths(case(Reports("fastdp", "fastdp", 2)))
    assert [(p.node, p.peer, p.path, p.switches) for p in seen] == [
        (1, "node2", "fastdp", 2), (2, "node1", "fastdp", 2)]  # fmt: skip
    with pytest.raises(
        RuntimeError, match=r"node 2 reports path sleeve to node1, not fastdp \(reason 2\)"
    ):
        dataplane.checked_paths(case(Reports("fastdp", "sleeve")))
    with pytest.raises(RuntimeError, match="node 1 reports path fastdp to node2, not sleeve"):
        dataplane.checked_paths(case(Reports("fastdp", "fastdp"), "sleeve"))
    with pytest.raises(RuntimeError, match="path None"):
        dataplane.checked_paths(case(Reports(None, None)))  # an agent without a fast path


def test_the_baseline_may_report_no_path_but_never_the_fast_path() -> None:
    assert [p.path for p in dataplane.checked_paths(case(Reports(None, None), "baseline"))] == [
        None, None]  # fmt: skip
    with pytest.raises(RuntimeError, match="not sleeve or None"):
        dataplane.checked_paths(case(Reports("fastdp", None), "baseline"))


def test_kernel_baselines_have_no_path_to_check() -> None:
    assert dataplane.checked_paths(Case("vxlan", Pair("", "", ""), 1450)) == ()


def test_a_missing_peer_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="node 1 reports no peer node2"):
        dataplane.peer_path({"peers": []}, 1, "node2")


def test_waiting_for_the_path_gives_up_with_what_was_seen_last() -> None:
    lab = Reports("sleeve", "sleeve")
    with pytest.raises(RuntimeError, match="not fastdp"):
        dataplane.wait_paths(case(lab), 0.2)
    lab.paths = {1: "fastdp", 2: "fastdp"}
    assert dataplane.wait_paths(case(lab), 0.2)[0].path == "fastdp"


def no_traffic(monkeypatch: pytest.MonkeyPatch, during: Any = None) -> None:
    """measure() without namespaces: ping and iperf3 return fixed figures, ``during`` runs
    while the stream would."""

    def iperf(pair: Pair, seconds: int) -> tuple[float, int]:
        if during:
            during()
        return 9.0, 3

    monkeypatch.setattr(dataplane, "ping_rtt_us", lambda pair, count: 120.0)
    monkeypatch.setattr(dataplane, "iperf", iperf)
    monkeypatch.setattr(dataplane, "cpu_seconds", lambda pids: 0.0)


def test_a_measurement_records_the_path_node_1_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    no_traffic(monkeypatch)
    result = dataplane.measure(case(Reports("fastdp", "fastdp")), 2, 5)
    assert (result.case, result.gbps, result.rtt_us, result.path) == ("weave-py", 9.0, 120.0,
                                                                       "fastdp")  # fmt: skip


def test_a_switch_during_the_measurement_fails_it(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Reports("fastdp", "fastdp", switches=1)

    def flap() -> None:
        lab.switches = 3  # to the sleeve and back while the stream ran

    no_traffic(monkeypatch, flap)
    with pytest.raises(RuntimeError, match="path changed during the measurement"):
        dataplane.measure(case(lab), 2, 5)
    lab.paths[2] = "sleeve"
    with pytest.raises(RuntimeError, match="node 2 reports path sleeve"):
        dataplane.measure(case(lab), 2, 5)


def test_the_baseline_agents_import_the_old_code_first() -> None:
    plan = bench_plan("abtest")
    old = OldCodeLab(plan, "/tmp/old-code", fastdp=True)
    command = old.agent_command(1)
    assert command[:3] == ["env", "PYTHONSAFEPATH=1", "PYTHONPATH=/tmp/old-code"]
    assert command[3:] == Lab(plan, ("--no-fastdp",)).agent_command(1)
    assert command[-1] == "--no-fastdp"


def test_code_before_the_fast_path_gets_none_of_its_options() -> None:
    plan = bench_plan("abtest")
    ours = Lab(plan).agent_command(1)
    assert ours[ours.index("--vxlan-device") + 1] == plan.vxlan
    command = OldCodeLab(plan, "/tmp/old-code", fastdp=False).agent_command(1)
    assert command[3:] == [a for a in ours if a not in ("--vxlan-device", plan.vxlan)]
    assert revision.without_options(["a", "--x", "1", "b", "--x"], ("--x",)) == ["a", "b"]


def old_code(root: Path, config: str | None) -> str:
    """A tree of code like an old revision's, its agent/config.py ``config`` (None: absent)."""
    modules = {"agent/__init__.py": "", "overlay/__init__.py": "", "overlay/sleeve.py": ""}
    if config is not None:
        modules["agent/config.py"] = config
    for module, text in modules.items():
        os.makedirs(root / os.path.dirname(module), exist_ok=True)
        (root / module).write_text(text)
    return str(root)


def test_the_import_check_refuses_code_that_would_not_run(tmp_path: Path) -> None:
    code = old_code(tmp_path / "old", None)
    assert revision.imported_from(code) == str(tmp_path / "old" / "agent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="would run"):
        revision.imported_from(str(empty))  # falls through to this checkout's code


def test_which_code_has_the_fast_path(tmp_path: Path) -> None:
    fields = "from dataclasses import dataclass\n@dataclass\nclass Config:\n    {}: bool = False\n"
    assert revision.has_fastdp(old_code(tmp_path / "a", fields.format("no_fastdp")))
    assert not revision.has_fastdp(old_code(tmp_path / "b", fields.format("masquerade")))
    assert not revision.has_fastdp(old_code(tmp_path / "c", None))  # not this checkout's config
    with pytest.raises(RuntimeError, match="does not import"):
        revision.has_fastdp(old_code(tmp_path / "d", "raise SystemExit(3)\n"))


def test_the_agents_labs_take_turns_at_going_first() -> None:
    cases = [Case(n, Pair("", "", ""), 0) for n in "wsbevr"]
    orders = ["".join(c.name for c in dataplane.in_turn(cases, k, 4)) for k in range(4)]
    assert orders == ["wsbevr", "sbewvr", "bewsvr", "ewsbvr"]
    assert "".join(c.name for c in dataplane.in_turn(cases[2:], 1, 1)) == "bevr"


def test_the_capture_counts_sealed_and_plain_sleeve_datagrams() -> None:
    """The share is what the capture printed; none seen is an error, not a share of 0."""

    class Done:
        returncode = 0

        def __init__(self, out: str) -> None:
            self.out = out

        def communicate(self, timeout: float) -> tuple[str, None]:
            return self.out, None

    assert dataplane.captured_share(Done('{"sealed": 3, "plain": 1}')) == 0.75  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no sleeve datagram"):
        dataplane.captured_share(Done('{"sealed": 0, "plain": 0}'))  # type: ignore[arg-type]
