"""Soak: rounds of mixed traffic through a real uvicorn server leave nothing behind.

Every way a request can end (finished, 504, aborted stream, client gone, shed,
slow enough to be promoted, spawning children and an orphan) is sent in each
round. Between rounds the server goes idle, and then tailguard must hold no
request, no sweeper entry, no slot, no task of the server's loop beyond its
own, and no per-request object at all: counted exactly with ``gc``, not with
a memory threshold, so a leak of one object per request fails the test.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard, TailguardMiddleware
from tailguard.middleware.disconnect import Inbox
from tailguard.middleware.exchange import Exchange
from tailguard.server import serve_in_thread

pytestmark = pytest.mark.e2e

# Longer than every budget and client timeout here, but short: asyncio keeps a
# cancelled timer (and the context it was created in, which holds the request's
# object) until it would have fired, so a 30 s sleep would keep the request
# object alive for 30 s after its cancellation. Not a leak; it would just slow
# the test down.
LONG = 3.0
WAIT = 20.0  # upper bound for the server to go idle on a loaded machine
ROUNDS = 4
PER_KIND = 6


def build(loops: list[asyncio.AbstractEventLoop]) -> tuple[Starlette, Tailguard]:
    async def ok(request: Request) -> Response:
        loops[:] = [asyncio.get_running_loop()]
        return PlainTextResponse("ok")

    async def slow_ok(request: Request) -> Response:
        await asyncio.sleep(0.06)  # past the sweeper's grace: a timer and a watcher
        return PlainTextResponse("ok")

    async def spawn(request: Request) -> Response:
        async def child() -> None:
            await asyncio.sleep(0)

        async def orphan() -> None:
            await asyncio.sleep(LONG)

        await asyncio.gather(child(), asyncio.create_task(child()))
        request.state.orphan = asyncio.create_task(orphan())  # cancelled: orphans="cancel"
        return PlainTextResponse("spawned")

    async def hang(request: Request) -> Response:
        request.state.child = asyncio.create_task(asyncio.sleep(LONG))  # cancelled with it
        await asyncio.sleep(LONG)
        return PlainTextResponse("late")  # pragma: no cover

    async def stream(request: Request) -> Response:
        async def body() -> Any:
            yield b"x" * 512
            await asyncio.sleep(LONG)
            yield b"never"  # pragma: no cover

        return StreamingResponse(body(), media_type="text/plain")

    async def held(request: Request) -> Response:
        await asyncio.sleep(0.2)  # long enough that a round's six overlap
        return PlainTextResponse("held")

    app = Starlette(
        routes=[
            Route("/ok", ok),
            Route("/slow", slow_ok),
            Route("/spawn", spawn),
            Route("/hang", hang),
            Route("/stream", stream),
            Route("/held", held),
        ]
    )
    guard = Tailguard(
        default=RoutePolicy(deadline=5.0),
        routes={
            "/hang": RoutePolicy(deadline=0.05),
            "/stream": RoutePolicy(deadline=0.2),
            "/held": RoutePolicy(deadline=5.0, max_concurrency=2),
        },
        orphans="cancel",
        registry=CollectorRegistry(),
    )
    return guard.install(app), guard


async def one_round(client: httpx.AsyncClient) -> dict[str, int]:
    """Every kind of ending, PER_KIND times each, all at once; counts what the client saw."""

    async def get(path: str, **options: Any) -> str:
        try:
            response = await client.get(path, **options)
        except httpx.TimeoutException:
            return "client gave up"
        except httpx.RemoteProtocolError:
            return "aborted"
        return str(response.status_code)

    calls = [
        get(path)
        for path in ("/ok", "/slow", "/spawn", "/hang", "/stream", "/held", "/missing")
        for _ in range(PER_KIND)
    ]
    # A client that leaves: the handler must be cancelled, not left to finish.
    calls += [get("/hang", timeout=0.01) for _ in range(PER_KIND)]
    seen: dict[str, int] = {}
    for outcome in await asyncio.gather(*calls):
        seen[outcome] = seen.get(outcome, 0) + 1
    return seen


def find_middleware(app: Any) -> TailguardMiddleware:
    node = app.middleware_stack
    while not isinstance(node, TailguardMiddleware):
        node = node.app
    return node


def wait_until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"still not true after {WAIT} s: {what}")
        time.sleep(0.01)


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for item in gc.get_objects() if type(item) is kind)


def server_tasks(loop: asyncio.AbstractEventLoop) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks() - {asyncio.current_task()})

    return asyncio.run_coroutine_threadsafe(count(), loop).result(WAIT)


def test_rounds_of_mixed_traffic_leave_nothing_behind() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    app, guard = build(loops)
    limiter = guard.limiters["/held"]
    seen: dict[str, int] = {}
    with serve_in_thread(app, log_level="critical") as base_url:
        httpx.get(f"{base_url}/ok").raise_for_status()  # the server's loop, before any load
        idle_tasks = server_tasks(loops[0])  # uvicorn's own: serve() and the lifespan
        middleware = find_middleware(app)

        async def traffic() -> None:
            # A fresh connection per request: a pooled one that the server's
            # keep-alive timeout closes as it is reused (a loaded machine can
            # idle one for 5 s) would fail the request for the client's reasons.
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=WAIT) as client:
                for _ in range(ROUNDS):
                    for outcome, count in (await one_round(client)).items():
                        seen[outcome] = seen.get(outcome, 0) + count

        asyncio.run(traffic())
        wait_until(lambda: not guard.live, "no request in flight")
        sweeper = middleware._sweeper
        assert sweeper is not None
        wait_until(lambda: len(sweeper) == 0, "the sweeper holds no request")
        assert (limiter.in_use, limiter.queued) == (0, 0)
        wait_until(lambda: server_tasks(loops[0]) == idle_tasks, "only the server's tasks remain")
        wait_until(lambda: alive(Exchange) == 0, "no per-request object survives")
        assert alive(Inbox) == 0
    # Every kind of ending happened, so each path above was exercised.
    assert sum(seen.values()) == ROUNDS * PER_KIND * 8
    assert seen["200"] >= ROUNDS * PER_KIND * 3
    # A stream whose first chunk a stalled loop delays past the budget gets a 504 instead.
    assert seen["504"] + seen.get("aborted", 0) >= ROUNDS * PER_KIND * 2
    assert seen.get("aborted", 0) >= 1
    assert seen["404"] == ROUNDS * PER_KIND
    assert seen.get("client gave up", 0) >= 1
    assert seen.get("503", 0) >= 1  # /held admits two at a time and queues none
