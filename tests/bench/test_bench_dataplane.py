"""The data-plane benchmark's A/B mode without a lab: the figures it reports, how it starts the
baseline's agents, and its check of which code those agents would import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.lab.lab import Lab
from bench import dataplane
from bench.dataplane import OldCodeLab, Result, bench_plan


def runs(**gbps: list[float]) -> dict[str, list[Result]]:
    return {
        case.replace("_", "-"): [Result(case, g, 0, 100.0, 1436) for g in figures]
        for case, figures in gbps.items()
    }


def test_ab_ratio_per_round_and_its_median() -> None:
    measured = runs(
        weave_py=[4.0, 6.0, 5.0], baseline=[5.0, 5.0, 5.0], vxlan=[10.0] * 3, routing=[12.0] * 3
    )
    out = dataplane.summary(measured, "x", 10)
    assert out["ab_ratio_rounds"] == [0.8, 1.2, 1.0]
    assert out["ab_ratio"] == 1.0
    assert out["baseline_gbps_rounds"] == [5.0, 5.0, 5.0]
    assert out["baseline_ratio_vxlan"] == 0.5
    assert out["ratio_vxlan"] == 0.5 and out["weave_gbps"] == 5.0  # today's keys, unchanged
    assert out["order"] == ["weave-py", "baseline", "vxlan", "routing"]


def test_without_a_baseline_there_are_no_ab_figures() -> None:
    out = dataplane.summary(runs(weave_py=[4.0], vxlan=[8.0], routing=[10.0]), "x", 2)
    assert not [key for key in out if key.startswith(("ab_", "baseline"))]
    assert out["ratio_vxlan"] == 0.5


def test_the_baseline_agents_import_the_old_code_first() -> None:
    plan = bench_plan("abtest")
    old = OldCodeLab(plan, "/tmp/old-code")
    command = old.agent_command(1)
    assert command[:3] == ["env", "PYTHONSAFEPATH=1", "PYTHONPATH=/tmp/old-code"]
    assert command[3:] == Lab(plan).agent_command(1)


def test_the_import_check_refuses_code_that_would_not_run(tmp_path: Path) -> None:
    code = tmp_path / "old"
    for module in ("agent/__init__.py", "overlay/__init__.py", "overlay/sleeve.py"):
        os.makedirs(code / os.path.dirname(module), exist_ok=True)
        (code / module).write_text("")
    assert dataplane.imported_from(str(code)) == str(code / "agent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="would run"):
        dataplane.imported_from(str(empty))  # falls through to this checkout's code


def test_encrypted_figures_beside_todays_keys() -> None:
    measured = runs(weave_py=[5.0], encrypted=[3.0, 4.0, 3.5], vxlan=[8.0] * 3, routing=[9.0])
    for r in measured["encrypted"]:
        object.__setattr__(r, "sealed_share", 1.0)
    measured["weave-py"] *= 3
    measured["routing"] *= 3
    out = dataplane.summary(measured, "x", 10)
    assert out["encrypted_gbps"] == 3.5 and out["encrypted_ratio_vxlan"] == 0.438
    assert out["encrypted_rtt_us"] == 100.0 and out["encrypted_gbps_rounds"] == [3.0, 4.0, 3.5]
    assert out["encrypted_meets_bar"] and out["encrypted_sealed_share"] == 1.0
    assert out["ratio_vxlan"] == 0.625 and out["weave_gbps"] == 5.0  # today's keys, unchanged
    assert not [key for key in dataplane.summary(runs(weave_py=[4.0], vxlan=[8.0],
                routing=[10.0]), "x", 2) if key.startswith("encrypted")]  # fmt: skip


def test_the_weave_labs_take_turns_at_going_first() -> None:
    cases = [dataplane.Case(n, dataplane.Pair("", "", ""), 0) for n in "wbevr"]
    orders = ["".join(c.name for c in dataplane.in_turn(cases, k, 3)) for k in range(3)]
    assert orders == ["wbevr", "bewvr", "ewbvr"]
    assert "".join(c.name for c in dataplane.in_turn(cases[1:], 1, 1)) == "bevr"


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
