"""OpenTelemetry: the ASGI middleware outermost, tailguard's annotations and child spans."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard import Tailguard, TailguardMiddleware
from tailguard.telemetry import otel, tracing

pytestmark = pytest.mark.anyio

Annotate = Callable[[trace.Span, Scope], Awaitable[None]]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()
    tracing.use_tracer_provider(None)


def provider_for(exporter: InMemorySpanExporter, **options: object) -> TracerProvider:
    provider = TracerProvider(**options)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


def template(scope: Scope) -> str | None:
    for route in scope["app"].routes:
        if route.matches(scope)[0] is Match.FULL:
            path: str = route.path
            return path
    return None


class Annotating:
    """Stands in for tailguard's middleware: finds the server span, calls the helpers."""

    def __init__(self, app: ASGIApp, seen: list[trace.Span | None], annotate: Annotate) -> None:
        self.app = app
        self.seen = seen
        self.annotate = annotate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            span = otel.recording_span()
            self.seen.append(span)
            if span is not None:
                await self.annotate(span, scope)
        await self.app(scope, receive, send)


async def just_the_route(span: trace.Span, scope: Scope) -> None:
    otel.annotate_request(span, scope["method"], scope["path"], template(scope), 0.25, "route")


def make_app(
    seen: list[trace.Span | None], annotate: Annotate = just_the_route, *routes: Route
) -> Starlette:
    app = Starlette(routes=[Route("/items/{item_id}", item), *routes])
    app.add_middleware(Annotating, seen=seen, annotate=annotate)  # where tailguard's goes
    return app


async def get(app: Starlette, path: str = "/items/7") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.get(path)


def spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


# -- instrument() ---------------------------------------------------------------------------


async def test_the_server_span_is_current_inside_middleware_added_before(
    exporter: InMemorySpanExporter,
) -> None:
    seen: list[trace.Span | None] = []
    app = make_app(seen)
    assert otel.instrument(app, provider_for(exporter)) is True
    assert app.user_middleware[0].cls is OpenTelemetryMiddleware
    assert otel.is_instrumented(app)
    assert (await get(app)).status_code == 200
    (server,) = exporter.get_finished_spans()  # no per-message receive/send spans
    assert server.kind is SpanKind.SERVER
    # The very span, current inside the inner middleware.
    assert [span.get_span_context().span_id for span in seen if span] == [server.context.span_id]
    assert server.name == "GET /items/{item_id}"  # renamed from "GET /items/7"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/items/{item_id}"
    assert "tailguard.deadline.budget_ms" not in server.attributes  # the route's own budget
    assert "tailguard.deadline.source" not in server.attributes  # only a header's is news


async def test_per_message_spans_can_be_kept(exporter: InMemorySpanExporter) -> None:
    app = make_app([])
    otel.instrument(app, provider_for(exporter), exclude_spans=None)
    await get(app)
    names = sorted(spans(exporter))
    assert "GET /items/{item_id}" in names
    assert any(name.endswith("http send") for name in names)


async def test_tailguards_own_spans_use_the_given_provider(exporter: InMemorySpanExporter) -> None:
    otel.instrument(make_app([]), provider_for(exporter))
    with tracing.tracer().start_as_current_span("mine"):
        pass
    assert list(spans(exporter)) == ["mine"]


async def test_an_instrumented_app_keeps_its_instrumentation(
    exporter: InMemorySpanExporter,
) -> None:
    provider = provider_for(exporter)
    app = make_app([])
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    before = list(app.user_middleware)
    assert otel.instrument(app, provider) is False
    assert app.user_middleware == before
    marked = make_app([])
    marked._is_instrumented_by_opentelemetry = True  # type: ignore[attr-defined]
    assert otel.instrument(marked, provider) is False
    assert [m.cls for m in marked.user_middleware] == [Annotating]
    with tracing.tracer().start_as_current_span("still ours"):  # the provider is set anyway
        pass
    assert "still ours" in spans(exporter)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"exclude_spans": "receive"}, TypeError, "exclude_spans"),
        ({"exclude_spans": ["receive", "body"]}, ValueError, "exclude_spans.*'body'"),
        ({"excluded_url": "health"}, TypeError, "OpenTelemetryMiddleware option"),
    ],
)
def test_bad_options_are_refused_and_change_nothing(
    exporter: InMemorySpanExporter,
    arguments: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    app = make_app([])
    before = list(app.user_middleware)
    provider = provider_for(exporter)
    with pytest.raises(error, match=message):
        otel.instrument(app, provider, **arguments)
    assert app.user_middleware == before
    assert not otel.is_instrumented(app)
    with tracing.tracer().start_as_current_span("global"):
        pass
    assert exporter.get_finished_spans() == ()  # tailguard's provider was not switched


def test_only_starlette_apps_can_be_instrumented() -> None:
    with pytest.raises(TypeError, match="Starlette or FastAPI"):
        otel.instrument(object())


async def test_options_reach_the_middleware_and_custom_span_names_are_kept(
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app([])
    otel.instrument(
        app, provider_for(exporter), default_span_details=lambda scope: ("custom", {"x": 1})
    )
    await get(app)
    (server,) = exporter.get_finished_spans()
    assert server.name == "custom"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/items/{item_id}"


async def test_an_unsampled_request_is_not_annotated(exporter: InMemorySpanExporter) -> None:
    seen: list[trace.Span | None] = []
    app = make_app(seen)
    otel.instrument(app, provider_for(exporter, sampler=ALWAYS_OFF))
    await get(app)
    assert seen == [None]
    assert exporter.get_finished_spans() == ()


async def test_tailguards_middleware_runs_inside_the_server_span(
    exporter: InMemorySpanExporter,
) -> None:
    current: list[trace.Span] = []

    async def handler(request: Request) -> Response:
        current.append(trace.get_current_span())
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/h", handler)])
    app.add_middleware(TailguardMiddleware, guard=Tailguard(registry=CollectorRegistry()))
    otel.instrument(app, provider_for(exporter))
    assert [m.cls for m in app.user_middleware] == [OpenTelemetryMiddleware, TailguardMiddleware]
    assert (await get(app, "/h")).status_code == 200
    (server,) = exporter.get_finished_spans()
    assert [span.get_span_context().span_id for span in current] == [server.context.span_id]


# -- annotations ------------------------------------------------------------------------------


async def test_admission_queue_wait_and_budget_are_recorded(exporter: InMemorySpanExporter) -> None:
    waits: list[tuple[float, float]] = []

    async def queued(span: trace.Span, scope: Scope) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.001)
        ended = time.monotonic()
        waits.append((started, ended))
        otel.record_queue_wait(span, "orders", started, ended)
        otel.record_budget(
            span, handler=0.004, queue=ended - started, dependencies={"db": 0.002, "cache": 0.0}
        )

    app = make_app([], queued)
    otel.instrument(app, provider_for(exporter))
    await get(app)
    found = spans(exporter)
    server, wait = found["GET /items/7"], found["tailguard.queue_wait orders"]
    (started, ended) = waits[0]
    assert wait.parent is not None
    assert wait.parent.span_id == server.context.span_id
    assert wait.start_time is not None
    assert wait.end_time is not None
    assert wait.end_time - wait.start_time == int(ended * 1e9) - int(started * 1e9)
    assert server.start_time is not None
    assert server.start_time <= wait.start_time
    assert dict(wait.attributes or {}) == {
        "tailguard.limiter": "orders",
        "tailguard.queue.outcome": "granted",
        "tailguard.queue.wait_ms": (ended - started) * 1000.0,
    }
    attributes = dict(server.attributes or {})
    assert attributes["tailguard.admission"] == "queued"
    assert attributes["tailguard.queue.wait_ms"] == (ended - started) * 1000.0
    assert attributes["tailguard.budget.queue_ms"] == (ended - started) * 1000.0
    assert attributes["tailguard.budget.handler_ms"] == 4.0
    assert attributes["tailguard.budget.dependency.db_ms"] == 2.0
    assert attributes["tailguard.budget.dependency.cache_ms"] == 0.0


async def test_shedding_and_deadline_expiry_are_events(exporter: InMemorySpanExporter) -> None:
    async def shed(span: trace.Span, scope: Scope) -> None:
        started = time.monotonic()
        otel.record_queue_wait(span, "orders", started, started + 0.002, outcome="queue_timeout")
        otel.record_shed(span, "queue_timeout", "orders", retry_after=1.0)
        otel.record_shed(span, "queue_full", "orders")
        otel.record_deadline_exceeded(span, "before_response", 0.25)
        otel.record_deadline_exceeded(span, "during_response")

    app = make_app([], shed)
    otel.instrument(app, provider_for(exporter))
    await get(app)
    found = spans(exporter)
    server = found["GET /items/7"]
    assert found["tailguard.queue_wait orders"].attributes is not None
    assert found["tailguard.queue_wait orders"].attributes["tailguard.queue.outcome"] == (
        "queue_timeout"
    )
    assert [(event.name, dict(event.attributes or {})) for event in server.events] == [
        (
            "tailguard.shed",
            {
                "tailguard.reason": "queue_timeout",
                "tailguard.limiter": "orders",
                "tailguard.retry_after_s": 1.0,
            },
        ),
        ("tailguard.shed", {"tailguard.reason": "queue_full", "tailguard.limiter": "orders"}),
        (
            "tailguard.deadline_exceeded",
            {"tailguard.stage": "before_response", "tailguard.deadline.budget_ms": 250.0},
        ),
        ("tailguard.deadline_exceeded", {"tailguard.stage": "during_response"}),
    ]
    attributes = dict(server.attributes or {})
    assert attributes["tailguard.admission"] == "shed"
    assert attributes["tailguard.admission.reason"] == "queue_full"


async def test_requests_without_a_template_or_budget_get_neither(
    exporter: InMemorySpanExporter,
) -> None:
    async def bare(span: trace.Span, scope: Scope) -> None:
        otel.annotate_request(span, scope["method"], scope["path"], None, None, "route")

    app = make_app([], bare)
    otel.instrument(app, provider_for(exporter))
    await get(app, "/nowhere")
    (server,) = exporter.get_finished_spans()
    assert server.name == "GET"  # never the raw path of a 404
    assert not [
        key for key in server.attributes or {} if key.startswith(("tailguard.", "http.route"))
    ]


# -- dependency spans ----------------------------------------------------------------------------


async def test_dependency_calls_are_child_spans_with_outcome_and_slot_wait(
    exporter: InMemorySpanExporter,
) -> None:
    async def calls(span: trace.Span, scope: Scope) -> None:
        ok = otel.start_dependency_span("inventory")
        otel.end_dependency_span(ok, "ok", slot_wait=0.003, attributes={"tailguard.chaos": "x"})
        failed = otel.start_dependency_span("payments")
        otel.end_dependency_span(failed, "error", error=ConnectionResetError("reset"))
        cancelled = otel.start_dependency_span("search")
        otel.end_dependency_span(cancelled, "cancelled", error=asyncio.CancelledError())

    app = make_app([], calls)
    otel.instrument(app, provider_for(exporter))
    await get(app)
    found = spans(exporter)
    server = found["GET /items/7"]
    ok = found["tailguard.dependency inventory"]
    failed = found["tailguard.dependency payments"]
    cancelled = found["tailguard.dependency search"]
    for child in (ok, failed, cancelled):
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
    assert dict(ok.attributes or {}) == {
        "tailguard.dependency.name": "inventory",
        "tailguard.dependency.outcome": "ok",
        "tailguard.dependency.slot_wait_ms": 3.0,
        "tailguard.chaos": "x",
    }
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ConnectionResetError: reset"
    assert [event.name for event in failed.events] == ["exception"]
    assert cancelled.status.status_code is StatusCode.UNSET
    assert cancelled.events == ()


def test_no_dependency_span_outside_a_sampled_request(exporter: InMemorySpanExporter) -> None:
    tracing.use_tracer_provider(provider_for(exporter))
    assert otel.start_dependency_span("inventory") is None
    otel.end_dependency_span(None, "ok")
    unsampled = provider_for(exporter, sampler=ALWAYS_OFF)
    with unsampled.get_tracer("t").start_as_current_span("GET /x"):
        assert otel.start_dependency_span("inventory") is None
    assert exporter.get_finished_spans() == ()


async def test_a_fastapi_app_is_instrumented_the_same_way(exporter: InMemorySpanExporter) -> None:
    from fastapi import FastAPI

    seen: list[trace.Span | None] = []
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    app.add_middleware(Annotating, seen=seen, annotate=just_the_route)
    assert otel.instrument(app, provider_for(exporter)) is True
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/orders/5")).json() == {"order": 5}
    (server,) = exporter.get_finished_spans()
    assert server.name == "GET /orders/{order_id}"
    assert [span.get_span_context().span_id for span in seen if span] == [server.context.span_id]
