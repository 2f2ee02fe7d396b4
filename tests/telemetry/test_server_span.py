"""The lean server span's own rules: what unsampled requests skip, where the span ends, options."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import (
    OpenTelemetryMiddleware,
    collect_request_attributes,
    set_status_code,
)
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import Tailguard
from tailguard.telemetry.server_span import ServerSpans, request_attributes

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Seen:
    def __init__(self) -> None:
        self.context: trace.SpanContext | None = None
        self.finished_before_background: list[str] | None = None
        self.release = asyncio.Event()


def make_app(seen: Seen, exporter: InMemorySpanExporter | None = None) -> Starlette:
    async def item(request: Request) -> Response:
        seen.context = trace.get_current_span().get_span_context()
        return PlainTextResponse(request.path_params["item_id"])

    async def later() -> None:
        if exporter is not None:
            seen.finished_before_background = [s.name for s in exporter.get_finished_spans()]
        seen.release.set()

    async def background(request: Request) -> Response:
        return PlainTextResponse("now", background=BackgroundTask(later))

    return Starlette(routes=[Route("/items/{item_id}", item), Route("/background", background)])


def provider_for(exporter: InMemorySpanExporter, sampler: Sampler | None = None) -> TracerProvider:
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def servers(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is not SpanKind.INTERNAL]


@pytest.mark.parametrize(
    "sampler", [ALWAYS_OFF, ParentBased(ALWAYS_ON)], ids=["always-off", "unsampled-parent"]
)
async def test_an_unsampled_request_builds_no_attributes_and_keeps_the_trace(
    sampler: Sampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    seen = Seen()
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(seen), tracer_provider=provider_for(exporter, sampler))
    spans = guard.runtime.server_spans
    assert spans is not None
    built: list[object] = []
    real = spans.attributes_for

    def counting(*args: Any) -> dict[str, Any]:
        built.append(args)
        return real(*args)

    monkeypatch.setattr(spans, "attributes_for", counting)
    async with client(app) as http:
        parent = f"00-{TRACE_ID}-b7ad6b7169203331-00"  # the caller did not sample it
        assert (await http.get("/items/1", headers={"traceparent": parent})).text == "1"
    assert built == []
    assert exporter.get_finished_spans() == ()
    # The trace goes on, unsampled: outbound calls carry the caller's trace id.
    assert seen.context is not None
    assert f"{seen.context.trace_id:032x}" == TRACE_ID
    assert not seen.context.trace_flags.sampled


class Peeking(Sampler):
    """A sampler that reads the attributes it is given, as custom samplers may."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        self.seen.append(dict(attributes or {}))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "Peeking"


async def test_a_sampler_that_may_read_attributes_gets_them_at_start() -> None:
    exporter = InMemorySpanExporter()
    sampler = Peeking()
    app = Tailguard(registry=CollectorRegistry()).install(
        make_app(Seen()), tracer_provider=provider_for(exporter, sampler)
    )
    async with client(app) as http:
        assert (await http.get("/items/1")).status_code == 200
    assert sampler.seen[0]["http.target"] == "/items/1"  # as OTel's middleware passes them
    (server,) = servers(exporter)
    assert (server.attributes or {})["http.target"] == "/items/1"


@pytest.mark.parametrize(
    ("sampler", "lazy"),
    [
        (ALWAYS_ON, True),
        (TraceIdRatioBased(0.1), True),
        (ParentBased(TraceIdRatioBased(0.01)), True),
        (ParentBased(ALWAYS_ON, remote_parent_sampled=Peeking()), False),
        (Peeking(), False),
    ],
)
def test_only_the_sdks_own_samplers_are_trusted_not_to_read_attributes(
    sampler: Sampler, lazy: bool
) -> None:
    assert ServerSpans(TracerProvider(sampler=sampler)).lazy is lazy


def test_a_global_provider_not_set_yet_gets_attributes_up_front() -> None:
    assert ServerSpans().lazy is (trace.get_tracer_provider().__class__ is TracerProvider)


async def test_suppressed_instrumentation_makes_no_span() -> None:
    exporter = InMemorySpanExporter()
    app = Tailguard(registry=CollectorRegistry()).install(
        make_app(Seen()), tracer_provider=provider_for(exporter)
    )
    async with client(app) as http:
        with suppress_http_instrumentation():
            assert (await http.get("/items/1")).status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_under_a_current_span_the_request_span_is_internal_like_otels() -> None:
    exporters = {"otel": InMemorySpanExporter(), "tailguard": InMemorySpanExporter()}
    kinds = {}
    for name, exporter in exporters.items():
        provider = provider_for(exporter)
        app = Tailguard(registry=CollectorRegistry()).install(
            make_app(Seen()),
            tracer_provider=provider,
            server_spans=name,  # type: ignore[arg-type]
        )
        with provider.get_tracer("test").start_as_current_span("outer") as outer:
            async with client(app) as http:
                response = await http.get("/items/1", headers={"x-custom-a": "1"})
                assert response.status_code == 200
        (inner,) = [s for s in exporter.get_finished_spans() if s.name != "outer"]
        assert inner.parent is not None
        assert inner.parent.span_id == outer.get_span_context().span_id
        kinds[name] = (inner.name, inner.kind, dict(inner.attributes or {}))
    assert kinds["tailguard"] == kinds["otel"]
    assert kinds["otel"][1] is SpanKind.INTERNAL


async def test_the_span_ends_with_the_response_not_with_background_work() -> None:
    exporter = InMemorySpanExporter()
    seen = Seen()
    app = Tailguard(registry=CollectorRegistry()).install(
        make_app(seen, exporter), tracer_provider=provider_for(exporter)
    )
    async with client(app) as http:
        assert (await http.get("/background")).text == "now"
    await seen.release.wait()
    assert seen.finished_before_background == ["GET /background"]


async def test_an_app_instrumented_before_install_keeps_its_one_server_span() -> None:
    exporter = InMemorySpanExporter()
    app = make_app(Seen())
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider_for(exporter))
    guard = Tailguard(registry=CollectorRegistry())
    guard.install(app, tracer_provider=provider_for(exporter))
    assert guard.runtime.server_spans is None
    async with client(app) as http:
        assert (await http.get("/items/1")).status_code == 200
    (server,) = servers(exporter)
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"


def test_tracing_off_makes_no_server_spans() -> None:
    guard = Tailguard(registry=CollectorRegistry())
    guard.install(make_app(Seen()), tracing=False)
    assert guard.runtime.server_spans is None
    wrapped = Tailguard(registry=CollectorRegistry())
    wrapped.install(make_app(Seen()), instrument=False)
    assert wrapped.runtime.server_spans is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"server_spans": "both"}, "server_spans"),
        ({"exclude_spans": ()}, "exclude_spans"),
        ({"exclude_spans": ["send"]}, "exclude_spans"),
    ],
)
def test_bad_tracing_options_are_refused_before_anything_changes(
    options: dict[str, Any], field: str
) -> None:
    app = make_app(Seen())
    guard = Tailguard(registry=CollectorRegistry())
    with pytest.raises(ValueError, match=field):
        guard.install(app, **options)
    assert app.user_middleware == []
    assert guard.runtime.server_spans is None


def test_otels_per_message_spans_are_still_available_on_its_path() -> None:
    app = make_app(Seen())
    Tailguard(registry=CollectorRegistry()).install(app, server_spans="otel", exclude_spans=())
    assert app.user_middleware[0].cls is OpenTelemetryMiddleware
    assert app.user_middleware[0].kwargs["exclude_spans"] is None


def test_an_excluded_url_from_the_environment_reaches_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/ping")
    app = make_app(Seen())
    # No endpoints to exclude (metrics_path=None): the variable is still passed on.
    Tailguard(registry=CollectorRegistry()).install(app, server_spans="otel", metrics_path=None)
    assert "/ping" in app.user_middleware[0].kwargs["excluded_urls"]
    spans = ServerSpans()
    assert spans.excluded is not None
    assert spans.excluded.url_disabled("http://h/ping")


@pytest.mark.parametrize("status", [204, 404, 503, "abc", 0])
async def test_status_rules_are_the_asgi_middlewares(status: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = provider_for(exporter)
    spans = ServerSpans(provider)
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}

    async def discard(message: Any) -> None:
        return None

    request = spans.start(scope, discard)
    assert request is not None
    await request.send({"type": "http.response.start", "status": status})
    request.finish()
    expected = provider.get_tracer("reference").start_span(
        "GET /x", kind=SpanKind.SERVER, attributes=collect_request_attributes(scope, spans.mode)
    )
    if status:
        set_status_code(expected, status, None, spans.mode)
    expected.end()
    lean, reference = exporter.get_finished_spans()
    assert dict(lean.attributes or {}) == dict(reference.attributes or {})
    assert (lean.status.status_code, lean.status.description) == (
        reference.status.status_code,
        reference.status.description,
    )


SCOPES: list[dict[str, Any]] = [
    {"type": "http", "method": "GET", "path": "/a", "headers": []},
    {
        "type": "http",
        "method": "get",  # sanitised to GET, original kept in the new conventions
        "path": "/a b",
        "scheme": "https",
        "http_version": "2",
        "server": ["::1", "8443"],  # a string port, as some servers give
        "client": None,
        "query_string": b"x=%C3%A9&Signature=s",
        "headers": [
            (b"Host", b"user:pw@h.example"),  # capitals, credentials
            (b"host", b"second"),
            (b"User-Agent", b"AlwaysOn-probe \xff"),  # not UTF-8; a synthetic test agent
        ],
    },
    {
        "type": "http",
        "method": "PROPFIND",
        "path": "",
        "server": ("/tmp/sock", None),  # a unix socket
        "client": ("", 0),
        "query_string": b"",
        "headers": [(b"user-agent", b""), (b"x-\xc3\xa9", b"v")],
    },
]


@pytest.mark.parametrize("mode", ["default", "http", "http/dup"])
@pytest.mark.parametrize("index", range(len(SCOPES)))
def test_request_attributes_are_the_asgi_middlewares(mode: str, index: int) -> None:
    from opentelemetry.instrumentation._semconv import _StabilityMode

    stability = _StabilityMode(mode)
    scope = SCOPES[index]
    assert request_attributes(scope, stability) == collect_request_attributes(scope, stability)


def test_the_methods_kept_as_they_are_are_the_ones_otel_keeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.util.http import sanitize_method

    monkeypatch.delenv("OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS", raising=False)
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"):
        assert sanitize_method(method) == method
    assert request_attributes({"method": "QUERY", "path": "/q"})["http.method"] == sanitize_method(
        "QUERY"
    )


@pytest.mark.parametrize("with_parent", [True, False], ids=["parent", "root"])
@pytest.mark.parametrize(
    "sampler",
    [ParentBased(TraceIdRatioBased(1.0)), ALWAYS_ON, Peeking()],
    ids=["ratio", "always-on", "peeking"],
)
async def test_every_way_of_starting_gives_the_asgi_middlewares_span(
    sampler: Sampler, with_parent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-custom")
    found = {}
    for name in ("otel", "tailguard"):
        exporter = InMemorySpanExporter()
        app = Tailguard(registry=CollectorRegistry()).install(
            make_app(Seen()),
            tracer_provider=provider_for(exporter, sampler),
            server_spans=name,  # type: ignore[arg-type]
        )
        async with client(app) as http:
            response = await http.get(
                "/items/1",
                headers={"x-custom": "yes"}
                | ({"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"} if with_parent else {}),
            )
            assert response.status_code == 200
        (server,) = servers(exporter)
        found[name] = (server.name, server.kind, dict(server.attributes or {}))
    assert found["tailguard"] == found["otel"]
    assert found["otel"][2]["http.request.header.x_custom"] == ("yes",)


class OwnTraceContext(TraceContextTextMapPropagator):
    """A propagator tailguard does not know: it must always be asked."""


async def test_an_unknown_propagator_is_always_asked() -> None:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([OwnTraceContext()]))
    try:
        exporter = InMemorySpanExporter()
        seen = Seen()
        app = Tailguard(registry=CollectorRegistry()).install(
            make_app(seen), tracer_provider=provider_for(exporter)
        )
        async with client(app) as http:
            parent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
            assert (await http.get("/items/1", headers={"traceparent": parent})).text == "1"
    finally:
        propagate.set_global_textmap(before)
    (server,) = servers(exporter)
    assert f"{server.context.trace_id:032x}" == TRACE_ID


async def test_a_traced_endpoint_can_be_excluded_or_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/metrics")
    exporter = InMemorySpanExporter()
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(
        make_app(Seen()), tracer_provider=provider_for(exporter), trace_endpoints=True
    )
    async with client(app) as http:
        assert (await http.get("/metrics")).status_code == 200
    assert exporter.get_finished_spans() == ()  # excluded by the environment

    spans = guard.runtime.server_spans
    assert spans is not None

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("endpoint broke")

    guard.runtime.serve((("/broken", broken),))
    with pytest.raises(RuntimeError, match="endpoint broke"):
        async with client(app) as http:
            await http.get("/broken")
    (server,) = servers(exporter)
    assert server.status.description == "RuntimeError: endpoint broke"


@pytest.mark.parametrize("name", [b"TraceParent", b"traceparent"])
async def test_a_trace_header_is_found_whatever_its_case(name: bytes) -> None:
    exporter = InMemorySpanExporter()
    spans = ServerSpans(provider_for(exporter))
    parent = f"00-{TRACE_ID}-b7ad6b7169203331-01".encode()
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items/1",
        "headers": [(b"host", b"t"), (b"x-traceparent-copy", b"junk"), (name, parent)],
    }

    async def send(message: Any) -> None: ...

    request = spans.start(scope, send)
    assert request is not None
    request.finish()
    (server,) = servers(exporter)
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert server.parent.is_remote


class StartNames(SimpleSpanProcessor):
    """Records each span's name as span processors see it when it starts."""

    def __init__(self) -> None:
        super().__init__(InMemorySpanExporter())
        self.names: list[str] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.names.append(span.name)


@pytest.mark.parametrize(
    ("sampler", "started_as"),
    [
        (ALWAYS_ON, "GET /items/{item_id}"),
        (ParentBased(TraceIdRatioBased(1.0)), "GET /items/{item_id}"),
        (Peeking(), "GET /items/1"),
    ],
    ids=["always-on", "ratio", "attribute-reading"],
)
async def test_the_span_starts_with_its_route_unless_the_sampler_reads_the_start(
    sampler: Sampler, started_as: str
) -> None:
    # The exported span is the same either way (the differential test); a sampler that may
    # read the name and attributes sees what OTel's middleware gives it.
    processor = StartNames()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(processor)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Tailguard(registry=CollectorRegistry()).install(
        make_app(Seen()), tracer_provider=provider
    )
    async with client(app) as http:
        assert (await http.get("/items/1")).status_code == 200
    assert processor.names == [started_as]
    (server,) = servers(exporter)
    assert server.name == "GET /items/{item_id}"
    assert (server.attributes or {})["http.route"] == "/items/{item_id}"
