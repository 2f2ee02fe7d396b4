"""A small guarded service on a real uvicorn server, for the activities to call.

Routes whose outcome the tests choose: ``/ok/{n}`` (fast, 200), ``/boom`` (500),
``/slow`` (300 ms), ``/busy`` (one at a time, no queue: a second concurrent
request is shed while the first waits for :attr:`Service.release`), and
``/orphan`` (leaves a task behind, which the guard cancels).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import Chaos
from tailguard.server import serve_in_thread

TOKEN = "ctk-token-0123456789abcdef"


@dataclass
class Service:
    url: str
    guard: Tailguard
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def configuration(self) -> dict[str, Any]:
        return {"tailguard_url": self.url}

    def get(self, path: str, count: int = 1) -> list[int]:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            return [client.get(path).status_code for _ in range(count)]


SECRETS = {"tailguard_token": TOKEN}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve(*, chaos_enabled: bool = True, control: bool = True) -> Iterator[Service]:
    guard = Tailguard(
        default=RoutePolicy(deadline=10.0),
        routes={"GET /busy": RoutePolicy(max_concurrency=1, max_queue=0)},
        registry=CollectorRegistry(),
        chaos=Chaos(enabled=chaos_enabled, seed=1),
        orphans="cancel",
    )
    # What the test experiments name: chaos refuses targets the service lacks.
    guard.dependency("db")
    inventory = guard.dependency("inventory")
    entered, release = threading.Event(), threading.Event()

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def boom(request: Request) -> Response:
        return JSONResponse({"detail": "boom"}, status_code=500)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.3)
        return PlainTextResponse("slow")

    async def busy(request: Request) -> Response:
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.005)
        return PlainTextResponse("done")

    async def stock(request: Request) -> Response:
        async with inventory:
            return PlainTextResponse("in stock")

    async def orphan(request: Request) -> Response:
        asyncio.get_running_loop().create_task(asyncio.sleep(60))
        return PlainTextResponse("left one behind")

    app = Starlette(
        routes=[
            Route("/ok/{n:int}", ok),
            Route("/boom", boom),
            Route("/slow", slow),
            Route("/busy", busy),
            Route("/orphan", orphan),
            Route("/stock/{item_id:int}", stock),
        ]
    )
    guard.install(app, control_token=TOKEN if control else None, tracing=False)
    try:
        with serve_in_thread(app) as url:
            yield Service(url, guard, entered, release)
    finally:
        release.set()
