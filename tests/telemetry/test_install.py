"""guard.install(): /metrics, OpenTelemetry outermost, and their options."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard, TailguardMiddleware
from tailguard.telemetry import tracing
from tailguard.telemetry.otel import is_instrumented

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _reset() -> object:
    yield
    tracing.use_tracer_provider(None)


async def item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


def make_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item)])


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_metrics_are_served_from_the_guards_registry() -> None:
    guard = Tailguard(default=RoutePolicy(deadline=1.0), registry=CollectorRegistry())
    app = guard.install(make_app(), tracing=False)
    async with client(app) as http:
        await http.get("/items/7")
        scrape = await http.get("/metrics")
    assert scrape.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
        if sample.name == "tailguard_requests_total"
    }
    labels = {"route": "/items/{item_id}", "method": "GET", "status_class": "2xx", "outcome": "ok"}
    # One request of the app; the scrape itself is not counted as one.
    assert samples == {("tailguard_requests_total", tuple(sorted(labels.items()))): 1.0}


async def test_metrics_path_is_configurable_or_off() -> None:
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(), metrics_path="/internal/metrics", tracing=False)
    async with client(app) as http:
        assert (await http.get("/internal/metrics")).status_code == 200
        assert (await http.get("/metrics")).status_code == 404
    off = Tailguard(registry=CollectorRegistry()).install(make_app(), metrics_path=None)
    async with client(off) as http:
        assert (await http.get("/metrics")).status_code == 404


@pytest.mark.parametrize("path", ["metrics", "/", "/metrics/", "/me trics", ""])
def test_bad_metrics_path_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="metrics_path"):
        Tailguard(registry=CollectorRegistry()).install(make_app(), metrics_path=path)


def test_install_needs_a_starlette_app() -> None:
    with pytest.raises(TypeError, match="TailguardMiddleware"):
        Tailguard().install(object())


async def test_opentelemetry_is_outermost_and_uses_the_given_provider() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(), tracer_provider=provider, server_spans="otel")
    assert app.user_middleware[0].cls is OpenTelemetryMiddleware
    async with client(app) as http:
        assert (await http.get("/items/3")).status_code == 200
    (server,) = exporter.get_finished_spans()
    assert server.kind.name == "SERVER"
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"


async def test_by_default_tailguard_makes_the_server_span_itself() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(), tracer_provider=provider)
    assert [m.cls for m in app.user_middleware] == [TailguardMiddleware]
    assert is_instrumented(app)  # a later FastAPIInstrumentor leaves it alone
    async with client(app) as http:
        assert (await http.get("/items/3")).status_code == 200
    (server,) = exporter.get_finished_spans()
    assert (server.name, server.kind.name) == ("GET /items/{item_id}", "SERVER")
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "tailguard"


def test_an_instrumented_app_is_not_instrumented_twice() -> None:
    app = make_app()
    app.add_middleware(OpenTelemetryMiddleware)
    Tailguard(registry=CollectorRegistry()).install(app)
    assert [m.cls for m in app.user_middleware].count(OpenTelemetryMiddleware) == 1
    marked = make_app()
    marked._is_instrumented_by_opentelemetry = True  # type: ignore[attr-defined]
    Tailguard(registry=CollectorRegistry()).install(marked)
    assert OpenTelemetryMiddleware not in [m.cls for m in marked.user_middleware]


async def test_tracing_off_leaves_spans_alone() -> None:
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(), tracing=False)
    assert not guard.tracing
    # The service's own OTel, outermost: its server span is current inside tailguard.
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    async with client(app) as http:
        assert (await http.get("/items/3")).status_code == 200
    (server,) = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert not any(key.startswith("tailguard.") for key in server.attributes or {})
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_an_app_wrapped_from_outside_is_annotated_without_a_second_middleware() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Tailguard(registry=CollectorRegistry())
    inner = guard.install(make_app(), instrument=False, tracer_provider=provider)
    assert OpenTelemetryMiddleware not in [m.cls for m in inner.user_middleware]
    app = OpenTelemetryMiddleware(
        inner, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        assert (await http.get("/items/3")).status_code == 200
    (server,) = exporter.get_finished_spans()
    assert (server.attributes or {})["http.route"] == "/items/{item_id}"


async def test_paths_that_only_contain_the_metrics_path_reach_the_app() -> None:
    app = Tailguard(registry=CollectorRegistry()).install(make_app(), tracing=False)
    async with client(app) as http:
        response = await http.get("/items/metrics")  # "/metrics" inside, not under it
        assert (response.status_code, response.text) == (200, "metrics")
        assert (await http.get("/metricsx")).status_code == 404
