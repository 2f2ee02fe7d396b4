"""FastAPI's own telemetry (FastAPI >= 0.16x) and tailguard's lean server span: one server span.

FastAPI starts its native SERVER span outside its middleware stack, where
tailguard runs. Left alone, tailguard would add a second span under it
(INTERNAL, as OTel's middleware does under a current span) and put its
annotations there. tailguard instead treats FastAPI's span as the span of an
instrumented app: it makes none and annotates FastAPI's.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tailguard import RoutePolicy, Tailguard

pytest.importorskip("fastapi.telemetry")

from fastapi import FastAPI

pytestmark = pytest.mark.anyio


def traced_app(telemetry: dict[str, Any]) -> tuple[FastAPI, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI(telemetry={"tracer_provider": provider, **telemetry})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    guard = Tailguard(
        routes={"GET /items/{item_id}": RoutePolicy(deadline=5.0)},
        registry=CollectorRegistry(),
        enforce="shadow",
    )
    guard.install(app, tracer_provider=provider)
    return app, exporter


async def get(app: FastAPI, path: str) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get(path)).status_code == 200


async def test_fastapis_native_span_is_the_one_server_span_and_carries_tailguards_marks() -> None:
    app, exporter = traced_app({})
    await get(app, "/items/7")
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind.name == "SERVER"]
    assert len(servers) == 1
    (server,) = servers
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "fastapi"
    assert (server.attributes or {}).get("tailguard.enforce") == "shadow"
    assert [
        s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == "tailguard"
    ] == []


async def test_with_fastapis_tracing_off_tailguard_makes_the_server_span() -> None:
    app, exporter = traced_app({"tracing": False})
    await get(app, "/items/7")
    (server,) = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "tailguard"
    assert server.name == "GET /items/{item_id}"
    assert (server.attributes or {}).get("tailguard.enforce") == "shadow"
