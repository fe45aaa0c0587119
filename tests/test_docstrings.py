"""Every public definition in gossip/ and overlay/ says what it is for, in a docstring.

Checked: every module; every public class (its name does not start with ``_``), also one nested
in a public class; every public function; every public method of a public class, properties
included. Exempt: dunder and private names, property setters and deleters (the getter speaks for
the property), ``typing.overload`` stubs, and class-level fields (dataclass fields, enum
members, constants), which a comment beside the declaration documents.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gossip", "overlay")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a body, those inside ``if``/``try`` blocks included."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _statements(block)
            for handler in node.handlers:
                yield from _statements(handler.body)
        else:
            yield node


def _exempt(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Attribute) and decorator.attr in ("setter", "deleter"):
            return True
        name = decorator.attr if isinstance(decorator, ast.Attribute) else None
        if isinstance(decorator, ast.Name):
            name = decorator.id
        if name == "overload":
            return True
    return False


def _public(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, Definition]]:
    """(qualified name, node) of every public definition in ``body``, nested ones included."""
    for node in _statements(body):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if node.name.startswith("_"):
            continue
        if not isinstance(node, ast.ClassDef) and _exempt(node):
            continue
        yield f"{prefix}{node.name}", node
        if isinstance(node, ast.ClassDef):
            yield from _public(node.body, f"{prefix}{node.name}.")


def undocumented(path: Path, root: Path = ROOT) -> list[str]:
    """``path:line name`` of each module or public definition in ``path`` without a docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(root)
    missing = [] if ast.get_docstring(tree) else [f"{where}:1 (module)"]
    for name, node in _public(tree.body, ""):
        if not ast.get_docstring(node):
            missing.append(f"{where}:{node.lineno} {name}")
    return missing


def test_every_public_definition_has_a_docstring() -> None:
    missing = [
        line
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in undocumented(path)
    ]
    assert not missing, f"{len(missing)} definitions without a docstring:\n" + "\n".join(missing)


SAMPLE = '''"""A module."""
import typing


class Shown:
    """Documented."""

    size: int = 0

    def bare(self) -> None:
        pass

    @property
    def value(self) -> int:
        return 1

    @value.setter
    def value(self, v: int) -> None:
        pass

    def __len__(self) -> int:
        return 0

    def _private(self) -> None:
        pass

    class Inner:
        pass


class _Hidden:
    def bare(self) -> None:
        pass


@typing.overload
def f(x: int) -> int: ...
def f(x: object) -> object:
    return x


if typing.TYPE_CHECKING:
    async def g() -> None:
        pass
'''


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            SAMPLE,
            [
                "m.py:10 Shown.bare",
                "m.py:14 Shown.value",
                "m.py:27 Shown.Inner",
                "m.py:38 f",
                "m.py:43 g",
            ],
        ),
        ("x = 1\n", ["m.py:1 (module)"]),
    ],
)
def test_the_check_itself(tmp_path: Path, source: str, expected: list[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert undocumented(path, root=tmp_path) == expected
