"""The CNI socket server (agent/cni/server.py): framing, descriptors, error replies, shutdown.
No root, no kernel: the handler is a recorder."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.cni import spec
from agent.cni.handler import Handler
from agent.cni.server import CniServer
from agent.cni.spec import CniError, Code
from agent.refusals import Tallies
from tests.agent.cni_fakes import FakeAddresses, FakeNetwork


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "cni.sock")


def frame_bytes(doc: Any) -> bytes:
    body = json.dumps(doc).encode()
    return struct.pack("!I", len(body)) + body


def exchange(path: str, data: bytes, fds: Sequence[int] = (), shut: bool = False) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        if fds:
            socket.send_fds(s, [data], list(fds))
        else:
            s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    (length,) = struct.unpack("!I", reply[:4])
    assert len(reply) == 4 + length
    doc: dict[str, Any] = json.loads(reply[4:])
    return doc


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], int | None, bool]] = []

    async def __call__(self, request: dict[str, Any], fd: int | None) -> dict[str, Any] | None:
        self.seen.append((request, fd, fd is not None and _is_open(fd)))
        if request.get("command") == "BOOM":
            raise RuntimeError("kaboom")
        if request.get("command") == "FAIL":
            raise CniError(Code.TRY_AGAIN_LATER, "later", "busy")
        return {"echo": request}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_server_round_trip_with_a_descriptor(socket_path: str) -> None:
    record = Recorder()
    async with CniServer(socket_path, record):
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        r, w = os.pipe()
        try:
            reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"a": 1}), [r])
        finally:
            os.close(r)
            os.close(w)
        assert reply == {"ok": True, "result": {"echo": {"a": 1}}}
        _, fd, was_open = record.seen[0]
        assert fd is not None and was_open
        assert not _is_open(fd)  # closed once handled
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"command": "FAIL"}))
        assert reply == {"ok": False, "error": {"code": 11, "msg": "later", "details": "busy"}}
        assert record.seen[-1][1] is None
    assert not os.path.exists(socket_path)


async def test_server_replaces_a_stale_socket_file(socket_path: str) -> None:
    Path(socket_path).write_text("stale")
    async with CniServer(socket_path, Recorder()):
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({}))
        assert reply["ok"]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (struct.pack("!I", spec.MAX_FRAME_BYTES + 1), "exceeds"),
        (struct.pack("!I", 3) + b"{{{", "not JSON"),
        (struct.pack("!I", 2) + b"\xff\xfe", "not JSON"),
        (frame_bytes([1, 2]), "not a JSON object"),
        (struct.pack("!I", 10) + b"{}", "closed after 2 of 10"),
        (b"\x00\x00", "closed after 2 of 4"),
    ],
)
async def test_server_answers_malformed_frames_and_keeps_serving(
    socket_path: str, data: bytes, text: str
) -> None:
    async with CniServer(socket_path, Recorder()):
        reply = await asyncio.to_thread(exchange, socket_path, data, shut=True)
        assert reply["ok"] is False and reply["error"]["code"] == Code.DECODE
        assert text in reply["error"]["msg"]
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"x": 1}))
        assert reply["ok"]


async def test_server_refuses_several_descriptors_and_closes_them(socket_path: str) -> None:
    record = Recorder()
    async with CniServer(socket_path, record):
        r, w = os.pipe()
        try:
            reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({}), [r, w])
        finally:
            os.close(r)
            os.close(w)
        assert reply["error"]["code"] == Code.DECODE and "2 descriptors" in reply["error"]["msg"]
        assert record.seen == []


async def test_server_times_out_a_silent_client(socket_path: str) -> None:
    async with CniServer(socket_path, Recorder(), read_timeout=0.1):
        reply = await asyncio.to_thread(exchange, socket_path, b"\x00\x00\x00\x05{")
        assert reply["error"]["code"] == Code.DECODE and "within 0.1s" in reply["error"]["msg"]


async def test_server_reports_handler_crashes_as_code_100(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with CniServer(socket_path, Recorder()):
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({"command": "BOOM"}))
        assert reply == {
            "ok": False,
            "error": {"code": 100, "msg": "RuntimeError: kaboom", "details": ""},
        }
        assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes({}))
        assert reply["ok"]


async def test_server_serves_concurrent_clients(socket_path: str) -> None:
    async def slow(request: dict[str, Any], fd: int | None) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return request

    async with CniServer(socket_path, slow):
        started = asyncio.get_running_loop().time()
        replies = await asyncio.gather(
            *(asyncio.to_thread(exchange, socket_path, frame_bytes({"n": n})) for n in range(8))
        )
        assert [r["result"]["n"] for r in replies] == list(range(8))
        assert asyncio.get_running_loop().time() - started < 1.5


async def test_server_with_the_handler(socket_path: str) -> None:
    log: list[str] = []
    async with CniServer(socket_path, Handler(FakeAddresses(log), FakeNetwork(log)).handle):
        bad = {
            "command": "ADD",
            "container_id": "c1",
            "netns": "/x",
            "ifname": "eth0",
            "config": "{",
        }
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes(bad))
        assert reply["error"]["code"] == Code.DECODE
        config = json.dumps({"cniVersion": "1.1.0", "name": "weave", "type": "weave-py"})
        status = {"command": "STATUS", "config": config}
        reply = await asyncio.to_thread(exchange, socket_path, frame_bytes(status))
        assert reply == {"ok": True, "result": None}


async def test_server_close_cancels_requests_in_flight(socket_path: str) -> None:
    entered, seen = asyncio.Event(), list[int | None]()

    async def stuck(request: dict[str, Any], fd: int | None) -> None:
        seen.append(fd)
        entered.set()
        await asyncio.Event().wait()

    server = CniServer(socket_path, stuck)
    await server.start()
    r, w = os.pipe()
    try:
        client = asyncio.create_task(
            asyncio.to_thread(exchange_raw, socket_path, frame_bytes({}), [r])
        )
        await asyncio.wait_for(entered.wait(), 5)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert not os.path.exists(socket_path)
        assert seen[0] is not None and not _is_open(seen[0])
        assert await client == b""  # hung up without a reply: the plugin says "try again"
    finally:
        os.close(r)
        os.close(w)


def exchange_raw(path: str, data: bytes, fds: Sequence[int]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        socket.send_fds(s, [data], list(fds))
        return s.recv(65536)


async def test_rejected_frames_are_counted_and_logged_once_per_reason(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    tallies = Tallies()
    async with CniServer(socket_path, Recorder(), tallies=tallies) as server:
        with caplog.at_level(logging.WARNING, "weave-py.cni"):
            for data in (b"\x00\x00\x00\x03{{{", b"\x00\x00\x00\x03{{{", b"\xff\xff\xff\xff"):
                await asyncio.to_thread(exchange, socket_path, data, shut=True)
        assert server.serving
    assert tallies.snapshot() == {"cni request": {"malformed": 2, "too-large": 1}}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith(
        f"refuse cni request: malformed from uid {os.geteuid()} pid "
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_a_foreign_uid_is_refused_before_its_request_is_read() -> None:
    record = Recorder()
    directory = tempfile.mkdtemp(prefix="wp-cni-", dir="/tmp")  # mode 0700, root's
    socket_path = os.path.join(directory, "cni.sock")
    async with CniServer(socket_path, record) as server:
        os.chmod(directory, 0o755)
        os.chmod(socket_path, 0o666)  # a careless mode: the credentials still decide
        program = (
            "import os, socket, struct, json\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({socket_path!r})\n"
            "n = struct.unpack('!I', s.recv(4))[0]; print(s.recv(n).decode())\n"
        )
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", program], capture_output=True, timeout=20
        )
        reply = json.loads(done.stdout or b"null")
        assert reply["ok"] is False and "root" in reply["error"]["msg"], done.stderr
    shutil.rmtree(directory)
    assert record.seen == [] and server.refusals.counts == {"foreign-uid": 1}
