"""What install() exposes: metrics on a port of their own, endpoints left out of tracing."""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.server import serve_in_thread
from tailguard.telemetry.exposition import MetricsServer, metrics_app

TOKEN = "a-long-enough-control-token"


async def item(request: Request) -> Response:
    return PlainTextResponse("item")


def make_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item)])


def requests_total(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tailguard_requests_total"
    )


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.e2e
def test_metrics_port_serves_them_apart_and_stops_with_the_lifespan() -> None:
    guard = Tailguard(default=RoutePolicy(deadline=1.0), registry=CollectorRegistry())
    app = guard.install(make_app(), metrics_path=None, metrics_port=0, tracing=False)
    server = guard.runtime.metrics_server
    assert server is not None
    with serve_in_thread(app) as url:
        port = server.port
        assert port is not None
        with httpx.Client(base_url=url) as http:
            assert http.get("/items/1").status_code == 200
            assert http.get("/metrics").status_code == 404  # not on the app's port
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as scraper:
            scrape = scraper.get("/metrics")
            again = scraper.get("/metrics")  # the same keep-alive connection
            head = scraper.head("/metrics")
            post = scraper.post("/metrics", content=b"")
        assert scrape.status_code == 200
        # /items/1 and the 404 on the app's port; scrapes on the metrics port are not requests
        assert requests_total(scrape.text) == 2.0
        assert again.status_code == 200
        assert head.status_code == 200
        assert head.content == b""
        assert post.status_code == 405
    assert not server.serving
    assert refused(port)


@pytest.mark.e2e
def test_a_metrics_port_in_use_fails_startup_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        guard = Tailguard(registry=CollectorRegistry())
        app = guard.install(make_app(), metrics_port=port, tracing=False)
        with pytest.raises(RuntimeError, match="did not start"), serve_in_thread(app):
            pass  # pragma: no cover


@pytest.mark.anyio
async def test_without_lifespan_the_first_request_starts_the_metrics_server() -> None:
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(), metrics_port=0, tracing=False)
    server = guard.runtime.metrics_server
    assert server is not None
    assert not server.serving
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        await http.get("/items/1")
    try:
        assert server.serving
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as scraper:
            assert requests_total((await scraper.get("/")).text) == 1.0
    finally:
        await server.stop()
    await server.stop()  # idempotent


@pytest.mark.anyio
async def test_the_metrics_server_refuses_what_it_does_not_serve() -> None:
    server = MetricsServer(metrics_app(CollectorRegistry()), port=0)
    await server.start()
    await server.start()  # idempotent
    try:
        for request in (
            b"NONSENSE\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"GET /metrics HTTP/1.0\r\n\r\n",
        ):
            reader, writer = await _open(server)
            writer.write(request)
            status = (await reader.readline()).split()[1]
            rest = await reader.read()  # the server closes: no keep-alive for these
            writer.close()
            assert status == (b"200" if b"1.0" in request else b"400"), rest
    finally:
        await server.stop()


async def _open(server: MetricsServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


@pytest.mark.parametrize(
    ("host", "port", "field"),
    [("", 9464, "metrics_host"), ("127.0.0.1", -1, "metrics_port"), ("h", True, "metrics_port")],
)
def test_bad_metrics_address_is_refused(host: str, port: int, field: str) -> None:
    app = make_app()
    with pytest.raises(ValueError, match=field):
        Tailguard(registry=CollectorRegistry()).install(app, metrics_port=port, metrics_host=host)
    assert app.user_middleware == []


@pytest.mark.anyio
@pytest.mark.parametrize("trace_endpoints", [False, True])
@pytest.mark.parametrize("server_spans", ["tailguard", "otel"])
async def test_scrapes_and_control_requests_are_not_traced_by_default(
    trace_endpoints: bool, server_spans: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(
        make_app(),
        tracer_provider=provider,
        control_token=TOKEN,
        trace_endpoints=trace_endpoints,
        server_spans=server_spans,  # type: ignore[arg-type]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/metrics")).status_code == 200
        status = await http.get("/_tailguard/status", headers={"authorization": f"Bearer {TOKEN}"})
        assert status.status_code == 200
        assert (await http.get("/items/1")).status_code == 200
        assert (await http.get("/metricsx")).status_code == 404  # not an endpoint: traced
    names = sorted(s.name for s in exporter.get_finished_spans() if s.kind.name == "SERVER")
    if trace_endpoints:
        assert names == ["GET", "GET /_tailguard/status", "GET /items/{item_id}", "GET /metrics"]
    else:
        assert names == ["GET", "GET /items/{item_id}"]


@pytest.mark.anyio
async def test_without_lifespan_a_port_in_use_is_logged_and_the_app_still_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        guard = Tailguard(registry=CollectorRegistry())
        app = guard.install(make_app(), metrics_port=taken.getsockname()[1], tracing=False)
        transport = httpx.ASGITransport(app=app)
        with caplog.at_level(logging.ERROR, logger="tailguard.middleware"):
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                assert (await http.get("/items/1")).status_code == 200
    assert "cannot serve metrics on 127.0.0.1" in caplog.text
    assert guard.runtime.metrics_server is not None
    assert not guard.runtime.metrics_server.serving


@pytest.mark.anyio
async def test_the_lifespan_starts_and_stops_the_metrics_server() -> None:
    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(make_app(), metrics_port=0, tracing=False)
    server = guard.runtime.metrics_server
    assert server is not None
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    seen: list[tuple[str, bool]] = []

    async def receive() -> dict[str, str]:
        return incoming.pop(0)

    async def send(message: dict[str, str]) -> None:
        seen.append((message["type"], server.serving))

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert seen == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", False)]


def test_trace_endpoints_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="trace_endpoints"):
        Tailguard(registry=CollectorRegistry()).install(make_app(), trace_endpoints=1)  # type: ignore[arg-type]
