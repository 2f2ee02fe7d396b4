"""Route faults: ``Chaos.inbound`` answers, delays, fails or hangs requests before the app.

The middleware calls ``inbound`` before a route's admission limiter. Most tests
drive ``inbound`` from a small ASGI wrapper that does what the middleware does
(put the request in context, ask chaos, call the app unless chaos answered);
the last ones go through the real middleware.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard import RoutePolicy, Tailguard, _context
from tailguard.chaos import AbortWhen, Chaos, Experiment, Hang, Latency, Raise, Reset, Respond
from tailguard.routing.matching import RouteMatcher
from tailguard.telemetry.catalog import Catalog
from tests.chaos.runtime_support import (  # noqa: F401 (fixtures)
    FOREVER,
    SECRET,
    WAIT,
    FakeClock,
    FakeRequest,
    catalog_fixture,
    engines_fixture,
    experiment,
    sample,
    wait_until,
)

pytestmark = pytest.mark.anyio

Engines = Callable[..., Chaos]


class Handled:
    """The app: counts the requests that reached it."""

    def __init__(self) -> None:
        self.count = 0

    async def endpoint(self, request: Request) -> PlainTextResponse:
        self.count += 1
        return PlainTextResponse("from the app")


def build(engine: Chaos, handled: Handled) -> ASGIApp:
    app = Starlette(
        routes=[
            Route("/items/{item_id}", handled.endpoint, methods=["GET", "POST"]),
            Route("/orders", handled.endpoint),
        ]
    )
    matcher = RouteMatcher(app.routes)

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        view = FakeRequest(
            scope["method"],
            matcher.template(scope) or "",
            tenant=dict(scope["headers"]).get(b"x-tenant", b"").decode() or None,
            headers={k.decode(): v.decode() for k, v in scope["headers"]},
        )
        token = _context.current.set(_context.Frame(None, view))
        try:
            if engine.armed and await engine.inbound(view, send):
                return
            await app(scope, receive, send)
        finally:
            _context.current.reset(token)

    return wrapper


@pytest.fixture
def handled() -> Handled:
    return Handled()


@pytest.fixture
def engine(engines: Engines) -> Chaos:
    return engines()


@pytest.fixture
def client(engine: Chaos, handled: Handled) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build(engine, handled))
    return httpx.AsyncClient(transport=transport, base_url="http://service")


async def test_respond_answers_for_the_app(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient, catalog: Catalog
) -> None:
    engine.start(
        experiment(
            Respond("GET /items/*", status=503, body="injected", headers={"Retry-After": "3"}),
            name="gate",
        )
    )
    response = await client.get("/items/1")
    assert (response.status_code, response.text) == (503, "injected")
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-tailguard-chaos"] == "gate"
    assert handled.count == 0
    labels = {"experiment": "gate", "target": "GET /items/*", "fault": "respond"}
    assert sample(catalog, "tailguard_chaos_injections_total", **labels) == 1
    # Other methods and routes are not targeted.
    assert (await client.post("/items/1")).status_code == 200
    assert (await client.get("/orders")).status_code == 200
    assert (await client.get("/nowhere")).status_code == 404
    assert handled.count == 2


async def test_latency_delays_the_request_then_the_app_answers(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient, catalog: Catalog
) -> None:
    engine.start(experiment(Latency("/orders", delay=0.001), name="slow"))
    response = await client.get("/orders")
    assert response.text == "from the app"
    labels = {"experiment": "slow", "target": "/orders", "fault": "latency"}
    assert sample(catalog, "tailguard_chaos_injections_total", **labels) == 1


async def test_raise_fails_the_request_as_the_handler_would(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient
) -> None:
    engine.start(experiment(Raise("/orders", exc=RuntimeError), name="boom"))
    with pytest.raises(RuntimeError, match="injected by tailguard chaos experiment boom"):
        await client.get("/orders")
    assert handled.count == 0


@pytest.mark.parametrize("end", ["halt", "latency-halt"])
async def test_a_hung_or_delayed_request_goes_on_when_chaos_halts(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient, end: str
) -> None:
    fault = Hang("/orders") if end == "halt" else Latency("/orders", delay=FOREVER)
    engine.start(experiment(fault))
    call = asyncio.create_task(client.get("/orders"))
    await wait_until(lambda: engine.status()["injections_in_flight"] == 1)
    assert handled.count == 0
    engine.halt()
    response = await asyncio.wait_for(call, WAIT)
    assert response.text == "from the app"


async def test_dependency_faults_never_touch_requests(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient
) -> None:
    engine.start(experiment(Reset("orders"), Raise("*", exc=OSError)))
    assert not engine._inbound
    assert (await client.get("/orders")).status_code == 200
    assert engine.experiments()[0].injections == 0


async def test_route_faults_respect_the_experiment_scope(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient
) -> None:
    engine.start(
        experiment(
            Respond("/orders", status=500), tenants=["acme"], header="x-chaos", secret=SECRET
        )
    )
    assert (await client.get("/orders", headers={"x-tenant": "acme"})).status_code == 200
    assert (await client.get("/orders", headers={"x-chaos": SECRET})).status_code == 200
    both = {"x-tenant": "acme", "x-chaos": SECRET}
    assert (await client.get("/orders", headers=both)).status_code == 500
    assert handled.count == 2


async def test_rate_zero_and_expiry_let_requests_through(
    engines: Engines, handled: Handled
) -> None:
    clock = FakeClock()
    engine = engines(clock=clock)
    transport = httpx.ASGITransport(app=build(engine, handled))
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        engine.start(experiment(Respond("/orders", status=500, rate=0), name="never"))
        engine.start(experiment(Respond("/items/*", status=500), ttl=5, name="brief"))
        assert (await client.get("/orders")).status_code == 200
        assert (await client.get("/items/1")).status_code == 500
        clock.advance(5)
        assert (await client.get("/items/1")).status_code == 200
    assert [s.experiment.name for s in engine.experiments()] == ["never"]


async def test_labels_and_the_cache_stay_bounded_whatever_methods_clients_invent(
    engine: Chaos, handled: Handled, client: httpx.AsyncClient, catalog: Catalog
) -> None:
    engine.start(
        experiment(
            Latency("/items/*", delay=0.0, rate=1.0),
            Respond("PURGE /items/*", status=204),
            name="methods",
        )
    )
    for i in range(30):
        assert (await client.request(f"X{i}", "/items/1")).status_code == 405  # the app's answer
    assert (await client.request("PURGE", "/items/1")).status_code == 204  # the named method
    assert (await client.request("X99", "/items/1")).status_code == 405  # still not answered
    assert (await client.get("/items/1")).status_code == 200
    assert handled.count == 1
    targets = {
        sample_.labels["target"]
        for family in catalog.registry.collect()
        for sample_ in family.samples
        if sample_.name == "tailguard_chaos_injections_total"
    }
    assert targets == {"/items/*", "PURGE /items/*"}
    latency = {"experiment": "methods", "target": "/items/*", "fault": "latency"}
    assert sample(catalog, "tailguard_chaos_injections_total", **latency) == 33
    # One entry for every method no fault names, one each for those that are used.
    assert set(engine._by_route) == {
        ("", "/items/{item_id}"),
        ("PURGE", "/items/{item_id}"),
        ("GET", "/items/{item_id}"),
    }


async def test_inbound_without_route_faults_is_a_no_op(engine: Chaos) -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    assert not await engine.inbound(FakeRequest(), send)  # nothing runs
    engine.start(experiment(Respond("/other", status=500)))
    assert not await engine.inbound(FakeRequest(), send)  # nothing for this route
    assert sent == []


# -- through the real middleware ------------------------------------------------------------


def guarded_app(engine: Chaos, handled: Handled) -> tuple[Tailguard, httpx.AsyncClient]:
    guard = Tailguard(
        routes={"GET /items/{item_id}": RoutePolicy(deadline=1.0, max_concurrency=1)},
        chaos=engine,
        metrics=False,
    )
    db = guard.dependency("db", max_concurrency=4)

    async def item(request: Request) -> PlainTextResponse:
        handled.count += 1
        async with db:
            pass
        return PlainTextResponse("from the app")

    app = guard.install(
        Starlette(routes=[Route("/items/{item_id}", item)]), metrics_path=None, tracing=False
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return guard, httpx.AsyncClient(transport=transport, base_url="http://service")


async def test_the_middleware_applies_route_faults_before_admission(
    engine: Chaos, handled: Handled
) -> None:
    guard, client = guarded_app(engine, handled)
    limiter = guard.limiters["GET /items/{item_id}"]
    async with client:
        engine.start(experiment(Respond("GET /items/*", status=503), name="answer"))
        answered = await client.get("/items/2")
        assert answered.headers["x-tailguard-chaos"] == "answer"
        assert handled.count == 0
        engine.halt()
        engine.start(experiment(Latency("GET /items/*", delay=FOREVER), name="slow"))
        call = asyncio.create_task(client.get("/items/1"))
        await wait_until(lambda: engine.status()["injections_in_flight"] == 1)
        assert limiter.in_use == 0  # the injected delay holds no admission slot
        engine.halt()
        assert (await asyncio.wait_for(call, WAIT)).text == "from the app"
        assert handled.count == 1


async def test_inbound_chaos_target_label_is_bounded_by_the_method() -> None:
    """Through the real middleware: client-chosen methods add no label values, no cache keys."""
    registry = CollectorRegistry()
    engine = Chaos(enabled=True, seed=1)
    guard = Tailguard(registry=registry, chaos=engine)

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/a", endpoint, methods=["GET", "POST"])])
    guard.install(app, tracing=False)
    engine.start(Experiment("in", faults=[Latency("/a", delay=0.0)], ttl=60))
    try:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for i in range(50):
                await client.request(f"X{i}", "/a")  # any client can pick a method
        assert set(engine._by_route) == {("", "/a")}
    finally:
        engine.halt()
    targets = {
        sample_.labels["target"]
        for family in registry.collect()
        for sample_ in family.samples
        if sample_.name == "tailguard_chaos_injections_total"
    }
    assert targets == {"/a"}


async def test_the_middleware_feeds_the_safeguard(engine: Chaos, handled: Handled) -> None:
    _, client = guarded_app(engine, handled)
    engine.start(
        experiment(
            Raise("db", exc=ConnectionError),
            routes=["GET /items/*"],
            abort=AbortWhen(error_rate=0.5, min_requests=3),
        )
    )
    async with client:
        for _ in range(3):
            assert (await client.get("/items/1")).status_code == 500
        assert not engine.armed
        assert (await client.get("/items/1")).status_code == 200
    assert engine.status()["stopped"][0]["reason"] == "safeguard"
