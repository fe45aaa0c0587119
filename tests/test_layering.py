"""The layering rules of DESIGN.md, read from the import statements of every module.

gossip imports nothing from overlay or agent; overlay imports nothing from agent; nothing
shipped or benchmarked imports the tests; scapy (over a second to import) is for tests and
diagnostics only, never in the shipped packages; and no module imports itself through a circle
of others. Every import counts, those under ``if TYPE_CHECKING:`` and inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "gossip": {"overlay", "agent", "bench", "tests"},
    "overlay": {"agent", "bench", "tests"},
    "agent": {"bench", "tests"},
    "bench": {"tests"},
}
SHIPPED = ("gossip", "overlay", "agent")


def modules(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


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


@pytest.mark.parametrize("package", SHIPPED)
def test_no_scapy_outside_tests(package: str) -> None:
    bad = imports_of(package, {"scapy"})
    assert not bad, "scapy is for tests only:\n" + "\n".join(bad)


def module_name(path: Path, root: Path = ROOT) -> str:
    """``agent/cni/__init__.py`` -> ``agent.cni``; ``gossip/mesh.py`` -> ``gossip.mesh``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages: list[str], root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (``from m import name`` counts as m
    unless ``m.name`` is a module itself)."""
    paths = {module_name(p, root): p for package in packages for p in modules(package, root)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for imported_name in imported(path, root):
            target = imported_name
            while target and target not in paths:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_circles() -> None:
    graph = import_graph(sorted(FORBIDDEN))
    found = circles(graph)
    lines = [
        f"{a} imports {b}" for group in found for a in group for b in sorted(graph[a] & set(group))
    ]
    assert not found, "import circles:\n" + "\n".join(lines)


def test_circle_finder_sees_type_checking_and_indirect_circles(tmp_path: Path) -> None:
    files = {
        "agent/__init__.py": "",
        "agent/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from agent.b import B\n",
        "agent/b.py": "from agent import c\n",
        "agent/c.py": "def f():\n    from agent.a import A\n",
        "agent/d.py": "import agent.a\nfrom agent import e\n",
        "agent/e.py": "from . import a\n",
    }
    for where, source in files.items():
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / where).write_text(source)
    graph = import_graph(["agent"], root=tmp_path)
    assert graph["agent.d"] == {"agent", "agent.a", "agent.e"}
    assert circles(graph) == [["agent.a", "agent.b", "agent.c"]]


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
