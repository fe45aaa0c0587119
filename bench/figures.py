"""The data-plane benchmark's figures: a case's median over rounds, the bars, the JSON summary and
the table. Pure: :mod:`bench.dataplane` measures, this module only does arithmetic on results.

Cases: ``weave-py`` (a lab on its default path, the kernel fast path), ``sleeve`` (the same lab
with every agent ``--no-fastdp``), ``vxlan`` and ``routing`` (kernel baselines), and optionally
``baseline`` (agents of an older revision, on the sleeve) and ``encrypted`` (a lab with a
password, on the sealed sleeve). A case's figure is the median of its rounds; ratios are taken
against kernel VXLAN measured in the same run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

FAST_BAR = 0.9  # fast path throughput / kernel VXLAN throughput
FAST_RTT_EXTRA_US = 30.0  # fast path ping RTT may exceed kernel VXLAN's by this much
SLEEVE_BAR = 0.5  # sleeve throughput / kernel VXLAN throughput
ENCRYPTED_BAR = 0.35  # encrypted sleeve throughput / kernel VXLAN throughput
WEAVE = ("weave-py", "sleeve", "baseline", "encrypted")  # the cases run by agents


@dataclass(frozen=True)
class Result:
    """One measurement of one case. ``path``: what node 1 reported as its path to node 2 while
    it ran ("fastdp", "sleeve"; None for kernel baselines and agents that report none)."""

    case: str
    gbps: float
    retransmits: int
    rtt_us: float
    mtu: int
    cpu_s_per_gb: float | None = None  # both agents' CPU seconds per GB moved (weave cases)
    sealed_share: float | None = None  # of the sleeve datagrams captured (encrypted case)
    path: str | None = None


def median_result(runs: list[Result]) -> Result:
    """The case's figures: median throughput and RTT, the median run's retransmits and path."""
    middle = sorted(runs, key=lambda r: r.gbps)[len(runs) // 2]
    rtt = statistics.median(r.rtt_us for r in runs)
    gbps = statistics.median(r.gbps for r in runs)
    return Result(middle.case, gbps, middle.retransmits, rtt, middle.mtu, path=middle.path)


def summary(runs: dict[str, list[Result]], name: str, seconds: int) -> dict[str, Any]:
    """Every figure of a run as one flat JSON object. The ``weave_*`` keys, ``ratio_vxlan``,
    ``bar_ratio_vxlan`` and ``meets_bar`` describe the default path (the fast path);
    ``fast_*`` repeats them beside the bars of issue 14, ``sleeve_*`` the forced sleeve."""
    results = {case: median_result(r) for case, r in runs.items()}
    w, v, r = results["weave-py"], results["vxlan"], results["routing"]
    out: dict[str, Any] = {"name": name, "seconds": seconds, "rounds": len(runs["weave-py"])}
    for key, case in (("weave", "weave-py"), ("vxlan", "vxlan"), ("routing", "routing")):
        out |= case_figures(key, runs[case], results[case])
    out["ratio_vxlan"] = round(w.gbps / v.gbps, 3)
    out["ratio_routing"] = round(w.gbps / r.gbps, 3)
    pairs = zip(runs["weave-py"], runs["vxlan"], strict=True)
    out["ratio_vxlan_rounds"] = [round(a.gbps / b.gbps, 3) for a, b in pairs]
    out["bar_ratio_vxlan"] = FAST_BAR
    out["meets_bar"] = w.gbps >= FAST_BAR * v.gbps
    out["order"] = list(runs)
    out["weave_cpu_s_per_gb"] = cpu_median(runs["weave-py"])
    out["paths"] = {case: [x.path for x in rs] for case, rs in runs.items() if case in WEAVE}
    out |= fast_summary(runs["weave-py"], w, v)
    out |= sleeve_summary(runs["sleeve"], results["sleeve"], v)
    if "baseline" in runs:
        out |= ab_summary(runs, results["baseline"], v)
    if "encrypted" in runs:
        out |= encrypted_summary(runs["encrypted"], results["encrypted"], v)
    return out


def case_figures(key: str, runs: list[Result], res: Result) -> dict[str, Any]:
    """A case's median figures under ``<key>_``: throughput, RTT, retransmits, MTU, rounds."""
    return {
        f"{key}_gbps": round(res.gbps, 3),
        f"{key}_rtt_us": round(res.rtt_us, 1),
        f"{key}_retransmits": res.retransmits,
        f"{key}_mtu": res.mtu,
        f"{key}_gbps_rounds": [round(x.gbps, 3) for x in runs],
    }


def fast_summary(runs: list[Result], f: Result, v: Result) -> dict[str, Any]:
    """The default path's figures against its two bars: throughput >= FAST_BAR x kernel VXLAN,
    ping RTT <= kernel VXLAN's + FAST_RTT_EXTRA_US (both on the medians)."""
    extra = f.rtt_us - v.rtt_us
    return case_figures("fast", runs, f) | {
        "fast_ratio_vxlan": round(f.gbps / v.gbps, 3),
        "fast_rtt_extra_us": round(extra, 1),
        "fast_rtt_us_rounds": [round(x.rtt_us, 1) for x in runs],
        "fast_cpu_s_per_gb": cpu_median(runs),
        "fast_bar_ratio_vxlan": FAST_BAR,
        "fast_bar_rtt_extra_us": FAST_RTT_EXTRA_US,
        "fast_meets_bar_ratio_vxlan": f.gbps >= FAST_BAR * v.gbps,
        "fast_meets_bar_rtt_extra_us": extra <= FAST_RTT_EXTRA_US,
    }


def sleeve_summary(runs: list[Result], s: Result, v: Result) -> dict[str, Any]:
    """The forced sleeve's figures against its bar: throughput >= SLEEVE_BAR x kernel VXLAN."""
    return case_figures("sleeve", runs, s) | {
        "sleeve_ratio_vxlan": round(s.gbps / v.gbps, 3),
        "sleeve_rtt_us_rounds": [round(x.rtt_us, 1) for x in runs],
        "sleeve_cpu_s_per_gb": cpu_median(runs),
        "sleeve_bar_ratio_vxlan": SLEEVE_BAR,
        "sleeve_meets_bar_ratio_vxlan": s.gbps >= SLEEVE_BAR * v.gbps,
    }


def encrypted_summary(runs: list[Result], e: Result, v: Result) -> dict[str, Any]:
    """The encrypted sleeve's figures beside the plain sleeve's, against kernel VXLAN."""
    shares = [r.sealed_share for r in runs if r.sealed_share is not None]
    return case_figures("encrypted", runs, e) | {
        "encrypted_ratio_vxlan": round(e.gbps / v.gbps, 3),
        "encrypted_bar_ratio_vxlan": ENCRYPTED_BAR,
        "encrypted_meets_bar": e.gbps >= ENCRYPTED_BAR * v.gbps,
        "encrypted_sealed_share": round(min(shares), 4) if shares else None,
        "encrypted_cpu_s_per_gb": cpu_median(runs),
    }


def ab_summary(runs: dict[str, list[Result]], b: Result, v: Result) -> dict[str, Any]:
    """The interleaved A/B figures, like with like: this code on the sleeve (the ``sleeve``
    case) against the baseline revision's agents, also on the sleeve."""
    pairs = list(zip(runs["sleeve"], runs["baseline"], strict=True))
    ab = [x.gbps / y.gbps for x, y in pairs]
    cost = [y.cpu_s_per_gb / x.cpu_s_per_gb for x, y in pairs if x.cpu_s_per_gb and y.cpu_s_per_gb]
    return {
        "baseline_gbps": round(b.gbps, 3),
        "baseline_rtt_us": round(b.rtt_us, 1),
        "baseline_retransmits": b.retransmits,
        "baseline_gbps_rounds": [round(x.gbps, 3) for x in runs["baseline"]],
        "baseline_ratio_vxlan": round(b.gbps / v.gbps, 3),
        "ab_ratio": round(statistics.median(ab), 3),
        "ab_ratio_rounds": [round(x, 3) for x in ab],
        "baseline_cpu_s_per_gb": cpu_median(runs["baseline"]),
        "ab_cpu_ratio": round(statistics.median(cost), 3) if cost else None,
        "ab_cpu_ratio_rounds": [round(x, 3) for x in cost],
    }


def cpu_median(runs: list[Result]) -> float | None:
    """The median of the rounds' CPU seconds per GB (None when not measured)."""
    costs = [r.cpu_s_per_gb for r in runs if r.cpu_s_per_gb is not None]
    return round(statistics.median(costs), 3) if costs else None


def render(results: dict[str, Result]) -> str:
    """The medians as a table, each case's throughput also as a share of kernel VXLAN's."""
    vxlan = results["vxlan"]
    lines = [
        f"{'case':<10} {'throughput':>12} {'x/vxlan':>8} {'rtt(avg)':>10} {'retr':>7} "
        f"{'mtu':>5}  path"
    ]
    for res in results.values():
        lines.append(
            f"{res.case:<10} {res.gbps:>7.2f} Gb/s {res.gbps / vxlan.gbps:>8.2f} "
            f"{res.rtt_us:>7.0f} µs {res.retransmits:>7} {res.mtu:>5}  {res.path or '-'}"
        )
    return "\n".join(lines)


def bars(encrypted: bool) -> list[str]:
    """The bars a run is held to, one line each, for the table's footer."""
    lines = [
        f"bar: fast path (weave-py) >= {FAST_BAR} x kernel VXLAN, "
        f"rtt <= kernel VXLAN's + {FAST_RTT_EXTRA_US:.0f} µs",
        f"bar: sleeve >= {SLEEVE_BAR} x kernel VXLAN",
    ]
    if encrypted:
        lines.append(f"bar: encrypted >= {ENCRYPTED_BAR} x kernel VXLAN")
    return lines
