"""The ``deadline-floor`` arm: the least a pure-Python deadline middleware must do.

Not a product: a yardstick. Per request it does only what any middleware
that enforces per-route deadlines and cancels late handlers cannot skip:

- match the path against one compiled regular expression of the app's
  routes to pick the route's budget;
- note the current task and the deadline, and register the request where a
  sweeper or timer could find it (a dict entry, added and removed);
- set one ``ContextVar`` so handlers and their child tasks see the deadline;
- wrap ``send`` with a small object that sees the response start (so a late
  request can get a 504 rather than a broken response) and end.

It arms no timer, reads no inbound deadline header, keeps no service-time
estimate, answers no 504 and never cancels anything: tailguard's
deadlines-only arm does all of those. The difference between the two arms is
the price of those features; this arm's own overhead is the floor under any
implementation of the contract in pure Python on this interpreter.
"""

from __future__ import annotations

import re
from asyncio import current_task
from collections.abc import Awaitable
from contextvars import ContextVar
from time import monotonic
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_current: ContextVar[tuple[float, object] | None] = ContextVar("floor", default=None)


class _Request:
    __slots__ = ("_send", "complete", "deadline", "status", "task")

    def __init__(self, send: Send, deadline: float, task: object) -> None:
        self._send = send
        self.deadline = deadline
        self.task = task
        self.status = 0
        self.complete = False

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif not message.get("more_body", False):
            self.complete = True
        return self._send(message)


class DeadlineFloor:
    """Pure-ASGI middleware doing only the unavoidable per-request work (see the module)."""

    def __init__(self, app: ASGIApp, budgets: dict[str | None, float], default: float) -> None:
        self.app = app
        self._budgets = budgets
        self._default = default
        self._combined: re.Pattern[str] | None = None
        self._templates: dict[int, str] = {}
        self._live: dict[_Request, float] = {}

    def _compile(self, routes: list[Any]) -> re.Pattern[str]:
        alternatives = "|".join(
            f"(?P<r{i}>{re.sub(r'[(][?]P<[^>]+>', '(?:', route.path_regex.pattern[1:-1])})"
            for i, route in enumerate(routes)
        )
        combined = re.compile(f"^(?:{alternatives})$")
        self._templates = {combined.groupindex[f"r{i}"]: r.path for i, r in enumerate(routes)}
        return combined

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        combined = self._combined
        if combined is None:
            combined = self._combined = self._compile(scope["app"].routes)
        found = combined.match(scope["path"])
        template = self._templates[found.lastindex or 0] if found is not None else None
        budget = self._budgets.get(template, self._default)
        now = monotonic()
        request = _Request(send, now + budget, current_task())
        self._live[request] = now
        token = _current.set((request.deadline, request))
        try:
            await self.app(scope, receive, request.send)
        finally:
            _current.reset(token)
            del self._live[request]
