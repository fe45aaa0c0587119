"""CNI latency benchmark: weave-py's plugin (the ``weave-py-net`` binary scripts/build-plugin
builds) against the reference ``bridge`` + ``host-local``.

``python -m bench.cni [--pods N] [--name NAME]`` builds a one-node weave-py lab and, beside it,
a scratch "host" namespace for the reference plugins (Debian's containernetworking-plugins),
then adds N pods to each, alternating weave-py and reference pod by pod so both see the same
machine, and deletes them the same way. Each call is timed as a runtime sees it: the plugin
binary executed (through ``nsenter`` into the host namespace, for both), config on stdin,
until it exits. Pod namespaces are created outside the timing. Prints a table, then ONE JSON
line with p50/p95 of ADD and DEL in milliseconds for both and the ratios. The bar it documents:
weave-py's ADD p50 <= 2 x the reference's. Everything is named ``wp<name>...`` and removed in
``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from agent.cni import install
from agent.lab import cni
from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from overlay import netlink
from overlay.netns import NETNS_DIR

BAR = 2.0  # weave-py ADD p50 / reference ADD p50
NAME = re.compile(r"^[a-z0-9]{1,9}$")
REFERENCE = "/usr/lib/cni"


def log(text: str) -> None:
    print(f"bench.cni: {text}", file=sys.stderr, flush=True)


def reference_call(host_ns: str, command: str, pod: str, config: dict[str, Any]) -> float:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod,
        "CNI_NETNS": f"{NETNS_DIR}/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": REFERENCE,
    }
    started = time.perf_counter()
    done = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR}/{host_ns}", f"{REFERENCE}/bridge"],
        input=json.dumps(config), capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"reference {command} {pod}: {done.stdout}{done.stderr}")
    return took * 1000


def weave_call(lab: Lab, command: str, pod: str) -> float:
    started = time.perf_counter()
    done = cni.call(lab.plan, 1, command, pod, f"{NETNS_DIR}/{pod}")
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"weave-py {command} {pod}: {done.stdout}{done.stderr}")
    return took * 1000


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def run(name: str, pods: int) -> dict[str, Any]:
    plan = LabPlan(f"{name}c", nodes=1, pods=0, directory=f"/tmp/weave-py-bench/{name}c")
    lab = Lab(plan)
    host = f"wp{name}r-h"
    names = {"weave": [f"wp{name}w{k}" for k in range(pods)],
             "reference": [f"wp{name}r{k}" for k in range(pods)]}  # fmt: skip
    times: dict[str, list[float]] = {f"{c}_{op}": [] for c in names for op in ("add", "del")}
    scratch = tempfile.mkdtemp(prefix="wp-bench-cni-")
    config = {
        "cniVersion": "1.0.0", "name": f"wp{name}ref", "type": "bridge",
        "bridge": f"wp{name}rbr", "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]],
                 "dataDir": f"{scratch}/ipam"},
    }  # fmt: skip
    try:
        log(f"weave-py: one-node lab {plan.name}")
        lab.up()
        netlink.ensure_netns(host)
        for ns in names["weave"] + names["reference"]:
            netlink.ensure_netns(ns)
        log(f"ADD x{pods} each, alternating")
        for w, r in zip(names["weave"], names["reference"], strict=True):
            times["weave_add"].append(weave_call(lab, "ADD", w))
            times["reference_add"].append(reference_call(host, "ADD", r, config))
        log(f"DEL x{pods} each, alternating")
        for w, r in zip(names["weave"], names["reference"], strict=True):
            times["weave_del"].append(weave_call(lab, "DEL", w))
            times["reference_del"].append(reference_call(host, "DEL", r, config))
    finally:
        for ns in [host, *names["weave"], *names["reference"]]:
            if ns in netlink.list_netns():
                netlink.remove_netns(ns)
        lab.down()
        subprocess.run(["rm", "-rf", scratch], check=False)
    out: dict[str, Any] = {"name": name, "pods": pods}
    for key, values in times.items():
        p50, p95 = percentiles(values)
        out[f"{key}_p50_ms"], out[f"{key}_p95_ms"] = round(p50, 2), round(p95, 2)
    out["add_p50_ratio"] = round(out["weave_add_p50_ms"] / out["reference_add_p50_ms"], 3)
    out["del_p50_ratio"] = round(out["weave_del_p50_ms"] / out["reference_del_p50_ms"], 3)
    out["bar"] = BAR
    out["meets_bar"] = out["add_p50_ratio"] <= BAR
    return out


def table(s: dict[str, Any]) -> str:
    rows = [f"{'':<12}{'ADD p50':>10}{'ADD p95':>10}{'DEL p50':>10}{'DEL p95':>10}  (ms)"]
    for case in ("weave", "reference"):
        cells = [s[f"{case}_{op}_{q}_ms"] for op in ("add", "del") for q in ("p50", "p95")]
        rows.append(f"{case:<12}" + "".join(f"{c:>10.2f}" for c in cells))
    rows.append(f"ADD p50 weave-py / reference = {s['add_p50_ratio']:.2f} (bar <= {BAR}); "
                f"DEL p50 ratio {s['del_p50_ratio']:.2f}")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cni", description=__doc__)
    parser.add_argument("--pods", type=int, default=50, help="pods per plugin (default 50)")
    parser.add_argument("--name", default="b" + secrets.token_hex(3),
                        help="name part for namespaces (1-9 of [a-z0-9])")  # fmt: skip
    args = parser.parse_args(argv)
    if not NAME.match(args.name) or not 1 <= args.pods <= 500:
        parser.error("--name: 1-9 of [a-z0-9]; --pods: 1..500")
    if not os.access(f"{REFERENCE}/bridge", os.X_OK):
        parser.error(f"{REFERENCE}/bridge missing: apt-get install containernetworking-plugins")
    if not os.access(install.default_plugin(), os.X_OK):
        parser.error(f"{install.default_plugin()} missing: run scripts/build-plugin")
    summary = run(args.name, args.pods)
    print(table(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
