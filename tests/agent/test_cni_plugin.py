"""The CNI plugin binary (agent/cni/plugin, built by scripts/build-plugin), run as the runtime
runs it: a subprocess with a controlled environment and stdin, talking to a fake agent (a
unix-socket server on a thread) that records each request and the descriptors that came with it
and answers with a canned reply. What a subprocess cannot arrange cheaply (a bug's panic, a
short reply timeout) is tested in Go (agent/cni/plugin/main_test.go), run from here.

Any openable file stands in for the network namespace: the plugin only opens it and passes the
descriptor on; the fake agent checks that the descriptor it received is that same file.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install, spec

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = Path(install.default_plugin())
SOURCE = ROOT / "agent" / "cni" / "plugin"
SUPPORTED = list(spec.SUPPORTED_VERSIONS)
RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/pod"}],
    "ips": [{"address": "10.32.0.2/24", "gateway": "10.32.0.1", "interface": 0}],
}


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    """The binary, built from the current sources (a no-op when it is up to date)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-plugin"), str(PLUGIN)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def frame(message: object) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def config(version: str = "1.1.0", **extra: object) -> str:
    return json.dumps({"cniVersion": version, "name": "weave", "type": "weave-py-net", **extra})


class FakeAgent:
    """Accepts connections on ``path``; answers each request with ``reply`` (raw bytes), or
    never answers when ``reply`` is None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reply: bytes | None = frame({"ok": True, "result": None})
        self.requests: list[dict[str, Any]] = []
        self.fds: list[list[tuple[int, int]]] = []  # (st_dev, st_ino) of each descriptor
        self.stopping = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.server.settimeout(0.05)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                self.handle(connection)

    def handle(self, connection: socket.socket) -> None:
        header, fds, _flags, _address = socket.recv_fds(connection, 4, 4)
        received = []
        for fd in fds:
            stat = os.fstat(fd)
            received.append((stat.st_dev, stat.st_ino))
            os.close(fd)
        header += self.receive(connection, 4 - len(header))
        (size,) = struct.unpack(">I", header)
        self.requests.append(json.loads(self.receive(connection, size)))
        self.fds.append(received)
        if self.reply is None:
            self.stopping.wait()
        else:
            connection.sendall(self.reply)

    @staticmethod
    def receive(connection: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = connection.recv(size - len(data))
            assert chunk, "plugin closed the connection mid-request"
            data += chunk
        return data

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.server.close()


@dataclass
class Outcome:
    status: int
    output: Any  # stdout parsed as JSON, None when empty
    seconds: float


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(tmp_path / "cni.sock")
    yield fake
    fake.close()


@pytest.fixture
def netns(tmp_path: Path) -> Path:
    path = tmp_path / "netns"
    path.write_text("")
    return path


def cni_env(command: str, netns: Path | str, sock: Path | str, **overrides: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": str(netns),
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "WEAVE_CNI_SOCKET": str(sock),
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value != "<unset>"}


def run_plugin(env: dict[str, str], stdin: str | bytes) -> Outcome:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    started = time.monotonic()
    done = subprocess.run([PLUGIN], input=data, env=env, capture_output=True, timeout=20)
    seconds = time.monotonic() - started
    assert done.stderr == b"", done.stderr.decode()
    output = json.loads(done.stdout) if done.stdout.strip() else None
    return Outcome(done.returncode, output, seconds)


def assert_error(outcome: Outcome, code: int, *named: str) -> None:
    assert outcome.status == 1
    assert outcome.output is not None, "errors must be printed to stdout"
    assert set(outcome.output) == {"cniVersion", "code", "msg", "details"}
    assert outcome.output["code"] == code, outcome.output
    for name in named:
        assert name in outcome.output["msg"], outcome.output


def same_file(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino)


# VERSION


@pytest.mark.parametrize(
    "stdin", [b"", b"garbage", b"[1, 2]", b'{"cniVersion": 7}', b'{"cniVersion": "9.9.9"}', b"\xff"]
)
def test_version_works_with_dummy_env_and_any_stdin(stdin: bytes) -> None:
    env = {"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy", "CNI_PATH": "dummy"}
    outcome = run_plugin(env, stdin)
    assert outcome.status == 0
    assert outcome.output == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}


@pytest.mark.parametrize("version", ["0.3.1", "0.1.0", "1.0.0"])
def test_version_echoes_a_supported_input_version(version: str) -> None:
    outcome = run_plugin({"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}))
    assert outcome.output == {"cniVersion": version, "supportedVersions": SUPPORTED}


# Validation before the agent is contacted


@pytest.mark.parametrize(
    ("command", "unset", "named"),
    [
        ("ADD", ["CNI_NETNS"], ["CNI_NETNS"]),
        ("ADD", ["CNI_CONTAINERID", "CNI_IFNAME"], ["CNI_CONTAINERID", "CNI_IFNAME"]),
        ("CHECK", ["CNI_NETNS"], ["CNI_NETNS"]),
        ("DEL", ["CNI_CONTAINERID"], ["CNI_CONTAINERID"]),
        ("DEL", ["CNI_IFNAME"], ["CNI_IFNAME"]),
        ("ADD", ["CNI_COMMAND"], ["CNI_COMMAND"]),
        ("VERSION", ["CNI_COMMAND"], ["CNI_COMMAND"]),
    ],
)
def test_missing_environment_variables_are_named(
    agent: FakeAgent, netns: Path, command: str, unset: list[str], named: list[str]
) -> None:
    for value in ("<unset>", ""):  # an empty variable counts as missing
        env = cni_env(command, netns, agent.path, **dict.fromkeys(unset, value))
        assert_error(run_plugin(env, config()), 4, *named)
    assert agent.requests == []


def test_unknown_command_is_named(agent: FakeAgent, netns: Path) -> None:
    assert_error(run_plugin(cni_env("ATTACH", netns, agent.path), config()), 4, "ATTACH")
    assert agent.requests == []


@pytest.mark.parametrize("stdin", [b"", b"not json", b"[1]", b'"weave"', b"null", b"\xff\xfe{}"])
def test_stdin_that_is_not_a_json_object_is_a_decode_failure(
    agent: FakeAgent, netns: Path, stdin: bytes
) -> None:
    outcome = run_plugin(cni_env("ADD", netns, agent.path), stdin)
    assert_error(outcome, 6)
    assert outcome.output["cniVersion"] == "1.1.0"
    assert agent.requests == []


@pytest.mark.parametrize("field", ["cniVersion", "name", "type"])
@pytest.mark.parametrize("value", [None, 1, ["x"]], ids=["missing", "number", "array"])
def test_missing_or_non_string_fields_are_an_invalid_config(
    agent: FakeAgent, netns: Path, field: str, value: object
) -> None:
    body = json.loads(config())
    if value is None:
        del body[field]
    else:
        body[field] = value
    assert_error(run_plugin(cni_env("ADD", netns, agent.path), json.dumps(body)), 7, field)
    assert agent.requests == []


def test_unsupported_version_lists_the_supported_ones(agent: FakeAgent, netns: Path) -> None:
    outcome = run_plugin(cni_env("ADD", netns, agent.path), config("0.5.0"))
    assert_error(outcome, 1, "0.5.0", *SUPPORTED)
    assert outcome.output["cniVersion"] == "1.1.0"
    assert agent.requests == []


@pytest.mark.parametrize(
    ("command", "version"),
    [("CHECK", "0.3.1"), ("CHECK", "0.1.0"), ("GC", "1.0.0"), ("STATUS", "1.0.0")],
)
def test_commands_the_version_lacks_are_incompatible(
    agent: FakeAgent, netns: Path, command: str, version: str
) -> None:
    outcome = run_plugin(cni_env(command, netns, agent.path), config(version))
    assert_error(outcome, 1, command)
    assert outcome.output["cniVersion"] == version
    assert agent.requests == []


def test_add_with_a_netns_that_does_not_open_is_an_io_error(
    agent: FakeAgent, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-netns"
    assert_error(run_plugin(cni_env("ADD", missing, agent.path), config()), 5, str(missing))
    assert agent.requests == []


# Round trips through the agent


def test_add_round_trip(agent: FakeAgent, netns: Path) -> None:
    agent.reply = frame({"ok": True, "result": RESULT})
    env = cni_env("ADD", netns, agent.path)
    stdin = config("1.0.0")
    outcome = run_plugin(env, stdin)
    assert (outcome.status, outcome.output) == (0, RESULT)
    assert agent.requests == [
        {
            "command": "ADD",
            "container_id": "c0ffee",
            "netns": str(netns),
            "ifname": "eth0",
            "args": env["CNI_ARGS"],
            "path": env["CNI_PATH"],
            "config": stdin,
            "netns_missing": False,
        }
    ]
    assert agent.fds == [[same_file(netns)]]


def test_a_reply_with_whitespace_anywhere_is_read(agent: FakeAgent, netns: Path) -> None:
    body = json.dumps({"ok": True, "result": RESULT}, indent=2, separators=(" , ", " : "))
    agent.reply = struct.pack(">I", len(body) + 2) + f" {body}\n".encode()
    outcome = run_plugin(cni_env("ADD", netns, agent.path), config("1.0.0"))
    assert (outcome.status, outcome.output) == (0, RESULT)


def test_check_sends_the_netns_and_prints_nothing(agent: FakeAgent, netns: Path) -> None:
    agent.reply = frame({"ok": True, "result": RESULT})
    outcome = run_plugin(cni_env("CHECK", netns, agent.path), config("0.4.0"))
    assert (outcome.status, outcome.output) == (0, None)
    assert agent.requests[0]["command"] == "CHECK"
    assert agent.fds == [[same_file(netns)]]


def test_del_with_a_netns_sends_it(agent: FakeAgent, netns: Path) -> None:
    outcome = run_plugin(cni_env("DEL", netns, agent.path), config())
    assert (outcome.status, outcome.output) == (0, None)
    assert agent.requests[0]["netns_missing"] is False
    assert agent.fds == [[same_file(netns)]]


@pytest.mark.parametrize("netns", ["", "<unset>", "/nonexistent/weave-py-netns"])
def test_del_without_a_netns_says_so(agent: FakeAgent, netns: str) -> None:
    outcome = run_plugin(cni_env("DEL", "", agent.path, CNI_NETNS=netns), config())
    assert (outcome.status, outcome.output) == (0, None)
    [request] = agent.requests
    assert request["command"] == "DEL"
    assert request["netns"] == ("" if netns == "<unset>" else netns)
    assert request["netns_missing"] is True
    assert agent.fds == [[]]


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_only_the_command(agent: FakeAgent, command: str) -> None:
    env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", "WEAVE_CNI_SOCKET": str(agent.path)}
    stdin = json.dumps({**json.loads(config()), "cni.dev/valid-attachments": []})
    outcome = run_plugin(env, stdin)
    assert (outcome.status, outcome.output) == (0, None)
    [request] = agent.requests
    assert request["command"] == command
    assert (request["container_id"], request["netns"], request["ifname"]) == ("", "", "")
    assert request["config"] == stdin
    assert agent.fds == [[]]


def test_cni_args_and_config_pass_through_verbatim(agent: FakeAgent, netns: Path) -> None:
    args = "K8S_POD_UID=1234;IP=10.32.0.9;IgnoreUnknown=1;MAC=aa:bb:cc:dd:ee:ff; odd = ;"
    stdin = (
        '{ "cniVersion" : "1.0.0", "name": "weave", "type": "weave-py-net",\n'
        '  "capabilities": {"portMappings": true}, "args": {"cni": {"ips": ["10.32.0.9"]}},\n'
        '  "runtimeConfig": {"portMappings": [{"HostPort": 80, "ContainerPort": 8080}]},\n'
        '  "prevResult": {"cniVersion": "1.0.0", "ips": []}, "ünïcode": "✓" }  \n'
    )
    agent.reply = frame({"ok": True, "result": RESULT})
    outcome = run_plugin(cni_env("ADD", netns, agent.path, CNI_ARGS=args), stdin)
    assert outcome.status == 0
    assert agent.requests[0]["args"] == args
    assert agent.requests[0]["config"] == stdin


def test_a_large_config_arrives_whole_with_its_descriptor(agent: FakeAgent, netns: Path) -> None:
    """Bigger than a socket buffer: the first sendmsg carries the descriptor, the rest follows."""
    stdin = config(padding="x" * (spec.MAX_FRAME_BYTES - 4096))  # > any socket buffer
    agent.reply = frame({"ok": True, "result": RESULT})
    assert run_plugin(cni_env("ADD", netns, agent.path), stdin).status == 0
    assert agent.requests[0]["config"] == stdin
    assert agent.fds == [[same_file(netns)]]


def test_a_config_over_the_frame_limit_is_refused(agent: FakeAgent, netns: Path) -> None:
    stdin = config(padding="x" * spec.MAX_FRAME_BYTES)
    outcome = run_plugin(cni_env("ADD", netns, agent.path), stdin)
    assert_error(outcome, 7, "too large")
    assert outcome.output["details"].endswith(f"exceeds {spec.MAX_FRAME_BYTES}")
    assert agent.requests == []


def test_the_config_socket_key_wins_over_the_environment(
    agent: FakeAgent, netns: Path, tmp_path: Path
) -> None:
    env = cni_env("DEL", netns, tmp_path / "elsewhere.sock")
    assert run_plugin(env, config(socket=str(agent.path))).status == 0
    assert len(agent.requests) == 1


def test_a_null_socket_key_is_no_socket_key(agent: FakeAgent, netns: Path) -> None:
    assert run_plugin(cni_env("DEL", netns, agent.path), config(socket=None)).status == 0
    assert len(agent.requests) == 1


@pytest.mark.parametrize("socket_key", ["", 7, ["/x.sock"]])
def test_a_socket_key_that_is_not_a_path_is_an_invalid_config(
    agent: FakeAgent, netns: Path, socket_key: object
) -> None:
    outcome = run_plugin(cni_env("DEL", netns, agent.path), config(socket=socket_key))
    assert_error(outcome, 7, "socket")
    assert agent.requests == []


def test_without_a_socket_anywhere_the_default_is_asked() -> None:
    if os.path.exists(spec.DEFAULT_SOCKET):
        pytest.skip(f"an agent may be listening at {spec.DEFAULT_SOCKET}")
    outcome = run_plugin({"CNI_COMMAND": "STATUS"}, config())
    assert_error(outcome, 50, "not available")
    assert f"socket {spec.DEFAULT_SOCKET}:" in outcome.output["details"]


# Agent errors and failures


def test_agent_errors_pass_through(agent: FakeAgent, netns: Path) -> None:
    error = {"code": 3, "msg": "unknown container c0ffee", "details": "no allocation"}
    agent.reply = frame({"ok": False, "error": error})
    outcome = run_plugin(cni_env("CHECK", netns, agent.path), config("1.0.0"))
    assert outcome.status == 1
    assert outcome.output == {"cniVersion": "1.0.0", **error}


def dead_socket(path: Path) -> Path:
    """A socket file nobody listens on: connecting is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


@pytest.mark.parametrize("down", ["missing", "refused"])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL", "GC"])
def test_agent_not_running_is_try_again_later(
    tmp_path: Path, netns: Path, command: str, down: str
) -> None:
    sock = tmp_path / "agent.sock"
    if down == "refused":
        dead_socket(sock)
    outcome = run_plugin(cni_env(command, netns, sock), config())
    assert_error(outcome, 11, "not running")
    assert str(sock) in outcome.output["details"]
    cause = "connection refused" if down == "refused" else "no such file"
    assert cause in outcome.output["details"].lower()
    assert outcome.seconds < 2


def test_agent_not_running_makes_status_not_available(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    env = {"CNI_COMMAND": "STATUS", "WEAVE_CNI_SOCKET": str(sock)}
    outcome = run_plugin(env, config())
    assert_error(outcome, 50, "not available")
    assert str(sock) in outcome.output["details"]


def test_an_agent_with_a_full_backlog_fails_fast(tmp_path: Path, netns: Path) -> None:
    sock = tmp_path / "busy.sock"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting,
    ):
        server.bind(str(sock))
        server.listen(0)
        waiting.connect(str(sock))  # fills the backlog: nobody accepts
        outcome = run_plugin(cni_env("ADD", netns, sock), config())
    assert_error(outcome, 11)
    assert outcome.seconds < 2


@pytest.mark.parametrize(
    "reply",
    [
        b"\x00\x00\x00\x03abc",
        frame([1, 2]),
        frame({"ok": "yes"}),
        frame({"result": RESULT}),
        frame({"ok": False, "error": "boom"}),
        frame({"ok": False, "error": {"code": "3", "msg": "x"}}),
        frame({"ok": False, "error": {"code": 0, "msg": "x"}}),
        frame({"ok": False, "error": {"code": 3}}),
        frame({"ok": True, "result": None}),  # ADD must return a result
        frame({"ok": True, "result": RESULT})[:-5],  # truncated
        b"\x00\x00",  # truncated length
        b"\xff\xff\xff\xff",  # longer than any frame may be
    ],
)
def test_malformed_replies_are_io_errors(agent: FakeAgent, netns: Path, reply: bytes) -> None:
    agent.reply = reply
    outcome = run_plugin(cni_env("ADD", netns, agent.path), config())
    assert_error(outcome, 5, "malformed reply")


def test_an_agent_that_hangs_up_is_try_again_later(agent: FakeAgent, netns: Path) -> None:
    agent.reply = b""
    assert_error(run_plugin(cni_env("ADD", netns, agent.path), config()), 11, "closed")


# The program itself


def go(*args: str) -> subprocess.CompletedProcess[str]:
    """The Go tool on the plugin's sources, offline, with the build cache scripts/build-plugin
    uses."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "GOCACHE": "/var/cache/weave-py/go-build",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    return subprocess.run(
        ["go", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_plugin_and_the_agent_share_the_protocols_constants() -> None:
    done = subprocess.run([PLUGIN, "--constants"], capture_output=True, timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    shared = json.loads(done.stdout)
    assert shared["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)
    assert shared["minVersion"] == spec.MIN_VERSION
    assert shared["requiredEnv"] == {c: list(names) for c, names in spec.REQUIRED_ENV.items()}
    assert shared["defaultSocket"] == spec.DEFAULT_SOCKET
    assert shared["maxFrameBytes"] == spec.MAX_FRAME_BYTES
    assert set(shared["codes"]) == {
        "INCOMPATIBLE_VERSION",
        "INVALID_ENV",
        "IO_FAILURE",
        "DECODE",
        "INVALID_CONFIG",
        "TRY_AGAIN_LATER",
        "NOT_READY",
        "INTERNAL",
    }
    assert shared["codes"] == {name: spec.Code[name].value for name in shared["codes"]}


def test_the_go_tests_pass() -> None:
    """A bug's panic becomes code 100; a silent agent times out with code 11."""
    done = go("test", "-count=1", "./agent/cni/plugin")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sources_are_gofmt_and_vet_clean() -> None:
    unformatted = subprocess.run(
        ["gofmt", "-l", str(SOURCE)], capture_output=True, text=True, timeout=60, check=True
    )
    assert unformatted.stdout == ""
    vetted = go("vet", "./agent/cni/plugin")
    assert vetted.returncode == 0, vetted.stderr


def test_the_plugin_uses_only_the_standard_library() -> None:
    done = go("list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
              "./agent/cni/plugin")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["weave-py/agent/cni/plugin"]
    assert "require" not in (ROOT / "go.mod").read_text()


def test_the_binary_is_statically_linked() -> None:
    """No program interpreter and no dynamic section: it runs on any Linux node."""
    image = PLUGIN.read_bytes()
    assert image[:5] == b"\x7fELF\x02"  # 64-bit
    (phoff,) = struct.unpack_from("<Q", image, 0x20)
    entry_size, entries = struct.unpack_from("<HH", image, 0x36)
    types = {struct.unpack_from("<I", image, phoff + k * entry_size)[0] for k in range(entries)}
    assert 1 in types  # PT_LOAD: the headers were read right
    assert not types & {2, 3}  # PT_DYNAMIC, PT_INTERP
