"""Per-request metrics recorded by the middleware: bounded labels, every outcome counted.

Each guard records into its own registry: two guards in one process keep their
metrics apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import tailguard
from tailguard import RoutePolicy, Tailguard, _context
from tailguard.admission import Rejected
from tailguard.telemetry.catalog import Catalog, catalog_for
from tailguard.telemetry.requests import RequestRecorder, status_class

pytestmark = pytest.mark.anyio


WAIT = 20.0
"""A generous bound for things that happen at once, even on a loaded machine."""


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def build(registry: CollectorRegistry, **options: object) -> tuple[Starlette, Tailguard]:
    gate = asyncio.Event()

    async def item(request: Request) -> Response:
        return PlainTextResponse(request.path_params["item_id"])

    async def slow(request: Request) -> Response:
        await asyncio.sleep(30)
        return PlainTextResponse("never")

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    async def shed(request: Request) -> Response:
        raise Rejected("queue_full", "inventory", 1.0)

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            await asyncio.sleep(30)

        return StreamingResponse(body())

    async def held(request: Request) -> Response:
        await gate.wait()
        return PlainTextResponse("held")

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/slow", slow),
            Route("/broken", broken),
            Route("/shed", shed),
            Route("/stream", stream),
            Route("/held", held),
        ]
    )
    app.state.gate = gate
    guard = Tailguard(
        default=RoutePolicy(deadline=30.0),
        routes={
            "/slow": RoutePolicy(deadline=0.05),
            "/stream": RoutePolicy(deadline=0.05),
            "/held": RoutePolicy(max_concurrency=1, max_queue=4),
        },
        registry=registry,
        **options,  # type: ignore[arg-type]
    )
    guard.install(app)
    return app, guard


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    )


async def test_labels_are_route_templates_not_paths(registry: CollectorRegistry) -> None:
    app, _ = build(registry)
    async with client(app) as http:
        for item_id in range(100):
            assert (await http.get(f"/items/{item_id}")).status_code == 200
    series = [
        sample
        for metric in registry.collect()
        if metric.name == "tailguard_requests"
        for sample in metric.samples
        if sample.name == "tailguard_requests_total"
    ]
    assert [(s.labels, s.value) for s in series] == [
        (
            {"route": "/items/{item_id}", "method": "GET", "status_class": "2xx", "outcome": "ok"},
            100.0,
        )
    ]
    count = value(
        registry,
        "tailguard_request_duration_seconds_count",
        route="/items/{item_id}",
        method="GET",
        admission="admitted",
    )
    assert count == 100
    assert value(registry, "tailguard_requests_in_flight", route="/items/{item_id}") == 0
    handler = value(
        registry,
        "tailguard_budget_spent_seconds_count",
        route="/items/{item_id}",
        phase="handler",
        dependency="",
    )
    assert handler == 100


async def test_unmatched_paths_and_odd_methods_stay_bounded(registry: CollectorRegistry) -> None:
    app, _ = build(registry)
    async with client(app) as http:
        for n in range(5):
            await http.get(f"/nowhere/{n}")
            await http.request(f"BREW{n}", "/items/1")
    labels = {"route": "unmatched", "method": "GET", "status_class": "4xx", "outcome": "ok"}
    assert value(registry, "tailguard_requests_total", **labels) == 5
    odd = {"route": "/items/{item_id}", "method": "other", "status_class": "4xx", "outcome": "ok"}
    assert value(registry, "tailguard_requests_total", **odd) == 5


async def test_each_outcome_is_counted_once(registry: CollectorRegistry) -> None:
    app, _ = build(registry)
    async with client(app) as http:
        assert (await http.get("/slow")).status_code == 504
        assert (await http.get("/broken")).status_code == 500
        assert (await http.get("/shed")).status_code == 503
        # The transport swallows the abort; the body just ends after the first chunk.
        async with http.stream("GET", "/stream") as response:
            assert await response.aread() == b"partial"

    def requests(route: str, status: str, outcome: str) -> float:
        return value(
            registry,
            "tailguard_requests_total",
            route=route,
            method="GET",
            status_class=status,
            outcome=outcome,
        )

    assert requests("/slow", "5xx", "deadline_exceeded") == 1
    assert requests("/broken", "5xx", "error") == 1
    assert requests("/shed", "5xx", "shed") == 1
    assert requests("/stream", "2xx", "deadline_exceeded") == 1
    assert (
        value(registry, "tailguard_deadline_exceeded_total", route="/slow", stage="before_response")
        == 1
    )
    assert (
        value(
            registry, "tailguard_deadline_exceeded_total", route="/stream", stage="during_response"
        )
        == 1
    )
    assert value(registry, "tailguard_requests_shed_total", route="/shed", reason="queue_full") == 1
    for route in ("/slow", "/broken", "/shed", "/stream"):
        assert value(registry, "tailguard_requests_in_flight", route=route) == 0


async def test_queue_wait_is_accounted_for_limited_routes(registry: CollectorRegistry) -> None:
    app, guard = build(registry)
    limiter = guard.limiters["/held"]
    async with client(app) as http:
        first = asyncio.create_task(http.get("/held"))
        while limiter.in_use == 0:
            await asyncio.sleep(0.001)
        second = asyncio.create_task(http.get("/held"))
        while limiter.queued == 0:
            await asyncio.sleep(0.001)
        app.state.gate.set()
        assert [(await first).status_code, (await second).status_code] == [200, 200]
    queued = value(
        registry,
        "tailguard_budget_spent_seconds_count",
        route="/held",
        phase="queue",
        dependency="",
    )
    assert queued == 2  # one admitted at once (a zero wait), one queued
    waits = value(registry, "tailguard_queue_wait_seconds_count", limiter="/held", kind="route")
    assert waits == 1
    assert value(registry, "tailguard_queue_wait_seconds_sum", limiter="/held", kind="route") > 0


async def test_metrics_off_records_nothing(registry: CollectorRegistry) -> None:
    app, guard = build(registry, metrics=False)
    assert guard.recorder is None
    async with client(app) as http:
        assert (await http.get("/items/1")).status_code == 200
    assert value(registry, "tailguard_requests_total", route="/items/{item_id}") == 0
    assert (
        registry.get_sample_value("tailguard_requests_in_flight", {"route": "/items/{item_id}"})
        is None
    )


def test_guards_sharing_a_registry_share_its_one_catalog(registry: CollectorRegistry) -> None:
    first = Tailguard(registry=registry)
    second = Tailguard(registry=registry)
    assert first.recorder is not None
    assert second.recorder is not None
    assert first.recorder.catalog is second.recorder.catalog is catalog_for(registry)
    assert first.registry is second.registry is registry


class Service:
    """One app and its guard, with its own registry and a dependency ``db`` of ``slots``."""

    def __init__(self, slots: int) -> None:
        self.registry = CollectorRegistry()
        self.guard = Tailguard(registry=self.registry)
        assert self.guard.recorder is not None
        assert self.guard.loop_monitor is not None
        self.catalog: Catalog = self.guard.recorder.catalog
        self.monitor = self.guard.loop_monitor
        self.monitor.interval = 0.001  # tick often: the test waits for ticks, not for time
        self.seen: list[Catalog | None] = []
        """The catalog each request found for itself, as tailguard's features look it up."""
        db = self.guard.dependency("db", max_concurrency=slots)

        async def item(request: Request) -> Response:
            view = _context.current_request()
            self.seen.append(view.catalog if view is not None else None)
            await db.run_sync(int)  # a dependency call, and a job of its thread pool
            return PlainTextResponse(request.path_params["item_id"])

        self.app = self.guard.install(
            Starlette(routes=[Route("/items/{item_id}", item)]), tracing=False
        )

    def value(self, name: str, **labels: str) -> float:
        return value(self.registry, name, **labels)

    def lag_ticks(self) -> float:
        return self.value("tailguard_event_loop_lag_seconds_count")


async def wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        await asyncio.sleep(0.001)


async def test_two_guards_with_two_registries_keep_their_metrics_apart() -> None:
    """Two apps in one process: each guard's registry counts its own requests and nothing else.

    Both use the same route template and the same dependency name, so any
    metric recorded into the wrong registry would show there under the same labels.
    """
    first, second = Service(slots=2), Service(slots=3)
    assert first.catalog is not second.catalog
    calls = {first: 3, second: 2}
    try:
        for service, count in calls.items():
            async with client(service.app) as http:
                for n in range(count):
                    assert (await http.get(f"/items/{n}")).status_code == 200
                assert (await http.get("/metrics")).status_code == 200  # refreshes the gauges
        for service, count in calls.items():
            assert service.seen == [service.catalog] * count
            ok = {"route": "/items/{item_id}", "method": "GET", "status_class": "2xx"}
            assert service.value("tailguard_requests_total", **ok, outcome="ok") == count
            duration = "tailguard_request_duration_seconds_count"
            admitted = {"route": "/items/{item_id}", "method": "GET", "admission": "admitted"}
            assert service.value(duration, **admitted) == count
            calls_ok = {"dependency": "db", "outcome": "ok", "status_class": "none"}
            assert service.value("tailguard_dependency_calls_total", **calls_ok) == count
            held = "tailguard_dependency_duration_seconds_count"
            assert service.value(held, dependency="db") == count
            # Each job of the dependency's pool observed its wait once, in its own registry.
            assert service.value("tailguard_pool_queue_wait_seconds_count", pool="db") == count
        # Gauges come from each guard's own dependencies: told apart by their sizes.
        for service, slots in ((first, 2), (second, 3)):
            limit = service.value("tailguard_limiter_limit", limiter="db", kind="dependency")
            assert limit == slots
            assert service.value("tailguard_pool_threads_max", pool="db") == slots
        # Loop lag: both monitors watch this loop; each observes into its own registry only.
        await wait_until(lambda: first.lag_ticks() > 0 and second.lag_ticks() > 0)
        for ticking, stopped in ((first, second), (second, first)):
            stopped.monitor.stop()
            ticking.monitor.start()
            before, frozen = ticking.lag_ticks(), stopped.lag_ticks()
            await wait_until(lambda: ticking.lag_ticks() >= before + 3)  # noqa: B023
            assert stopped.lag_ticks() == frozen
    finally:
        for service in calls:
            service.monitor.stop()
            for dependency in service.guard.dependencies.values():
                await dependency.aclose()


def test_dependency_charges_show_in_the_budget(registry: CollectorRegistry) -> None:
    recorder = RequestRecorder(catalog_for(registry))
    route = recorder.route("/checkout", "POST")
    route.begin()
    route.end(200, "ok", duration=0.3, queue_wait=0.05, dependencies={"payments": 0.2})
    assert recorder.route("/checkout", "POST") is route
    spent = {
        phase: value(
            registry,
            "tailguard_budget_spent_seconds_sum",
            route="/checkout",
            phase=phase,
            dependency=dependency,
        )
        for phase, dependency in (("queue", ""), ("dependency", "payments"), ("handler", ""))
    }
    assert spent == pytest.approx({"queue": 0.05, "dependency": 0.2, "handler": 0.05})
    assert status_class(503) == "5xx"
    assert tailguard.Tailguard is Tailguard


def test_folded_histograms_match_direct_observations(registry: CollectorRegistry) -> None:
    """Guards the use of prometheus_client's histogram internals when folding batches."""
    from prometheus_client import Histogram

    from tailguard.telemetry.catalog import BUCKETS

    direct = Histogram("direct_seconds", "", buckets=BUCKETS["latency"], registry=registry)
    recorder = RequestRecorder(catalog_for(registry))
    route = recorder.route("/r", "GET")
    values = [0.0, 0.001, 0.0011, 0.003, 0.05, 0.7, 10.0, 11.0, 0.25]
    for seconds in values:
        direct.observe(seconds)
        route.begin()
        route.end(200, "ok", duration=seconds, queue_wait=None, dependencies=None)
    folded = {
        s.labels.get("le"): s.value
        for m in registry.collect()
        if m.name == "tailguard_request_duration_seconds"
        for s in m.samples
        if s.name.endswith("_bucket")
    }
    expected = {
        s.labels["le"]: s.value
        for m in registry.collect()
        if m.name == "direct_seconds"
        for s in m.samples
        if s.name.endswith("_bucket")
    }
    assert folded == expected
    assert value(
        registry,
        "tailguard_request_duration_seconds_sum",
        route="/r",
        method="GET",
        admission="admitted",
    ) == pytest.approx(sum(values))


def test_requests_with_and_without_a_split_fold_like_direct_observations(
    registry: CollectorRegistry,
) -> None:
    """Requests the handler had whole are observed once but land in duration and handler."""
    from prometheus_client import Histogram

    from tailguard.telemetry.catalog import BUCKETS

    direct = {
        phase: Histogram(
            f"direct_{phase}_seconds", "", buckets=BUCKETS["latency"], registry=registry
        )
        for phase in ("duration", "handler", "queue")
    }
    recorder = RequestRecorder(catalog_for(registry))
    route = recorder.route("/r", "GET")
    cases: list[tuple[float, float | None, dict[str, float] | None]] = [
        (0.004, None, None),  # no limiter: whole
        (0.02, 0.0, None),  # admitted at once: whole, a zero queue wait
        (0.3, 0.05, None),  # queued
        (0.5, 0.0, {"db": 0.2}),  # a dependency call
        (2.0, 0.1, {"db": 1.5}),
    ]
    for duration, queue_wait, dependencies in cases:
        route.begin()
        route.end(200, "ok", duration=duration, queue_wait=queue_wait, dependencies=dependencies)
        direct["duration"].observe(duration)
        if queue_wait is not None:
            direct["queue"].observe(queue_wait)
        spent = sum(dependencies.values()) if dependencies else 0.0
        direct["handler"].observe(duration - (queue_wait or 0.0) - spent)

    def buckets(name: str, **labels: str) -> dict[str, float]:
        return {
            s.labels["le"]: s.value
            for m in registry.collect()
            if m.name == name
            for s in m.samples
            if s.name.endswith("_bucket") and labels.items() <= s.labels.items()
        }

    budget = "tailguard_budget_spent_seconds"
    assert buckets("tailguard_request_duration_seconds") == buckets("direct_duration_seconds")
    assert buckets(budget, phase="handler") == buckets("direct_handler_seconds")
    assert buckets(budget, phase="queue") == buckets("direct_queue_seconds")
    for phase in ("handler", "queue"):
        folded = value(registry, f"{budget}_sum", route="/r", phase=phase, dependency="")
        assert folded == pytest.approx(registry.get_sample_value(f"direct_{phase}_seconds_sum"))


def test_a_scrape_from_another_thread_lags_but_loses_nothing(registry: CollectorRegistry) -> None:
    import threading

    recorder = RequestRecorder(catalog_for(registry))
    route = recorder.route("/r", "GET")
    labels = {"route": "/r", "method": "GET", "status_class": "2xx", "outcome": "ok"}

    def record(n: int) -> None:
        for _ in range(n):
            route.begin()
            route.end(200, "ok", duration=0.01, queue_wait=None, dependencies=None)

    def scrape_elsewhere() -> float:
        seen: list[float] = []
        thread = threading.Thread(
            target=lambda: seen.append(value(registry, "tailguard_requests_total", **labels))
        )
        thread.start()
        thread.join()
        return seen[0]

    record(3)
    assert scrape_elsewhere() == 0  # the batch is retired, not read while it may be written
    record(2)
    assert scrape_elsewhere() == 3  # the retired batch is folded one scrape later
    assert value(registry, "tailguard_requests_total", **labels) == 5  # the owner folds all
    assert value(registry, "tailguard_requests_in_flight", route="/r") == 0


async def test_tenants_are_labelled_only_when_configured_and_bounded(
    registry: CollectorRegistry,
) -> None:
    app, _ = build(registry, tenant_header="x-tenant", tenant_weights={"acme": 2.0})
    async with client(app) as http:
        for tenant in ("acme", "acme", "initech", "globex"):
            await http.get("/items/1", headers={"x-tenant": tenant})
        await http.get("/items/1")
    counts = {
        tenant: value(registry, "tailguard_tenant_requests_total", tenant=tenant, outcome="ok")
        for tenant in ("acme", "other", "none")
    }
    assert counts == {"acme": 2, "other": 2, "none": 1}
    untenanted, _ = build(CollectorRegistry())
    async with client(untenanted) as http:
        await http.get("/items/1")
    assert value(registry, "tailguard_tenant_requests_total", tenant="none", outcome="ok") == 1


def test_tenant_labels_refuse_reserved_names_and_bad_caps() -> None:
    from tailguard.telemetry.catalog import TenantLabels

    with pytest.raises(ValueError, match="reserved"):
        TenantLabels(["other"])
    with pytest.raises(ValueError, match="cap"):
        TenantLabels([], cap=-1)
    assert TenantLabels(["b", "a"], cap=1)("a") == "a"
