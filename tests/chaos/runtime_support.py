"""Shared helpers for the chaos runtime tests: engines, fake requests, clocks, seams.

Timing rule (as in tests/test_dependency.py): no test asserts how long
anything took. Injected delays under test are either tiny and only checked
for having happened (counters, spans), or 30 s long and ended by halt, stop,
TTL or a deadline, with 20 s as the generous bound for "at once".
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import httpx2
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tailguard import _context
from tailguard.chaos import Chaos, Experiment, Fault
from tailguard.dependency import Dependency
from tailguard.telemetry.catalog import Catalog

FOREVER = 30.0
"""A delay the test ends by other means (halt, stop, TTL, deadline)."""
WAIT = 20.0
"""A generous bound for things that happen at once, even on a loaded machine."""
URL = "http://downstream.test/items"
SECRET = "s3cret-s3cret-s3cret"

SEAMS = ["async_with", "call", "decorator", "transport", "httpx2", "run_sync"]
"""Every way to call a dependency (``httpx2``: the transport over an httpx2 client)."""
GENERIC = ["async_with", "call", "decorator"]
"""The seams that carry faults out with ``Injection.apply``."""


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRequest:
    """A :class:`tailguard._context.RequestView` for code that runs "inside a request"."""

    def __init__(
        self,
        method: str = "GET",
        route: str = "/items/{item_id}",
        tenant: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.route = route
        self.tenant = tenant
        self._headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.tasks: list[Any] = []

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    def add(self, task: Any) -> None:  # a TaskOwner too, as the middleware's exchange is
        self.tasks.append(task)


@contextmanager
def in_request(request: FakeRequest | None) -> Iterator[None]:
    """Run the block as if handling ``request`` (``None``: outside any request)."""
    token = _context.current.set(_context.Frame(None, request) if request is not None else None)
    try:
        yield
    finally:
        _context.current.reset(token)


@pytest.fixture(name="engines")
def engines_fixture(catalog: Catalog) -> Iterator[Callable[..., Chaos]]:
    """Make enabled, seeded engines bound to the test's catalog; all are halted after the test."""
    made: list[Chaos] = []

    def make(**settings: Any) -> Chaos:
        settings.setdefault("enabled", True)
        settings.setdefault("seed", 7)
        engine = Chaos(**settings)
        engine.bind(catalog)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.halt(actor="test-teardown")


@pytest.fixture(name="deps")
def deps_fixture() -> Iterator[Callable[..., Dependency]]:
    """Make dependencies; their thread pools are shut down after the test."""
    made: list[Dependency] = []

    def make(name: str = "db", **settings: Any) -> Dependency:
        settings.setdefault("max_concurrency", 4)
        dep = Dependency(name, **settings)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.close()


@pytest.fixture(name="catalog")
def catalog_fixture() -> Catalog:
    """A fresh metrics catalog for the test; the engines from ``engines`` record into it."""
    return Catalog(CollectorRegistry())


@pytest.fixture(name="spans")
def spans_fixture() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def experiment(*faults: Fault, name: str = "exp", ttl: float = 60.0, **scope: Any) -> Experiment:
    return Experiment(name, faults=list(faults), ttl=ttl, **scope)


def sample(catalog: Catalog, name: str, **labels: str) -> float:
    value = catalog.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        await asyncio.sleep(0.001)


Work = Callable[[], Coroutine[Any, Any, None]]


async def nothing() -> None:
    pass


async def through(dep: Dependency, seam: str, work: Work = nothing) -> Any:
    """Call ``dep`` through ``seam``, running ``work`` where the real dependency would be.

    Returns the transport's response for the transport seams, else ``"done"``.
    """
    if seam == "async_with":
        async with dep:
            await work()
    elif seam == "call":
        await dep.call(work)
    elif seam == "decorator":

        @dep
        async def decorated() -> None:
            await work()

        await decorated()
    elif seam in ("transport", "httpx2"):
        library: Any = httpx if seam == "transport" else httpx2

        async def handler(request: Any) -> Any:
            await work()
            return library.Response(200, text="real")

        transport = dep.transport(library.MockTransport(handler))
        async with library.AsyncClient(transport=transport, timeout=2 * WAIT) as client:
            return await client.get(URL)
    else:
        assert seam == "run_sync"
        loop = asyncio.get_running_loop()
        await dep.run_sync(lambda: asyncio.run_coroutine_threadsafe(work(), loop).result(WAIT))
    return "done"


class Reached:
    """``work`` for :func:`through` that records that the real dependency was called."""

    def __init__(self) -> None:
        self.count = 0
        self.threads: list[str] = []

    async def __call__(self) -> None:
        self.count += 1
        self.threads.append(threading.current_thread().name)
