"""One HTTP/1.1 request as the local API reads it: bounded, parsed, every fault a ``BadRequest``.

The API needs the method, the target's path and query, and nothing else; a body is never
needed but is read (up to ``MAX_BODY``) and dropped so the answer is not lost to a reset.
Bounds, checked before the bytes are kept: the head (request line and headers) at most
``MAX_HEAD`` bytes (the stream's own limit stops reading there), at most ``MAX_HEADERS``
header lines, a body of at most ``MAX_BODY`` bytes, and ``READ_TIMEOUT`` seconds for all of
it. ``parse_head`` is pure (the fuzz tests feed it arbitrary bytes); ``read`` adds the
stream. Every malformed or oversized request raises ``BadRequest(reason)`` and nothing else;
the reason is the refusal counter's label.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qs, urlsplit

MAX_HEAD = 8192  # bytes of request line and headers
MAX_HEADERS = 32  # header lines
MAX_BODY = 8192  # bytes of body read and dropped
READ_TIMEOUT = 5.0  # seconds for the whole request
TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class BadRequest(ValueError):
    """A request the API will not read; ``reason`` is a short label (the counter's)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Request:
    """What the API acts on: ``method``, ``path`` (not yet percent-decoded), ``query`` (the
    last value of each key) and how many body bytes follow the head."""

    method: str
    path: str
    query: dict[str, str]
    body_length: int


def parse_head(head: bytes) -> Request:
    """The request in ``head`` (request line and headers, ending in the blank line or not)."""
    if len(head) > MAX_HEAD:
        raise BadRequest("too-large", f"head over {MAX_HEAD} bytes")
    lines = head.decode("latin-1").split("\r\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise BadRequest("malformed", "empty request")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest("too-many-headers", f"over {MAX_HEADERS}")
    method, target = _request_line(lines[0])
    parts = _target(target)
    length = _content_length(lines[1:])
    query = {k: v[-1] for k, v in parse_qs(parts.query, max_num_fields=MAX_HEADERS).items()}
    return Request(method, parts.path, query, length)


def _request_line(line: str) -> tuple[str, str]:
    words = line.split(" ")
    if len(words) != 3 or not words[0] or not words[2].startswith("HTTP/1."):
        raise BadRequest("malformed", "request line")
    method, target, _ = words
    if not set(method.encode("latin-1")) <= TOKEN:
        raise BadRequest("malformed", "method")
    return method, target


def _target(target: str) -> SplitResult:
    if not target.startswith("/") or target.startswith("//"):
        raise BadRequest("malformed", "target is not an absolute path")
    if any(c <= " " or c == "\x7f" for c in target):
        raise BadRequest("malformed", "control character in target")
    try:
        return urlsplit(target)
    except ValueError as exc:
        raise BadRequest("malformed", f"target: {exc}") from None


def _content_length(headers: list[str]) -> int:
    length = 0
    for line in headers:
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            raise BadRequest("malformed", "header line")
        if key.lower() == "content-length":
            value = value.strip()
            if not value.isascii() or not value.isdigit() or len(value) > 9:
                raise BadRequest("malformed", "content-length")
            length = int(value)
    if length > MAX_BODY:
        raise BadRequest("too-large", f"body over {MAX_BODY} bytes")
    return length


async def read(reader: asyncio.StreamReader, timeout: float = READ_TIMEOUT) -> Request:
    """One request from ``reader`` (a stream whose limit is at least ``MAX_HEAD``), its body
    read and dropped."""
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            request = parse_head(head)
            if request.body_length:
                await reader.readexactly(request.body_length)
    except TimeoutError:
        raise BadRequest("timeout", f"no whole request within {timeout:g}s") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("too-large", f"head over {MAX_HEAD} bytes") from None
    except asyncio.IncompleteReadError:
        raise BadRequest("incomplete", "connection closed mid-request") from None
    except ConnectionError as exc:
        raise BadRequest("incomplete", str(exc)) from None
    return request
