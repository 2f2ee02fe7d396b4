"""The pure-ASGI middleware: per-request deadlines, cancellation and error responses."""

from __future__ import annotations

import asyncio
import logging
from asyncio import CancelledError, current_task
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
from tailguard.telemetry.requests import RouteMetrics

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
        self._matcher: RouteMatcher | None = None
        self._uncompilable: object = None  # an app whose routes the matcher cannot compile
        self._sweeper: Sweeper | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        guard = self.guard
        pattern = guard.endpoint_pattern
        if pattern is not None and pattern.search(scope["path"]):  # rules out most at once
            endpoint = guard.endpoint_for(route_path(scope))  # behind a proxy prefix too
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        matcher = self._matcher
        if matcher is not None and scope.get("app") is matcher.app:
            resolved = matcher.resolve(scope, guard.routes)
        else:
            resolved = self._resolve(scope)
        budget = resolved.policy.deadline
        source = "route"
        inbound = guard.inbound
        if inbound is not None:
            found = inbound.budget(scope["headers"])
            if found is not None and (budget is None or found[0] < budget):
                budget, source = found
        task = current_task()
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
        token = _context.current.set(exchange)  # it carries .deadline and .owner
        live = guard.live
        live[exchange] = now
        metrics = None
        if guard.tracing or guard.recorder is not None:
            metrics = self._observe(exchange, scope, resolved, budget, source)
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
                    tenant = exchange.tenant if guard.tenant is not None else None
                    permit = limiter.try_acquire(resolved.policy.priority, tenant)
                    if permit is None:
                        permit = await exchange.queue_for(limiter, resolved)
                await self.app(scope, exchange.receive, exchange.send)
            settled = True
        except (DeadlineExceeded, Rejected) as exc:  # ran out, or shed here or downstream
            error = exc
            settled = True
        except CancelledError:
            # Absorb only the cancellation this request asked for; one from
            # outside (server shutdown) also counts and keeps propagating.
            if not exchange.withdraw_cancel():
                raise
            settled = True
        finally:
            exchange.finished = True
            sweeper.young.pop(exchange, None)
            del live[exchange]
            if exchange.promoted:
                exchange.disarm()
                if exchange.inbox is not None:
                    exchange.inbox.close()
            _context.current.reset(token)
            ok = exchange.complete and exchange.status < 500 and not exchange.fired
            if ok and not answered:
                # Until the last body message: background tasks after it are not service.
                resolved.service_time.observe(exchange.ended - exchange.admitted_at)
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
        elif metrics is not None or exchange.spawned or exchange.span is not None:
            exchange.close(metrics)
        elif guard.chaos.watching:
            exchange.close(None)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan and websocket scopes pass through; lifespan also starts telemetry."""
        if scope["type"] == "lifespan":
            _start_telemetry(self.guard, asyncio.get_running_loop())
            send = self._closing_dependencies(send)
        await self.app(scope, receive, send)

    def _observe(
        self,
        exchange: Exchange,
        scope: Scope,
        resolved: ResolvedRoute,
        budget: float | None,
        source: str,
    ) -> RouteMetrics | None:
        """Start the request's metrics and, when sampled, annotate its server span."""
        guard = self.guard
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
        if recorder is None:
            return None
        metrics = recorder.route(resolved.template, scope["method"])
        metrics.begin()
        return metrics

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

    def _resolve(self, scope: Scope) -> ResolvedRoute:
        """Resolution for a new app, a changed route list, or routes that cannot be compiled."""
        app = scope.get("app")
        if app is not self._uncompilable:
            # Compiled once per app (and again if its route list grows); apps whose
            # routes cannot be compiled use Starlette's own matching.
            matcher = RouteMatcher.for_routes(getattr(app, "routes", None), self._matcher, app)
            if matcher is not None:
                self._matcher = matcher
                return matcher.resolve(scope, self.guard.routes)
            self._uncompilable = app
        return self.guard.routes.lookup(scope["method"], route_template(scope))


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
