"""The short responses tailguard sends on its own behalf."""

from __future__ import annotations

import math

from starlette.types import Send

from tailguard.admission import Rejected

__all__ = ["REASON_HEADER", "deadline_response", "shed_response"]

REASON_HEADER = b"x-tailguard-reason"
"""Set on every response tailguard produces itself, so callers and proxies can
tell a tailguard 504/503 from one the application returned."""


async def _respond(
    send: Send, status: int, reason: str, body: bytes, *extra: tuple[bytes, bytes]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (REASON_HEADER, reason.encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def deadline_response(send: Send) -> None:
    """Send ``504 Gateway Timeout`` for a request whose budget ran out."""
    await _respond(send, 504, "deadline_exceeded", b"deadline exceeded\n")


async def shed_response(send: Send, rejected: Rejected) -> None:
    """``503 Service Unavailable`` with ``Retry-After`` and the reason, sent cheaply."""
    retry_after = max(1, math.ceil(rejected.retry_after))
    body = f"overloaded: {rejected.reason}\n".encode()
    await _respond(send, 503, rejected.reason, body, (b"retry-after", str(retry_after).encode()))
