"""The arms of the overhead benchmark: one Starlette app, wrapped in different middleware.

Every arm is built by a function here from a fresh copy of the same app, so the
only difference between arms is the middleware under test. ``ARMS`` maps an
arm's name to its builder; ``build(name)`` returns a ready ASGI app. Used both
in-process by ``overhead.py`` and, in a separate uvicorn process per arm, by
``_serve.py``.

Peers are configured the way their READMEs show, with the isolation a
benchmark needs when several arms live in one process: a fresh
``CollectorRegistry`` for prometheus-fastapi-instrumentator, a distinct metric
prefix for starlette-exporter (it keeps its metrics on the class and registers
them in the default registry), and a real OpenTelemetry SDK ``TracerProvider``
per OTel arm whose spans are created, ended and handed to a
``SimpleSpanProcessor`` whose exporter drops them (the cost of building spans is
measured, the cost of shipping them is not). OTel metrics use the global
default, the no-op ``MeterProvider``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ARMS", "TARGET_PATH", "build", "make_app"]

TARGET_PATH = "/items/42"
"""The request every arm is measured with; it matches ``/items/{item_id}``."""


async def _home(request: Request) -> Response:
    return PlainTextResponse("home")


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _user(request: Request) -> Response:
    return PlainTextResponse(f"user {request.path_params['user_id']}")


async def _item(request: Request) -> Response:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def _create_order(request: Request) -> Response:
    return PlainTextResponse("created", status_code=201)


def make_app() -> Starlette:
    """The bare app: a few routes, the measured one (``/items/{item_id}``) not first."""
    return Starlette(
        routes=[
            Route("/", _home),
            Route("/health", _health),
            Route("/users/{user_id}", _user),
            Route("/items/{item_id}", _item),
            Route("/orders", _create_order, methods=["POST"]),
        ]
    )


class Passthrough:
    """A pure-ASGI middleware that does nothing: the calibration arm (~1.5 µs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class NoOpBaseHTTP(BaseHTTPMiddleware):
    """A ``BaseHTTPMiddleware`` that does nothing: the control the harness must see as costly."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


def bare() -> ASGIApp:
    return make_app()


def tailguard_deadlines(enforce: str = "on") -> ASGIApp:
    from tailguard import RoutePolicy, Tailguard

    guard = Tailguard(
        default=RoutePolicy(deadline=1.0),
        routes={"GET /items/{item_id}": RoutePolicy(deadline=0.5)},
        metrics=False,
        enforce=enforce,
    )
    return guard.install(make_app(), metrics_path=None, tracing=False)


def tailguard_shadow() -> ASGIApp:
    """``tailguard`` in shadow mode: the same deadlines decided, kept aside, not enforced."""
    return tailguard_deadlines("shadow")


def tailguard_metrics() -> ASGIApp:
    """Metrics only: no deadlines, no limiters, no tracing; a registry of its own."""
    from prometheus_client import CollectorRegistry

    from tailguard import Tailguard

    guard = Tailguard(registry=CollectorRegistry())
    return guard.install(make_app(), tracing=False)


def _full_guard(enforce: str = "on") -> Any:
    from prometheus_client import CollectorRegistry

    from tailguard import RoutePolicy, Tailguard

    return Tailguard(
        default=RoutePolicy(deadline=1.0, max_concurrency=64, max_queue=128),
        routes={
            "GET /items/{item_id}": RoutePolicy(deadline=0.5, max_concurrency=64, max_queue=128)
        },
        registry=CollectorRegistry(),
        enforce=enforce,
    )


def tailguard_full(enforce: str = "on") -> ASGIApp:
    """Deadlines, admission, metrics and tracing: tailguard's own (lean) server span, every
    request sampled."""
    return _full_guard(enforce).install(make_app(), tracer_provider=_discarding_tracer_provider())


def tailguard_full_otel() -> ASGIApp:
    """The full stack with OTel's ASGI middleware making the server span (receive/send off)."""
    return _full_guard().install(
        make_app(), tracer_provider=_discarding_tracer_provider(), server_spans="otel"
    )


def tailguard_full_1pct() -> ASGIApp:
    """The full stack, lean server span, 1 % of requests sampled (``ParentBased`` ratio)."""
    return _full_guard().install(make_app(), tracer_provider=_discarding_tracer_provider(0.01))


def tailguard_full_untraced() -> ASGIApp:
    """The full stack with ``tracing=False``: what the tracing arms add tracing to."""
    return _full_guard().install(make_app(), tracing=False)


def tailguard_full_shadow() -> ASGIApp:
    """``tailguard-full`` in shadow mode: every request counted as shadowed, its span marked."""
    return tailguard_full("shadow")


class SpanFloor:
    """The least any middleware emitting the lean path's span through the SDK must pay.

    One SDK span per request with the 13 attributes the ``tailguard-full`` arm's
    server span carries (precomputed, set at the start), ended after the app:
    no propagation, no context, no status logic, no attribute building. A
    yardstick for what the SDK itself costs, not a usable middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry.trace import SpanKind

        self.app = app
        self.kind = SpanKind.SERVER
        self.tracer = _discarding_tracer_provider().get_tracer("floor")
        self.attributes = {
            "http.scheme": "http",
            "http.host": "127.0.0.1:8000",
            "net.host.port": 8000,
            "http.flavor": "1.1",
            "http.target": "/items/42",
            "http.url": "http://127.0.0.1:8000/items/42",
            "http.method": "GET",
            "http.server_name": "127.0.0.1:8000",
            "http.user_agent": "tailguard-overhead-bench",
            "net.peer.ip": "127.0.0.1",
            "net.peer.port": 50000,
            "http.status_code": 200,
            "http.route": "/items/{item_id}",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = self.tracer.start_span(
            "GET /items/{item_id}", kind=self.kind, attributes=self.attributes
        )
        try:
            await self.app(scope, receive, send)
        finally:
            span.end()


def span_floor() -> ASGIApp:
    app = make_app()
    app.add_middleware(SpanFloor)
    return app


def passthrough() -> ASGIApp:
    app = make_app()
    app.add_middleware(Passthrough)
    return app


def deadline_floor() -> ASGIApp:
    """The least a deadline middleware must do per request (``_floor.py``): a yardstick."""
    from _floor import DeadlineFloor

    app = make_app()
    app.add_middleware(DeadlineFloor, budgets={"/items/{item_id}": 0.5}, default=1.0)
    return app


def _discarding_tracer_provider(ratio: float | None = None) -> Any:
    """An SDK provider whose spans are built, ended and dropped; ``ratio``: sample that share
    of traces (``ParentBased(TraceIdRatioBased(ratio))``), else all."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class DiscardingExporter(SpanExporter):
        """Receives every ended span and drops it."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if ratio is None:
        provider = TracerProvider()
    else:
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(SimpleSpanProcessor(DiscardingExporter()))
    return provider


def _otel(exclude_spans: list[str] | None) -> ASGIApp:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app = make_app()
    app.add_middleware(
        OpenTelemetryMiddleware,
        tracer_provider=_discarding_tracer_provider(),
        exclude_spans=exclude_spans,
    )
    return app


def otel_asgi() -> ASGIApp:
    return _otel(None)


def otel_asgi_noreceive_send() -> ASGIApp:
    return _otel(["receive", "send"])


def prometheus_fastapi_instrumentator() -> ASGIApp:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    app = make_app()
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    return app


_exporter_ids = itertools.count()


def starlette_exporter() -> ASGIApp:
    from starlette_exporter import PrometheusMiddleware

    app = make_app()
    app.add_middleware(PrometheusMiddleware, prefix=f"bench{next(_exporter_ids)}")
    return app


def otel_asgi_and_starlette_exporter() -> ASGIApp:
    """OTel's ASGI middleware (default spans) and starlette-exporter: a common pair today."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette_exporter import PrometheusMiddleware

    app = make_app()
    app.add_middleware(PrometheusMiddleware, prefix=f"bench{next(_exporter_ids)}")
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=_discarding_tracer_provider())
    return app


def basehttp() -> ASGIApp:
    app = make_app()
    app.add_middleware(NoOpBaseHTTP)
    return app


ARMS: dict[str, Callable[[], ASGIApp]] = {
    "bare": bare,
    "tailguard": tailguard_deadlines,
    "tailguard-shadow": tailguard_shadow,
    "tailguard-metrics": tailguard_metrics,
    "tailguard-full": tailguard_full,
    "tailguard-full-shadow": tailguard_full_shadow,
    "tailguard-full-otel": tailguard_full_otel,
    "tailguard-full-1pct": tailguard_full_1pct,
    "tailguard-full-untraced": tailguard_full_untraced,
    "passthrough": passthrough,
    "deadline-floor": deadline_floor,
    "sdk-span-floor": span_floor,
    "otel-asgi": otel_asgi,
    "otel-asgi-noreceive-send": otel_asgi_noreceive_send,
    "prometheus-fastapi-instrumentator": prometheus_fastapi_instrumentator,
    "starlette-exporter": starlette_exporter,
    "otel-asgi+starlette-exporter": otel_asgi_and_starlette_exporter,
    "basehttp": basehttp,
}
"""Arm name to builder, in report order; ``bare`` is the baseline."""


def build(name: str) -> ASGIApp:
    """A fresh app for the arm called ``name``."""
    try:
        builder = ARMS[name]
    except KeyError:
        raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}") from None
    return builder()
