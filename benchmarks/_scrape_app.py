"""The app of the scrape benchmark, and the uvicorn process that serves one arm of it.

A Starlette app with :data:`ROUTES` routes (``GET /r{i}/{item}``), as a real
service of a few hundred routes has, and ``GET /work``, the route under load
(2 ms of CPU on the loop, then 2 ms of ``asyncio.sleep``: a service that
uses about half a core at the benchmark's rate, so its throughput and latency
show how much of the loop and the CPU a scrape takes). tailguard is installed
with its defaults (metrics on, a deadline, no tracing); ``GET /warm?routes=N``
sends one request through the middleware to each of N routes in-process, so
the exposition has the series of N routes.

Arms (``python benchmarks/_scrape_app.py ARM``), the tailguard under test
decided by ``PYTHONPATH`` (the parent points ``before`` at an exported copy of
an older revision):

- ``before``, ``after``: ``/metrics`` on the app's port, ``guard.install(app,
  tracing=False)``;
- ``after-port``: ``install(metrics_path=None, metrics_port=0)``: the
  metrics on a port of their own, served on the same event loop.

Prints ``PORT <n> METRICS <m> HTTP <impl> LOOP <impl> TAILGUARD <path>`` and
serves until its stdin closes, as ``_serve.py`` does.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import tailguard
from _serve import http_implementation, loop_implementation
from tailguard import RoutePolicy, Tailguard

ARMS = ("before", "after", "after-port")
ROUTES = 300
WORK_CPU = 0.002
"""Seconds of CPU each ``GET /work`` spends on the event loop (a service's own work)."""
WORK_WAIT = 0.002
"""Seconds each ``GET /work`` then waits (``asyncio.sleep``: a downstream call)."""


def build(arm: str) -> tuple[Starlette, Tailguard]:
    async def item(request: Request) -> Response:
        return PlainTextResponse("item")

    async def work(request: Request) -> Response:
        until = time.perf_counter() + WORK_CPU
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(WORK_WAIT)
        return PlainTextResponse("done")

    async def warm(request: Request) -> Response:
        count = int(request.query_params.get("routes", "0"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://warm") as client:
            for i in range(min(count, ROUTES)):
                await client.get(f"/r{i}/1")
        return PlainTextResponse(f"warmed {count}")

    routes = [Route(f"/r{i}/{{item}}", item) for i in range(ROUTES)]
    app = Starlette(routes=[Route("/work", work), Route("/warm", warm), *routes])
    guard = Tailguard(default=RoutePolicy(deadline=5.0))
    options: dict[str, Any] = {"tracing": False}
    if arm == "after-port":
        options.update(metrics_path=None, metrics_port=0)
    guard.install(app, **options)
    return app, guard


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ARMS:
        print(f"usage: _scrape_app.py {{{','.join(ARMS)}}}", file=sys.stderr)
        return 2
    app, guard = build(argv[0])
    http = http_implementation()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, http=http, lifespan="on", workers=1
    )
    server = uvicorn.Server(config)

    def exit_with_parent() -> None:
        sys.stdin.read()
        server.should_exit = True

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.01)
        metrics = getattr(getattr(guard, "runtime", None), "metrics_server", None)
        metrics_port = metrics.port if metrics is not None else port
        print(
            f"PORT {port} METRICS {metrics_port} HTTP {http} LOOP {loop_implementation()} "
            f"TAILGUARD {tailguard.__file__}",
            flush=True,
        )

    threading.Thread(target=exit_with_parent, name="parent-watch", daemon=True).start()
    threading.Thread(target=announce, name="announce", daemon=True).start()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
