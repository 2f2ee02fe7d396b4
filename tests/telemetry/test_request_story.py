"""One request's story through guard.install: queued, shed, calling dependencies, under chaos."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

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

from tailguard import RoutePolicy, Tailguard, chaos
from tailguard.telemetry import tracing

pytestmark = pytest.mark.anyio

SECRET = "story-secret-0123456789"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.use_tracer_provider(None)


@pytest.fixture(params=["tailguard", "otel"])
def server_spans(request: pytest.FixtureRequest) -> str:
    """Both ways of making the server span: tailguard's own (lean) and OTel's middleware."""
    return str(request.param)


class Story:
    def __init__(self, exporter: InMemorySpanExporter, server_spans: str) -> None:
        self.gate = asyncio.Event()
        self.inside = asyncio.Event()
        self.registry = CollectorRegistry()
        self.engine = chaos.Chaos(enabled=True, seed=3)
        self.guard = Tailguard(
            default=RoutePolicy(deadline=30.0),
            routes={"/held": RoutePolicy(max_concurrency=1, max_queue=1)},
            registry=self.registry,
            chaos=self.engine,
        )
        self.db = self.guard.dependency("db", max_concurrency=2)
        app = Starlette(routes=[Route("/held", self.held), Route("/orders", self.orders)])
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.app = self.guard.install(app, tracer_provider=provider, server_spans=server_spans)  # type: ignore[arg-type]
        self.exporter = exporter

    async def held(self, request: Request) -> Response:
        self.inside.set()
        await self.gate.wait()
        return PlainTextResponse("held")

    async def orders(self, request: Request) -> Response:
        async with self.db:
            await asyncio.sleep(0)
        rows = await self.db.call(asyncio.sleep, 0, "rows")
        return PlainTextResponse(rows)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def servers(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind.name == "SERVER"]


async def test_a_queued_request_gets_a_queue_wait_span_and_the_next_is_shed(
    exporter: InMemorySpanExporter,
    server_spans: str,
) -> None:
    story = Story(exporter, server_spans)
    limiter = story.guard.limiters["/held"]
    async with story.client() as http:
        first = asyncio.create_task(http.get("/held"))
        await story.inside.wait()
        second = asyncio.create_task(http.get("/held"))
        while limiter.queued == 0:
            await asyncio.sleep(0.001)
        third = await http.get("/held")  # the queue (1) is full
        story.gate.set()
        assert [(await first).status_code, (await second).status_code] == [200, 200]
    assert third.status_code == 503
    waits = [s for s in exporter.get_finished_spans() if s.name == "tailguard.queue_wait /held"]
    # The second request waited and got in; the third found the queue full.
    outcomes = sorted(str((w.attributes or {})["tailguard.queue.outcome"]) for w in waits)
    assert outcomes == ["granted", "queue_full"]
    shed = [s for s in story.servers() if (s.attributes or {}).get("tailguard.admission") == "shed"]
    (shed_span,) = shed
    assert [e.name for e in shed_span.events] == ["tailguard.shed"]
    assert story.value("tailguard_requests_shed_total", route="/held", reason="queue_full") == 1


async def test_dependency_time_is_charged_to_the_request_and_traced(
    exporter: InMemorySpanExporter,
    server_spans: str,
) -> None:
    story = Story(exporter, server_spans)
    async with story.client() as http:
        assert (await http.get("/orders")).text == "rows"
    assert (
        story.value(
            "tailguard_dependency_calls_total", dependency="db", outcome="ok", status_class="none"
        )
        == 2
    )
    charged = story.value(
        "tailguard_budget_spent_seconds_count", route="/orders", phase="dependency", dependency="db"
    )
    assert charged == 1  # one request, its two calls summed
    (server,) = story.servers()
    assert "tailguard.budget.dependency.db_ms" in (server.attributes or {})
    calls = [s for s in exporter.get_finished_spans() if s.name == "tailguard.dependency db"]
    assert len(calls) == 2
    assert all(c.parent is not None and c.parent.span_id == server.context.span_id for c in calls)


async def test_header_scoped_chaos_needs_the_secret(
    exporter: InMemorySpanExporter, server_spans: str
) -> None:
    story = Story(exporter, server_spans)
    story.engine.start(
        chaos.Experiment(
            "orders-503",
            ttl=60,
            faults=[chaos.Respond("GET /orders", status=503)],
            header="x-chaos",
            secret=SECRET,
        )
    )
    async with story.client() as http:
        assert (await http.get("/orders")).status_code == 200
        assert (await http.get("/orders", headers={"x-chaos": "guess"})).status_code == 200
        assert (await http.get("/orders", headers={"x-chaos": SECRET})).status_code == 503
    story.engine.halt()


async def test_a_dependency_hedges_through_its_own_bulkhead(
    exporter: InMemorySpanExporter,
    server_spans: str,
) -> None:
    story = Story(exporter, server_spans)
    seen: list[int] = []

    async def fetch() -> str:
        seen.append(story.db.limiter.in_use)
        return "row"

    assert await story.db.hedge(fetch, delay=10.0) == "row"
    assert seen == [1]  # the attempt held a slot of db's bulkhead
    assert story.db.limiter.in_use == 0


async def test_dep_hedge_uses_the_dependencys_own_estimate(
    exporter: InMemorySpanExporter, server_spans: str
) -> None:
    story = Story(exporter, server_spans)
    db = story.db
    for _ in range(250):  # plain calls through two seams feed the estimate
        await db.call(asyncio.sleep, 0)
        async with db:
            pass
    assert db.latency.count == 500
    assert db.latency.quantile(0.95) is not None
    stuck = asyncio.Event()
    attempts = 0

    async def fetch() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await stuck.wait()  # the first attempt hangs: only a hedge can answer
        return f"attempt {attempts}"

    assert await db.hedge(fetch, delay="p95", max_extra=1.0) == "attempt 2"
    assert db.limiter.in_use == 0
    assert db.latency.count == 502  # the winner, and the cancelled loser as a lower bound
