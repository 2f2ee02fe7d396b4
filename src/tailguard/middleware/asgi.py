"""The pure-ASGI middleware: per-request deadlines, cancellation and error responses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailguard import _context
from tailguard._scope import route_path
from tailguard.admission import Permit, Rejected
from tailguard.deadlines import Deadline, DeadlineExceeded
from tailguard.middleware.exchange import Exchange
from tailguard.middleware.routing import ResolvedRoute, RouteMatcher, route_template
from tailguard.middleware.sweeper import Sweeper
from tailguard.policy import RoutePolicy
from tailguard.telemetry import otel
from tailguard.telemetry import tasks as task_registry
from tailguard.telemetry.exposition import retire_worker
from tailguard.telemetry.pools import instrument_threads

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
                _start_telemetry(self.guard, asyncio.get_running_loop())
                send = self._closing_dependencies(send)
            await self.app(scope, receive, send)
            return
        guard = self.guard
        if guard.endpoints:
            path = route_path(scope)  # behind a proxy prefix too (uvicorn --root-path)
            for prefix, endpoint in guard.endpoints:
                if path == prefix or path.startswith(prefix + "/"):
                    await endpoint(scope, receive, send)
                    return
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
            sweeper = self._sweeper = _new_sweeper(guard, task.get_loop())
        now = monotonic()
        if budget is None:
            deadline = None
            exchange = Exchange(task, send, receive, None, now, scope, resolved, guard)
            sweeper.add(exchange, now)
        else:
            # tuple.__new__ skips NamedTuple's Python-level __new__: this runs per request.
            deadline = tuple.__new__(Deadline, (now + budget, budget, source))
            exchange = Exchange(task, send, receive, deadline, now, scope, resolved, guard)
            if budget < DISCONNECT_GRACE:
                exchange.arm()  # would be over before the first sweep could arm it
            else:
                sweeper.add(exchange, now)
        token = _context.current.set(tuple.__new__(_context.Frame, (deadline, exchange)))
        guard.live[exchange] = now
        span = otel.recording_span() if guard.tracing else None
        if span is not None:  # sampled: annotate the server span; spawned tasks get spans
            exchange.span = span
            exchange.span_attributes = {}  # set in one call when the response completes
            otel.annotate_request(
                span,
                scope["method"],
                scope["path"],
                resolved.template,
                budget,
                source,
                exchange.span_attributes,
            )
        recorder = guard.recorder
        metrics = None
        if recorder is not None:
            metrics = recorder.route(resolved.template, scope["method"])
            metrics.begin()
        limiter = resolved.limiter
        permit: Permit | None = None
        error: DeadlineExceeded | Rejected | None = None
        settled = False  # False while an exception of the app's (or a server's cancel) propagates
        answered = False  # by a chaos Respond fault, for the app
        try:
            if source != "route" and budget is not None:
                _shed_if_too_late(budget, resolved)
            if guard.chaos.armed:
                # Route faults come before admission: an injected delay or answer
                # never holds a slot or enters the limiters' latency samples.
                answered = await guard.chaos.inbound(exchange, exchange.send)
                exchange.admitted_at = monotonic()
            if not answered:
                if limiter is not None:
                    permit = limiter.try_acquire(resolved.policy.priority, exchange.tenant)
                    if permit is None:
                        permit = await exchange.queue_for(limiter, resolved)
                await self.app(scope, exchange.receive, exchange.send)
            settled = True
        except (DeadlineExceeded, Rejected) as exc:  # ran out, or shed here or downstream
            error = exc
            settled = True
        except asyncio.CancelledError:
            # Absorb only the cancellation this request asked for; one from
            # outside (server shutdown) also counts and keeps propagating.
            if not exchange.withdraw_cancel():
                raise
            settled = True
        finally:
            exchange.finished = True
            sweeper.discard(exchange)
            del guard.live[exchange]
            if exchange.timer is not None:
                exchange.disarm()
            if exchange.inbox is not None:
                exchange.inbox.close()
            _context.current.reset(token)
            ok = exchange.complete and exchange.status < 500 and not exchange.fired
            if ok and not answered:
                resolved.service_time.observe(monotonic() - exchange.admitted_at)
            if permit is not None:
                permit.release(ok=ok)
            if not settled:
                # The app raised: outer layers answer 500, unless the response started.
                exchange.outcome = "error"
                exchange.status = exchange.status or 500
                exchange.close(metrics)
        if exchange.fired or error is not None:
            try:
                await exchange.settle(scope, error, metrics)
            finally:
                error = None  # no exception -> traceback -> this frame -> exception cycle
                exchange.close(metrics)
        else:
            exchange.close(metrics)

    def _closing_dependencies(self, send: Send) -> Send:
        """Wrap lifespan ``send`` so dependency thread pools drain before shutdown completes."""
        guard = self.guard

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                for dependency in list(guard.dependencies.values()):
                    await dependency.aclose()
                if guard.loop_monitor is not None:
                    guard.loop_monitor.stop()
                    retire_worker()  # multiprocess mode: this worker's live gauges go
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


def _new_sweeper(guard: Tailguard, loop: asyncio.AbstractEventLoop) -> Sweeper:
    # The first request on a loop: the fallback for apps whose lifespan never runs.
    _start_telemetry(guard, loop)
    return Sweeper(loop, DISCONNECT_GRACE)


def _start_telemetry(guard: Tailguard, loop: asyncio.AbstractEventLoop) -> None:
    """Task attribution, thread-pool measurement and the loop monitor; all idempotent."""
    task_registry.ensure_task_factory(loop)
    if guard.loop_monitor is not None:
        instrument_threads(loop)
        guard.loop_monitor.start(loop)


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
