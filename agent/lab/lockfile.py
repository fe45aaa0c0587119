"""The image's dependency locks, made from pyproject.toml by pip-compile (``LOCK_COMMANDS``, run
from the checkout's root), and the check that they still match it.

- ``deploy/requirements.lock``: what the agent needs at run time, every version pinned and every
  file's hash listed (pip installs it with ``--require-hashes``); no test tools.
- ``deploy/build-requirements.lock``: the build backend pyproject.toml names (setuptools),
  pinned the same way, so building weave-py's own wheel fetches nothing unpinned.

A lock is out of date when the packages it lists as pyproject.toml's own are not exactly the
project's dependencies (or build requirements), or an entry lacks a pin or hashes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

LOCK = "deploy/requirements.lock"
BUILD_LOCK = "deploy/build-requirements.lock"
_COMMON = "--generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links"
LOCK_COMMANDS = (
    f"pip-compile {_COMMON} --output-file={LOCK} pyproject.toml",
    f"pip-compile {_COMMON} --allow-unsafe --build-deps-for=wheel --only-build-deps "
    f"--output-file={BUILD_LOCK} pyproject.toml",
)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_OWN = "(pyproject.toml"


@dataclass
class Pin:
    """One locked package: its version, how many file hashes, and whether the project asks for it
    itself (``# via weave-py (pyproject.toml...)``) rather than through another package."""

    version: str
    hashes: int = 0
    own: bool = False


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """The normalized names of PEP 508 requirement strings."""
    return {normalized(m.group(1)) for r in requirements if (m := _NAME.match(r))}


def parse(text: str) -> tuple[dict[str, Pin], list[str]]:
    """A pip-compile output: pins by normalized name, and the requirement lines without a pin."""
    pins: dict[str, Pin] = {}
    unpinned: list[str] = []
    current: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--hash=") and current:
            current.hashes += 1
        elif stripped.startswith("#"):
            if current and _OWN in stripped:
                current.own = True
        elif stripped and not line[0].isspace():
            match = _PIN.match(stripped)
            current = pins.setdefault(normalized(match.group(1)), Pin(match.group(2))) \
                if match else None  # fmt: skip
            if not match:
                unpinned.append(stripped)
    return pins, unpinned


def lock_problems(source: Path) -> list[str]:
    """What makes the locks under ``source`` disagree with its pyproject.toml (empty: none)."""
    with (source / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)
    wanted = {
        LOCK: requirement_names(project["project"].get("dependencies", [])),
        BUILD_LOCK: requirement_names(project["build-system"].get("requires", [])),
    }
    problems = []
    for lock, names in wanted.items():
        path = source / lock
        if not path.is_file():
            problems.append(f"{lock} is missing")
            continue
        problems += _disagreements(lock, names, *parse(path.read_text()))
    return problems


def _disagreements(
    lock: str, names: set[str], pins: dict[str, Pin], unpinned: list[str]
) -> list[str]:
    own = {name for name, pin in pins.items() if pin.own}
    problems = [f"{lock} lacks {name}" for name in sorted(names - own)]
    problems += [f"{lock} has {name}, which pyproject.toml no longer names"
                 for name in sorted(own - names)]  # fmt: skip
    problems += [f"{lock} has an unpinned line: {line}" for line in unpinned]
    problems += [f"{lock} has no hashes for {name}" for name, p in pins.items() if not p.hashes]
    return problems
