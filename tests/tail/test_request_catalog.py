"""Tail metrics go to the catalog of the request a helper runs in: per guard, none outside one."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import tailguard
from tailguard import Tailguard, _context
from tests.tail.support import WAIT, Metrics, Request, forever

pytestmark = pytest.mark.anyio

TAIL_METRICS = (
    "tailguard_tail_attempts",
    "tailguard_tail_attempts_cancelled",
    "tailguard_hedges",
    "tailguard_fanout_calls",
    "tailguard_fanout_slow_paced",
)


def tail_samples(registry: CollectorRegistry) -> list[object]:
    return [
        sample
        for metric in registry.collect()
        if metric.name in TAIL_METRICS
        for sample in metric.samples
    ]


async def answer() -> str:
    return "row"


async def miss() -> str:
    raise KeyError("miss")


async def test_a_helper_outside_any_request_records_nothing_and_still_traces(
    spans: InMemorySpanExporter,
) -> None:
    registry = CollectorRegistry()
    Tailguard(registry=registry)  # a guard in the process, but no request of it running

    assert await tailguard.race(answer, forever, name="replicas") == "row"
    assert await tailguard.hedge(answer, delay=0, name="inventory") == "row"
    result = await tailguard.fanout(required=[answer], optional=[forever], grace=0, name="page")
    assert result.required == ["row"]
    assert await tailguard.fallback(miss, answer, name="reads") == "row"

    assert tail_samples(registry) == []
    names = {span.name for span in spans.get_finished_spans()}
    assert {"tailguard.race", "tailguard.hedge", "tailguard.fanout", "tailguard.fallback"} <= names


async def test_a_request_of_a_guard_with_metrics_off_records_nothing() -> None:
    token = _context.current.set(_context.Frame(None, Request(None)))
    try:
        assert await tailguard.race(answer, forever, name="replicas") == "row"
        assert await tailguard.fallback(miss, answer, name="reads") == "row"
    finally:
        _context.current.reset(token)


def guarded_app(
    registry: CollectorRegistry,
    entered: asyncio.Event | None = None,
    gate: asyncio.Event | None = None,
) -> Starlette:
    """An app whose one route races two replicas and reads through a fallback, under its guard.

    With ``gate``, the first replica sets ``entered`` and waits for ``gate``.
    """

    async def replica() -> str:
        if entered is not None and gate is not None:
            entered.set()
            await gate.wait()
        return "row"

    async def read(request: StarletteRequest) -> Response:
        await tailguard.race(replica, forever, name="replicas")
        await tailguard.fallback(miss, answer, name="reads")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/read", read)])
    Tailguard(registry=registry).install(app, metrics_path=None)
    return app


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_two_guards_keep_their_tail_metrics_apart() -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    first, second = CollectorRegistry(), CollectorRegistry()
    async with client(guarded_app(first, entered, gate)) as a, client(guarded_app(second)) as b:
        held = asyncio.ensure_future(a.get("/read"))
        await asyncio.wait_for(entered.wait(), WAIT)  # a's request is inside its race...
        assert (await b.get("/read")).status_code == 200  # ...while b's requests run theirs
        assert (await b.get("/read")).status_code == 200
        gate.set()
        assert (await held).status_code == 200

    one, two = Metrics(first), Metrics(second)
    assert (one.attempts("replicas", "race"), two.attempts("replicas", "race")) == (2, 4)
    assert (one.cancelled("replicas", "race"), two.cancelled("replicas", "race")) == (1, 2)
    assert (one.attempts("reads", "fallback"), two.attempts("reads", "fallback")) == (2, 4)
