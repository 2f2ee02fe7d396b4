"""Telemetry knobs of a guard: histogram buckets, ``_created`` series, shed durations apart."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard

pytestmark = pytest.mark.anyio


async def hello(request: Request) -> Response:
    return PlainTextResponse("hi")


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


def bounds(registry: CollectorRegistry, name: str) -> set[str]:
    return {
        sample.labels["le"]
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == f"{name}_bucket"
    }


# -- buckets ----------------------------------------------------------------------------


async def test_a_guard_sets_its_bucket_families() -> None:
    registry = CollectorRegistry()
    long_routes = (0.1, 1.0, 10.0, 30.0, 60.0)
    guard = Tailguard(registry=registry, buckets={"latency": long_routes, "wait": (1.0, 5.0)})
    app = guard.install(Starlette(routes=[Route("/", hello)]), tracing=False)
    db = guard.dependency("db", max_concurrency=1)
    async with client(app) as http:
        assert (await http.get("/")).status_code == 200
    async with db:
        pass
    latency = {"0.1", "1.0", "10.0", "30.0", "60.0", "+Inf"}
    assert bounds(registry, "tailguard_request_duration_seconds") == latency
    assert bounds(registry, "tailguard_budget_spent_seconds") == latency
    assert bounds(registry, "tailguard_dependency_duration_seconds") == latency
    assert bounds(registry, "tailguard_event_loop_lag_seconds") == {"1.0", "5.0", "+Inf"}


def test_guards_sharing_a_registry_must_agree_on_buckets() -> None:
    registry = CollectorRegistry()
    Tailguard(registry=registry, buckets={"latency": (1.0, 30.0)})
    Tailguard(registry=registry)  # no opinion: shares the catalog
    Tailguard(registry=registry, buckets={"latency": (1.0, 30.0)})
    with pytest.raises(ValueError, match="buckets"):
        Tailguard(registry=registry, buckets={"latency": (1.0, 60.0)})


@pytest.mark.parametrize(
    "buckets",
    [
        {"durations": (1.0,)},
        {"latency": ()},
        {"latency": (1.0, 0.5)},
        {"latency": (0.0, 1.0)},
        {"latency": (1.0, float("inf"))},
        {"latency": "1,2"},
        {"latency": ("a",)},
        [("latency", (1.0,))],
    ],
)
def test_bad_buckets_are_refused_naming_the_field(buckets: object) -> None:
    with pytest.raises((ValueError, TypeError), match=r"buckets(\[| must|:)"):
        Tailguard(registry=CollectorRegistry(), buckets=buckets)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match=r"buckets(\[| must|:)"):
        Tailguard(metrics=False, buckets=buckets)  # type: ignore[arg-type]


# -- _created ---------------------------------------------------------------------------


async def test_created_series_are_off_by_default_for_this_registry_only() -> None:
    registry = CollectorRegistry()
    other = CollectorRegistry()
    Counter("unrelated_total", "someone else's", registry=other).inc()
    guard = Tailguard(registry=registry)
    app = guard.install(Starlette(routes=[Route("/", hello)]), tracing=False)
    async with client(app) as http:
        await http.get("/")
    exposed = generate_latest(registry).decode()
    assert "tailguard_requests_total{" in exposed
    assert "_created" not in exposed
    assert "unrelated_created" in generate_latest(other).decode()  # not process-wide


async def test_created_series_can_be_turned_on() -> None:
    registry = CollectorRegistry()
    guard = Tailguard(registry=registry, created_series=True)
    app = guard.install(Starlette(routes=[Route("/", hello)]), tracing=False)
    async with client(app) as http:
        await http.get("/")
    exposed = generate_latest(registry).decode()
    assert "tailguard_requests_created{" in exposed
    assert "tailguard_request_duration_seconds_created{" in exposed
    with pytest.raises(ValueError, match="created_series"):
        Tailguard(registry=registry, created_series=False)


# -- shed requests have a duration series of their own --------------------------------


async def test_fast_503s_do_not_hide_the_served_requests_tail() -> None:
    registry = CollectorRegistry()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def held(request: Request) -> Response:
        inside.set()
        await release.wait()
        return PlainTextResponse("done")

    guard = Tailguard(
        routes={"/held": RoutePolicy(max_concurrency=1, max_queue=0)}, registry=registry
    )
    app = guard.install(Starlette(routes=[Route("/held", held)]), tracing=False)
    async with client(app) as http:
        first = asyncio.create_task(http.get("/held"))
        await inside.wait()
        shed = await http.get("/held")
        release.set()
        assert (await first).status_code == 200
    assert shed.status_code == 503

    def count(admission: str) -> float | None:
        labels = {"route": "/held", "method": "GET", "admission": admission}
        return registry.get_sample_value("tailguard_request_duration_seconds_count", labels)

    assert (count("admitted"), count("shed")) == (1.0, 1.0)


async def test_routes_that_never_shed_have_no_shed_series() -> None:
    registry = CollectorRegistry()
    guard = Tailguard(registry=registry)
    app = guard.install(Starlette(routes=[Route("/", hello)]), tracing=False)
    async with client(app) as http:
        await http.get("/")
    exposed = generate_latest(registry).decode()
    assert 'admission="admitted"' in exposed
    assert 'admission="shed"' not in exposed
