"""The A/B benchmark's other side: the code of an older git revision, checked out in a temporary
worktree outside the checkout, and a lab whose agents run it on the sleeve, to be measured
against this code's sleeve. Code that has the fast path is started ``--no-fastdp``; code from
before it is started without the options this checkout's lab adds for it (it would refuse them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from agent.lab.lab import Lab
from agent.lab.plan import LabPlan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
SLEEVE_ARGS = ("--no-fastdp",)  # what keeps this code's agents off the fast path
FASTDP_OPTIONS = ("--vxlan-device",)  # the lab's options (each with a value) for the fast path


class OldCodeLab(Lab):
    """A lab whose agents import the code checked out at ``code`` instead of this checkout's:
    ``PYTHONPATH`` puts it first and ``PYTHONSAFEPATH`` keeps ``python -m`` from putting the
    working directory (this checkout) before it. ``fastdp``: that code has the fast path (see
    :func:`has_fastdp`); its agents run ``--no-fastdp``, else without FASTDP_OPTIONS."""

    def __init__(self, plan: LabPlan, code: str, fastdp: bool) -> None:
        super().__init__(plan, SLEEVE_ARGS if fastdp else ())
        self.code = code
        self.fastdp = fastdp

    def agent_command(self, i: int) -> list[str]:
        argv = super().agent_command(i)
        if not self.fastdp:
            argv = without_options(argv, FASTDP_OPTIONS)
        return ["env", *code_environment(self.code), *argv]


def without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without each option in ``names`` and the value that follows it."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in names:
            next(args, None)
        else:
            kept.append(arg)
    return kept


def code_environment(code: str) -> list[str]:
    return ["PYTHONSAFEPATH=1", f"PYTHONPATH={code}"]


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[str]:
    """Revision ``rev`` checked out in a temporary git worktree outside the checkout."""
    path = tempfile.mkdtemp(prefix="weave-py-baseline-")
    git = ["git", "-C", ROOT, "worktree"]
    try:
        subprocess.run([*git, "add", "--detach", path, rev], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", path], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def imported_from(code: str) -> str:
    """Where an agent started as OldCodeLab starts it imports ``agent`` and ``overlay`` from;
    raises RuntimeError unless both come from ``code``."""
    script = "import agent, overlay.sleeve; print(agent.__file__, overlay.sleeve.__file__)"
    argv = ["env", *code_environment(code), sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    paths = done.stdout.split()
    if done.returncode != 0 or len(paths) != 2:
        raise RuntimeError(f"baseline code does not import: {done.stderr.strip()}")
    if not all(path.startswith(code + os.sep) for path in paths):
        raise RuntimeError(f"baseline agents would run {paths}, not the code in {code}")
    return os.path.dirname(paths[0])


HAS_FASTDP = """
import dataclasses, os, sys
try:
    import agent.config as config
except ImportError:
    config = None
here = config is not None and config.__file__.startswith(sys.argv[1] + os.sep)
fields = dataclasses.fields(config.Config) if here else ()
print(any(f.name == "no_fastdp" for f in fields))
"""  # the editable install would find a module the old code lacks in this checkout: not that


def has_fastdp(code: str) -> bool:
    """Whether the code at ``code`` has the fast path (its Config has ``no_fastdp``)."""
    argv = ["env", *code_environment(code), sys.executable, "-c", HAS_FASTDP, code]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    if done.returncode != 0 or done.stdout.strip() not in ("True", "False"):
        raise RuntimeError(f"baseline code does not import: {done.stderr.strip()}")
    return done.stdout.strip() == "True"
