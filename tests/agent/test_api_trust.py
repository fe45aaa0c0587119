"""Who may call the local API: mutating calls only on the root-only unix socket, the views on
loopback; the request bounds; every refusal counted and logged with its source, rate-limited;
/healthz naming dead tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator

import pytest

from agent import api as api_module
from agent import request
from agent.api import Api, healthz
from agent.listeners import listen_tcp, listen_unix
from agent.refusals import Tallies
from tests.agent.test_api_ipam import FakeActions
from tests.agent.test_status import REPORT

NOBODY = 65534


@pytest.fixture
async def socket_dir() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="wp-trust-", dir="/tmp") as directory:
        yield directory


async def ask(request_bytes: bytes, path: str = "", port: int = 0) -> bytes:
    if path:
        reader, writer = await asyncio.open_unix_connection(path)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_tcp_serves_views_and_refuses_mutations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeActions()
    api = Api(lambda: REPORT, actions=fake)
    server = await listen_tcp("127.0.0.1", 0, api.handle)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert status_of(await ask(b"GET /status/ipam HTTP/1.1\r\n\r\n", port=port)) == 200
        with caplog.at_level(logging.WARNING, "weave-py.api"):
            for req in (b"POST /ip/abc HTTP/1.1\r\n\r\n", b"DELETE /peer/node-2 HTTP/1.1\r\n\r\n"):
                assert status_of(await ask(req, port=port)) == 403
    assert fake.calls == []
    assert api.refusals.counts == {"read-only-listener": 2}
    (line,) = [r.getMessage() for r in caplog.records]  # the second is only counted
    assert line.startswith("refuse api request: read-only-listener from 127.0.0.1:")


async def test_unix_socket_is_roots_from_the_start(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "api.sock")
    server = await listen_unix(path, Api(lambda: REPORT, actions=FakeActions()).handle)
    async with server:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        assert os.listdir(socket_dir) == ["api.sock"]  # no temporary name left
        if os.geteuid() == 0:  # another user cannot even connect
            code = _connect_as(NOBODY, path, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert code == "PermissionError"


def _connect_as(uid: int, path: str, req: bytes) -> str:
    """What a process of ``uid`` gets from the socket at ``path``: the answer's status line,
    or the name of the error connecting raised."""
    program = (
        "import os, socket, sys\n"
        f"os.setgid({uid}); os.setuid({uid})\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({path!r})\n"
        "except OSError as e:\n    print(type(e).__name__); sys.exit()\n"
        f"s.sendall({req!r}); print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=20)
    return done.stdout.decode().strip() or done.stderr.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_a_foreign_uid_is_refused_even_when_it_can_connect(
    socket_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(socket_dir, "api.sock")
    fake = FakeActions()
    api = Api(lambda: REPORT, actions=fake)
    server = await listen_unix(path, api.handle)
    async with server:
        os.chmod(socket_dir, 0o755)
        os.chmod(path, 0o666)  # a careless mode: the credentials still decide
        with caplog.at_level(logging.WARNING, "weave-py.api"):
            line = await asyncio.to_thread(
                _connect_as, NOBODY, path, b"DELETE /ip/abc HTTP/1.1\r\n\r\n"
            )
        assert line == "HTTP/1.1 403 Forbidden"
        assert status_of(await ask(b"POST /ip/abc HTTP/1.1\r\n\r\n", path)) == 200  # root
    assert fake.calls == [("allocate", "abc", "eth0")]
    assert api.refusals.counts == {"foreign-uid": 1}
    assert any(f"foreign-uid from uid {NOBODY} pid" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 33 + b"\r\n", "too-many-headers"),
        (b"GET /healthz HTTP/1.1\r\nX-A: " + b"b" * 9000 + b"\r\n\r\n", "too-large"),
        (b"POST /ip/abc HTTP/1.1\r\nContent-Length: 8193\r\n\r\n", "too-large"),
        (b"GET //[x HTTP/1.1\r\n\r\n", "malformed"),
        (b"GET /healthz\r\n\r\n", "malformed"),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "malformed"),
        (b"GET /healthz HTTP/1.1\r\n", "incomplete"),
    ],
    ids=["headers", "head", "body", "target", "version", "length", "cut"],
)
async def test_bounds_refuse_before_acting(
    socket_dir: str, request_bytes: bytes, reason: str
) -> None:
    path = os.path.join(socket_dir, "api.sock")
    fake = FakeActions()
    api = Api(lambda: REPORT, actions=fake)
    async with await listen_unix(path, api.handle):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request_bytes)
        writer.write_eof()
        answer = await reader.read()
        writer.close()
    assert status_of(answer) == 400
    assert (fake.calls, api.refusals.counts) == ([], {reason: 1})


async def test_a_silent_client_times_out(socket_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request, "READ_TIMEOUT", 0.1)
    monkeypatch.setattr(request.read, "__defaults__", (0.1,))
    path = os.path.join(socket_dir, "api.sock")
    api = Api(lambda: REPORT)
    async with await listen_unix(path, api.handle):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /heal")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert status_of(answer) == 400 and api.refusals.counts == {"timeout": 1}


async def test_connections_beyond_the_cap_are_answered_503(
    socket_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "MAX_CONNECTIONS", 2)
    path = os.path.join(socket_dir, "api.sock")
    api = Api(lambda: REPORT)
    async with await listen_unix(path, api.handle):
        idle = [await asyncio.open_unix_connection(path) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert api.open == 2
        reader, writer = await asyncio.open_unix_connection(path)
        answer = await asyncio.wait_for(reader.read(), 5)  # answered before it is read
        writer.close()
        assert status_of(answer) == 503
        for _, writer in idle:
            writer.close()
        for _ in range(100):
            if api.open == 0:
                break
            await asyncio.sleep(0.01)
        assert status_of(await ask(b"GET /healthz HTTP/1.1\r\n\r\n", path)) == 200
    assert api.refusals.counts["too-many-connections"] == 1


async def test_a_flood_of_bad_requests_logs_one_line_and_counts_all(
    socket_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(socket_dir, "api.sock")
    tallies = Tallies()
    api = Api(lambda: REPORT, tallies=tallies)
    async with await listen_unix(path, api.handle):
        with caplog.at_level(logging.WARNING, "weave-py.api"):
            for _ in range(50):
                await ask(b"BAD\r\n\r\n", path)
    assert api.refusals.counts == {"malformed": 50}
    assert len(caplog.records) == 1
    metrics = api.respond("GET", "/metrics")[2]
    assert 'weave_py_refusals_total{reason="malformed",what="api request"} 50.0' in metrics


def test_healthz_names_dead_tasks() -> None:
    assert healthz(()) == (200, "text/plain", "ok\n")
    code, _, body = healthz(("gossip: OverflowError: int too big", "cni: not serving"))
    assert code == 500
    assert body == "dead task: gossip: OverflowError: int too big\ndead task: cni: not serving\n"
    dead = ["follow: RuntimeError: x"]
    api = Api(lambda: REPORT, dead=lambda: tuple(dead))
    assert api.respond("GET", "/healthz")[0] == 500
    dead.clear()
    assert api.respond("GET", "/healthz")[0] == 200
