"""tailguard's own 503 and 504 carry the app's CORS headers, under a real uvicorn server.

The app adds Starlette's ``CORSMiddleware`` itself, before ``install()`` (it
ends up inside tailguard, which still bounds its time) or after (outside
tailguard). Either way a browser must be able to read tailguard's answers:
the preflight passes, and the 503 (with ``Retry-After``) and the 504 carry
``Access-Control-Allow-Origin``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.server import serve_in_thread

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example"
FOREVER = 30.0
WAIT = 20.0  # generous bound for cross-thread signals on a loaded machine


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


def build(gate: Gate, cors: str) -> Starlette:
    async def busy(request: Request) -> Response:
        gate.entered.set()
        while not gate.release.is_set():
            await asyncio.sleep(0.005)
        return PlainTextResponse("done")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(FOREVER)
        return PlainTextResponse("late")  # pragma: no cover

    app = Starlette(routes=[Route("/busy", busy), Route("/slow", slow)])

    def add_cors() -> None:
        app.add_middleware(
            CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["GET"], allow_headers=["x-a"]
        )

    if cors == "before":
        add_cors()
    guard = Tailguard(
        default=RoutePolicy(deadline=FOREVER),
        routes={
            "/busy": RoutePolicy(deadline=FOREVER, max_concurrency=1, max_queue=0),
            "GET /slow": RoutePolicy(deadline=0.05),
        },
        registry=CollectorRegistry(),
    )
    guard.install(app, tracing=False)
    if cors == "after":
        add_cors()
    return app


@pytest.fixture(params=["before", "after"], ids=lambda p: f"cors-{p}-install")
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, Gate]]:
    gate = Gate()
    with serve_in_thread(build(gate, request.param)) as url:
        try:
            yield url, gate
        finally:
            gate.release.set()


def test_a_preflight_to_a_full_route_lets_the_browser_send_the_request(
    served: tuple[str, Gate],
) -> None:
    url, gate = served
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=WAIT) as client:
        holder = pool.submit(client.get, "/busy")
        assert gate.entered.wait(WAIT)
        preflight = client.options(
            "/busy",
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "GET",
                "access-control-request-headers": "x-a",
            },
        )
        gate.release.set()
        assert holder.result(WAIT).status_code == 200
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in preflight.headers["access-control-allow-methods"]


def test_a_shed_request_carries_cors_and_retry_after(served: tuple[str, Gate]) -> None:
    url, gate = served
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=WAIT) as client:
        holder = pool.submit(client.get, "/busy")
        assert gate.entered.wait(WAIT)
        shed = client.get("/busy", headers={"origin": ORIGIN})
        gate.release.set()
        assert holder.result(WAIT).status_code == 200
    assert shed.status_code == 503
    assert shed.headers["x-tailguard-reason"] == "queue_full"
    assert int(shed.headers["retry-after"]) >= 1
    assert shed.headers["access-control-allow-origin"] == ORIGIN
    assert shed.headers["vary"] == "Origin"  # added once, not once per pass


def test_a_deadline_response_carries_cors(served: tuple[str, Gate]) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        late = client.get("/slow", headers={"origin": ORIGIN})
        other = client.get("/slow", headers={"origin": "https://evil.example"})
    assert late.status_code == 504
    assert late.headers["x-tailguard-reason"] == "deadline_exceeded"
    assert late.headers["access-control-allow-origin"] == ORIGIN
    # The app's own rules decide: an origin it does not allow gets no grant.
    assert other.status_code == 504
    assert "access-control-allow-origin" not in other.headers


async def _slow(request: Request) -> Response:
    await asyncio.sleep(FOREVER)
    return PlainTextResponse("late")  # pragma: no cover


def test_responses_through_empty_sends_them_bare() -> None:
    app = Starlette(routes=[Route("/slow", _slow)])
    app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN])
    guard = Tailguard(default=RoutePolicy(deadline=0.05), registry=CollectorRegistry())
    guard.install(app, tracing=False, responses_through=())
    assert guard.runtime.responses.names == ()
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=WAIT) as client:
        late = client.get("/slow", headers={"origin": ORIGIN})
    assert late.status_code == 504
    assert "access-control-allow-origin" not in late.headers


def test_responses_through_must_be_classes() -> None:
    guard = Tailguard(registry=CollectorRegistry())
    with pytest.raises(TypeError, match="responses_through"):
        guard.install(Starlette(), responses_through=CORSMiddleware)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="responses_through"):
        guard.install(Starlette(), responses_through=["cors"])  # type: ignore[list-item]
