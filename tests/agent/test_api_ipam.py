"""The API's address-management routes (POST/DELETE /ip, DELETE /peer) with a fake actions
object, over the dispatcher and over a real unix socket, and ``weave-py rmpeer`` against it."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent import cli, client, errors
from agent.api import STATUS, Actions, Api
from tests.agent.test_status import REPORT


class FakeActions:
    """Records every call; answers from ``answers`` (an exception, a refusal or not, is raised)."""

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answers = answers

    def _answer(self, kind: str, default: dict[str, Any]) -> dict[str, Any]:
        answer = self.answers.get(kind, default)
        if isinstance(answer, Exception):
            raise answer
        result: dict[str, Any] = answer
        return result

    async def allocate(self, container_id: str, ifname: str) -> dict[str, Any]:
        self.calls.append(("allocate", container_id, ifname))
        return self._answer("allocate", {"address": "10.32.0.5/12", "gateway": "10.32.0.1"})

    async def release(self, container_id: str, ifname: str | None) -> dict[str, Any]:
        self.calls.append(("release", container_id, ifname))
        return self._answer("release", {"released": ["10.32.0.5"]})

    async def rmpeer(self, name: str) -> dict[str, Any]:
        self.calls.append(("rmpeer", name))
        return self._answer("rmpeer", {"taken": ["10.32.0.0/24", "10.40.0.0/14"]})


def make_api(actions: Actions | None = None, metrics_only: bool = False) -> Api:
    return Api(lambda: REPORT, metrics_only=metrics_only, actions=actions)


def test_fake_is_an_actions() -> None:
    _: Actions = FakeActions()  # mypy checks the fake against the Protocol


# -- dispatcher ------------------------------------------------------------------------------


async def test_allocate_defaults_to_eth0() -> None:
    fake = FakeActions()
    code, ctype, body = await make_api(fake).dispatch("POST", "/ip/abc123")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == {"address": "10.32.0.5/12", "gateway": "10.32.0.1"}
    assert fake.calls == [("allocate", "abc123", "eth0")]


async def test_allocate_with_ifname() -> None:
    fake = FakeActions()
    assert (await make_api(fake).dispatch("POST", "/ip/abc123?ifname=net1"))[0] == 200
    assert (await make_api(fake).dispatch("POST", "/ip/abc123/?ifname="))[0] == 200
    assert fake.calls == [("allocate", "abc123", "net1"), ("allocate", "abc123", "eth0")]


async def test_release_with_and_without_ifname() -> None:
    fake = FakeActions()
    code, _, body = await make_api(fake).dispatch("DELETE", "/ip/abc123")
    assert code == 200 and json.loads(body) == {"released": ["10.32.0.5"]}
    await make_api(fake).dispatch("DELETE", "/ip/abc123?ifname=eth1&x=y")
    assert fake.calls == [("release", "abc123", None), ("release", "abc123", "eth1")]


async def test_rmpeer() -> None:
    fake = FakeActions()
    code, ctype, body = await make_api(fake).dispatch("DELETE", "/peer/aa:bb:cc:dd:ee:03")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == {"taken": ["10.32.0.0/24", "10.40.0.0/14"]}
    assert fake.calls == [("rmpeer", "aa:bb:cc:dd:ee:03")]


async def test_path_parts_are_percent_decoded() -> None:
    fake = FakeActions()
    api = make_api(fake)
    assert (await api.dispatch("POST", "/ip/a%2Fb%20c?ifname=eth%30"))[0] == 200
    assert (await api.dispatch("DELETE", "/peer/aa%3Abb%3Acc%3Add%3Aee%3A03"))[0] == 200
    assert fake.calls == [("allocate", "a/b c", "eth0"), ("rmpeer", "aa:bb:cc:dd:ee:03")]


@pytest.mark.parametrize(
    ("kind", "method", "path"),
    [
        ("allocate", "POST", "/ip/abc"),
        ("release", "DELETE", "/ip/abc"),
        ("rmpeer", "DELETE", "/peer/node-9"),
    ],
)
@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (errors.Invalid("bad container id: ''"), 400),
        (errors.NotFound("no such peer: node-9"), 404),
        (errors.Conflict("node-9 is reachable; rmpeer is for dead peers"), 409),
        (errors.NoAddress("no free address: block 10.32.1.0/24 is full"), 507),
        (errors.TryLater("awaiting consensus"), 503),
        (errors.TimedOut("no address within 30s: all IP ranges owned by unreachable peers"), 504),
        (errors.KernelRefused("add address 10.32.1.1/24 to weave: EEXIST"), 500),
        (errors.StorageFailed("write ipam.json: ENOSPC"), 500),
    ],
)
async def test_refusals_answer_their_code_and_message(
    kind: str, method: str, path: str, refusal: errors.Refused, code: int
) -> None:
    fake = FakeActions(**{kind: refusal})
    answer = await make_api(fake).dispatch(method, path)
    body = json.dumps({"error": refusal.message}) + "\n"
    assert answer == (code, "application/json", body)


def test_every_refusal_has_a_status_code() -> None:
    refusals = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.Refused)
    ]
    assert len(refusals) >= 10
    assert set(refusals) == set(STATUS)


async def test_a_refusal_with_details_answers_them() -> None:
    refusal = errors.NoAddress("no free address", details="remove unused pods")
    code, _, body = await make_api(FakeActions(allocate=refusal)).dispatch("POST", "/ip/abc")
    assert code == 507
    assert json.loads(body) == {"error": "no free address", "details": "remove unused pods"}


async def test_a_refusal_of_the_nodes_own_making_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeActions(rmpeer=errors.StorageFailed("write ipam.json: ENOSPC"))
    assert (await make_api(fake).dispatch("DELETE", "/peer/node-9"))[0] == 500
    assert "write ipam.json: ENOSPC" in caplog.text
    caplog.clear()
    fake = FakeActions(rmpeer=errors.NotFound("no such peer: node-9"))
    assert (await make_api(fake).dispatch("DELETE", "/peer/node-9"))[0] == 404
    assert caplog.text == ""  # the client's mistake is the client's answer, not a log line


async def test_a_crashing_action_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeActions(rmpeer=RuntimeError("ring corrupt"))
    code, ctype, body = await make_api(fake).dispatch("DELETE", "/peer/node-9")
    assert (code, ctype) == (500, "application/json")
    assert "error" in json.loads(body)
    assert "ring corrupt" in caplog.text  # the traceback goes to the log, not the client


async def test_without_actions_the_routes_are_404() -> None:
    api = make_api(None)
    for method, path in (("POST", "/ip/abc"), ("DELETE", "/ip/abc"), ("DELETE", "/peer/x")):
        code, ctype, body = await api.dispatch(method, path)
        assert (code, ctype) == (404, "application/json")
        assert "not enabled" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/ip/abc"),
        ("DELETE", "/ip/abc"),
        ("DELETE", "/peer/x"),
        ("GET", "/ip/abc"),
        ("GET", "/status"),
    ],
)
async def test_metrics_only_listener_refuses_them(method: str, path: str) -> None:
    fake = FakeActions()
    code, _, _ = await make_api(fake, metrics_only=True).dispatch(method, path)
    assert code == 404
    assert fake.calls == []
    assert (await make_api(fake, metrics_only=True).dispatch("GET", "/metrics"))[0] == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/ip/abc"), ("POST", "/peer/x"), ("GET", "/peer/x")],
)
async def test_wrong_method_on_an_action_route(method: str, path: str) -> None:
    fake = FakeActions()
    code, ctype, body = await make_api(fake).dispatch(method, path)
    assert (code, ctype) == (405, "application/json")
    assert json.loads(body)["error"].startswith("use ")
    assert fake.calls == []


@pytest.mark.parametrize("path", ["/ip", "/ip/", "/ip/a/b", "/peer", "/peer/x/y"])
async def test_action_route_without_one_name(path: str) -> None:
    fake = FakeActions()
    code, _, body = await make_api(fake).dispatch("DELETE", path)
    assert code == 404 and "no such endpoint" in json.loads(body)["error"]
    assert fake.calls == []


@pytest.mark.parametrize("method", ["PUT", "PATCH", "HEAD", "OPTIONS"])
async def test_other_methods_are_405(method: str) -> None:
    fake = FakeActions()
    for path in ("/ip/abc", "/peer/x", "/status", "/metrics"):
        assert (await make_api(fake).dispatch(method, path))[0] == 405
    assert fake.calls == []


def steady(answer: tuple[int, str, str]) -> tuple[int, str, str]:
    """An answer without the process's own series (its CPU time moves between two calls)."""
    code, ctype, body = answer
    lines = [line for line in body.splitlines() if "process_" not in line]
    return code, ctype, "\n".join(lines)


async def test_get_routes_unchanged() -> None:
    api = make_api(FakeActions())
    for path in ("/status", "/status/ipam", "/report", "/metrics", "/healthz", "/nope"):
        assert steady(await api.dispatch("GET", path)) == steady(api.respond("GET", path))
    assert (await api.dispatch("POST", "/status"))[0] == 405
    assert (await api.dispatch("GET", "/ipam"))[0] == 404  # not an action route


# -- over a unix socket ----------------------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, FakeActions]]:
    """An Api with a FakeActions on a short-named unix socket, in the test's event loop."""
    fake = FakeActions(
        rmpeer=errors.NotFound("no such peer: ghost"),
        release={"released": []},
    )
    with tempfile.TemporaryDirectory(prefix="wp-api-", dir="/tmp") as directory:
        path = os.path.join(directory, "api.sock")
        server = await asyncio.start_unix_server(make_api(fake).handle, path)
        async with server:
            yield path, fake


async def raw(path: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"PUT /ip/abc HTTP/1.1\r\nHost: x\r\n\r\n", b"405 Method Not Allowed"),
        (b"POST /ip/abc HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", b"400 Bad Request"),
    ],
    ids=["put-is-405", "huge-body-is-400"],
)
async def test_handle_refuses_without_acting(
    served: tuple[str, FakeActions], request_bytes: bytes, status: bytes
) -> None:
    path, fake = served
    answer = await raw(path, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert fake.calls == []


async def test_handle_reads_and_ignores_a_body(served: tuple[str, FakeActions]) -> None:
    path, fake = served
    request = b'POST /ip/abc HTTP/1.1\r\nContent-Length: 11\r\n\r\n{"x": true}'
    answer = await raw(path, request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/json\r\n" in answer
    assert fake.calls == [("allocate", "abc", "eth0")]


async def test_handle_refusal_status_line(served: tuple[str, FakeActions]) -> None:
    path, _ = served
    answer = await raw(path, b"DELETE /peer/ghost HTTP/1.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert json.loads(body) == {"error": "no such peer: ghost"}


async def test_client_request(served: tuple[str, FakeActions]) -> None:
    path, fake = served
    code, body = await asyncio.to_thread(
        client.request, "DELETE", "/ip/abc?ifname=eth1", socket_path=path
    )
    assert (code, json.loads(body)) == (200, {"released": []})
    code, body = await asyncio.to_thread(client.get, "/status/ipam", socket_path=path)
    assert code == 200 and "aa:bb:cc:dd:ee:01(node-1)" in body
    assert fake.calls == [("release", "abc", "eth1")]


# -- weave-py rmpeer / status ipam -----------------------------------------------------------


async def run_cli(*argv: str) -> int:
    """The CLI in a thread (it blocks), the API in this test's event loop."""
    return await asyncio.to_thread(cli.main, list(argv))


async def test_cli_rmpeer_reclaims(
    served: tuple[str, FakeActions], capsys: pytest.CaptureFixture[str]
) -> None:
    path, fake = served
    fake.answers.pop("rmpeer")
    assert await run_cli("rmpeer", "aa:bb:cc:dd:ee:03", "--socket", path) == 0
    out, err = capsys.readouterr()
    assert out == "reclaimed 10.32.0.0/24, 10.40.0.0/14 from aa:bb:cc:dd:ee:03\n"
    assert err == ""
    assert fake.calls == [("rmpeer", "aa:bb:cc:dd:ee:03")]


async def test_cli_rmpeer_nothing_to_reclaim(
    served: tuple[str, FakeActions], capsys: pytest.CaptureFixture[str]
) -> None:
    path, fake = served
    fake.answers["rmpeer"] = {"taken": []}
    assert await run_cli("rmpeer", "node-9", "--socket", path) == 0
    assert capsys.readouterr().out == "nothing to reclaim\n"


async def test_cli_rmpeer_refused(
    served: tuple[str, FakeActions], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = served
    assert await run_cli("rmpeer", "ghost", "--socket", path) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "weave-py: rmpeer ghost: no such peer: ghost\n"


async def test_cli_rmpeer_agent_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="wp-api-", dir="/tmp") as directory:
        missing = os.path.join(directory, "nobody.sock")
        assert await run_cli("rmpeer", "node-9", "--socket", missing) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("weave-py: cannot reach the agent: ")


async def test_cli_rmpeer_without_address_management(capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="wp-api-", dir="/tmp") as directory:
        path = os.path.join(directory, "api.sock")
        async with await asyncio.start_unix_server(make_api(None).handle, path):
            assert await run_cli("rmpeer", "node-9", "--socket", path) == 1
    assert "not enabled" in capsys.readouterr().err


async def test_cli_status_ipam(
    served: tuple[str, FakeActions], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = served
    assert await run_cli("status", "ipam", "--socket", path) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("aa:bb:cc:dd:ee:01(node-1)   524288 IPs")
    assert out.splitlines()[2].endswith(" - unreachable!")
