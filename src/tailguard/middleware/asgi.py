"""The pure-ASGI middleware: per-request deadlines, cancellation and error responses."""

from __future__ import annotations

import asyncio
import logging
from asyncio import current_task
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailguard._scope import route_path
from tailguard.middleware.exchange import DISCONNECT_GRACE, Exchange
from tailguard.middleware.runtime import Runtime, RuntimeOwner
from tailguard.middleware.sweeper import Sweeper
from tailguard.policy import RoutePolicy
from tailguard.routing.matching import ResolvedRoute, RouteMatcher, route_template
from tailguard.routing.report import RouteReport, app_routes, check_routes
from tailguard.telemetry import tasks as task_registry
from tailguard.telemetry.exposition import retire_worker
from tailguard.telemetry.pools import instrument_threads

if TYPE_CHECKING:
    from tailguard.telemetry.server_span import ServerSpans

__all__ = ["RouteKeyError", "TailguardMiddleware"]

route_logger = logging.getLogger("tailguard.routing")
logger = logging.getLogger("tailguard.middleware")


class RouteKeyError(ValueError):
    """``Tailguard(strict=True)``: a route key matches no route of the app (or an endpoint
    of tailguard's hides one of the app's routes); raised at startup."""


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
        guard: RuntimeOwner | None = None,
        routes: Mapping[str, RoutePolicy] | None = None,
        default: RoutePolicy | None = None,
        **options: Any,
    ) -> None:
        if guard is None:
            # The one upward import of the package, in a function on purpose: the
            # hand-wired form builds the guard that install() would have built.
            from tailguard.guard import Tailguard

            guard = Tailguard(default=default, routes=routes, **options)
        elif routes is not None or default is not None or options:
            raise TypeError("pass either guard= or routes=/default=/options, not both")
        self.app = app
        self.guard = guard
        self.runtime = guard.runtime
        # Per app and per event loop, never per request: compiled routes and the
        # loop's sweeper.
        self._matcher: RouteMatcher | None = None
        self._uncompilable: object = None  # an app whose routes the matcher cannot compile
        self._sweeper: Sweeper | None = None
        self._checked: object = None  # the app whose routes were checked against the keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        runtime = self.runtime
        pattern = runtime.endpoint_pattern
        if pattern is not None and pattern.search(scope["path"]):  # rules out most at once
            endpoint = runtime.endpoint_for(route_path(scope))  # behind a proxy prefix too
            if endpoint is not None:
                if runtime.trace_endpoints and runtime.server_spans is not None:
                    await _traced_endpoint(runtime.server_spans, endpoint, scope, receive, send)
                else:
                    await endpoint(scope, receive, send)
                return
        matcher = self._matcher
        if matcher is not None and scope.get("app") is matcher.app:
            resolved = matcher.resolve(scope, runtime.routes)
        else:
            resolved = self._resolve(scope)
        task = current_task()
        assert task is not None
        sweeper = self._sweeper
        if sweeper is None or sweeper.loop is not task.get_loop():
            sweeper = self._sweeper = _new_sweeper(runtime, task.get_loop())
            await _start_metrics_server(runtime)
        spans = runtime.server_spans
        if spans is None:
            exchange = Exchange(task, send, receive, scope, resolved, runtime)
            await exchange.run(self.app, sweeper)
        else:
            await _traced(spans, self.app, sweeper, task, scope, receive, send, resolved, runtime)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan and websocket scopes pass through; lifespan also starts telemetry."""
        if scope["type"] == "lifespan":
            try:
                self.check_routes(scope.get("app"))
            except RouteKeyError as exc:
                await _refuse_startup(receive, send, str(exc))
                return
            _start_telemetry(self.runtime, asyncio.get_running_loop())
            send = self._lifespan_send(send)
        await self.app(scope, receive, send)

    def check_routes(self, app: object) -> RouteReport | None:
        """Check the route keys against ``app``'s routes, once per app: warn, or raise if strict.

        Run at lifespan startup, or on the first request of an app whose
        lifespan does not run. Each key that matches no route gets one
        warning on the ``tailguard.routing`` logger naming the closest route;
        with ``Tailguard(strict=True)`` they raise :class:`RouteKeyError`.
        """
        runtime = self.runtime
        if app is None or app is self._checked:
            return runtime.route_report
        routes = getattr(app, "routes", None)
        if routes is None:
            return None
        report = check_routes(
            app_routes(routes), runtime.routes, [path for path, _ in runtime.endpoints]
        )
        runtime.route_report = report
        problems = [unmatched.message() for unmatched in report.unmatched]
        problems += [
            f"tailguard answers {endpoint!r} itself, so the app's route {route!r} is never "
            "reached; move tailguard's endpoint (metrics_path=, control_path=)"
            for endpoint, route in report.shadowed
        ]
        if problems and runtime.strict:
            raise RouteKeyError("; ".join(problems))
        self._checked = app
        for problem in problems:
            route_logger.warning("tailguard: %s", problem)
        return report

    def _lifespan_send(self, send: Send) -> Send:
        """Wrap lifespan ``send``: the metrics server starts with the app and stops with it;
        dependency thread pools drain before shutdown completes."""
        runtime = self.runtime

        async def lifespan_send(message: Message) -> None:
            server = runtime.metrics_server
            if message["type"] == "lifespan.startup.complete" and server is not None:
                try:
                    await server.start()
                except OSError as exc:
                    message = {
                        "type": "lifespan.startup.failed",
                        "message": f"tailguard: cannot serve metrics on "
                        f"{server.host}:{server.requested_port} (metrics_port=): {exc}",
                    }
            elif message["type"] == "lifespan.shutdown.complete":
                if server is not None:
                    await server.stop()
                for dependency in list(runtime.dependencies.values()):
                    await dependency.aclose()
                if runtime.loop_monitor is not None:
                    runtime.loop_monitor.stop()
                    retire_worker()  # multiprocess mode: this worker's live gauges go
            await send(message)

        return lifespan_send

    def _resolve(self, scope: Scope) -> ResolvedRoute:
        """Resolution for a new app, a changed route list, or routes that cannot be compiled."""
        app = scope.get("app")
        if app is not self._checked:
            self.check_routes(app)  # the first request: for apps whose lifespan never runs
        if app is not self._uncompilable:
            # Compiled once per app (and again if its route list grows); apps whose
            # routes cannot be compiled use Starlette's own matching.
            matcher = RouteMatcher.for_routes(getattr(app, "routes", None), self._matcher, app)
            if matcher is not None:
                self._matcher = matcher
                return matcher.resolve(scope, self.runtime.routes)
            self._uncompilable = app
        return self.runtime.routes.lookup(scope["method"], route_template(scope))


async def _traced(
    spans: ServerSpans,
    app: ASGIApp,
    sweeper: Sweeper,
    task: asyncio.Task[Any],
    scope: Scope,
    receive: Receive,
    send: Send,
    resolved: ResolvedRoute,
    runtime: Runtime,
) -> None:
    """A request on the lean tracing path: inside its own server span (see server_span.py)."""
    # Enforce or shadow is decided first, so that the span starts with its mark.
    enforcement = resolved.enforcement
    enforced = enforcement.always or (enforcement.fraction > 0.0 and enforcement.enforce())
    request = spans.start(scope, send, routed=True, route=resolved.template, shadow=not enforced)
    if request is None:  # excluded URL, or instrumentation suppressed
        exchange = Exchange(task, send, receive, scope, resolved, runtime, enforced)
        await exchange.run(app, sweeper)
        return
    if request.watches_messages:
        send = request.send
    try:
        exchange = Exchange(task, send, receive, scope, resolved, runtime, enforced)
        await exchange.run(app, sweeper, request)
    except Exception as exc:
        request.fail(exc)
        raise
    finally:
        request.finish()


async def _traced_endpoint(
    spans: ServerSpans, endpoint: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """``install(trace_endpoints=True)`` on the lean path: a scrape or control call's span."""
    request = spans.start(scope, send)
    if request is None:
        await endpoint(scope, receive, send)
        return
    try:
        await endpoint(scope, receive, request.send if request.watches_messages else send)
    except Exception as exc:
        request.fail(exc)
        raise
    finally:
        request.finish()


def _new_sweeper(runtime: Runtime, loop: asyncio.AbstractEventLoop) -> Sweeper:
    # The first request on a loop: the fallback for apps whose lifespan never runs.
    _start_telemetry(runtime, loop)
    return Sweeper(loop, DISCONNECT_GRACE)


async def _start_metrics_server(runtime: Runtime) -> None:
    """The first request on a loop: start ``metrics_port``'s server if the lifespan did not."""
    server = runtime.metrics_server
    if server is not None and not server.serving:
        try:
            await server.start()
        except OSError:
            logger.exception(
                "tailguard: cannot serve metrics on %s:%s", server.host, server.requested_port
            )


async def _refuse_startup(receive: Receive, send: Send, message: str) -> None:
    """Answer the lifespan's startup with a failure (the server reports it and exits)."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": message})
            return
        if event["type"] == "lifespan.shutdown":  # pragma: no cover - startup always comes first
            await send({"type": "lifespan.shutdown.complete"})
            return


def _start_telemetry(runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
    """Task attribution, thread-pool measurement and the loop monitor; all idempotent."""
    task_registry.ensure_task_factory(loop)
    monitor = runtime.loop_monitor
    if monitor is not None:
        instrument_threads(loop, monitor.catalog)
        monitor.start(loop)
