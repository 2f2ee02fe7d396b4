"""The pure-ASGI middleware: per-request deadlines, cancellation and error responses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailguard import _context
from tailguard.admission import Permit, Rejected
from tailguard.deadlines import Deadline, DeadlineExceeded
from tailguard.middleware.disconnect import Inbox
from tailguard.middleware.responses import deadline_response, shed_response
from tailguard.middleware.routing import ResolvedRoute, RouteMatcher, route_template
from tailguard.middleware.sweeper import Sweeper
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
        # loop's sweeper.
        self._matched_app: object = None
        self._matcher: RouteMatcher | None = None
        self._sweeper: Sweeper | None = None

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
        sweeper = self._sweeper
        if sweeper is None or sweeper.loop is not task.get_loop():
            sweeper = self._sweeper = _new_sweeper(task.get_loop())
        now = monotonic()
        if budget is None:
            deadline = None
            exchange = _Exchange(task, send, receive, None, now, scope, resolved, guard)
            sweeper.add(exchange, now)
        else:
            # tuple.__new__ skips NamedTuple's Python-level __new__: this runs per request.
            deadline = tuple.__new__(Deadline, (now + budget, budget, source))
            exchange = _Exchange(task, send, receive, deadline, now, scope, resolved, guard)
            if budget < DISCONNECT_GRACE:
                exchange.arm()  # would be over before the first sweep could arm it
            else:
                sweeper.add(exchange, now)
        token = _context.current.set(tuple.__new__(_context.Frame, (deadline, exchange)))
        limiter = resolved.limiter
        permit: Permit | None = None
        error: DeadlineExceeded | Rejected | None = None
        try:
            if source != "route" and budget is not None:
                _shed_if_too_late(budget, resolved)
            if limiter is not None:
                tenant = exchange.tenant
                permit = limiter.try_acquire(resolved.policy.priority, tenant)
                if permit is None:
                    permit = await limiter.acquire(
                        priority=resolved.policy.priority,
                        tenant=tenant,
                        deadline_at=None if deadline is None else deadline.at,
                        service_estimate=resolved.service_time.estimate(),
                    )
                    exchange.admitted_at = monotonic()
            await self.app(scope, exchange.receive, exchange.send)
        except (DeadlineExceeded, Rejected) as exc:  # ran out, or shed here or downstream
            error = exc
        except asyncio.CancelledError:
            # Absorb only the cancellation this request asked for; one from
            # outside (server shutdown) also counts and keeps propagating.
            if not exchange.withdraw_cancel():
                raise
        finally:
            exchange.finished = True
            sweeper.discard(exchange)
            if exchange.timer is not None:
                exchange.disarm()
            if exchange.inbox is not None:
                exchange.inbox.close()
            _context.current.reset(token)
            ok = exchange.complete and exchange.status < 500 and not exchange.fired
            if ok:
                resolved.service_time.observe(monotonic() - exchange.admitted_at)
            if permit is not None:
                permit.release(ok=ok)
        if exchange.fired or error is not None:
            try:
                await exchange.settle(scope, error)
            finally:
                error = None  # no exception -> traceback -> this frame -> exception cycle

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
        if app is not self._matched_app or (matcher is not None and matcher.stale()):
            # Compiled once per app (and again if its route list grows); apps
            # whose routes cannot be compiled use Starlette's own matching.
            self._matched_app = app
            matcher = self._matcher = RouteMatcher.for_routes(getattr(app, "routes", None), None)
        return matcher.template(scope) if matcher is not None else route_template(scope)


def _new_sweeper(loop: asyncio.AbstractEventLoop) -> Sweeper:
    task_registry.ensure_task_factory(loop)
    return Sweeper(loop, DISCONNECT_GRACE)


class _Exchange(task_registry.RequestTasks):
    """One request as the middleware sees it: its deadline, its response, its tasks.

    Created per request and never shared. It owns the tasks the request spawns
    (the task factory adds them here). A request that outlives the loop's
    grace period is *promoted* by the :class:`Sweeper`: only then does it get
    a deadline timer and a disconnect watcher, so fast requests pay for
    neither.
    """

    __slots__ = (
        "_guard",
        "_receive",
        "_send",
        "_task",
        "_tenant",
        "admitted_at",
        "body_complete",
        "cancelling",
        "complete",
        "deadline",
        "disconnect",
        "finished",
        "fired",
        "inbox",
        "reading",
        "resolved",
        "scope",
        "started",
        "status",
        "timer",
        "watch_requested",
        "withdrawn",
    )

    def __init__(
        self,
        task: asyncio.Task[Any],
        send: Send,
        receive: Receive,
        deadline: Deadline | None,
        now: float,
        scope: Scope,
        resolved: ResolvedRoute,
        guard: Tailguard,
    ) -> None:
        self._live = None  # RequestTasks' only field, set inline: this runs per request
        self._task = task
        self.timer: asyncio.TimerHandle | None = None
        self.cancelling = task.cancelling()
        self._send = send
        self._receive = receive
        self.inbox: Inbox | None = None  # made only for requests that outlive the grace
        self.reading = False
        self.body_complete = False
        self.watch_requested = False
        self.disconnect: Message | None = None
        self.deadline = deadline
        self.started = False
        self.complete = False
        self.fired = False
        self.withdrawn = False
        self.finished = False
        self.status = 0
        self.admitted_at = now
        self.scope = scope
        self.resolved = resolved
        self._guard = guard
        self._tenant: str | bool | None = False  # False: not looked up yet

    # -- the request, as other features see it (tailguard._context.RequestView) ----------

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def route(self) -> str:
        return self.resolved.template or ""

    @property
    def tenant(self) -> str | None:
        tenant = self._tenant
        if tenant is False:
            resolve = self._guard.tenant
            tenant = self._tenant = resolve(self.scope) if resolve is not None else None
        assert tenant is not True
        return tenant

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.scope["headers"]:
            if key == wanted:
                found: str = value.decode("latin-1")
                return found
        return None

    def promote(self) -> None:
        """Still running after the grace period: arm the deadline, watch the client."""
        if not self.finished:
            self.arm()
            if self.reading:
                self.watch_requested = True  # never two readers: start when the app's read returns
            else:
                self._watch()

    def _watch(self) -> None:
        if self.inbox is None and self.disconnect is None and not self.finished:
            self.inbox = Inbox(self._receive, self.cancel, body_complete=self.body_complete)
            self.inbox.start_watching()

    async def receive(self) -> Message:
        """The ``receive`` the app gets: the server's own until a watcher takes over."""
        inbox = self.inbox
        if inbox is not None:
            return await inbox.receive()
        self.reading = True
        try:
            message = await self._receive()
        finally:
            self.reading = False
        if message["type"] == "http.disconnect":
            self.disconnect = message
        elif not message.get("more_body", False):
            self.body_complete = True
        if self.watch_requested:
            self._watch()
        return message

    def arm(self) -> None:
        """Schedule the cancellation at the deadline, if there is one."""
        deadline = self.deadline
        if deadline is not None and self.timer is None:
            loop = self._task.get_loop()
            when = loop.time() + (deadline.at - monotonic())
            self.timer = loop.call_at(when, self.cancel)

    def disarm(self) -> None:
        """The request is over: drop its timer, if it has one."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel(self) -> None:
        """Cancel the request's task: its deadline passed or its client left."""
        if not self.finished and not self.fired:
            self.fired = True
            self._task.cancel()

    def withdraw_cancel(self) -> bool:
        """Take back this request's cancel request, as ``asyncio.timeout`` does.

        True when the request did cancel its task and no one else has asked
        for a cancellation since, i.e. the ``CancelledError`` is ours to absorb.
        Called once: when the ``CancelledError`` arrives, or from :meth:`settle`
        when the app swallowed it.
        """
        if not self.fired or self.withdrawn:
            return False
        self.withdrawn = True
        return self._task.uncancel() <= self.cancelling

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function returning the server's awaitable: no extra coroutine
        # frame per message, the app awaits the server's send directly.
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
        elif not message.get("more_body", False):
            self.complete = True
            # The deadline bounds the response. Work after it (Starlette's
            # background tasks) is not cut off by a budget the client no
            # longer waits on.
            self.finished = True
            if self.timer is not None:
                self.disarm()
            _context.current.set(None)
        return self._send(message)

    async def settle(self, scope: Scope, error: DeadlineExceeded | Rejected | None) -> None:
        """Finish a request that was cancelled, ran out of time, or was shed."""
        inbox = self.inbox
        if self.fired:
            self.withdraw_cancel()  # a no-op unless the app swallowed our cancellation
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
