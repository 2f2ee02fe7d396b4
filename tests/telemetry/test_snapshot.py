"""build_snapshot(): requests in flight, live tasks by route and coroutine, every pool."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from time import monotonic
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard import RoutePolicy, Tailguard, _context
from tailguard.admission import Limiter
from tailguard.telemetry import snapshot as snapshots
from tailguard.telemetry.live import LiveRequests
from tailguard.telemetry.tasks import RequestTasks, ensure_task_factory

pytestmark = pytest.mark.anyio


class Tracked(RequestTasks):
    __slots__ = ("method", "route")


class Registering:
    """What tailguard's middleware does for snapshots: register, bind, finish, unregister."""

    def __init__(self, app: ASGIApp, live: LiveRequests) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ensure_task_factory(asyncio.get_running_loop())
        request = Tracked()
        request.method = scope["method"]
        request.route = next(
            (r.path for r in scope["app"].routes if r.matches(scope)[0] is Match.FULL), ""
        )
        self.live[request] = monotonic()
        token = _context.current.set(_context.Frame(None, request))
        try:
            await self.app(scope, receive, send)
        finally:
            _context.current.reset(token)
            self.live.pop(request, None)
            request.finish(request.route or "unmatched")


@pytest.fixture
def guard() -> Iterator[Tailguard]:
    guard = Tailguard(
        routes={"/work/{n}": RoutePolicy(max_concurrency=4, max_queue=2)},
        registry=CollectorRegistry(),
    )
    if not hasattr(guard, "live"):  # until the guard keeps the registry itself
        guard.live = LiveRequests()  # type: ignore[attr-defined]
    yield guard
    for dependency in guard.dependencies.values():
        dependency.close()


class Service:
    def __init__(self, guard: Tailguard) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.release = asyncio.Event()
        self.lingering: list[asyncio.Task[None]] = []

        async def refresh(event: asyncio.Event) -> None:
            event.set()
            await asyncio.Event().wait()

        async def work(request: Request) -> Response:
            n = request.path_params["n"]
            ready = [asyncio.Event(), asyncio.Event()]
            helpers = [asyncio.create_task(refresh(event)) for event in ready]
            for event in ready:
                await event.wait()
            self.started[n].set()
            await self.release.wait()
            for task in helpers:
                task.cancel()
            return PlainTextResponse(n)

        async def linger() -> None:
            await asyncio.Event().wait()

        async def fire(request: Request) -> Response:
            self.lingering.append(asyncio.create_task(linger()))
            return PlainTextResponse("fired")

        self.app = Starlette(routes=[Route("/work/{n}", work), Route("/fire", fire)])
        self.app.add_middleware(Registering, live=guard.live)  # type: ignore[attr-defined]

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://t")


@pytest.fixture
async def service(guard: Tailguard) -> AsyncIterator[Service]:
    service = Service(guard)
    yield service
    for task in service.lingering:
        task.cancel()
    await asyncio.gather(*service.lingering, return_exceptions=True)


def coroutines(snapshot: dict[str, Any], route: str) -> list[tuple[str, int, int, int]]:
    return [
        (entry["coroutine"], entry["count"], entry["orphaned"], entry["cancelled"])
        for entry in snapshot["tasks"][route]["coroutines"]
    ]


async def test_a_snapshot_shows_requests_tasks_orphans_and_pools(
    guard: Tailguard, service: Service
) -> None:
    db = guard.dependency("db", max_concurrency=2)
    async with service.client() as http:
        service.started = {"1": asyncio.Event(), "2": asyncio.Event()}
        calls = [asyncio.create_task(http.get(f"/work/{n}")) for n in service.started]
        for event in service.started.values():
            await event.wait()
        assert (await http.get("/fire")).text == "fired"
        async with db:
            snapshot = snapshots.build_snapshot(guard)  # type: ignore[arg-type]
        service.release.set()
        assert [(await call).status_code for call in calls] == [200, 200]
    assert json.loads(json.dumps(snapshot, allow_nan=False)) == snapshot
    assert list(snapshot["requests"]) == ["/work/{n}"]
    assert snapshot["requests"]["/work/{n}"]["in_flight"] == 2
    assert snapshot["requests"]["/work/{n}"]["oldest_s"] >= 0
    work = snapshot["tasks"]["/work/{n}"]
    assert (work["live"], work["orphaned"]) == (4, 0)
    refresh = "Service.__init__.<locals>.refresh"
    assert coroutines(snapshot, "/work/{n}") == [(refresh, 4, 0, 0)]
    fire = snapshot["tasks"]["/fire"]
    assert (fire["live"], fire["orphaned"]) == (1, 1)
    assert coroutines(snapshot, "/fire") == [("Service.__init__.<locals>.linger", 1, 1, 0)]
    assert fire["coroutines"][0]["oldest_s"] >= 0
    assert set(snapshot["limiters"]) == {"/work/{n}"}
    assert snapshot["limiters"]["/work/{n}"]["limit"] == 4
    assert snapshot["dependencies"]["db"]["limiter"]["in_use"] == 1
    assert snapshot["dependencies"]["db"]["threads_max"] == 2

    after = snapshots.build_snapshot(guard)  # type: ignore[arg-type]
    assert after["requests"] == {}
    assert "/work/{n}" not in after["tasks"]
    assert after["tasks"]["/fire"]["orphaned"] == 1
    assert after["dependencies"]["db"]["limiter"]["in_use"] == 0


async def zz_older() -> None:
    await asyncio.Event().wait()


async def aa_newer() -> None:
    await asyncio.Event().wait()


async def test_coroutines_are_listed_oldest_first_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = Tracked()
    request.route = "/reports"
    ensure_task_factory(asyncio.get_running_loop())
    token = _context.current.set(_context.Frame(None, request))
    try:
        tasks = [asyncio.create_task(zz_older())]
        await asyncio.sleep(0.001)  # a later creation time, whatever the clock's resolution
        tasks += [asyncio.create_task(aa_newer()), asyncio.create_task(aa_newer())]
    finally:
        _context.current.reset(token)
    live = LiveRequests()
    live[request] = monotonic()
    guard = SimpleNamespace(limiters={}, dependencies={}, live=live)
    full = snapshots.build_snapshot(guard)  # type: ignore[arg-type]
    monkeypatch.setattr(snapshots, "TASKS_LISTED", 1)
    capped = snapshots.build_snapshot(guard)  # type: ignore[arg-type]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert coroutines(full, "/reports") == [("zz_older", 1, 0, 0), ("aa_newer", 2, 0, 0)]
    assert coroutines(capped, "/reports") == [("zz_older", 1, 0, 0)]
    assert (capped["tasks"]["/reports"]["live"], capped["tasks"]["/reports"]["orphaned"]) == (3, 0)


class Foreign:
    """A live entry that is not a RequestTasks: counted as a request, without tasks."""

    route = ""


async def test_requests_of_no_route_and_foreign_entries_are_grouped_as_unmatched() -> None:
    live = LiveRequests()
    live[Foreign()] = monotonic()
    unmatched = Tracked()
    unmatched.route = ""
    started = asyncio.Event()

    async def waiting() -> None:
        started.set()
        await asyncio.Event().wait()

    ensure_task_factory(asyncio.get_running_loop())
    token = _context.current.set(_context.Frame(None, unmatched))
    try:
        task = asyncio.create_task(waiting())
    finally:
        _context.current.reset(token)
    live[unmatched] = monotonic()
    await started.wait()
    snapshot = snapshots.build_snapshot(
        SimpleNamespace(limiters={}, dependencies={}, live=live)  # type: ignore[arg-type]
    )
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert snapshot["requests"]["unmatched"]["in_flight"] == 2
    assert snapshot["tasks"]["unmatched"]["live"] == 1


def test_values_json_cannot_carry_become_null() -> None:
    limiter = Limiter("odd", max_concurrency=1)
    state = limiter.state()._replace(mean_hold=math.inf, mean_queue_wait=math.nan)
    odd = SimpleNamespace(state=lambda: state)
    snapshot = snapshots.build_snapshot(
        SimpleNamespace(limiters={"odd": odd}, dependencies={}, live=LiveRequests())  # type: ignore[arg-type]
    )
    assert snapshot["limiters"]["odd"]["mean_hold"] is None
    assert snapshot["limiters"]["odd"]["mean_queue_wait"] is None
    assert json.dumps(snapshot, allow_nan=False)


async def test_an_orphan_that_ignores_its_cancellation_shows_up() -> None:
    release = asyncio.Event()
    cancelled_once = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled_once.set()  # swallowed on purpose: the bug a snapshot should reveal
        await release.wait()

    request = Tracked()
    request.route = "/stubborn"
    ensure_task_factory(asyncio.get_running_loop())
    token = _context.current.set(_context.Frame(None, request))
    try:
        task = asyncio.create_task(stubborn())
    finally:
        _context.current.reset(token)
    await asyncio.sleep(0)
    assert request.finish("/stubborn", cancel=True) == 1
    await cancelled_once.wait()
    guard = SimpleNamespace(limiters={}, dependencies={}, live=LiveRequests())
    snapshot = snapshots.build_snapshot(guard)  # type: ignore[arg-type]
    release.set()
    await task
    name = "test_an_orphan_that_ignores_its_cancellation_shows_up.<locals>.stubborn"
    assert coroutines(snapshot, "/stubborn") == [(name, 1, 1, 1)]
