"""A small HTTP client for the agent's API over its unix socket or TCP address."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(
    method: str,
    path: str,
    socket_path: str | None = None,
    http_addr: str | None = None,
    timeout: float = 5.0,
) -> tuple[int, str]:
    """(status, body) of ``method path`` (no request body); raises OSError when the agent
    cannot be reached."""
    if socket_path:
        conn: http.client.HTTPConnection = _UnixConnection(socket_path, timeout)
    else:
        host, _, port = (http_addr or "127.0.0.1:6784").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    except http.client.HTTPException as exc:
        raise OSError(f"bad answer from agent: {exc}") from None
    finally:
        conn.close()


def get(
    path: str, socket_path: str | None = None, http_addr: str | None = None, timeout: float = 5.0
) -> tuple[int, str]:
    """(status, body) of GET ``path``; raises OSError when the agent cannot be reached."""
    return request("GET", path, socket_path, http_addr, timeout)


def report(
    socket_path: str | None = None, http_addr: str | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """The agent's ``/report`` document as JSON (``agent.report.Report.from_json`` reads it into
    the status tree); raises OSError when the agent cannot be reached or does not answer 200."""
    code, body = get("/report", socket_path, http_addr, timeout)
    if code != 200:
        raise OSError(f"agent answered {code}")
    data: dict[str, Any] = json.loads(body)
    return data
