"""Shadow mode and gradual enforcement (issue 15): decide everything, act on nothing.

Each mechanism is driven once in ``"shadow"`` (the request completes and what
would have happened is counted) and once ``"on"`` (today's 504/503/rejection).
Timing: handlers sleep *at least* past their deadline; nothing asserts how long
anything took.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import tailguard
from tailguard import RoutePolicy, Tailguard
from tailguard.admission import Rejected
from tailguard.enforcement import ENFORCE_ENV, Enforcement, Enforcements, check_mode, parse_mode
from tailguard.telemetry import tracing

pytestmark = pytest.mark.anyio

DEADLINE = 0.05
PAST_IT = 0.2  # every handler that "runs late" sleeps at least this long: past DEADLINE


class Gate:
    """Handlers park here until the test opens the gate."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.open = asyncio.Event()

    async def wait(self) -> None:
        self.arrived.set()
        await self.open.wait()


def build(
    enforce: Any, *, gate: Gate | None = None, **guard_options: Any
) -> tuple[Starlette, Tailguard, dict[str, Any]]:
    seen: dict[str, Any] = {"finished": 0, "cancelled": 0, "remaining": []}
    gate = gate or Gate()

    async def slow(request: Request) -> Response:
        seen["remaining"].append(tailguard.remaining())
        try:
            await asyncio.sleep(PAST_IT)
        except asyncio.CancelledError:
            seen["cancelled"] += 1
            raise
        seen["finished"] += 1
        return PlainTextResponse("done")

    async def held(request: Request) -> Response:
        await gate.wait()
        return PlainTextResponse("held")

    async def calls(request: Request) -> Response:
        inventory = guard.dependency("inventory")
        async with inventory:
            if request.query_params.get("hold"):
                await gate.wait()
        return PlainTextResponse("called")

    app = Starlette(routes=[Route("/slow", slow), Route("/held", held), Route("/calls", calls)])
    options: dict[str, Any] = {
        "routes": {
            "GET /slow": RoutePolicy(deadline=DEADLINE),
            "GET /held": RoutePolicy(max_concurrency=1),
            "GET /calls": RoutePolicy(),
        },
        "registry": CollectorRegistry(),
        "enforce": enforce,
        **guard_options,
    }
    guard = Tailguard(**options)
    guard.dependency("inventory", max_concurrency=1, max_queue=0)
    guard.install(app, tracing=False)
    return app, guard, seen


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def sample(guard: Tailguard, name: str, **labels: str) -> float:
    assert guard.registry is not None
    return guard.registry.get_sample_value(name, labels) or 0.0


# -- deadlines --------------------------------------------------------------------------


async def test_shadow_a_late_request_completes_and_is_counted_as_would_have_exceeded() -> None:
    app, guard, seen = build("shadow")
    async with client(app) as http:
        response = await http.get("/slow")
    assert (response.status_code, response.text) == (200, "done")
    assert (seen["finished"], seen["cancelled"]) == (1, 0)
    assert seen["remaining"] == [math.inf]  # no deadline in force: nothing downstream acts on it
    would = "tailguard_requests_would_exceed_deadline_total"
    assert sample(guard, would, route="/slow") == 1.0
    assert sample(guard, "tailguard_requests_shadowed_total", route="/slow") == 1.0
    assert (
        sample(guard, "tailguard_deadline_exceeded_total", route="/slow", stage="before_response")
        == 0.0
    )


async def test_on_the_same_late_request_gets_a_504_and_is_cancelled() -> None:
    app, guard, seen = build("on")
    async with client(app) as http:
        response = await http.get("/slow")
    assert response.status_code == 504
    assert (seen["finished"], seen["cancelled"]) == (0, 1)
    assert sample(guard, "tailguard_requests_would_exceed_deadline_total", route="/slow") == 0.0
    assert sample(guard, "tailguard_requests_shadowed_total", route="/slow") == 0.0


async def test_shadow_a_request_within_its_deadline_is_not_counted_as_late() -> None:
    app, guard, _ = build("shadow", routes={"GET /slow": RoutePolicy(deadline=60.0)})
    async with client(app) as http:
        assert (await http.get("/slow")).status_code == 200
    assert sample(guard, "tailguard_requests_would_exceed_deadline_total", route="/slow") == 0.0
    assert sample(guard, "tailguard_requests_shadowed_total", route="/slow") == 1.0


# -- admission --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shadow", "on"])
async def test_a_request_over_the_routes_concurrency(mode: str) -> None:
    gate = Gate()
    app, guard, _ = build(mode, gate=gate)
    limiter = guard.limiters["GET /held"]
    async with client(app) as http:
        first = asyncio.ensure_future(http.get("/held"))
        await gate.arrived.wait()
        if mode == "shadow":
            second = asyncio.ensure_future(http.get("/held"))
            while limiter.in_use < 2:  # admitted beyond the limit: in_use is the truth
                await asyncio.sleep(0.001)
            gate.open.set()
            assert (await second).status_code == 200
        else:
            assert (await http.get("/held")).status_code == 503
            gate.open.set()
        assert (await first).status_code == 200
    shed = sample(guard, "tailguard_requests_shed_total", route="/held", reason="queue_full")
    would = sample(guard, "tailguard_requests_would_shed_total", route="/held", reason="queue_full")
    assert (shed, would) == ((0.0, 1.0) if mode == "shadow" else (1.0, 0.0))
    # The limiter's own rejection count says what it did, not what it would have done.
    assert limiter.state().rejected["queue_full"] == (0 if mode == "shadow" else 1)
    assert limiter.in_use == 0


@pytest.mark.parametrize("mode", ["shadow", "on"])
async def test_a_tenant_over_its_cap_names_tenant_limit(mode: str) -> None:
    gate = Gate()
    app, guard, _ = build(
        mode,
        gate=gate,
        routes={"GET /held": RoutePolicy(max_concurrency=4, tenant_concurrency=1)},
        tenant_header="x-tenant",
        tenant_weights={"acme": 1.0},
    )
    headers = {"x-tenant": "acme"}
    async with client(app) as http:
        first = asyncio.ensure_future(http.get("/held", headers=headers))
        await gate.arrived.wait()
        second = asyncio.ensure_future(http.get("/held", headers=headers))
        if mode == "shadow":
            while guard.limiters["GET /held"].in_use < 2:
                await asyncio.sleep(0.001)
        status = (await second).status_code if mode == "on" else None
        gate.open.set()
        assert (await first).status_code == 200
        if mode == "shadow":
            status = (await second).status_code
    assert status == (200 if mode == "shadow" else 503)
    reason = {"route": "/held", "reason": "tenant_limit"}
    assert sample(guard, "tailguard_requests_would_shed_total", **reason) == (mode == "shadow")
    assert sample(guard, "tailguard_requests_shed_total", **reason) == (mode == "on")


# -- dependency bulkheads ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shadow", "on"])
async def test_a_dependency_call_over_its_bulkhead(mode: str) -> None:
    gate = Gate()
    app, guard, _ = build(mode, gate=gate)
    inventory = guard.dependencies["inventory"]
    async with client(app) as http:
        holder = asyncio.ensure_future(http.get("/calls", params={"hold": "1"}))
        await gate.arrived.wait()
        response = await http.get("/calls")
        gate.open.set()
        assert (await holder).status_code == 200
    would = sample(
        guard,
        "tailguard_dependency_calls_would_shed_total",
        dependency="inventory",
        reason="queue_full",
    )
    rejected = sample(
        guard,
        "tailguard_dependency_calls_total",
        dependency="inventory",
        outcome="rejected",
        status_class="none",
    )
    if mode == "shadow":
        assert (response.status_code, response.text) == (200, "called")
        assert (would, rejected) == (1.0, 0.0)
    else:
        assert response.status_code == 503
        assert (would, rejected) == (0.0, 1.0)
    assert inventory.limiter.in_use == 0


async def test_a_dependency_in_shadow_mode_outside_a_request() -> None:
    from tailguard import Dependency

    registry = CollectorRegistry()
    db = Dependency("db", max_concurrency=1, registry=registry, enforce="shadow")
    held = await db.seam.enter()
    assert await db.call(asyncio.sleep, 0, "ran") == "ran"
    db.seam.release(held, None)
    assert (
        registry.get_sample_value(
            "tailguard_dependency_calls_would_shed_total",
            {"dependency": "db", "reason": "queue_full"},
        )
        == 1.0
    )
    on = Dependency("db2", max_concurrency=1, registry=None)
    held = await on.seam.enter()
    with pytest.raises(Rejected):
        await on.call(asyncio.sleep, 0)
    on.seam.release(held, None)


# -- gradual enforcement ------------------------------------------------------------------


async def late_requests(
    enforce: Any, count: int, seed: int
) -> tuple[list[int], Tailguard, list[Any]]:
    app, guard, seen = build(
        enforce, enforce_seed=seed, routes={"GET /slow": RoutePolicy(deadline=0.001)}
    )
    async with client(app) as http:
        responses = await asyncio.gather(*(http.get("/slow") for _ in range(count)))
    return [r.status_code for r in responses], guard, seen["remaining"]


async def test_a_fraction_enforces_that_share_and_each_request_is_all_one_or_the_other() -> None:
    count, share = 400, 0.25
    statuses, guard, remaining = await late_requests(share, count, seed=15)
    enforced = sum(value != math.inf for value in remaining)  # a deadline in force
    shadowed = count - enforced
    # Binomial(400, 0.25): mean 100, sd 8.7; 5 sd either side.
    bound = 5 * math.sqrt(count * share * (1 - share))
    assert abs(enforced - count * share) < bound
    # Every request ran past its deadline: the enforced ones, and only they, got a 504.
    assert statuses.count(504) == enforced
    assert statuses.count(200) == shadowed
    assert sample(guard, "tailguard_requests_shadowed_total", route="/slow") == shadowed
    assert (
        sample(guard, "tailguard_requests_would_exceed_deadline_total", route="/slow") == shadowed
    )
    # The same seed picks the same share again.
    again, _, _ = await late_requests(share, count, seed=15)
    assert again.count(504) == enforced


def test_fractions_draw_deterministically_under_a_seed() -> None:
    one, two = Enforcement(0.25, seed=3), Enforcement(0.25, seed=3)
    assert [one.enforce() for _ in range(200)] == [two.enforce() for _ in range(200)]
    assert Enforcement(0.0).enforce() is False
    assert Enforcement(1.0).always


# -- configuration ---------------------------------------------------------------------------


def test_the_environment_sets_the_guard_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENFORCE_ENV, "shadow")
    guard = Tailguard(
        routes={"GET /a": RoutePolicy(), "GET /b": RoutePolicy(enforce="on")}, metrics=False
    )
    assert guard.snapshot()["enforcement"] == {
        "default": "shadow",
        "routes": {"GET /a": "shadow", "GET /b": "on", "default": "shadow"},
        "dependencies": {},
    }
    assert guard.dependency("db").enforcement.mode == "shadow"
    monkeypatch.setenv(ENFORCE_ENV, "sometimes")
    with pytest.raises(ValueError, match=ENFORCE_ENV):
        Tailguard(metrics=False)


@pytest.mark.parametrize("bad", ["off", 1.5, -0.1, True, float("nan"), None])
def test_bad_modes_are_refused_naming_the_field(bad: Any) -> None:
    if bad is None:
        with pytest.raises(ValueError, match="mode"):
            check_mode("mode", bad)
        return
    with pytest.raises(ValueError, match=r"RoutePolicy\.enforce"):
        RoutePolicy(enforce=bad)
    with pytest.raises(ValueError, match="enforce"):
        Tailguard(enforce=bad, metrics=False)


def test_modes_parse_from_text() -> None:
    assert parse_mode("m", "ON") == "on"
    assert parse_mode("m", "0.5") == 0.5
    with pytest.raises(ValueError, match="m must be"):
        parse_mode("m", "half")


def test_switching_a_name_the_guard_lacks_changes_nothing() -> None:
    modes = Enforcements("on", env={})
    modes.route("GET /a", None)
    with pytest.raises(LookupError, match="no route key"):
        modes.switch("shadow", route="GET /nope")
    with pytest.raises(LookupError, match="no dependency"):
        modes.switch("shadow", dependency="nope")
    assert modes.describe()["routes"] == {"GET /a": "on"}


# -- tracing ---------------------------------------------------------------------------------


async def test_the_server_span_says_shadow_and_what_would_have_happened() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gate = Gate()

    async def slow(request: Request) -> Response:
        await asyncio.sleep(PAST_IT)
        return PlainTextResponse("done")

    async def held(request: Request) -> Response:
        await gate.wait()
        return PlainTextResponse("held")

    app = Starlette(routes=[Route("/slow", slow), Route("/held", held)])
    guard = Tailguard(
        routes={
            "GET /slow": RoutePolicy(deadline=DEADLINE),
            "GET /held": RoutePolicy(max_concurrency=1),
        },
        registry=CollectorRegistry(),
        enforce="shadow",
    )
    guard.install(app, tracer_provider=provider)
    try:
        async with client(app) as http:
            assert (await http.get("/slow")).status_code == 200
            first = asyncio.ensure_future(http.get("/held"))
            await gate.arrived.wait()
            second = asyncio.ensure_future(http.get("/held"))
            while guard.limiters["GET /held"].in_use < 2:
                await asyncio.sleep(0.001)
            gate.open.set()
            assert [(await r).status_code for r in (first, second)] == [200, 200]
    finally:
        tracing.use_tracer_provider(None)
    servers = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert len(servers) == 3
    assert all((s.attributes or {}).get("tailguard.enforce") == "shadow" for s in servers)
    events = sorted(e.name for s in servers for e in s.events)
    assert events == ["tailguard.would_exceed_deadline", "tailguard.would_shed"]


@pytest.mark.parametrize("server_spans", ["tailguard", "otel"])
async def test_under_a_fraction_only_the_shadowed_requests_spans_say_shadow(
    server_spans: str,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def slow(request: Request) -> Response:
        await asyncio.sleep(PAST_IT)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow)])
    guard = Tailguard(
        routes={"GET /slow": RoutePolicy(deadline=DEADLINE)},
        registry=CollectorRegistry(),
        enforce=0.5,
        enforce_seed=4,
    )
    guard.install(app, tracer_provider=provider, server_spans=server_spans)  # type: ignore[arg-type]
    try:
        async with client(app) as http:
            responses = await asyncio.gather(*(http.get("/slow") for _ in range(40)))
    finally:
        tracing.use_tracer_provider(None)
    statuses = sorted(r.status_code for r in responses)
    assert 0 < statuses.count(504) < 40  # both kinds ran
    servers = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    marks = sorted(
        ((s.attributes or {})["http.status_code"], (s.attributes or {}).get("tailguard.enforce"))
        for s in servers
    )
    # An enforced request ran out of time (504) and is unmarked; a shadowed one ran on.
    assert marks == sorted((code, "shadow" if code == 200 else None) for code in statuses)


# -- live switch ---------------------------------------------------------------------------


async def test_a_switch_takes_effect_for_the_next_request(caplog: pytest.LogCaptureFixture) -> None:
    app, guard, _ = build("on")
    async with client(app) as http:
        assert (await http.get("/slow")).status_code == 504
        with caplog.at_level(logging.WARNING, logger="tailguard.enforce"):
            guard.enforce("shadow", route="GET /slow", who="alice")
        assert (await http.get("/slow")).status_code == 200
        guard.enforce("on", who="alice")
        assert (await http.get("/slow")).status_code == 504
    assert "enforcement of route GET /slow changed from on to shadow by alice" in caplog.text
    changes = "tailguard_enforcement_changes_total"
    assert sample(guard, changes, target="route", mode="shadow") == 1.0
    assert sample(guard, changes, target="route", mode="on") == 1.0  # back: a change
    assert sample(guard, changes, target="guard", mode="on") == 0.0  # "on" already: no change


# -- chaos is independent of the mode ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["shadow", "on"])
async def test_chaos_injects_the_same_fault_in_either_mode(mode: str) -> None:
    from tailguard.chaos import Chaos, Experiment, Latency

    chaos = Chaos(enabled=True)
    app, guard, _ = build(mode, chaos=chaos, routes={"GET /calls": RoutePolicy(deadline=DEADLINE)})
    chaos.start(Experiment("slow-inventory", faults=[Latency("inventory", delay=PAST_IT)], ttl=60))
    try:
        async with client(app) as http:
            response = await http.get("/calls")
    finally:
        chaos.halt(actor="test")
    injected = sample(
        guard,
        "tailguard_chaos_injections_total",
        experiment="slow-inventory",
        target="inventory",
        fault="latency",
    )
    assert injected == 1.0
    assert response.status_code == (200 if mode == "shadow" else 504)
    would = sample(guard, "tailguard_requests_would_exceed_deadline_total", route="/calls")
    assert would == (1.0 if mode == "shadow" else 0.0)
