"""CNI requests, handled in the agent: the plugin binary forwards each one (and the pod's netns
as an open file descriptor) over the socket of agent/cni_server.py.

Theory of operation. ``Handler.handle(frame, fd)`` parses the forwarded request and its network
configuration once (agent/cni_config.py: ``parse_request``, ``parse_config``, ``parse_args``;
every malformed input becomes one ``CniError`` with the spec's code), then runs the command
against a ``NodeOps`` --
the agent's IPAM, its netlink thread and its node settings, injected so unit tests run without
a kernel. Kernel work is overlay/pods.py, run on the netlink thread.

Rules this module keeps (CNI.md):

- ADD creates the interface or fails without leaving anything behind. An interface name the
  pod already has is refused without touching it: with our IPAM the allocation is idempotent
  per (container id, ifname), so a repeated ADD gets the live pod's address back and a failure
  releases only an address this ADD took; a delegated IPAM plugin is not asked at all (the
  netns is checked first). Anything else that fails after the address undoes veth and address.
- The address's write to disk overlaps the veth work; the result waits for both.
- DEL succeeds when the netns, the interface or the address is already gone, when CNI_NETNS is
  empty and when repeated; it cleans up after an ADD that failed half way. The host side of the
  veth is named from (container id, ifname) alone, so DEL never needs the pod's netns.
- Requests for one container id run one at a time (a lock per container id); different
  containers interleave. GC skips a container whose lock is taken: it is being worked on.
- ADD answers 11 (try again later) while the agent is not ready; DEL always runs.
- Results are in the cniVersion of the configuration; a prevResult is carried forward.
- ``ipam.type`` absent or "weave-py": the agent's own IPAM. Anything else is a plugin executed
  from CNI_PATH with the same environment and configuration (the pod netns as
  /proc/self/fd/N of the descriptor we hold, which the plugin inherits).

Error codes: the spec's (1-11, 50-51); plugin-specific ones from 100 are ``Code``; append-only.
IPAM refusals map as: 503/504 (no space yet, timed out) -> 11 try again later; 507 (range
exhausted) -> 103 no free address; 400 (malformed key) -> 4; anything else -> 107.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, Protocol, TypeVar

from agent.cni_config import (
    COMMANDS as COMMANDS,
)
from agent.cni_config import (
    DEFAULT_ROUTE as DEFAULT_ROUTE,
)
from agent.cni_config import (
    OWN_IPAM as OWN_IPAM,
)
from agent.cni_config import (
    SUPPORTED_VERSIONS as SUPPORTED_VERSIONS,
)
from agent.cni_config import (
    Addressing as Addressing,
)
from agent.cni_config import (
    CniError as CniError,
)
from agent.cni_config import (
    Code as Code,
)
from agent.cni_config import (
    NetConf as NetConf,
)
from agent.cni_config import (
    Request as Request,
)
from agent.cni_config import (
    add_result as add_result,
)
from agent.cni_config import (
    checked_mac,
)
from agent.cni_config import (
    expected_from as expected_from,
)
from agent.cni_config import (
    parse_args as parse_args,
)
from agent.cni_config import (
    parse_config as parse_config,
)
from agent.cni_config import (
    parse_ipam_result as parse_ipam_result,
)
from agent.cni_config import (
    parse_request as parse_request,
)
from agent.ipam import IpamError
from overlay import pods
from overlay.netlink import NetlinkFailure

log = logging.getLogger("weave-py.cni")
T = TypeVar("T")
DELEGATE_TIMEOUT = 60.0  # seconds an IPAM plugin may run


# -- delegated IPAM ----------------------------------------------------------------------------


class Delegate(Protocol):
    """Runs an IPAM plugin: returns its parsed stdout (None when empty) or raises CniError."""

    async def __call__(
        self, plugin: str, env: Mapping[str, str], stdin: bytes, fd: int | None
    ) -> Any: ...


def find_plugin(plugin: str, path: str) -> str:
    for directory in filter(None, path.split(":")):
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(Code.DELEGATE, f"failed to find plugin {plugin!r} in path [{path}]")


async def exec_plugin(plugin: str, env: Mapping[str, str], stdin: bytes, fd: int | None) -> Any:
    """The Delegate that executes ``plugin`` from CNI_PATH; ``fd`` is inherited as is."""
    exe = find_plugin(plugin, env.get("CNI_PATH", ""))
    proc = await asyncio.create_subprocess_exec(
        exe,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        pass_fds=() if fd is None else (fd,),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), DELEGATE_TIMEOUT)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise CniError(
                Code.DELEGATE, f"ipam plugin {plugin} did not answer within {DELEGATE_TIMEOUT:g}s"
            ) from None
        raise
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
        if proc.returncode == 0:
            raise CniError(
                Code.DELEGATE,
                f"ipam plugin {plugin} printed no JSON",
                out.decode(errors="replace")[:1000],
            ) from None
    if proc.returncode != 0:
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            raise CniError(doc["code"], str(doc.get("msg", "")), str(doc.get("details", "")))
        text = (err or out).decode(errors="replace").strip()[:1000]
        raise CniError(
            Code.DELEGATE, f"ipam plugin {plugin} failed with status {proc.returncode}", text
        )
    return doc


# -- the node ----------------------------------------------------------------------------------


class NodeOps(Protocol):
    """What the handler needs of the agent."""

    @property
    def bridge(self) -> str:
        """The node bridge the host side of each veth joins."""
        ...

    @property
    def mtu(self) -> int:
        """The overlay MTU pods get unless the network configuration sets ``mtu``."""
        ...

    @property
    def gso_max_size(self) -> int: ...

    async def allocate(self, cid: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        """Raises agent.ipam.IpamError."""
        ...

    async def release(self, cid: str, ifname: str) -> None: ...

    async def persist(self) -> None:
        """Make what ``allocate`` handed out durable; ADD awaits it before answering."""
        ...

    def list_allocations(self) -> list[tuple[str, str]]: ...

    async def netlink(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the agent's netlink thread (in the node's netns)."""
        ...

    def ready(self) -> bool: ...


def ipam_error(exc: IpamError) -> CniError:
    if exc.code in (503, 504):
        return CniError(Code.TRY_AGAIN_LATER, exc.message)
    if exc.code == 507:
        return CniError(Code.NO_ADDRESS, exc.message)
    if exc.code == 400:
        return CniError(Code.INVALID_ENV, exc.message)
    return CniError(Code.IPAM, exc.message)


@dataclass
class _Slot:
    lock: asyncio.Lock
    users: int = 0


class Handler:
    """Handles forwarded CNI requests; ``handle`` is what cni_server.CniServer calls."""

    def __init__(self, ops: NodeOps, delegate: Delegate = exec_plugin) -> None:
        self.ops = ops
        self.delegate = delegate
        self._slots: dict[str, _Slot] = {}

    async def handle(self, frame: Mapping[str, Any], fd: int | None) -> dict[str, Any] | None:
        request = parse_request(frame)
        conf = parse_config(request.config)
        if request.command == "STATUS":
            await self._status(request, conf)
            return None
        if request.command == "GC":
            await self._gc(request, conf)
            return None
        args = parse_args(request.args)
        if request.command == "ADD" and not self.ops.ready():
            raise CniError(Code.TRY_AGAIN_LATER, "the weave-py agent is not ready")
        async with self._serialized(request.container_id):
            if request.command == "ADD":
                return await self._add(request, conf, args, fd)
            if request.command == "DEL":
                await self._del(request, conf, fd)
            else:
                await self._check(request, conf, fd)
        return None

    @contextlib.asynccontextmanager
    async def _serialized(self, cid: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(cid, _Slot(asyncio.Lock()))
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[cid]

    # -- commands ---------------------------------------------------------------------------------

    async def _add(
        self, r: Request, conf: NetConf, args: dict[str, str], fd: int | None
    ) -> dict[str, Any]:
        fd = _netns(r, fd)
        mac = conf.mac or (
            checked_mac(args["MAC"], Code.INVALID_ENV, "CNI_ARGS MAC") if args.get("MAC") else None
        )
        if conf.ipam_type is None and (conf.requested_ips or args.get("IP")):
            msg = "weave-py IPAM cannot assign a requested address (IP= or runtimeConfig ips)"
            raise CniError(Code.UNSUPPORTED_FIELD, msg, "delegate to an IPAM plugin instead")
        if conf.ipam_type is not None and await self._node(pods.has_link, fd, r.ifname):
            raise CniError(  # before the delegate allocates anything
                Code.INTERFACE_EXISTS, f"interface {r.ifname} already exists in netns {r.netns}"
            )
        # Our own IPAM is idempotent per key: a repeated ADD gets the live pod's address back,
        # which a failure here must then not release.
        held = conf.ipam_type is None and (r.container_id, r.ifname) in set(
            self.ops.list_allocations()
        )
        addressing = await self._address(r, conf, fd)
        attachment = pods.Attachment(
            fd,
            r.container_id,
            r.ifname,
            self.ops.bridge,
            addressing.address,
            addressing.gateway,
            conf.mtu or self.ops.mtu,
            self.ops.gso_max_size,
            tuple((dst, gw or addressing.gateway) for dst, gw in addressing.routes),
            mac,
        )
        # The allocation's write overlaps the veth work; the result waits for both.
        persisting = asyncio.ensure_future(self.ops.persist()) if conf.ipam_type is None else None
        try:
            try:
                attached = await self._node(pods.attach, attachment)
            finally:
                if persisting is not None:
                    await asyncio.wait([persisting])  # never left running, whatever happened
            if persisting is not None and persisting.exception() is not None:
                raise CniError(Code.IO_FAILURE, "cannot persist the address allocation",
                               str(persisting.exception()))  # fmt: skip
        except CniError as exc:
            if exc.code == Code.INTERFACE_EXISTS:  # attach touched nothing: the pod is live
                if not held:
                    await self._undo(r, conf, fd, veth=False)
                raise CniError(exc.code, f"interface {r.ifname} already exists in netns "
                               f"{r.netns}", exc.msg) from None  # fmt: skip
            await self._undo(r, conf, fd)
            raise
        except BaseException:
            await self._undo(r, conf, fd)
            raise
        log.info(
            "add pod: %s %s %s on %s (%s)",
            _pod(args, r),
            r.ifname,
            addressing.address,
            attached.host,
            r.container_id[:12],
        )
        return add_result(conf, r.netns, r.ifname, addressing, attached)

    async def _address(self, r: Request, conf: NetConf, fd: int) -> Addressing:
        if conf.ipam_type is None:
            try:
                address, gateway = await self.ops.allocate(r.container_id, r.ifname)
            except IpamError as exc:
                raise ipam_error(exc) from None
            return Addressing(address, gateway)
        doc = await self._delegate("ADD", r, conf, fd)
        try:
            return parse_ipam_result(doc, conf.ipam_type)
        except BaseException:
            await self._undo(r, conf, fd, veth=False)
            raise

    async def _undo(self, r: Request, conf: NetConf, fd: int, veth: bool = True) -> None:
        """After a failed ADD: veth and address go again; failures here are only logged (the
        ADD's own error is what the runtime needs, and its DEL will try again)."""
        try:
            if veth:
                await self._node(pods.detach, r.container_id, r.ifname)
            await self._unaddress(r, conf, fd)
        except Exception as exc:
            log.warning("undo add: %s %s: %s", r.container_id[:12], r.ifname, exc)

    async def _unaddress(self, r: Request, conf: NetConf, fd: int | None) -> None:
        if conf.ipam_type is None:
            await self._release(r.container_id, r.ifname)
        else:
            await self._delegate("DEL", r, conf, fd)

    async def _release(self, cid: str, ifname: str) -> None:
        try:
            await self.ops.release(cid, ifname)
        except IpamError as exc:
            raise ipam_error(exc) from None

    async def _del(self, r: Request, conf: NetConf, fd: int | None) -> None:
        removed = await self._node(pods.detach, r.container_id, r.ifname)
        await self._unaddress(r, conf, fd)
        log.info(
            "delete pod: %s %s%s", r.container_id[:12], r.ifname, "" if removed else " (no veth)"
        )

    async def _check(self, r: Request, conf: NetConf, fd: int | None) -> None:
        if not conf.at_least("0.4.0"):
            raise CniError(Code.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
        if conf.prev_result is None:
            raise CniError(Code.PREV_RESULT_MISSING, "Required prevResult missing")
        fd = _netns(r, fd)
        expected = expected_from(conf, r, self.ops.bridge, fd)
        if conf.ipam_type is not None:
            await self._delegate("CHECK", r, conf, fd)
        elif (r.container_id, r.ifname) not in self.ops.list_allocations():
            raise CniError(
                Code.CHECK_FAILED,
                f"no address is allocated to container {r.container_id} interface {r.ifname}",
            )
        problems = await self._node(pods.check, expected)
        if problems:
            raise CniError(Code.CHECK_FAILED, "; ".join(problems))

    async def _gc(self, r: Request, conf: NetConf) -> None:
        if not conf.at_least("1.1.0"):
            raise CniError(Code.INCOMPATIBLE_VERSION, "config version does not allow GC")
        if conf.ipam_type is not None:
            if await self._delegate_supports(r, conf, "1.1.0"):
                await self._delegate("GC", r, conf, None)
            return
        stale = [a for a in self.ops.list_allocations() if a not in conf.valid_attachments]
        for cid, ifname in stale:
            if cid in self._slots:
                continue  # a request for it is running: not garbage
            async with self._serialized(cid):
                await self._node(pods.detach, cid, ifname)
                await self._release(cid, ifname)
            log.info("gc pod: %s %s", cid[:12], ifname)

    async def _status(self, r: Request, conf: NetConf) -> None:
        if not conf.at_least("1.1.0"):
            raise CniError(Code.INCOMPATIBLE_VERSION, "config version does not allow STATUS")
        if not self.ops.ready():
            raise CniError(Code.NOT_READY, "the weave-py agent is not ready")
        if conf.ipam_type is not None and await self._delegate_supports(r, conf, "1.1.0"):
            await self._delegate("STATUS", r, conf, None)

    # -- helpers --------------------------------------------------------------------------------

    async def _node(self, fn: Callable[..., T], *args: Any) -> T:
        """Kernel work on the netlink thread; the kernel's refusals become CniErrors."""
        try:
            return await self.ops.netlink(fn, *args)
        except pods.InterfaceExists as exc:
            raise CniError(Code.INTERFACE_EXISTS, str(exc)) from None
        except NetlinkFailure as exc:
            raise CniError(Code.KERNEL, str(exc)) from None

    async def _delegate(self, command: str, r: Request, conf: NetConf, fd: int | None) -> Any:
        assert conf.ipam_type is not None
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": r.container_id,
            "CNI_NETNS": r.netns if fd is None else f"/proc/self/fd/{fd}",
            "CNI_IFNAME": r.ifname,
            "CNI_ARGS": r.args,
            "CNI_PATH": r.path,
        }
        return await self.delegate(conf.ipam_type, env, conf.raw.encode(), fd)

    async def _delegate_supports(self, r: Request, conf: NetConf, version: str) -> bool:
        assert conf.ipam_type is not None
        env = {"CNI_COMMAND": "VERSION", "CNI_PATH": r.path}
        stdin = json.dumps({"cniVersion": conf.version}).encode()
        doc = await self.delegate(conf.ipam_type, env, stdin, None)
        return isinstance(doc, dict) and version in (doc.get("supportedVersions") or [])


def _netns(r: Request, fd: int | None) -> int:
    if fd is None:
        raise CniError(
            Code.NETNS, f"failed to open netns {r.netns!r}", "the plugin passed no netns descriptor"
        )
    return fd


def _pod(args: Mapping[str, str], r: Request) -> str:
    name = args.get("K8S_POD_NAME")
    return f"{args.get('K8S_POD_NAMESPACE', '')}/{name}" if name else r.container_id[:12]
