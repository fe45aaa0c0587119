"""Smoke test of ``python -m bench.cni --pods 5``: it runs, reports every figure, cleans up.

Asserts no speed threshold, only that both plugins were measured and nothing was left.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from overlay import netlink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.access("/usr/lib/cni/bridge", os.X_OK), reason="no reference CNI"),
]


def test_quick_run_reports_both_plugins_and_leaves_nothing() -> None:
    name = "c" + secrets.token_hex(3)
    done = subprocess.run(
        [sys.executable, "-m", "bench.cni", "--pods", "5", "--name", name],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    leftovers = [ns for ns in netlink.list_netns() if ns.startswith(f"wp{name}")]
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for case in ("weave", "reference"):
        for op in ("add", "del"):
            assert summary[f"{case}_{op}_p50_ms"] > 0
            assert summary[f"{case}_{op}_p95_ms"] >= summary[f"{case}_{op}_p50_ms"]
    assert summary["add_p50_ratio"] > 0 and summary["bar"] == 2.0
    assert not leftovers, leftovers
