"""Dependency spans: CLIENT spans with peer attributes for HTTP calls; deadline cuts are errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tailguard
from tailguard import DeadlineExceeded
from tailguard.dependency import Dependency
from tailguard.telemetry.tracing import use_tracer_provider

pytestmark = pytest.mark.anyio


@pytest.fixture
def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    return provider, exporter


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


async def test_an_http_call_is_a_client_span_with_peer_attributes(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    api = Dependency("api", max_concurrency=1, registry=None)
    inner = httpx.MockTransport(lambda request: httpx.Response(503))
    async with httpx.AsyncClient(transport=api.transport(inner)) as client:
        with provider.get_tracer("test").start_as_current_span("GET /orders"):
            await client.post("https://user:secret@api.example:8443/v1/charge?sig=abc&n=1")
    span = only(exporter, "tailguard.dependency api")
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["server.address"] == "api.example"
    assert attributes["server.port"] == 8443
    assert attributes["url.full"] == "https://api.example:8443/v1/charge?sig=REDACTED&n=1"
    assert attributes["http.response.status_code"] == 503
    assert attributes["error.type"] == "503"
    assert attributes["tailguard.dependency.outcome"] == "error"
    assert span.status.status_code is StatusCode.ERROR


async def test_a_default_port_is_named_and_a_2xx_is_not_an_error(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    api = Dependency("api", max_concurrency=1, registry=None)
    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    async with httpx.AsyncClient(transport=api.transport(inner)) as client:
        with provider.get_tracer("test").start_as_current_span("GET /orders"):
            await client.get("http://inventory/items?a=1")
    span = only(exporter, "tailguard.dependency api")
    attributes = dict(span.attributes or {})
    assert (attributes["server.port"], attributes["url.full"]) == (80, "http://inventory/items?a=1")
    assert span.status.status_code is StatusCode.UNSET


async def test_a_block_is_an_internal_span(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    db = Dependency("db", max_concurrency=1, registry=None)
    with provider.get_tracer("test").start_as_current_span("GET /orders"):
        async with db:
            pass
    span = only(exporter, "tailguard.dependency db")
    assert span.kind is SpanKind.INTERNAL
    assert "server.address" not in (span.attributes or {})


async def test_a_call_cut_off_by_the_deadline_is_marked_as_an_error(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    db = Dependency("db", max_concurrency=1, registry=None)
    with provider.get_tracer("test").start_as_current_span("GET /orders"):
        with pytest.raises(DeadlineExceeded), tailguard.deadline(0.01):
            async with db:
                await asyncio.sleep(10)
    span = only(exporter, "tailguard.dependency db")
    assert dict(span.attributes or {})["tailguard.dependency.outcome"] == "deadline_exceeded"
    assert span.status.status_code is StatusCode.ERROR
