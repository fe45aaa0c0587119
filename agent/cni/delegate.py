"""A delegated IPAM plugin (``ipam.type`` naming anything but weave-py): found on CNI_PATH and
executed with the runtime's environment and configuration, as libcni would execute it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

from agent.cni.spec import CniError, Code

DELEGATE_TIMEOUT = 60.0  # seconds an IPAM plugin may run


class Delegate(Protocol):
    """Runs an IPAM plugin: returns its parsed stdout (None when empty) or raises CniError."""

    async def __call__(
        self, plugin: str, env: Mapping[str, str], stdin: bytes, fd: int | None
    ) -> Any: ...


def find_plugin(plugin: str, path: str) -> str:
    """The executable ``plugin`` in the first directory of ``path`` (CNI_PATH) that has it."""
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
    return _answer(plugin, proc.returncode, out, err)


def _answer(plugin: str, status: int | None, out: bytes, err: bytes) -> Any:
    """The plugin's parsed stdout, or its error (its own CNI error when it printed one)."""
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
        if status == 0:
            raise CniError(
                Code.DELEGATE,
                f"ipam plugin {plugin} printed no JSON",
                out.decode(errors="replace")[:1000],
            ) from None
    if status != 0:
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            raise CniError(doc["code"], str(doc.get("msg", "")), str(doc.get("details", "")))
        text = (err or out).decode(errors="replace").strip()[:1000]
        raise CniError(Code.DELEGATE, f"ipam plugin {plugin} failed with status {status}", text)
    return doc
