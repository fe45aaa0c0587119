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
