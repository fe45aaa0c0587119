"""The cluster lab's state file, ``<directory>/kube.json``: the lab's size and every process it
started, rewritten (atomically) as soon as a process runs, so ``lab down`` stops exactly those,
also after the process that built the lab crashed. Its presence is what tells ``lab down`` that
a lab is a cluster lab.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.lab.kube.plan import KubePlan
from agent.lab.kube.processes import Daemon

FILE = "kube.json"


def path(directory: str) -> Path:
    """Where a lab in ``directory`` keeps its state."""
    return Path(directory) / FILE


def exists(directory: str) -> bool:
    """Whether ``directory`` holds a cluster lab."""
    return path(directory).exists()


def save(plan: KubePlan, daemons: list[Daemon], cgroups: list[str]) -> None:
    """Write the state file (``cgroups``: the cgroup directories the lab will have made): a
    temporary file renamed into place."""
    document = {"name": plan.name, "nodes": plan.nodes, "pods": plan.pods,
                "bin_dir": str(plan.bin_dir), "cgroups": cgroups,
                "daemons": [d.to_json() for d in daemons]}  # fmt: skip
    target = path(plan.directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{FILE}.tmp")
    temporary.write_text(json.dumps(document, indent=1))
    os.replace(temporary, target)


def load(name: str, directory: str) -> tuple[KubePlan, list[Daemon], list[str]]:
    """The plan, processes and cgroup directories of a lab built earlier (ValueError when there
    is no such lab)."""
    try:
        document: dict[str, Any] = json.loads(path(directory).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"no cluster lab in {directory}: {exc}") from None
    plan = KubePlan(name, int(document["nodes"]), int(document["pods"]), directory,
                    Path(document["bin_dir"]))  # fmt: skip
    daemons = [Daemon.from_json(d) for d in document.get("daemons", [])]
    return plan, daemons, [str(c) for c in document.get("cgroups", [])]
