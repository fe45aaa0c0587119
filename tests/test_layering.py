"""The layering rules of DESIGN.md, read from the import statements of every module.

gossip imports nothing from overlay or agent; overlay imports nothing from agent; scapy (over a
second to import) is for tests and diagnostics only, never in the shipped packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "gossip": {"overlay", "agent"},
    "overlay": {"agent"},
    "agent": set(),
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(root).parts[:-1])  # a module's or __init__'s package
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def top(name: str) -> str:
    return name.split(".", 1)[0]


def test_packages_exist() -> None:
    for package in FORBIDDEN:
        assert modules(package), f"no modules found under {package}/"


def imports_of(package: str, forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in sorted(imported(path))
        if top(name) in forbidden
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str) -> None:
    bad = imports_of(package, set(FORBIDDEN[package]))
    assert not bad, "layering violated:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_scapy_outside_tests(package: str) -> None:
    bad = imports_of(package, {"scapy"})
    assert not bad, "scapy is for tests only:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("import overlay.frame\n", "gossip/x.py", {"overlay.frame"}),
        ("from agent import config\n", "gossip/x.py", {"agent", "agent.config"}),
        ("from ..agent import api\n", "overlay/x.py", {"agent", "agent.api"}),
        ("from . import frame\n", "overlay/x.py", {"overlay", "overlay.frame"}),
        ("def f():\n    import scapy.all\n", "agent/x.py", {"scapy.all"}),
        (
            "import importlib\nimportlib.import_module('agent.api')\n",
            "gossip/x.py",
            {"importlib", "agent.api"},
        ),
    ],
)
def test_import_scanner_sees(tmp_path: Path, source: str, where: str, expected: set[str]) -> None:
    """The scanner itself must catch every import form, or the checks above prove nothing."""
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert imported(path, root=tmp_path) == expected
