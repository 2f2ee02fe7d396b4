"""The pure-ASGI middleware: per-request deadlines, cancellation and error responses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailguard import _context
from tailguard.admission import Permit, Rejected
from tailguard.deadlines import Deadline, DeadlineExceeded
from tailguard.middleware.admission import shed_response
from tailguard.middleware.disconnect import Inbox
from tailguard.middleware.expiry import ExpiryQueue
from tailguard.middleware.responses import deadline_response
from tailguard.middleware.routing import ResolvedRoute, RouteMatcher, route_template
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
        # Per app and per event loop, never per request: compiled routes and the
        # loop's expiry queue.
        self._matched_app: object = None
        self._matcher: RouteMatcher | None = None
        self._clock: ExpiryQueue | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                task_registry.ensure_task_factory(asyncio.get_running_loop())
                send = self._closing_dependencies(send)
            await self.app(scope, receive, send)
            return
        guard = self.guard
        resolved = guard.routes.lookup(scope["method"], self._template(scope))
        budget = resolved.policy.deadline
        source = "route"
        inbound = guard.inbound
        if inbound is not None:
            found = inbound.budget(scope["headers"])
            if found is not None and (budget is None or found[0] < budget):
                budget, source = found
        task = asyncio.current_task()
        assert task is not None
        clock = self._clock
        if clock is None or clock.loop is not task.get_loop():
            clock = self._clock = _new_clock(task.get_loop())
        now = monotonic()
        if budget is None:
            deadline = None
            clock.add(now + DISCONNECT_GRACE, exchange := _Exchange(task, send, None))
        else:
            # tuple.__new__ skips NamedTuple's Python-level __new__: this is per request.
            deadline = tuple.__new__(Deadline, (now + budget, budget, source))
            exchange = _Exchange(task, send, deadline)
            clock.add(min(now + DISCONNECT_GRACE, deadline.at), exchange)
        exchange.admitted_at = now
        inbox = exchange.inbox = Inbox(receive, exchange.cancel)
        token = _context.current.set(_context.Frame(deadline, exchange))
        limiter = resolved.limiter
        permit: Permit | None = None
        error: DeadlineExceeded | Rejected | None = None
        try:
            if source != "route" and budget is not None:
                _shed_if_too_late(budget, resolved)
            if limiter is not None:
                tenant = guard.tenant(scope) if guard.tenant is not None else None
                permit = limiter.try_acquire(resolved.policy.priority, tenant)
                if permit is None:
                    permit = await limiter.acquire(
                        priority=resolved.policy.priority,
                        tenant=tenant,
                        deadline_at=None if deadline is None else deadline.at,
                        service_estimate=resolved.service_time.estimate(),
                    )
                    exchange.admitted_at = monotonic()
            await self.app(scope, inbox.receive, exchange.send)
        except (DeadlineExceeded, Rejected) as exc:  # ran out, or shed here or downstream
            error = exc
        except asyncio.CancelledError:
            # Absorb only the cancellation this request asked for; one from
            # outside (server shutdown) also counts and keeps propagating.
            if not exchange.withdraw_cancel():
                raise
        else:
            exchange.withdraw_cancel()  # in case the app swallowed our cancellation
        finally:
            exchange.finished = True
            inbox.close()
            _context.current.reset(token)
            ok = exchange.complete and exchange.status < 500 and not exchange.fired
            if ok:
                resolved.service_time.observe(monotonic() - exchange.admitted_at)
            if permit is not None:
                permit.release(ok=ok)
        if exchange.fired or error is not None:
            await exchange.settle(scope, error)

    def _closing_dependencies(self, send: Send) -> Send:
        """Wrap lifespan ``send`` so dependency thread pools drain before shutdown completes."""
        guard = self.guard

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                for dependency in list(guard.dependencies.values()):
                    await dependency.aclose()
            await send(message)

        return lifespan_send

    def _template(self, scope: Scope) -> str | None:
        app = scope.get("app")
        matcher = self._matcher
        if app is not self._matched_app:
            self._matched_app = app
            matcher = None
        matcher = self._matcher = RouteMatcher.for_routes(getattr(app, "routes", None), matcher)
        return matcher.template(scope) if matcher is not None else route_template(scope)


def _new_clock(loop: asyncio.AbstractEventLoop) -> ExpiryQueue:
    task_registry.ensure_task_factory(loop)
    return ExpiryQueue(loop)


class _Exchange(task_registry.RequestTasks):
    """One request as the middleware sees it: its deadline, its response, its tasks.

    Created per request and never shared. It owns the tasks the request spawns
    (the task factory adds them here), and the loop's :class:`ExpiryQueue`
    calls :meth:`expire` on it twice at most: once after ``DISCONNECT_GRACE``
    to start watching for a client disconnect, and once when its deadline
    passes. Requests that end sooner cost one heap push and nothing else.
    """

    __slots__ = (
        "_send",
        "_task",
        "admitted_at",
        "cancelling",
        "complete",
        "deadline",
        "finished",
        "fired",
        "inbox",
        "started",
        "status",
    )

    def __init__(self, task: asyncio.Task[Any], send: Send, deadline: Deadline | None) -> None:
        self._live = None  # RequestTasks' only field, set inline: this runs per request
        self._task = task
        self.cancelling = task.cancelling()
        self._send = send
        self.inbox: Inbox | None = None
        self.deadline = deadline
        self.started = False
        self.complete = False
        self.fired = False
        self.finished = False
        self.status = 0
        self.admitted_at = 0.0

    def expire(self) -> float | None:
        """Called by the expiry queue; returns when to be called again, if ever."""
        deadline = self.deadline
        if deadline is not None and deadline.at <= monotonic():
            self.cancel()
            return None
        inbox = self.inbox
        if inbox is not None:
            inbox.start_watching()
        return deadline.at if deadline is not None else None

    def cancel(self) -> None:
        """Cancel the request's task: its deadline passed or its client left."""
        if not self.finished and not self.fired:
            self.fired = True
            self._task.cancel()

    def withdraw_cancel(self) -> bool:
        """Take back this request's cancel request, as ``asyncio.timeout`` does.

        True when the request did cancel its task and no one else has asked
        for a cancellation since, i.e. the ``CancelledError`` is ours to absorb.
        """
        if not self.fired:
            return False
        return self._task.uncancel() <= self.cancelling

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
        elif not message.get("more_body", False):
            self.complete = True
            # The deadline bounds the response. Work after it (Starlette's
            # background tasks) is not cut off by a budget the client no
            # longer waits on.
            self.finished = True
            _context.current.set(None)
        await self._send(message)

    async def settle(self, scope: Scope, error: DeadlineExceeded | Rejected | None) -> None:
        """Finish a request that was cancelled, ran out of time, or was shed."""
        inbox = self.inbox
        if self.fired:
            if inbox is not None and inbox.disconnected and not self.complete:
                self.cancel_pending()
                logger.debug("client disconnected; cancelled %s %s", scope["method"], scope["path"])
                return
            error = DeadlineExceeded(self.deadline)
        if error is None or self.complete:
            return
        self.cancel_pending()
        if self.started:
            # Never a second http.response.start: abort, so the server drops the
            # connection and the client sees a truncated response, not a short one.
            if isinstance(error, Rejected):
                raise error
            raise DeadlineExceeded(error.deadline, f"response aborted: {error}") from error
        if isinstance(error, Rejected):
            await shed_response(self._send, error)
        else:
            await deadline_response(self._send)


def _shed_if_too_late(budget: float, resolved: ResolvedRoute) -> None:
    """Deadline-aware admission for budgets an inbound header cut short.

    A route's own budget is never judged against its usual service time (that
    would shed every request of a route that is slow on average); a caller's
    tighter budget is: if the route usually needs more, running it is wasted.
    """
    usual = resolved.service_time.estimate()
    if usual is not None and budget < usual:
        name = resolved.limiter.name if resolved.limiter is not None else resolved.key or "default"
        raise Rejected("deadline", name, 0.0)
