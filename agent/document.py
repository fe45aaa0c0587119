"""A JSON document from another process, read with every value's type checked.

A client that fetched a document (``/report``, say) reads it through ``Fields``: one object at a
time, key by key, each value checked for the type the reader expects. Anything else raises one
``DocumentError`` whose message names the path of the first value at fault
("report.peers[1].tx_bytes: expected an integer, got 'x'").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

Net = ipaddress.IPv4Network


class DocumentError(ValueError):
    """A document that is not what the reader expects; the message names the value at fault."""


class Fields:
    """One JSON object of a fetched document, read key by key with each value's type checked;
    ``where`` is its path in the document, for the error."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise DocumentError(f"{where}: expected an object, got {_shown(data)}")
        self.data: Mapping[str, object] = data
        self.where = where

    def _wrong(self, key: str, expected: str) -> DocumentError:
        return DocumentError(
            f"{self.where}.{key}: expected {expected}, got {_shown(self.data[key])}"
        )

    def _get(self, key: str) -> object:
        if key not in self.data:
            raise DocumentError(f"{self.where}.{key}: missing")
        return self.data[key]

    def text(self, key: str, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if not isinstance(value, str) or (choices and value not in choices):
            raise self._wrong(key, " or ".join(map(repr, choices)) if choices else "a string")
        return value

    def maybe_text(self, key: str, optional: bool = False) -> str | None:
        """A string or null; ``optional``: the key may be absent too."""
        if self.data.get(key) is None and (optional or key in self.data):
            return None
        return self.text(key)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(key, "an integer")
        return value

    def maybe_integer(self, key: str, optional: bool = False) -> int | None:
        if self.data.get(key) is None and (optional or key in self.data):
            return None
        return self.integer(key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._wrong(key, "a number")
        return float(value)

    def maybe_number(self, key: str) -> float | None:
        return None if self._get(key) is None else self.number(key)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def net(self, key: str) -> Net:
        return _network(self._get(key), f"{self.where}.{key}")

    def nets(self, key: str) -> tuple[Net, ...]:
        return tuple(_network(value, where) for value, where in self.items(key))

    def counts(self, key: str) -> dict[str, int]:
        """An object of name -> count."""
        inner = Fields(self._get(key), f"{self.where}.{key}")
        return {name: inner.integer(name) for name in inner.data}

    def child(self, key: str) -> tuple[object, str]:
        """(value, path) of a nested object, for its class's ``from_json``."""
        return self._get(key), f"{self.where}.{key}"

    def items(self, key: str) -> list[tuple[object, str]]:
        """(value, path) of each element of a list."""
        value = self._get(key)
        if not isinstance(value, list):
            raise self._wrong(key, "a list")
        return [(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(value)]


def _network(value: object, where: str) -> Net:
    if isinstance(value, str):
        try:
            return Net(value)
        except ValueError:
            pass
    raise DocumentError(f"{where}: expected an IPv4 network, got {_shown(value)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
