"""The short responses tailguard sends on its own behalf."""

from __future__ import annotations

from starlette.types import Send

__all__ = ["REASON_HEADER", "deadline_response"]

REASON_HEADER = b"x-tailguard-reason"
"""Set on every response tailguard produces itself, so callers and proxies can
tell a tailguard 504/503 from one the application returned."""

_DEADLINE_BODY = b"deadline exceeded\n"


async def deadline_response(send: Send) -> None:
    """Send ``504 Gateway Timeout`` for a request whose budget ran out."""
    await send(
        {
            "type": "http.response.start",
            "status": 504,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_DEADLINE_BODY)).encode()),
                (b"cache-control", b"no-store"),
                (REASON_HEADER, b"deadline_exceeded"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _DEADLINE_BODY})
