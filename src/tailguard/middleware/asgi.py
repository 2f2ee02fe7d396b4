"""The pure-ASGI middleware: per-request deadlines, cancellation and error responses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailguard.deadlines import CancelScope, Deadline, DeadlineExceeded, _current
from tailguard.middleware.disconnect import Inbox
from tailguard.middleware.responses import deadline_response
from tailguard.middleware.routing import route_template
from tailguard.policy import RoutePolicy
from tailguard.telemetry import tasks as task_registry

if TYPE_CHECKING:
    from tailguard.guard import Tailguard

__all__ = ["TailguardMiddleware"]

logger = logging.getLogger("tailguard")

DISCONNECT_GRACE = 0.02
"""Seconds before a request starts watching for client disconnects.

Requests that finish sooner never pay for the watcher task; ones that run
longer are cancelled within about this long of their client leaving.
"""


class TailguardMiddleware:
    """Pure-ASGI middleware that enforces per-route deadlines.

    Use it through :meth:`Tailguard.install`, or add it by hand:

    >>> from starlette.applications import Starlette
    >>> from tailguard import RoutePolicy, TailguardMiddleware
    >>> app = Starlette()
    >>> app.add_middleware(
    ...     TailguardMiddleware,
    ...     default=RoutePolicy(deadline=1.0),
    ...     routes={"GET /items/{item_id}": RoutePolicy(deadline=0.1)},
    ... )

    Non-HTTP scopes (lifespan, websocket) pass straight through. No state about
    a request is stored on the middleware: each request gets its own objects.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: Tailguard | None = None,
        routes: Mapping[str, RoutePolicy] | None = None,
        default: RoutePolicy | None = None,
        **options: Any,
    ) -> None:
        from tailguard.guard import Tailguard

        if guard is None:
            guard = Tailguard(default=default, routes=routes, **options)
        elif routes is not None or default is not None or options:
            raise TypeError("pass either guard= or routes=/default=/options, not both")
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        resolved = guard.routes.lookup(scope["method"], route_template(scope))
        budget = resolved.policy.deadline
        source = "route"
        inbound = guard.inbound
        if inbound is not None:
            found = inbound.budget(scope["headers"])
            if found is not None and (budget is None or found[0] < budget):
                budget, source = found
        deadline = Deadline.after(budget, source=source) if budget is not None else None
        await _Exchange(send, deadline).run(self.app, scope, receive)


class _Exchange:
    """Everything about one request that the middleware tracks. Never shared."""

    __slots__ = ("_send", "complete", "deadline", "scope", "started")

    def __init__(self, send: Send, deadline: Deadline | None) -> None:
        self._send = send
        self.deadline = deadline
        self.started = False
        self.complete = False
        self.scope = CancelScope(deadline.at if deadline is not None else None)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.complete = True
            # The deadline bounds the response. Work after it (Starlette's
            # background tasks) is not cut off by a budget the client no
            # longer waits on.
            self.scope.disarm()
            _current.set(None)
        await self._send(message)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        task_registry.ensure_task_factory(loop)
        spawned = task_registry.RequestTasks()
        cancel_scope = self.scope
        inbox = Inbox(receive, cancel_scope.cancel_now)
        watch = loop.call_later(DISCONNECT_GRACE, inbox.start_watching)
        deadline_token = _current.set(self.deadline)
        tasks_token = task_registry.bind(spawned)
        error: DeadlineExceeded | None = None
        try:
            with cancel_scope:
                await app(scope, inbox.receive, self.send)
        except DeadlineExceeded as exc:  # an inner scope or outbound call ran out
            error = exc
        finally:
            watch.cancel()
            inbox.close()
            task_registry.unbind(tasks_token)
            _current.reset(deadline_token)
        if cancel_scope.fired:
            if inbox.disconnected and not self.complete:
                spawned.cancel_pending()
                logger.debug("client disconnected; cancelled %s %s", scope["method"], scope["path"])
                return
            error = DeadlineExceeded(self.deadline)
        if error is None or self.complete:
            return
        spawned.cancel_pending()
        if self.started:
            # Never a second http.response.start: abort, so the server drops the
            # connection and the client sees a truncated response, not a short one.
            raise DeadlineExceeded(error.deadline, f"response aborted: {error}") from error
        await deadline_response(self._send)
