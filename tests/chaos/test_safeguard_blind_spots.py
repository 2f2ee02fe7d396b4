"""The safeguard sees clients that gave up, and cannot be diluted (issue 13, item 9).

* A client that times out before an injected delay ends gets no response;
  the request still counts, as an error, with the time it waited: with 30 s
  injected and a 1 s client timeout, ``AbortWhen(p99=0.2)`` trips (real
  uvicorn on 127.0.0.1, a real httpx client that gives up).
* An experiment that names no ``routes`` is judged on the routes its faults
  reach, not on every route: cheap requests elsewhere, 404s and unmatched
  paths cannot keep its error rate under the bar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import AbortWhen, Chaos, Experiment, Latency, Raise
from tailguard.chaos._run import MAX_REACHED
from tailguard.server import serve_in_thread
from tests.chaos.runtime_support import FOREVER, WAIT, FakeRequest, in_request

CLIENT_TIMEOUT = 1.0
"""How long the client waits: far below the injected delay, far above the safeguard's p99."""


def shop(engine: Chaos) -> Starlette:
    guard = Tailguard(
        default=RoutePolicy(deadline=60.0),
        chaos=engine,
        registry=CollectorRegistry(),
    )
    inventory = guard.dependency("inventory", max_concurrency=64)

    async def item(request: Request) -> PlainTextResponse:
        async with inventory:
            return PlainTextResponse("item")

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items/{item_id}", item), Route("/health", health)])
    return guard.install(app, metrics_path=None, tracing=False)


@pytest.fixture
def served() -> Iterator[tuple[Chaos, str]]:
    engine = Chaos(enabled=True, seed=5)
    try:
        with serve_in_thread(shop(engine), log_level="critical") as url:
            yield engine, url
    finally:
        engine.halt()


@pytest.mark.e2e
def test_clients_that_give_up_trip_the_p99_safeguard(served: tuple[Chaos, str]) -> None:
    engine, url = served
    engine.start(
        Experiment(
            "slow-inventory",
            faults=[Latency("inventory", delay=FOREVER)],
            ttl=120,
            abort=AbortWhen(p99=0.2, min_requests=5, window=120),
        )
    )

    async def give_up() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as client:
            with pytest.raises(httpx.TimeoutException):
                await client.get("/items/1")

    async def clients() -> None:
        for _ in range(8):  # a batch at a time: the stop comes once five are counted
            await asyncio.gather(*(give_up() for _ in range(5)))
            if await stopped():
                return

    async def stopped() -> bool:
        give_up_at = asyncio.get_running_loop().time() + WAIT
        while asyncio.get_running_loop().time() < give_up_at:
            if not engine.armed:
                return True
            await asyncio.sleep(0.01)  # the server notices the disconnects after the client
        return False

    asyncio.run(clients())
    assert not engine.armed
    [record] = engine.status()["stopped"]
    assert record["reason"] == "safeguard"
    assert record["detail"].startswith("p99 ")


def test_an_unscoped_safeguard_is_judged_on_the_routes_its_faults_reach() -> None:
    engine = Chaos(enabled=True, seed=5)
    app = shop(engine)
    engine.start(
        Experiment(
            "inventory-down",
            faults=[Raise("inventory", exc=ConnectionError)],
            ttl=120,
            abort=AbortWhen(error_rate=0.5, min_requests=4, window=120),
        )
    )

    async def traffic() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            for _ in range(4):
                for _ in range(20):  # cheap requests anyone can send, to dilute the rate
                    assert (await client.get("/health")).status_code == 200
                    assert (await client.get("/nothing-here")).status_code == 404
                assert (await client.get("/items/1")).status_code == 500

    try:
        asyncio.run(traffic())
        assert not engine.armed
        [record] = engine.status()["stopped"]
        assert record["reason"] == "safeguard"
        assert record["detail"] == "error rate 1 > 0.5 over the last 120s (4 requests)"
    finally:
        engine.halt()


def test_unmatched_requests_and_404s_never_count() -> None:
    engine = Chaos(enabled=True, seed=5)
    engine.start(
        Experiment(
            "scoped",
            faults=[Raise("GET /items/*", exc=ConnectionError)],
            routes=["GET /items/*"],
            ttl=60,
            abort=AbortWhen(error_rate=0.5, min_requests=3),
        )
    )
    try:
        for _ in range(10):
            engine.observe_request("GET", "", 500, 1.0)  # no route matched
            engine.observe_request("GET", "/items/{item_id}", 404, 0.01)
        assert engine.armed
        for _ in range(3):
            engine.observe_request("GET", "/items/{item_id}", 0, 1.0, failed=True)  # gave up
        assert not engine.armed
    finally:
        engine.halt()


def test_the_routes_an_experiment_reaches_stay_bounded() -> None:
    engine = Chaos(enabled=True, seed=5)
    engine.start(
        Experiment(
            "wide",
            faults=[Latency("db", delay=0.0)],
            ttl=60,
            abort=AbortWhen(error_rate=0.5),
        )
    )
    try:
        for index in range(MAX_REACHED + 10):
            with in_request(FakeRequest("GET", f"/r{index}")):
                injection = engine.plan("db")
            assert injection is not None
            injection.finish()
        with in_request(FakeRequest("GET", "")):  # unmatched: never a reached route
            injection = engine.plan("db")
        assert injection is not None
        injection.finish()
        for _ in range(20):  # past the bound: not learned, so not watched
            engine.observe_request("GET", f"/r{MAX_REACHED + 5}", 500, 0.01)
        assert engine.armed
        for _ in range(20):
            engine.observe_request("GET", "/r0", 500, 0.01)
        assert not engine.armed
    finally:
        engine.halt()
