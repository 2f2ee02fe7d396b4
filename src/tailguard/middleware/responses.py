"""The short responses tailguard sends on its own behalf, and the app middleware they pass through.

tailguard sits outside the middleware an app adds (so their time counts
against the deadline), which means its own 503s and 504s do not pass through
them: a browser would get a 503 without the CORS headers the app's
``CORSMiddleware`` adds to every other response, and report a CORS failure
instead of a readable 503. :class:`Responses` sends tailguard's answers
through fresh instances of the app's own middleware of chosen classes (by
default Starlette's ``CORSMiddleware``), built with the options the app
registered them with, so they add what they add to any other response.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard.admission import Rejected

__all__ = ["REASON_HEADER", "Responses", "deadline_response", "shed_response"]

REASON_HEADER = b"x-tailguard-reason"
"""Set on every response tailguard produces itself, so callers and proxies can
tell a tailguard 504/503 from one the application returned."""

_PENDING = "tailguard.response"  # scope key: the response the innermost app sends


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
    """``503 Service Unavailable`` with the reason, sent cheaply.

    An overload (a full queue, a wait that ran out) invites a retry with
    ``Retry-After``; a budget shed does not: the caller's deadline was shorter
    than the route's usual service time, and the same budget would fail again.
    """
    if rejected.reason == "budget":
        await _respond(send, 503, "budget", b"deadline too short: budget\n")
        return
    retry_after = max(1, math.ceil(rejected.retry_after))
    body = f"overloaded: {rejected.reason}\n".encode()
    await _respond(send, 503, rejected.reason, body, (b"retry-after", str(retry_after).encode()))


async def _emit(scope: Scope, receive: Receive, send: Send) -> None:
    """The innermost app of a chain: sends the response the scope carries."""
    error = scope[_PENDING]
    if isinstance(error, Rejected):
        await shed_response(send, error)
    else:
        await deadline_response(send)


class Responses:
    """How tailguard's own 503/504 reach the client: directly, or through app middleware.

    ``through`` is a list of ``(cls, args, kwargs)``, outermost first, as
    Starlette keeps them in ``app.user_middleware``; each is instantiated once,
    around an app that sends tailguard's response. They must be cheap and must
    not read the request body (CORS and header-setting middleware are).

    >>> import asyncio
    >>> from starlette.middleware.cors import CORSMiddleware
    >>> responses = Responses([(CORSMiddleware, (), {"allow_origins": ["https://a.example"]})])
    >>> sent = []
    >>> async def send(message): sent.append(message)
    >>> scope = {"type": "http", "method": "GET", "path": "/", "headers": [
    ...     (b"origin", b"https://a.example")]}
    >>> asyncio.run(responses.deadline(scope, None, send))
    >>> sent[0]["status"], dict(sent[0]["headers"])[b"access-control-allow-origin"]
    (504, b'https://a.example')
    """

    __slots__ = ("_chain", "names")

    def __init__(self, through: Sequence[tuple[Any, Sequence[Any], dict[str, Any]]] = ()) -> None:
        chain: ASGIApp = _emit
        for cls, args, kwargs in reversed(list(through)):
            chain = cls(chain, *args, **kwargs)
        self._chain: ASGIApp | None = chain if through else None
        self.names: tuple[str, ...] = tuple(cls.__name__ for cls, _, _ in through)
        """The classes responses pass through, outermost first (for diagnostics)."""

    async def deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``504`` for a request whose budget ran out."""
        chain = self._chain
        if chain is None:
            await deadline_response(send)
        else:
            await chain({**scope, _PENDING: None}, receive, send)

    async def shed(self, scope: Scope, receive: Receive, send: Send, rejected: Rejected) -> None:
        """``503`` with ``Retry-After`` for a request admission control shed."""
        chain = self._chain
        if chain is None:
            await shed_response(send, rejected)
        else:
            await chain({**scope, _PENDING: rejected}, receive, send)
