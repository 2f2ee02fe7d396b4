"""What tailguard calls the tasks of anyio task groups: one scenario, run under any anyio.

The scenario is a guard-installed Starlette app whose handler starts tasks in an
anyio task group (a plain function, a ``functools.partial``, one given a
``name=``), one more in a task group that outlives the request (an orphan), and
a plain ``asyncio`` task. It returns what an operator would see: the task
spans, the snapshot's coroutine names during and after the request, and the
orphan log. ``tests/telemetry/test_tasks_anyio.py`` runs it in process, with the
newest anyio, and in a subprocess with the oldest anyio tailguard allows; run
as a script, it prints the result as JSON.

Names here are unique to this scenario: the orphan log is once per name per process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from importlib.metadata import version
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from anyio.abc import TaskGroup
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.telemetry import tracing

ROUTE = "/probe"

EXPECTED: dict[str, Any] = {
    "spans": sorted(
        [
            "task anyio_probe_price",
            "task anyio_probe_price",  # the one started with name="price-b" too
            "task anyio_probe_price_of",  # through functools.partial
            "task anyio_probe_refresh",
            "task anyio_probe_plain",
        ]
    ),
    "during": {
        "anyio_probe_price": 2,
        "anyio_probe_price_of": 1,
        "anyio_probe_refresh": 1,
        "anyio_probe_plain": 1,
    },
    "orphans": {"anyio_probe_refresh": 1},
    "logged": ["anyio_probe_refresh"],
}
"""What the scenario reports, whichever anyio runs it."""


async def anyio_probe_price(gate: anyio.Event) -> None:
    await gate.wait()


async def anyio_probe_price_of(item: str, gate: anyio.Event) -> None:
    await gate.wait()


async def anyio_probe_refresh(gate: anyio.Event) -> None:
    await gate.wait()


async def anyio_probe_plain(gate: anyio.Event) -> None:
    await gate.wait()


class _Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(str(record.args[0]) if record.args else record.getMessage())


def _coroutines(snapshot: dict[str, Any], key: str) -> dict[str, int]:
    found = snapshot["tasks"].get(ROUTE, {"coroutines": []})["coroutines"]
    return {entry["coroutine"]: entry[key] for entry in found if entry[key]}


async def scenario() -> dict[str, Any]:
    """Run the app once; what its spans, snapshots and orphan log call its tasks."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Tailguard(default=RoutePolicy(deadline=30.0), registry=CollectorRegistry())
    seen: dict[str, Any] = {}
    gate = anyio.Event()  # the request's own tasks wait here
    held = anyio.Event()  # the orphan waits here, until the request is over

    async def probe(request: Request) -> Response:
        outer: TaskGroup = request.app.state.outer
        outer.start_soon(anyio_probe_refresh, held)  # outlives the request
        plain = asyncio.create_task(anyio_probe_plain(gate), name="plain-1")
        async with anyio.create_task_group() as group:
            group.start_soon(anyio_probe_price, gate)
            group.start_soon(anyio_probe_price, gate, name="price-b")
            group.start_soon(functools.partial(anyio_probe_price_of, "x"), gate)
            await anyio.lowlevel.checkpoint()  # the group's tasks start
            seen["during"] = _coroutines(guard.snapshot(), "count")
            gate.set()
        await plain
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(ROUTE, probe)])
    guard.install(app, tracer_provider=provider)
    logged = _Logged()
    logger = logging.getLogger("tailguard.tasks")
    logger.addHandler(logged)
    try:
        async with anyio.create_task_group() as outer:
            app.state.outer = outer
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get(ROUTE)
            assert response.status_code == 200, response.text
            seen["orphans"] = _coroutines(guard.snapshot(), "orphaned")
            held.set()
    finally:
        logger.removeHandler(logged)
        tracing.use_tracer_provider(None)
    seen["logged"] = logged.names
    seen["spans"] = sorted(
        span.name for span in exporter.get_finished_spans() if span.name.startswith("task ")
    )
    seen["anyio"] = version("anyio")
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scenario())))
