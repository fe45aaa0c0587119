"""Smoke test of ``python -m bench.dataplane --quick --encrypted``: it runs, reports, and
cleans up.

Asserts no speed threshold: only that every case moved data on the path it is for (the default
lab on the fast path, the forced and the encrypted labs on the sleeve), the encrypted lab's sleeve
datagrams were all sealed, and nothing was left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from overlay import netlink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3"),
]


def test_quick_run_reports_all_cases_and_leaves_nothing() -> None:
    name = "s" + secrets.token_hex(3)
    done = subprocess.run(
        [sys.executable, "-m", "bench.dataplane", "--quick", "--encrypted", "--name", name],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    leftovers = [ns for ns in netlink.list_netns() if ns.startswith(f"wp{name}")]
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for case in ("weave", "fast", "sleeve", "vxlan", "routing", "encrypted"):
        assert summary[f"{case}_gbps"] > 0, summary
        assert summary[f"{case}_rtt_us"] > 0, summary
    assert summary["ratio_vxlan"] > 0 and summary["ratio_routing"] > 0
    assert summary["fast_ratio_vxlan"] > 0 and summary["sleeve_ratio_vxlan"] > 0
    assert summary["paths"] == {"weave-py": ["fastdp"], "sleeve": ["sleeve"],
                                "encrypted": ["sleeve"]}  # fmt: skip
    assert summary["encrypted_ratio_vxlan"] > 0 and summary["encrypted_sealed_share"] == 1.0
    assert summary["name"] == name and summary["seconds"] == 2
    assert not leftovers, f"benchmark left {leftovers}"
