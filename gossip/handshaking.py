"""A control connection's handshake phase, over asyncio streams: from the first bytes to an
``Accepted`` or a ``HandshakeFailed`` that says why.

Rules this module keeps:
- The handshake ends within ``HANDSHAKE_TIMEOUT`` seconds, or fails as "handshake_timeout"
  with the bytes received so far in its detail.
- An accepted connection's bytes count against the admission's bounds (gossip/admission.py)
  while it is in its handshake, and leave them when it ends, however it ends; a dialled one's
  count only towards its own cap on handshake bytes.
- Every way a handshake ends without a connection is one ``HandshakeFailed``: its ``reason``
  is the rejection counter's label, its ``detail`` the line the driver logs.
"""

from __future__ import annotations

import asyncio

from gossip.admission import Admission
from gossip.handshake import Accepted, Handshake, Refused

HANDSHAKE_TIMEOUT = 10.0
READ_SIZE = 65536


class HandshakeFailed(Exception):
    """A handshake ended without a connection: the refusal's counter label and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


async def admitted_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    shake: Handshake,
    admission: Admission,
    host: str | None,
) -> Accepted:
    """Run ``shake`` (dialled when it is the initiator) to an outcome; an accepted connection
    leaves the admission count after."""
    counted = [0]
    try:
        return await _exchange(reader, writer, shake, admission, counted)
    except TimeoutError:
        detail = f"no handshake within {HANDSHAKE_TIMEOUT:g}s ({counted[0]} bytes received)"
        raise HandshakeFailed("handshake_timeout", detail) from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise HandshakeFailed("handshake_error", detail) from None
    finally:
        if not shake.initiator:
            admission.leave(host or "?", counted[0])


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    shake: Handshake,
    admission: Admission,
    counted: list[int],
) -> Accepted:
    dialled = shake.initiator
    writer.write(shake.start())
    result = None
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        while result is None:
            data = await reader.read(READ_SIZE)
            if not data:
                detail = f"closed by peer after {counted[0]} bytes"
                raise HandshakeFailed("handshake_closed", detail)
            counted[0] += len(data)
            if not dialled:
                admission.read(len(data))
            too_much = admission.check(counted[0])
            if too_much is not None:
                raise HandshakeFailed("handshake_too_large", too_much)
            result = shake.receive(data)
            writer.write(shake.data_to_send())  # a CONFIRM, or a REFUSE
    if isinstance(result, Refused):
        label = "handshake_refused_by_peer" if result.by_peer else "handshake_refused"
        raise HandshakeFailed(label, result.reason)
    return result
