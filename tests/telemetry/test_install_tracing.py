"""guard.install() end to end: the server span annotated, spawned tasks traced, orphans counted."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.telemetry import tracing

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.use_tracer_provider(None)


@pytest.fixture(params=["tailguard", "otel"])
def server_spans(request: pytest.FixtureRequest) -> str:
    """Both ways of making the server span: tailguard's own (lean) and OTel's middleware."""
    return str(request.param)


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def build(
    exporter: InMemorySpanExporter, server_spans: str, **options: object
) -> tuple[Starlette, Tailguard]:
    release = asyncio.Event()
    started = asyncio.Event()

    async def lookup() -> int:
        await asyncio.sleep(0)
        return 7

    async def item(request: Request) -> Response:
        found = await asyncio.create_task(lookup())
        return PlainTextResponse(f"{request.path_params['item_id']}:{found}")

    async def linger() -> None:
        started.set()
        await release.wait()

    async def leaky(request: Request) -> Response:
        request.app.state.orphan = asyncio.create_task(linger())
        await started.wait()
        return PlainTextResponse("leaked")

    async def wait(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("released")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(30)
        return PlainTextResponse("never")

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/leaky", leaky),
            Route("/slow", slow),
            Route("/wait", wait),
        ]
    )
    app.state.release = release
    guard = Tailguard(
        default=RoutePolicy(deadline=30.0, max_concurrency=4),
        routes={"/slow": RoutePolicy(deadline=0.05)},
        registry=CollectorRegistry(),
        **options,  # type: ignore[arg-type]
    )
    guard.install(app, tracer_provider=provider_for(exporter), server_spans=server_spans)  # type: ignore[arg-type]
    return app, guard


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def server_span(spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind.name == "SERVER"]
    return server


async def test_server_span_is_annotated_and_spawned_tasks_are_its_children(
    exporter: InMemorySpanExporter,
    server_spans: str,
) -> None:
    app, _ = build(exporter, server_spans)
    async with client(app) as http:
        assert (await http.get("/items/42")).text == "42:7"
    spans = exporter.get_finished_spans()
    server = server_span(spans)
    assert server.name == "GET /items/{item_id}"
    attributes = dict(server.attributes or {})
    assert attributes["http.route"] == "/items/{item_id}"
    assert "tailguard.deadline.budget_ms" not in attributes  # a route's budget is config, not news
    # Defaults say nothing: the budget's source (the route), an admission at once,
    # and a budget the handler had to itself are left out.
    assert not any(
        key in attributes
        for key in (
            "tailguard.deadline.source",
            "tailguard.admission",
            "tailguard.budget.handler_ms",
        )
    )
    (task,) = [s for s in spans if s.name.startswith("task ")]
    assert "lookup" in task.name
    assert task.context.trace_id == server.context.trace_id
    assert task.parent is not None
    assert task.parent.span_id == server.context.span_id


async def test_a_callers_budget_is_on_the_server_span_with_its_header(
    exporter: InMemorySpanExporter,
    server_spans: str,
) -> None:
    app, _ = build(exporter, server_spans)
    async with client(app) as http:
        response = await http.get("/items/42", headers={"x-request-timeout-ms": "20000"})
        assert response.text == "42:7"
    attributes = dict(server_span(exporter.get_finished_spans()).attributes or {})
    assert attributes["tailguard.deadline.budget_ms"] == 20_000
    assert attributes["tailguard.deadline.source"] == "x-request-timeout-ms"


async def test_deadline_expiry_is_an_event_on_the_server_span(
    exporter: InMemorySpanExporter,
    server_spans: str,
) -> None:
    app, _ = build(exporter, server_spans)
    async with client(app) as http:
        assert (await http.get("/slow")).status_code == 504
    server = server_span(exporter.get_finished_spans())
    events = {event.name: dict(event.attributes or {}) for event in server.events}
    assert events["tailguard.deadline_exceeded"]["tailguard.stage"] == "before_response"


@pytest.mark.parametrize("policy", ["leave", "cancel"])
async def test_an_orphan_is_counted_and_cancelled_by_policy(
    exporter: InMemorySpanExporter, server_spans: str, policy: str
) -> None:
    app, guard = build(exporter, server_spans, orphans=policy)
    async with client(app) as http:
        assert (await http.get("/leaky")).text == "leaked"
    orphan: asyncio.Task[None] = app.state.orphan
    registry = guard.recorder.catalog.registry if guard.recorder is not None else None
    assert registry is not None
    action = "left" if policy == "leave" else "cancelled"
    counted = registry.get_sample_value(
        "tailguard_tasks_orphaned_total", {"route": "/leaky", "action": action}
    )
    assert counted == 1
    if policy == "cancel":
        with pytest.raises(asyncio.CancelledError):
            await orphan
    else:
        assert not orphan.done()
        app.state.release.set()
        await orphan


def test_orphan_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="orphans"):
        Tailguard(orphans="drop")  # type: ignore[arg-type]


async def test_snapshot_lists_requests_in_flight(
    exporter: InMemorySpanExporter, server_spans: str
) -> None:
    app, guard = build(exporter, server_spans)
    async with client(app) as http:
        pending = asyncio.create_task(http.get("/wait"))
        while not guard.live:
            await asyncio.sleep(0.001)
        snapshot = guard.snapshot()
        app.state.release.set()
        assert (await pending).text == "released"
    assert snapshot["requests"]["/wait"]["in_flight"] == 1
    assert not guard.live
    assert set(snapshot) == {
        "taken_at",
        "requests",
        "tasks",
        "limiters",
        "dependencies",
        "pools",
        "routes",
        "enforcement",
    }
