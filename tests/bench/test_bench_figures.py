"""The data-plane benchmark's figures without a lab: medians, the JSON keys, the bars of the
fast path and the sleeve, the A/B (sleeve against the baseline) and the encrypted case."""

from __future__ import annotations

from dataclasses import replace

from bench import figures
from bench.figures import Result

PATHS = {"weave-py": "fastdp", "sleeve": "sleeve", "encrypted": "sleeve"}


def runs(rtt: dict[str, float] | None = None, **gbps: list[float]) -> dict[str, list[Result]]:
    """Results per case (keyword weave_py is case weave-py), RTT 100 µs unless ``rtt`` says."""
    out = {}
    for key, figures_ in gbps.items():
        case = key.replace("_", "-")
        us = (rtt or {}).get(case, 100.0)
        out[case] = [Result(case, g, 0, us, 1436, path=PATHS.get(case)) for g in figures_]
    return out


def test_the_default_path_is_the_fast_path_under_todays_keys_and_its_own() -> None:
    measured = runs(weave_py=[9.0, 9.6, 9.3], sleeve=[5.0, 4.0, 6.0], vxlan=[10.0] * 3,
                    routing=[12.0] * 3, rtt={"weave-py": 120.0, "vxlan": 100.0})  # fmt: skip
    out = figures.summary(measured, "x", 10)
    assert out["weave_gbps"] == out["fast_gbps"] == 9.3
    assert out["ratio_vxlan"] == out["fast_ratio_vxlan"] == 0.93
    assert out["ratio_routing"] == 0.775 and out["ratio_vxlan_rounds"] == [0.9, 0.96, 0.93]
    assert out["fast_rtt_us"] == 120.0 and out["fast_rtt_extra_us"] == 20.0
    assert out["sleeve_gbps"] == 5.0 and out["sleeve_ratio_vxlan"] == 0.5
    assert out["sleeve_rtt_us"] == 100.0 and out["sleeve_gbps_rounds"] == [5.0, 4.0, 6.0]
    assert out["order"] == ["weave-py", "sleeve", "vxlan", "routing"]
    assert out["paths"] == {"weave-py": ["fastdp"] * 3, "sleeve": ["sleeve"] * 3}


def test_the_bars_and_whether_each_was_met() -> None:
    met = figures.summary(runs(weave_py=[9.0], sleeve=[5.0], vxlan=[10.0], routing=[12.0],
                               rtt={"weave-py": 130.0}), "x", 2)  # fmt: skip
    assert met["fast_bar_ratio_vxlan"] == met["bar_ratio_vxlan"] == 0.9
    assert met["fast_bar_rtt_extra_us"] == 30.0 and met["sleeve_bar_ratio_vxlan"] == 0.5
    assert met["fast_meets_bar_ratio_vxlan"] and met["meets_bar"]
    assert met["fast_meets_bar_rtt_extra_us"] and met["sleeve_meets_bar_ratio_vxlan"]
    missed = figures.summary(runs(weave_py=[8.9], sleeve=[4.9], vxlan=[10.0], routing=[12.0],
                                  rtt={"weave-py": 130.5}), "x", 2)  # fmt: skip
    assert not missed["fast_meets_bar_ratio_vxlan"] and not missed["meets_bar"]
    assert not missed["fast_meets_bar_rtt_extra_us"] and missed["fast_rtt_extra_us"] == 30.5
    assert not missed["sleeve_meets_bar_ratio_vxlan"]


def test_medians_take_the_median_runs_path_and_retransmits() -> None:
    rs = [Result("weave-py", g, int(g), 100.0 + g, 1436, path=p)
          for g, p in ((3.0, "a"), (1.0, "b"), (2.0, "c"))]  # fmt: skip
    m = figures.median_result(rs)
    assert (m.gbps, m.retransmits, m.rtt_us, m.path) == (2.0, 2, 102.0, "c")


def test_the_ab_compares_the_sleeve_with_the_baseline() -> None:
    measured = runs(weave_py=[9.0] * 3, sleeve=[4.0, 6.0, 5.0], baseline=[5.0, 5.0, 5.0],
                    vxlan=[10.0] * 3, routing=[12.0] * 3)  # fmt: skip
    measured["sleeve"] = [replace(r, cpu_s_per_gb=2.0) for r in measured["sleeve"]]
    measured["baseline"] = [replace(r, cpu_s_per_gb=3.0) for r in measured["baseline"]]
    out = figures.summary(measured, "x", 10)
    assert out["ab_ratio_rounds"] == [0.8, 1.2, 1.0] and out["ab_ratio"] == 1.0
    assert out["ab_cpu_ratio"] == 1.5 and out["ab_cpu_ratio_rounds"] == [1.5] * 3
    assert out["baseline_gbps_rounds"] == [5.0] * 3 and out["baseline_ratio_vxlan"] == 0.5
    assert out["paths"]["baseline"] == [None] * 3
    assert out["order"] == ["weave-py", "sleeve", "baseline", "vxlan", "routing"]


def test_without_a_baseline_or_password_there_are_no_such_figures() -> None:
    out = figures.summary(runs(weave_py=[4.0], sleeve=[3.0], vxlan=[8.0], routing=[10.0]), "x", 2)
    assert not [key for key in out if key.startswith(("ab_", "baseline", "encrypted"))]
    assert out["ratio_vxlan"] == 0.5


def test_encrypted_figures_beside_the_others() -> None:
    measured = runs(weave_py=[9.0] * 3, sleeve=[5.0] * 3, encrypted=[3.0, 4.0, 3.5],
                    vxlan=[8.0] * 3, routing=[9.0] * 3)  # fmt: skip
    measured["encrypted"] = [replace(r, sealed_share=1.0) for r in measured["encrypted"]]
    out = figures.summary(measured, "x", 10)
    assert out["encrypted_gbps"] == 3.5 and out["encrypted_ratio_vxlan"] == 0.438
    assert out["encrypted_rtt_us"] == 100.0 and out["encrypted_gbps_rounds"] == [3.0, 4.0, 3.5]
    assert out["encrypted_meets_bar"] and out["encrypted_sealed_share"] == 1.0
    assert out["paths"]["encrypted"] == ["sleeve"] * 3
    assert out["sleeve_gbps"] == 5.0 and out["fast_gbps"] == 9.0


def test_the_table_shows_each_case_against_vxlan_and_its_path() -> None:
    medians = {case: figures.median_result(r) for case, r in runs(
        weave_py=[9.0], sleeve=[5.0], vxlan=[10.0], routing=[12.0]).items()}  # fmt: skip
    rows = {line.split()[0]: line.split() for line in figures.render(medians).splitlines()[1:]}
    assert rows["weave-py"][3] == "0.90" and rows["weave-py"][-1] == "fastdp"
    assert rows["sleeve"][3] == "0.50" and rows["sleeve"][-1] == "sleeve"
    assert rows["routing"][3] == "1.20" and rows["routing"][-1] == "-"
