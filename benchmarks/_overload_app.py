"""The app of the overload benchmark, and the uvicorn process that serves one arm of it.

``GET /work`` calls a simulated dependency of known capacity: it waits for one
of ``slots`` permits of an ``asyncio.Semaphore`` and holds it for ``service``
seconds (``await asyncio.sleep``), so the dependency completes at most
``C = slots / service`` calls per second however many requests are waiting.
``GET /stats`` reports the dependency's counters (including the deepest queue
it saw) and, for tailguard arms, ``guard.limiters[...].state()``.

Arms, built by :func:`build` from an :class:`ArmSpec`:

- ``none``: the plain Starlette app, no admission control;
- ``tailguard``: the same app with ``Tailguard(routes={"GET /work": RoutePolicy(
  deadline=..., max_concurrency=..., max_queue=..., queue_timeout=...)})``;
- ``tenants``: as ``tailguard``, plus ``tenant_header="x-tenant-id"`` and
  ``tenant_concurrency``.

Run by ``overload.py`` as ``python benchmarks/_overload_app.py SPEC_JSON``. As
``_serve.py`` does for the overhead benchmark, the child binds an ephemeral
port on 127.0.0.1 itself, prints ``PORT <n> HTTP <impl> LOOP <impl>`` and
serves (one worker, no access log, log level warning) until SIGTERM/SIGINT or
until its stdin reaches end-of-file, so it also exits when the parent dies.
The parent normally kills it outright after each run: a ``none`` server may
hold thousands of abandoned requests that a graceful shutdown would wait for.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from _serve import http_implementation, serve_until_parent_exits
from tailguard import RoutePolicy, Tailguard

__all__ = ["ROUTE_KEY", "ArmSpec", "Dependency", "build"]

ROUTE_KEY = "GET /work"
"""The tailguard route key of the measured route (also its limiter's name)."""
TENANT_HEADER = "x-tenant-id"


@dataclass(frozen=True)
class ArmSpec:
    """Everything a server process needs to build its arm (sent as JSON)."""

    arm: str
    """``none``, ``tailguard`` or ``tenants``."""
    slots: int
    service: float
    deadline: float
    max_queue: int
    queue_timeout: float | None
    tenant_concurrency: int | None
    http: str = "auto"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ArmSpec:
        return cls(**json.loads(text))


class Dependency:
    """A downstream of fixed capacity: ``slots`` concurrent calls of ``service`` seconds."""

    def __init__(self, slots: int, service: float) -> None:
        self.slots = slots
        self.service = service
        self._semaphore = asyncio.Semaphore(slots)
        self.waiting = 0
        self.peak_waiting = 0
        self.in_use = 0
        self.calls = 0
        self.cancelled = 0

    async def call(self) -> None:
        if self._semaphore.locked():  # every slot taken: this call queues
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._semaphore.acquire()  # a free slot: returns at once
        self.in_use += 1
        try:
            await asyncio.sleep(self.service)
            self.calls += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_use -= 1
            self._semaphore.release()

    def stats(self) -> dict[str, int]:
        return {
            "waiting": self.waiting,
            "peak_waiting": self.peak_waiting,
            "in_use": self.in_use,
            "calls": self.calls,
            "cancelled": self.cancelled,
        }


class Stalls:
    """The server's own hiccups: event-loop lag and garbage-collector pauses.

    A task wakes up every ``interval`` seconds and records how late it woke
    (the loop was busy, or the process was not scheduled); a ``gc.callbacks``
    hook times every collection. Both run in every arm alike. Samples carry
    ``time.monotonic()`` stamps, the same clock as the load generator's
    (CLOCK_MONOTONIC is system-wide), so ``/stats?start=..&end=..`` can report
    the measured window alone.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[tuple[float, float]] = []
        self.pauses: list[tuple[float, int, float]] = []
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gc_started = now
        else:
            self.pauses.append((now, info["generation"], now - self._gc_started))

    async def watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.lags.append((now, now - expected))

    def stats(self, start: float, end: float) -> dict[str, Any]:
        lags = sorted(lag for at, lag in self.lags if start <= at < end)
        pauses = [(generation, pause) for at, generation, pause in self.pauses if start <= at < end]
        return {
            "loop_lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "loop_lag_max": lags[-1] if lags else 0.0,
            "gc_collections": [sum(1 for g, _ in pauses if g == n) for n in range(3)],
            "gc_max_pause": max((pause for _, pause in pauses), default=0.0),
            "gc_tracked_objects": len(gc.get_objects()),
        }


def build(spec: ArmSpec) -> Starlette:
    """The app for one arm: the same routes, with or without tailguard in front."""
    dependency = Dependency(spec.slots, spec.service)
    stalls = Stalls()
    gc.callbacks.append(stalls.on_gc)
    guard: Tailguard | None = None

    async def work(request: Request) -> Response:
        await dependency.call()
        return PlainTextResponse("ok")

    async def stats(request: Request) -> Response:
        start = float(request.query_params.get("start", 0.0))
        end = float(request.query_params.get("end", "inf"))
        body: dict[str, Any] = {
            "dependency": dependency.stats(),
            "stalls": stalls.stats(start, end),
        }
        if guard is not None:
            body["limiters"] = {
                name: limiter.state()._asdict() for name, limiter in guard.limiters.items()
            }
        return JSONResponse(body)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = asyncio.create_task(stalls.watch_loop())
        yield
        watcher.cancel()

    app = Starlette(routes=[Route("/work", work), Route("/stats", stats)], lifespan=lifespan)
    if spec.arm == "none":
        return app
    if spec.arm not in ("tailguard", "tenants"):
        raise ValueError(f"unknown arm {spec.arm!r}")
    tenants = spec.arm == "tenants"
    policy = RoutePolicy(
        deadline=spec.deadline,
        max_concurrency=spec.slots,
        max_queue=spec.max_queue,
        queue_timeout=spec.queue_timeout,
        tenant_concurrency=spec.tenant_concurrency if tenants else None,
    )
    guard = Tailguard(
        routes={ROUTE_KEY: policy},
        tenant_header=TENANT_HEADER if tenants else None,
        # The load generator's two tenants, listed: unlisted ones would share one cap.
        tenant_weights={"quiet": 1.0, "noisy": 1.0} if tenants else None,
    )
    return guard.install(app)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: _overload_app.py SPEC_JSON", file=sys.stderr)
        return 2
    spec = ArmSpec.from_json(argv[0])
    http = http_implementation() if spec.http == "auto" else spec.http
    return serve_until_parent_exits(
        build(spec),
        http,
        backlog=4096,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
