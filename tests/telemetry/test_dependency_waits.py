"""Waits for a dependency's slot: tailguard_queue_wait_seconds{kind="dependency"} and the span.

As with routes, only calls that did not get a slot at once are recorded,
whether they were granted one after waiting, shed, cut off by their deadline
or cancelled. No test asserts how long a wait took: only whether one was
recorded, and that it was positive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import tailguard
from tailguard import Deadline, DeadlineExceeded, Dependency, _context
from tailguard.admission import Rejected
from tailguard.telemetry.catalog import Catalog, catalog_for
from tailguard.telemetry.tracing import tracer, use_tracer_provider

pytestmark = pytest.mark.anyio

SHORT = 0.05
"""A budget or queue timeout the holder is sure to outlast."""
WAIT = 20.0
"""A generous bound for things that happen at once, even on a loaded machine."""
WAITS = "tailguard_queue_wait_seconds"
LABELS = {"limiter": "db", "kind": "dependency"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def catalog(registry: CollectorRegistry) -> Catalog:
    """The catalog the test's dependencies record into: their registry's."""
    return catalog_for(registry)


@pytest.fixture
def db(registry: CollectorRegistry) -> Iterator[Dependency]:
    dep = Dependency("db", max_concurrency=1, max_queue=4, registry=registry)
    yield dep
    dep.close()


def waits(catalog: Catalog) -> float:
    """How many waits were observed (0 if none ever was)."""
    count = catalog.registry.get_sample_value(f"{WAITS}_count", LABELS)
    return 0.0 if count is None else count


def waited_seconds(catalog: Catalog) -> float:
    total = catalog.registry.get_sample_value(f"{WAITS}_sum", LABELS)
    return 0.0 if total is None else total


async def hold(dep: Dependency, release: asyncio.Event) -> asyncio.Task[None]:
    """Take ``dep``'s only slot until ``release`` is set; returns once it is held."""
    entered = asyncio.Event()

    async def holder() -> None:
        async with dep:
            entered.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.wait_for(entered.wait(), WAIT)
    return task


async def test_dependency_waits_show_in_queue_wait_seconds(
    db: Dependency, catalog: Catalog
) -> None:
    """docs/metrics.md: waiting shows as tailguard_queue_wait_seconds{kind="dependency"}."""
    release = asyncio.Event()
    holder = await hold(db, release)
    waiter = asyncio.create_task(db.call(asyncio.sleep, 0))
    await asyncio.sleep(0)
    assert db.limiter.queued == 1
    release.set()
    await asyncio.gather(holder, waiter)
    assert waits(catalog) == 1  # the waiter; the holder got its slot at once
    assert waited_seconds(catalog) > 0


async def test_calls_given_a_slot_at_once_are_not_recorded(
    db: Dependency, catalog: Catalog
) -> None:
    for _ in range(3):
        async with db:
            pass
    await db.run_sync(int)
    calls = catalog.registry.get_sample_value(
        "tailguard_dependency_calls_total",
        {"dependency": "db", "outcome": "ok", "status_class": "none"},
    )
    assert calls == 4
    assert waits(catalog) == 0


@pytest.mark.parametrize("how", ["queue_timeout", "deadline", "cancelled"])
async def test_a_call_that_waited_and_got_no_slot_is_recorded(
    registry: CollectorRegistry, catalog: Catalog, how: str
) -> None:
    timeout = SHORT if how == "queue_timeout" else None
    db = Dependency("db", max_concurrency=1, max_queue=4, queue_timeout=timeout, registry=registry)
    release = asyncio.Event()
    holder = await hold(db, release)
    if how == "queue_timeout":
        with pytest.raises(Rejected):
            await db.call(asyncio.sleep, 0)
    elif how == "deadline":
        with pytest.raises(DeadlineExceeded), tailguard.deadline(SHORT):
            await db.call(asyncio.sleep, 0)
    else:
        waiter = asyncio.create_task(db.call(asyncio.sleep, 0))
        await asyncio.sleep(0)
        assert db.limiter.queued == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert waits(catalog) == 1
    assert waited_seconds(catalog) > 0
    release.set()
    await holder
    assert waits(catalog) == 1


async def test_a_call_shed_because_the_queue_is_full_is_recorded_as_routes_are(
    registry: CollectorRegistry, catalog: Catalog
) -> None:
    # No queue: shed as soon as the slot is taken.
    db = Dependency("db", max_concurrency=1, registry=registry)
    release = asyncio.Event()
    holder = await hold(db, release)
    with pytest.raises(Rejected) as caught:
        await db.call(asyncio.sleep, 0)
    assert caught.value.reason == "queue_full"
    assert waits(catalog) == 1
    release.set()
    await holder


async def test_a_call_refused_before_it_queued_is_not_recorded(
    db: Dependency, catalog: Catalog
) -> None:
    deadline = Deadline.after(0, source="test")  # no time left: refused without asking
    token = _context.current.set(_context.Frame(deadline, None))
    try:
        with pytest.raises(DeadlineExceeded):
            await db.call(asyncio.sleep, 0)
    finally:
        _context.current.reset(token)
    calls = catalog.registry.get_sample_value(
        "tailguard_dependency_calls_total",
        {"dependency": "db", "outcome": "deadline_exceeded", "status_class": "none"},
    )
    assert calls == 1
    assert waits(catalog) == 0


async def test_the_span_says_a_slot_given_at_once_was_not_waited_for(db: Dependency) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        with tracer().start_as_current_span("request"):
            release = asyncio.Event()
            holder = await hold(db, release)  # at once
            waiter = asyncio.create_task(db.call(asyncio.sleep, 0))
            await asyncio.sleep(0)
            release.set()
            await asyncio.gather(holder, waiter)
    finally:
        use_tracer_provider(None)
    slot_waits = [
        (span.attributes or {})["tailguard.dependency.slot_wait_ms"]
        for span in exporter.get_finished_spans()
        if span.name == "tailguard.dependency db"
    ]
    assert slot_waits[0] == 0.0
    assert slot_waits[1] > 0.0


async def test_a_call_cut_off_by_the_request_deadline_counts_as_deadline_exceeded(
    registry: CollectorRegistry,
) -> None:
    db = Dependency("db-deadline", max_concurrency=1, registry=registry)
    with pytest.raises(tailguard.DeadlineExceeded):
        async with tailguard.deadline(0.01):
            async with db:
                await asyncio.sleep(10)
    outcome = registry.get_sample_value(
        "tailguard_dependency_calls_total",
        {"dependency": "db-deadline", "outcome": "deadline_exceeded", "status_class": "none"},
    )
    assert outcome == 1
