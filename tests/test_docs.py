"""The README's configuration reference and test command stay true to the code."""

from __future__ import annotations

from pathlib import Path

from agent import config

ROOT = Path(__file__).resolve().parent.parent


def test_readme_has_the_current_configuration_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config.reference() in readme, "regenerate with: weave-py config-reference"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test" in readme
    assert ci.strip().splitlines()[-1] == "bash scripts/test"
