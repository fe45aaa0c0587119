"""The lab state file, ``<directory>/lab.json``: the lab's size, its agents' pids and its pods'
addresses, rewritten (atomically) after every change so ``lab down`` finds exactly what a lab
made, also after the process that built it crashed."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

from agent.lab.plan import LabPlan

DEFAULT_ROOT = "/tmp/weave-py-lab"
FILE = "lab.json"


def default_directory(name: str) -> str:
    return f"{DEFAULT_ROOT}/{name}"


def save(
    plan: LabPlan,
    pids: Mapping[int, int],
    pod_addresses: Mapping[tuple[int, int], ipaddress.IPv4Interface],
) -> None:
    """Write the state file: a temporary file renamed into place."""
    addresses = {f"{i},{j}": str(a) for (i, j), a in pod_addresses.items()}
    state = {"name": plan.name, "nodes": plan.nodes, "pods": plan.pods, "pids": pids,
             "pod_addresses": addresses}  # fmt: skip
    tmp = f"{plan.directory}/{FILE}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, f"{plan.directory}/{FILE}")


def saved_pids(directory: str) -> dict[int, int]:
    """Node -> pid of the agents the state file lists (none when there is no file)."""
    return {int(k): v for k, v in _read(directory).get("pids", {}).items()}


def load_plan(name: str, directory: str | None = None) -> LabPlan:
    """The plan of a lab built earlier, from its state file (one node and no pods without one)."""
    directory = directory or default_directory(name)
    saved = _read(directory)
    return LabPlan(name, int(saved.get("nodes", 1)), int(saved.get("pods", 0)), directory)


def _read(directory: str) -> dict[str, Any]:
    try:
        with open(f"{directory}/{FILE}") as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return {}
