"""A root request's sampling decided before the SDK: the same ids, flags and spans as the SDK's.

``RootSampling`` draws the trace id from the provider's id generator and
applies the ratio sampler's bound itself, so that a dropped request never
enters ``start_span``. These tests run the same seeded id sequence through
OpenTelemetry's ASGI middleware and through the lean path and compare every
request's span context, sampled or not.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import Tailguard
from tailguard.telemetry.server_span import RootSampling, ServerSpans

REQUESTS = 300


class SeededIds(IdGenerator):
    """Ids from a seeded ``random.Random``: two providers draw the same sequence."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def generate_trace_id(self) -> int:
        return self.random.getrandbits(128) or 1

    def generate_span_id(self) -> int:
        return self.random.getrandbits(64) or 1

    def is_trace_id_random(self) -> bool:
        return True


def run(
    sampler: Sampler, server_spans: str, ids: str = "seeded"
) -> tuple[list[trace.SpanContext], list[Any]]:
    """Each request's span context as the app saw it, and the ids of the spans exported.

    ``ids``: ``"seeded"`` (a generator of its own) or ``"sdk"`` (the SDK's default
    generator, which draws from the ``random`` module, seeded here).
    """
    exporter = InMemorySpanExporter()
    if ids == "seeded":
        provider = TracerProvider(sampler=sampler, id_generator=SeededIds(7))
    else:
        provider = TracerProvider(sampler=sampler)
        random.seed(7)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[trace.SpanContext] = []

    async def item(request: Request) -> Response:
        seen.append(trace.get_current_span().get_span_context())
        return PlainTextResponse("ok")

    guard = Tailguard(registry=CollectorRegistry())
    app = guard.install(
        Starlette(routes=[Route("/items/{item_id}", item)]),
        tracer_provider=provider,
        server_spans=server_spans,  # type: ignore[arg-type]
    )
    lean = guard.runtime.server_spans
    assert (lean is not None and lean.roots is not None) is (server_spans == "tailguard")

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for number in range(REQUESTS):
                assert (await http.get(f"/items/{number}")).status_code == 200

    anyio.run(drive)
    exported = [
        (span.context.trace_id, span.context.span_id, span.context.trace_flags, span.name)
        for span in exporter.get_finished_spans()
        if isinstance(span, ReadableSpan) and span.kind is SpanKind.SERVER
    ]
    return seen, exported


@pytest.mark.parametrize("ids", ["seeded", "sdk"])
@pytest.mark.parametrize(
    "sampler",
    [ParentBased(TraceIdRatioBased(0.25)), TraceIdRatioBased(0.25), ParentBasedTraceIdRatio(0.5)],
    ids=["parent-based-ratio", "ratio", "parent-based-ratio-class"],
)
def test_every_request_gets_the_ids_and_decision_the_sdk_gives_it(
    sampler: Sampler, ids: str
) -> None:
    otel_seen, otel_exported = run(sampler, "otel", ids)
    lean_seen, lean_exported = run(sampler, "tailguard", ids)
    assert lean_seen == otel_seen  # trace id, span id, flags, trace state, remote: all of it
    assert lean_exported == otel_exported
    sampled = sum(context.trace_flags.sampled for context in lean_seen)
    assert 0 < sampled < REQUESTS  # both the SDK's path and the one that skips it ran
    assert len(lean_exported) == sampled


def test_a_root_sampler_that_drops_everything_still_gives_each_request_a_trace() -> None:
    otel_seen, _ = run(ParentBased(ALWAYS_OFF), "otel")
    lean_seen, lean_exported = run(ParentBased(ALWAYS_OFF), "tailguard")
    assert lean_seen == otel_seen
    assert lean_exported == []
    assert len({context.trace_id for context in lean_seen}) == REQUESTS


class Peeking(Sampler):
    def should_sample(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not called
        return ALWAYS_ON.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "Peeking"


@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_ON, ParentBased(ALWAYS_ON), ParentBased(Peeking()), Peeking()],
    ids=["always-on", "parent-based-always-on", "custom-root", "custom"],
)
def test_only_the_sdks_ratio_and_always_off_roots_are_decided_early(sampler: Sampler) -> None:
    assert RootSampling.for_tracer(TracerProvider(sampler=sampler).get_tracer("t")) is None


def test_a_tracer_that_is_not_the_sdks_is_left_to_itself() -> None:
    assert RootSampling.for_tracer(trace.NoOpTracer()) is None
    assert RootSampling.for_tracer(trace.ProxyTracer("t")) is None


def test_with_the_sdks_own_metrics_on_every_span_goes_through_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Those metrics count dropped spans too: skipping start_span would lose them.
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    assert RootSampling.for_tracer(provider.get_tracer("t")) is None


def test_a_disabled_tracer_makes_the_sdks_invalid_span() -> None:
    configure = getattr(TracerProvider, "_set_tracer_configurator", None)
    if configure is None:  # pragma: no cover - SDKs before tracer configurators
        pytest.skip("this SDK has no tracer configurator")
    from opentelemetry.sdk.trace import _disable_tracer_configurator

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    spans = ServerSpans(provider)
    assert spans.roots is not None
    provider._set_tracer_configurator(tracer_configurator=_disable_tracer_configurator)
    assert spans.roots.drop() is None  # the SDK decides: no ids drawn
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

    async def send(message: Any) -> None: ...

    request = spans.start(scope, send)
    assert request is not None
    assert not request.span.get_span_context().is_valid
    request.finish()


def test_two_guards_on_one_provider_share_one_wrapper() -> None:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    first, second = ServerSpans(provider), ServerSpans(provider)
    assert first.roots is not None
    assert second.roots is not None
    assert first.roots.ids is second.roots.ids
    assert not isinstance(first.roots.ids.inner, type(first.roots.ids))


def test_a_drawn_trace_id_goes_to_the_thread_that_drew_it_and_only_once() -> None:
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(1.0)), id_generator=SeededIds(3)
    )
    roots = RootSampling.for_tracer(provider.get_tracer("t"))
    assert roots is not None
    ids = roots.ids
    ids.drawn.trace_id = 42
    elsewhere: list[int] = []
    thread = threading.Thread(target=lambda: elsewhere.append(ids.generate_trace_id()))
    thread.start()
    thread.join()
    assert elsewhere[0] != 42
    assert ids.generate_trace_id() == 42
    assert ids.generate_trace_id() != 42
    assert ids.is_trace_id_random()


def test_a_kept_root_span_starts_with_the_drawn_id() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(1.0)), id_generator=SeededIds(5)
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    roots = RootSampling.for_tracer(provider.get_tracer("t"))
    assert roots is not None
    assert roots.drop() is None  # kept: ratio 1.0
    expected = SeededIds(5).generate_trace_id()
    span = roots.tracer.start_span("GET /", otel_context.Context(), SpanKind.SERVER)
    assert span.get_span_context().trace_id == expected
