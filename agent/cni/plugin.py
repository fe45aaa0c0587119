#!/usr/bin/python3
"""The weave-py CNI plugin: a thin, standard-library-only client of the node's agent.

Theory of operation
-------------------
The container runtime executes this file (installed as ``weave-py-net``) once per CNI
operation, with the request in ``CNI_*`` environment variables and the network configuration on
stdin. It does no networking itself. It checks what the spec lets it check without state (the
variables each command needs; that stdin is a JSON object with string ``cniVersion``, ``name``
and ``type``; that the version is supported and allows the command), hands the request to the
weave-py agent on this node over a unix socket, and relays the answer. The agent owns pyroute2,
IPAM state and the result's format. This file runs under a bare ``/usr/bin/python3`` and must
start in a few tens of milliseconds, so it imports only the standard library and nothing from
the project. Unknown configuration keys are not looked at: stdin goes to the agent verbatim.

VERSION is answered here, without the agent, whatever the environment and stdin hold.

The plugin runs in the runtime's namespaces, so it opens ``CNI_NETNS`` itself and passes the
open descriptor with the request (the agent reaches it as ``/proc/self/fd/N``). ADD and CHECK
need it; DEL passes it when it opens and otherwise says ``netns_missing``, because DEL must
still release the address after the namespace is gone.

Wire protocol: one connection, one request, one reply
-----------------------------------------------------
Socket: ``SOCK_STREAM`` unix socket at the config key ``socket``, else ``$WEAVE_CNI_SOCKET``,
else ``/run/weave-py/cni.sock``. Frame: a 4-byte big-endian unsigned length, then that many
bytes of UTF-8 JSON holding one object; at most ``MAX_FRAME_BYTES``. Request::

    {"command": "ADD" | "CHECK" | "DEL" | "GC" | "STATUS",
     "container_id": CNI_CONTAINERID or "", "netns": CNI_NETNS or "",
     "ifname": CNI_IFNAME or "", "args": CNI_ARGS or "", "path": CNI_PATH or "",
     "config": <stdin, verbatim, as a string>,
     "netns_missing": <true exactly when no descriptor rides with the frame>}

The netns descriptor travels as one SCM_RIGHTS descriptor in the same ``sendmsg`` as the
frame's first bytes, so the agent receives it with the ``recvmsg`` that reads the length. Reply::

    {"ok": true, "result": <object or null>}
    {"ok": false, "error": {"code": <int >= 1>, "msg": <str>, "details": <str, optional>}}

ADD prints its result, which must be an object; CHECK, DEL, GC and STATUS print nothing.

Errors (printed to stdout as ``{"cniVersion", "code", "msg", "details"}``, exit status 1)
------------------------------------------------------------------------------------------
1 unsupported cniVersion, or a command the version lacks (CHECK < 0.4.0; GC, STATUS < 1.1.0);
4 missing environment variables or an unknown CNI_COMMAND; 5 netns not openable for ADD or
CHECK, or a malformed reply; 6 stdin not a JSON object; 7 ``cniVersion``, ``name`` or ``type``
missing or not strings; 11 agent not running, busy, gone or silent (50 for STATUS); 100
anything unexpected. The error's ``cniVersion`` is the input's when supported, else the newest
supported. Agent errors pass through unchanged.
"""

import _json
import _socket
import _struct
import posix
import sys
import time

# Start-up time is a pod's start-up time: no json (it imports re), no socket (enum), no os
# (collections.abc), no struct, no __future__: _json, _socket, posix and _struct are the C
# modules those wrap. (Hence the quoted annotations.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
REQUIRED_ENV = {
    "ADD": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_COMMAND",),
    "STATUS": ("CNI_COMMAND",),
    "VERSION": ("CNI_COMMAND",),
}

DEFAULT_SOCKET = "/run/weave-py/cni.sock"
CONNECT_TIMEOUT = 2.0  # seconds; the agent accepts at once or is not there
REPLY_TIMEOUT = 60.0  # seconds; an ADD may wait for the node to get address space
MAX_FRAME_BYTES = 1 << 20  # bytes of JSON in one frame, either direction (the agent's limit too)
LENGTH = _struct.Struct(">I")  # the frame's length prefix


class _JsonContext:
    """What _json's C scanner reads off json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__  # fmt: skip
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_JsonContext())  # type: ignore[arg-type]
WHITESPACE = " \t\n\r"


def _not_json(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_encode = _json.make_encoder(
    None, _not_json, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def json_loads(data: str | bytes) -> object:
    """json.loads for one document, on the C scanner (ValueError when it is not JSON)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    start = 0
    while start < len(text) and text[start] in WHITESPACE:
        start += 1
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a value at character {stop.value}") from None
    while end < len(text) and text[end] in WHITESPACE:
        end += 1
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return value


def json_dumps(value: object) -> str:
    return "".join(_encode(value, 0))


# CNI error codes (spec 1.1.0) and ours (100+) that this file reports. The numbers are the
# protocol; the agent's ``Code`` (agent/cni/spec.py) is built on them.
INCOMPATIBLE_VERSION = 1
INVALID_ENV = 4
IO_FAILURE = 5
DECODE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_READY = 50
INTERNAL = 100

NOT_RUNNING = "weave-py agent is not running: try again later"
NO_ANSWER = "weave-py agent did not answer in time"
HUNG_UP = "weave-py agent closed the connection without answering"


class PluginError(Exception):
    """A CNI error result: what the plugin prints before exiting with status 1."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def output(self, version: str) -> dict[str, object]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}


def main(env: "Mapping[str, str] | None" = None, stdin: bytes | None = None) -> int:
    """Run one CNI command; print its output or error to stdout; return the exit status."""
    env = environment() if env is None else env
    stdin = read_stdin() if stdin is None else stdin
    version = version_of(stdin)
    try:
        output = run(env, stdin)
    except PluginError as error:
        write(error.output(version))
        return 1
    except Exception as error:
        internal = PluginError(INTERNAL, "internal error", f"{type(error).__name__}: {error}")
        write(internal.output(version))
        return 1
    if output is not None:
        write(output)
    return 0


def environment() -> dict[str, str]:
    """os.environ without importing os: the process environment, decoded as os does."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}  # fmt: skip


def run(env: "Mapping[str, str]", stdin: bytes) -> object:
    """Carry out one command; return what to print (None for nothing) or raise PluginError."""
    command = env.get("CNI_COMMAND", "")
    check_environment(command, env)
    if command == "VERSION":
        return {"cniVersion": version_of(stdin), "supportedVersions": list(SUPPORTED_VERSIONS)}
    text, config = parse_config(stdin)
    check_version(command, config["cniVersion"])
    path = socket_path(config, env)
    fd = open_netns(command, env.get("CNI_NETNS", ""))
    request = build_request(command, env, text, netns_missing=fd is None)
    payload = ask_agent(command, path, request, fd)
    return outcome(command, payload)


def read_stdin() -> bytes:
    if sys.stdin is None:
        return b""
    try:
        return sys.stdin.buffer.read()
    except (OSError, ValueError):
        return b""


def write(output: object) -> None:
    if sys.stdout is None:
        return
    try:
        sys.stdout.write(json_dumps(output) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # stdout is gone: nowhere left to report to


def version_of(stdin: bytes) -> str:
    """The input's cniVersion if stdin is a config naming a supported one, else the newest."""
    try:
        config = json_loads(stdin)
    except (ValueError, RecursionError):
        return LATEST_VERSION
    version = config.get("cniVersion") if isinstance(config, dict) else None
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def check_environment(command: str, env: "Mapping[str, str]") -> None:
    if not command:
        raise PluginError(INVALID_ENV, "required environment variables missing: CNI_COMMAND")
    if command not in REQUIRED_ENV:
        raise PluginError(
            INVALID_ENV,
            f"unknown CNI_COMMAND {command!r}",
            "expected one of " + ", ".join(REQUIRED_ENV),
        )
    required = REQUIRED_ENV[command]
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise PluginError(
            INVALID_ENV,
            "required environment variables missing: " + ", ".join(missing),
            f"{command} needs " + ", ".join(required),
        )


def parse_config(stdin: bytes) -> tuple[str, dict[str, object]]:
    """The configuration as sent (for the agent) and as parsed (for the checks here)."""
    try:
        text = stdin.decode("utf-8")
        config = json_loads(text)
    except (ValueError, RecursionError) as error:
        raise PluginError(
            DECODE, "network configuration on stdin is not valid JSON", str(error)
        ) from None
    if not isinstance(config, dict):
        raise PluginError(
            DECODE,
            "network configuration on stdin is not a JSON object",
            f"got {json_type(config)}",
        )
    for key in ("cniVersion", "name", "type"):
        if key not in config:
            raise PluginError(INVALID_CONFIG, f"network configuration field {key!r} is missing")
        if not isinstance(config[key], str):
            raise PluginError(
                INVALID_CONFIG,
                f"network configuration field {key!r} must be a string",
                f"got {json_type(config[key])}",
            )
    return text, config


def json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), "null")


def check_version(command: str, version: object) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise PluginError(
            INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}: supported versions are "
            + ", ".join(SUPPORTED_VERSIONS),
        )
    needed = MIN_VERSION.get(command)
    if needed and version_key(str(version)) < version_key(needed):
        raise PluginError(
            INCOMPATIBLE_VERSION,
            f"{command} is not supported before cniVersion {needed}",
            f"the network configuration has cniVersion {version}",
        )


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def socket_path(config: "Mapping[str, object]", env: "Mapping[str, str]") -> str:
    path = config.get("socket")
    if path is None:
        return env.get("WEAVE_CNI_SOCKET") or DEFAULT_SOCKET
    if not isinstance(path, str) or not path:
        raise PluginError(
            INVALID_CONFIG,
            "network configuration field 'socket' must be a non-empty string",
            f"got {json_type(path)}",
        )
    return path


def open_netns(command: str, netns: str) -> int | None:
    """A descriptor for the pod's namespace, or None where the command can do without."""
    if command not in ("ADD", "CHECK", "DEL") or not netns:
        return None
    try:
        return posix.open(netns, posix.O_RDONLY | posix.O_CLOEXEC)
    except (OSError, ValueError) as error:
        if command == "DEL":
            return None  # already gone: DEL still releases what the agent holds
        raise PluginError(
            IO_FAILURE, f"cannot open network namespace {netns}", str(error)
        ) from None


def build_request(
    command: str, env: "Mapping[str, str]", config: str, netns_missing: bool
) -> dict[str, object]:
    return {
        "command": command,
        "container_id": env.get("CNI_CONTAINERID", ""),
        "netns": env.get("CNI_NETNS", ""),
        "ifname": env.get("CNI_IFNAME", ""),
        "args": env.get("CNI_ARGS", ""),
        "path": env.get("CNI_PATH", ""),
        "config": config,
        "netns_missing": netns_missing,
    }


def ask_agent(command: str, path: str, request: dict[str, object], fd: int | None) -> bytes:
    """Send ``request`` (with ``fd``) to the agent at ``path``; return its reply's payload."""
    try:
        return exchange(path, encode_frame(request), fd)
    except PluginError as error:
        if command == "STATUS" and error.code == TRY_AGAIN_LATER:
            raise PluginError(
                NOT_READY, f"plugin not available: {error.msg}", error.details
            ) from None
        raise
    finally:
        if fd is not None:
            posix.close(fd)


def encode_frame(message: dict[str, object]) -> bytes:
    body = json_dumps(message).encode("utf-8")
    if len(body) > MAX_FRAME_BYTES:
        raise PluginError(
            INVALID_CONFIG,
            "network configuration too large",
            f"request of {len(body)} bytes exceeds {MAX_FRAME_BYTES}",
        )
    return LENGTH.pack(len(body)) + body


def exchange(path: str, frame: bytes, fd: int | None) -> bytes:
    """One request, one reply over a fresh connection; OS errors become CNI errors."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        reply_at = time.monotonic() + REPLY_TIMEOUT
        sock.settimeout(REPLY_TIMEOUT)
        sent = 0
        if fd is not None:  # the descriptor rides on the frame's first bytes (SCM_RIGHTS)
            rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack("i", fd))]
            sent = sock.sendmsg([frame], rights)
        if sent < len(frame):  # an empty send to an agent that already answered is EPIPE
            try:  # noqa: SIM105 (no contextlib import: start-up time)
                sock.sendall(frame[sent:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # it may have answered (an error) before reading everything
        return receive_frame(sock, reply_at)
    except OSError as error:
        raise transport_error(path, error) from None
    finally:
        sock.close()


def transport_error(path: str, error: OSError) -> PluginError:
    details = f"socket {path}: {error}"
    if isinstance(error, FileNotFoundError | ConnectionRefusedError | NotADirectoryError):
        return PluginError(TRY_AGAIN_LATER, NOT_RUNNING, details)
    if isinstance(error, TimeoutError | BlockingIOError):  # silent, or its backlog is full
        return PluginError(TRY_AGAIN_LATER, NO_ANSWER, details)
    if isinstance(error, BrokenPipeError | ConnectionResetError):
        return PluginError(TRY_AGAIN_LATER, HUNG_UP, details)
    return PluginError(IO_FAILURE, "cannot talk to the weave-py agent", details)


def receive_frame(sock: _socket.socket, reply_at: float) -> bytes:
    header = receive_exactly(sock, LENGTH.size, reply_at)
    if not header:
        raise PluginError(TRY_AGAIN_LATER, HUNG_UP, "connection closed before any reply")
    if len(header) < LENGTH.size:
        raise malformed("truncated length prefix", header)
    (size,) = LENGTH.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise malformed(f"frame of {size} bytes exceeds the limit of {MAX_FRAME_BYTES}", header)
    body = receive_exactly(sock, size, reply_at)
    if len(body) < size:
        raise malformed(f"truncated frame: {len(body)} of {size} bytes", body)
    return body


def receive_exactly(sock: _socket.socket, size: int, reply_at: float) -> bytes:
    """Up to ``size`` bytes: fewer only if the agent closed the connection first."""
    data = bytearray()
    while len(data) < size:
        remaining = reply_at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply within {REPLY_TIMEOUT:g} s")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def outcome(command: str, payload: bytes) -> object:
    """What to print for a reply: ADD's result, or None. Agent errors are raised."""
    try:
        reply = json_loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise malformed(f"not UTF-8 JSON ({error})", payload) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise malformed("not an object with a boolean 'ok'", payload)
    if not reply["ok"]:
        raise agent_error(reply.get("error"), payload)
    result = reply.get("result")
    if command != "ADD":
        return None
    if not isinstance(result, dict):
        raise malformed("ADD succeeded without a result object", payload)
    return result


def agent_error(error: object, payload: bytes) -> PluginError:
    """The agent's own CNI error, passed through unchanged."""
    if not isinstance(error, dict):
        return malformed("'error' is not an object", payload)
    code, msg, details = error.get("code"), error.get("msg"), error.get("details", "")
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or code < 1
        or not isinstance(msg, str)
        or not isinstance(details, str)
    ):
        return malformed("'error' needs an int 'code' >= 1, a string 'msg' and 'details'", payload)
    return PluginError(code, msg, details)


def malformed(what: str, raw: bytes) -> PluginError:
    excerpt = raw[:200].decode("utf-8", "replace")
    return PluginError(
        IO_FAILURE, f"malformed reply from the weave-py agent: {what}", f"reply began: {excerpt}"
    )


if __name__ == "__main__":
    sys.exit(main())
