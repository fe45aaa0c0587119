"""CNI requests, handled in the agent: the plugin forwards each one (and the pod's netns as an
open file descriptor) over the socket of agent/cni/server.py.

Theory of operation. ``Handler.handle(frame, fd)`` parses the forwarded request and its network
configuration once (agent/cni/spec.py: every malformed input is one ``CniError`` with the spec's
code), then runs the command against the two seams of agent/cni/seams.py that the daemon
builds: ``PodAddresses`` (the agent's IPAM) and ``PodNetwork`` (veth, address and routes, on a
thread the network owns). Both refuse only with ``agent.errors.Refused`` subclasses; ``handle``
turns those into CNI codes at its boundary, through the one table of that module (``CODES``).

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
- ADD answers 11 (try again later) while the addresses are not ready; DEL always runs.
- Results are in the cniVersion of the configuration; a prevResult is carried forward.
- ``ipam.type`` absent or "weave-py": the agent's own IPAM. Anything else is a plugin executed
  from CNI_PATH (agent/cni/delegate.py) with the same environment and configuration (the pod
  netns as /proc/self/fd/N of the descriptor we hold, which the plugin inherits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent import errors
from agent.cni.delegate import Delegate, exec_plugin
from agent.cni.result import Addressing, add_result, expected_from, parse_ipam_result
from agent.cni.seams import PodAddresses, PodNetwork, cni_error
from agent.cni.spec import (
    CniError,
    Code,
    NetConf,
    Request,
    checked_mac,
    parse_args,
    parse_config,
    parse_request,
)
from overlay import pods

log = logging.getLogger("weave-py.cni")


@dataclass
class _Slot:
    lock: asyncio.Lock
    users: int = 0


class Handler:
    """Handles forwarded CNI requests; ``handle`` is what server.CniServer calls."""

    def __init__(
        self, addresses: PodAddresses, network: PodNetwork, delegate: Delegate = exec_plugin
    ) -> None:
        self.addresses = addresses
        self.network = network
        self.delegate = delegate
        self._slots: dict[str, _Slot] = {}

    async def handle(self, frame: Mapping[str, Any], fd: int | None) -> dict[str, Any] | None:
        """Run one forwarded request: ADD's result, else None. Fails with ``CniError`` only."""
        try:
            return await self._run(parse_request(frame), fd)
        except errors.Refused as exc:
            raise cni_error(exc) from None

    async def _run(self, r: Request, fd: int | None) -> dict[str, Any] | None:
        conf = parse_config(r.config)
        if not conf.allows(r.command):
            raise CniError(Code.INCOMPATIBLE_VERSION, f"config version does not allow {r.command}")
        if r.command == "STATUS":
            await self._status(r, conf)
        elif r.command == "GC":
            await self._gc(r, conf)
        else:
            return await self._for_container(r, conf, fd)
        return None

    async def _for_container(
        self, r: Request, conf: NetConf, fd: int | None
    ) -> dict[str, Any] | None:
        """ADD, DEL and CHECK: one container's requests run one at a time."""
        args = parse_args(r.args)
        if r.command == "ADD" and not self.addresses.ready():
            raise CniError(Code.TRY_AGAIN_LATER, "the weave-py agent is not ready")
        async with self._serialized(r.container_id):
            if r.command == "ADD":
                return await self._add(r, conf, args, fd)
            if r.command == "DEL":
                await self._del(r, conf, fd)
            else:
                await self._check(r, conf, fd)
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

    # -- ADD ------------------------------------------------------------------------------------

    async def _add(
        self, r: Request, conf: NetConf, args: dict[str, str], fd: int | None
    ) -> dict[str, Any]:
        netns = _netns(r, fd)
        mac = conf.mac or (
            checked_mac(args["MAC"], Code.INVALID_ENV, "CNI_ARGS MAC") if args.get("MAC") else None
        )
        await self._refuse_early(r, conf, args, netns)
        # Our own IPAM is idempotent per key: a repeated ADD gets the live pod's address back,
        # which a failure here must then not release.
        held = conf.ipam_type is None and (r.container_id, r.ifname) in set(self.addresses.held())
        addressing = await self._address(r, conf, netns)
        attachment = self._attachment(r, conf, netns, addressing, mac)
        attached = await self._attach(r, conf, attachment, held)
        log.info("add pod: %s %s %s on %s (%s)", _pod(args, r), r.ifname, addressing.address,
                 attached.host, r.container_id[:12])  # fmt: skip
        return add_result(conf, r.netns, r.ifname, addressing, attached)

    async def _refuse_early(
        self, r: Request, conf: NetConf, args: dict[str, str], netns: int
    ) -> None:
        """What ADD refuses before any address is taken."""
        if conf.ipam_type is None and (conf.requested_ips or args.get("IP")):
            msg = "weave-py IPAM cannot assign a requested address (IP= or runtimeConfig ips)"
            raise CniError(Code.UNSUPPORTED_FIELD, msg, "delegate to an IPAM plugin instead")
        if conf.ipam_type is not None and await self.network.has_link(netns, r.ifname):
            # before the delegate allocates anything
            raise errors.InterfaceExists(f"interface {r.ifname} already exists in netns {r.netns}")

    async def _address(self, r: Request, conf: NetConf, netns: int) -> Addressing:
        if conf.ipam_type is None:
            return Addressing(*await self.addresses.allocate(r.container_id, r.ifname))
        doc = await self._delegate("ADD", r, conf, netns)
        try:
            return parse_ipam_result(doc, conf.ipam_type)
        except BaseException:
            await self._undo(r, conf, netns, veth=False)
            raise

    def _attachment(
        self, r: Request, conf: NetConf, netns: int, a: Addressing, mac: str | None
    ) -> pods.Attachment:
        n = self.network
        routes = tuple((dst, gw or a.gateway) for dst, gw in a.routes)
        return pods.Attachment(netns, r.container_id, r.ifname, n.bridge, a.address, a.gateway,
                               conf.mtu or n.mtu, n.gso_max_size, routes, mac)  # fmt: skip

    async def _attach(
        self, r: Request, conf: NetConf, attachment: pods.Attachment, held: bool
    ) -> pods.Attached:
        """The veth work, with the allocation's write overlapping it; undone on failure."""
        persisting = None if conf.ipam_type else asyncio.ensure_future(self.addresses.persist())
        try:
            try:
                attached = await self.network.attach(attachment)
            finally:
                failed = await _settled(persisting)  # never left running, whatever happened
            if failed is not None:
                raise failed
        except errors.InterfaceExists as exc:  # attach touched nothing: the pod is live
            if not held:
                await self._undo(r, conf, attachment.netns, veth=False)
            raise errors.InterfaceExists(
                f"interface {r.ifname} already exists in netns {r.netns}", exc.message
            ) from None
        except BaseException:
            await self._undo(r, conf, attachment.netns)
            raise
        return attached

    async def _undo(self, r: Request, conf: NetConf, netns: int, veth: bool = True) -> None:
        """After a failed ADD: veth and address go again; failures here are only logged (the
        ADD's own error is what the runtime needs, and its DEL will try again)."""
        try:
            if veth:
                await self.network.detach(r.container_id, r.ifname)
            await self._unaddress(r, conf, netns)
        except Exception as exc:
            log.warning("undo add: %s %s: %s", r.container_id[:12], r.ifname, exc)

    async def _unaddress(self, r: Request, conf: NetConf, fd: int | None) -> None:
        if conf.ipam_type is None:
            await self.addresses.release(r.container_id, r.ifname)
        else:
            await self._delegate("DEL", r, conf, fd)

    # -- DEL, CHECK, GC, STATUS -----------------------------------------------------------------

    async def _del(self, r: Request, conf: NetConf, fd: int | None) -> None:
        removed = await self.network.detach(r.container_id, r.ifname)
        await self._unaddress(r, conf, fd)
        log.info(
            "delete pod: %s %s%s", r.container_id[:12], r.ifname, "" if removed else " (no veth)"
        )

    async def _check(self, r: Request, conf: NetConf, fd: int | None) -> None:
        if conf.prev_result is None:
            raise CniError(Code.PREV_RESULT_MISSING, "Required prevResult missing")
        netns = _netns(r, fd)
        expected = expected_from(conf, r, self.network.bridge, netns)
        if conf.ipam_type is not None:
            await self._delegate("CHECK", r, conf, netns)
        elif (r.container_id, r.ifname) not in self.addresses.held():
            raise CniError(
                Code.CHECK_FAILED,
                f"no address is allocated to container {r.container_id} interface {r.ifname}",
            )
        problems = await self.network.check(expected)
        if problems:
            raise CniError(Code.CHECK_FAILED, "; ".join(problems))

    async def _gc(self, r: Request, conf: NetConf) -> None:
        if conf.ipam_type is not None:
            if await self._delegate_supports(r, conf, "1.1.0"):
                await self._delegate("GC", r, conf, None)
            return
        stale = [a for a in self.addresses.held() if a not in conf.valid_attachments]
        for cid, ifname in stale:
            if cid in self._slots:
                continue  # a request for it is running: not garbage
            async with self._serialized(cid):
                await self.network.detach(cid, ifname)
                await self.addresses.release(cid, ifname)
            log.info("gc pod: %s %s", cid[:12], ifname)

    async def _status(self, r: Request, conf: NetConf) -> None:
        if not self.addresses.ready():
            raise CniError(Code.NOT_READY, "the weave-py agent is not ready")
        if conf.ipam_type is not None and await self._delegate_supports(r, conf, "1.1.0"):
            await self._delegate("STATUS", r, conf, None)

    # -- delegated IPAM -------------------------------------------------------------------------

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


async def _settled(task: asyncio.Future[None] | None) -> BaseException | None:
    """Wait until ``task`` is done, without raising; what it raised, if anything."""
    if task is None:
        return None
    await asyncio.wait([task])
    return None if task.cancelled() else task.exception()


def _netns(r: Request, fd: int | None) -> int:
    if fd is None:
        raise CniError(
            Code.NETNS, f"failed to open netns {r.netns!r}", "the plugin passed no netns descriptor"
        )
    return fd


def _pod(args: Mapping[str, str], r: Request) -> str:
    name = args.get("K8S_POD_NAME")
    return f"{args.get('K8S_POD_NAMESPACE', '')}/{name}" if name else r.container_id[:12]
