"""Task attribution, per-task spans for sampled requests, and orphans."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from tailguard import _context
from tailguard.telemetry import tasks as registry
from tailguard.telemetry import tracing
from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.live import orphans

pytestmark = pytest.mark.anyio

ROUTE = "/items/{item_id}"


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(CollectorRegistry())


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    yield provider, exporter
    tracing.use_tracer_provider(None)


@pytest.fixture(autouse=True)
async def factory() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    registry.ensure_task_factory(loop)
    yield
    loop.set_task_factory(previous)


@pytest.fixture(autouse=True)
def fresh_log_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_logged", set())


def value(catalog: Catalog, name: str, **labels: str) -> float:
    found = catalog.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class Request:
    """Binds a RequestTasks as the current request for a block, as the middleware does."""

    def __init__(self, owner: registry.RequestTasks) -> None:
        self.owner = owner
        self.token: contextvars.Token[_context.Frame | None] | None = None

    def __enter__(self) -> registry.RequestTasks:
        self.token = _context.current.set(_context.Frame(None, self.owner))
        return self.owner

    def __exit__(self, *exc: object) -> None:
        assert self.token is not None
        _context.current.reset(self.token)


async def wait_forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.Event().wait()


async def finish_quickly() -> int:
    return 1


async def settle() -> None:
    for _ in range(3):  # done callbacks run on a later loop iteration
        await asyncio.sleep(0)


async def reap(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await settle()


# -- attribution -----------------------------------------------------------------------


async def test_spawned_tasks_are_counted_and_flushed_once_per_request(catalog: Catalog) -> None:
    with Request(registry.RequestTasks()) as owner:
        for _ in range(3):
            await asyncio.create_task(finish_quickly())
        await asyncio.gather(finish_quickly(), finish_quickly())
    assert owner.spawned == 5
    assert value(catalog, "tailguard_tasks_spawned_total", route=ROUTE) == 0  # not per task
    assert owner.finish(ROUTE, catalog=catalog) == 0
    assert owner.finish(ROUTE, catalog=catalog) == 0  # a second call changes nothing
    assert value(catalog, "tailguard_tasks_spawned_total", route=ROUTE) == 5


async def test_a_request_without_tasks_records_nothing(catalog: Catalog) -> None:
    assert registry.RequestTasks().finish(ROUTE, catalog=catalog) == 0
    assert (
        catalog.registry.get_sample_value("tailguard_tasks_spawned_total", {"route": ROUTE}) is None
    )


async def test_finished_tasks_are_pruned_while_the_request_runs() -> None:
    with Request(registry.RequestTasks()) as owner:
        keep = asyncio.create_task(wait_forever())
        for _ in range(300):
            await asyncio.create_task(finish_quickly())
    assert owner.spawned == 301
    assert owner._live is not None
    assert len(owner._live) < 130
    assert owner.pending() == [keep]
    assert [task for task, _ in owner.live_tasks()] == [keep]
    await reap(keep)
    assert owner.live_tasks() == []


async def test_no_tasks_means_no_live_tasks() -> None:
    assert registry.RequestTasks().live_tasks() == []


# -- orphans ----------------------------------------------------------------------------


async def test_an_orphan_is_counted_logged_once_and_gauged_until_it_ends(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tailguard.tasks")
    requests = [registry.RequestTasks() for _ in range(2)]
    leftovers = []
    for owner in requests:
        with Request(owner):
            leftovers.append(asyncio.create_task(wait_forever()))
            await asyncio.create_task(finish_quickly())  # done: not an orphan
    assert [owner.finish(ROUTE, catalog=catalog) for owner in requests] == [1, 1]
    labels = {"route": ROUTE, "action": "left"}
    assert value(catalog, "tailguard_tasks_orphaned_total", **labels) == 2
    assert value(catalog, "tailguard_tasks_live", route=ROUTE) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "task wait_forever outlived its request (route /items/{item_id}) and was left running; "
        "further orphans of this coroutine are counted, not logged"
    ]
    assert not any(task.done() for task in leftovers)  # "leave" leaves them alone
    listed = [task for task, orphan in orphans.items() if orphan.route == ROUTE]
    assert set(leftovers) <= set(listed)
    await reap(*leftovers)
    assert value(catalog, "tailguard_tasks_live", route=ROUTE) == 0
    assert not set(leftovers) & {task for task, _ in orphans.items()}


async def test_the_cancel_policy_cancels_orphans(catalog: Catalog) -> None:
    started = asyncio.Event()
    with Request(registry.RequestTasks()) as owner:
        leftover = asyncio.create_task(wait_forever(started))
    await started.wait()
    assert owner.finish("/reports", cancel=True, catalog=catalog) == 1
    with pytest.raises(asyncio.CancelledError):
        await leftover
    assert (
        value(catalog, "tailguard_tasks_orphaned_total", route="/reports", action="cancelled") == 1
    )
    await settle()
    assert value(catalog, "tailguard_tasks_live", route="/reports") == 0


async def test_tasks_the_request_already_cancelled_are_not_orphans(catalog: Catalog) -> None:
    with Request(registry.RequestTasks()) as owner:
        stopping = asyncio.create_task(wait_forever())
    owner.cancel_pending()  # what a deadline or a disconnect does before finish()
    assert owner.finish(ROUTE, catalog=catalog) == 0
    assert value(catalog, "tailguard_tasks_orphaned_total", route=ROUTE, action="left") == 0
    await reap(stopping)


async def test_tasks_an_orphan_spawns_later_are_orphans_too(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tailguard.tasks")
    go = asyncio.Event()
    spawned: list[asyncio.Task[None]] = []

    async def background() -> None:
        await go.wait()
        spawned.append(asyncio.create_task(wait_forever()))
        await asyncio.create_task(finish_quickly())  # short, but it too outlived the request
        await asyncio.Event().wait()

    with Request(registry.RequestTasks()) as owner:
        parent = asyncio.create_task(background())
    assert owner.finish("/jobs", catalog=catalog) == 1
    go.set()
    while not spawned:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert value(catalog, "tailguard_tasks_orphaned_total", route="/jobs", action="left") == 3
    assert {r.args[0] for r in caplog.records} == {  # type: ignore[index]
        "test_tasks_an_orphan_spawns_later_are_orphans_too.<locals>.background",
        "wait_forever",
        "finish_quickly",
    }
    await reap(parent, *spawned)
    assert value(catalog, "tailguard_tasks_live", route="/jobs") == 0


async def test_orphans_of_a_request_whose_policy_is_cancel_are_cancelled_at_birth() -> None:
    go = asyncio.Event()
    spawned: list[asyncio.Task[None]] = []

    async def cleanup() -> None:
        try:
            await go.wait()
        finally:
            spawned.append(asyncio.create_task(wait_forever()))

    with Request(registry.RequestTasks()) as owner:
        parent = asyncio.create_task(cleanup())
    await asyncio.sleep(0)
    assert owner.finish("/jobs", cancel=True) == 1
    await asyncio.gather(parent, return_exceptions=True)
    (child,) = spawned
    await asyncio.gather(child, return_exceptions=True)
    assert child.cancelled()


async def test_logging_stops_at_the_cap_but_counting_does_not(
    catalog: Catalog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "LOGGED_NAMES", 1)
    caplog.set_level(logging.WARNING, logger="tailguard.tasks")

    async def other() -> None:
        await asyncio.Event().wait()

    with Request(registry.RequestTasks()) as owner:
        leftovers = [asyncio.create_task(wait_forever()), asyncio.create_task(other())]
    assert owner.finish(ROUTE, catalog=catalog) == 2
    assert len(caplog.records) == 1
    assert value(catalog, "tailguard_tasks_orphaned_total", route=ROUTE, action="left") == 2
    await reap(*leftovers)


async def test_orphans_are_reported_without_metrics() -> None:
    with Request(registry.RequestTasks()) as owner:
        leftover = asyncio.create_task(wait_forever())
    assert owner.finish(ROUTE) == 1
    await reap(leftover)


# -- spans for sampled requests -----------------------------------------------------------


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_a_sampled_request_traces_each_task_as_a_child_span(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider

    async def nested() -> int:
        return await asyncio.create_task(finish_quickly())

    async def fails() -> None:
        raise ValueError("boom")

    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("GET /items/{item_id}") as server:
        owner = registry.RequestTasks()
        owner.span = server
        with Request(owner):
            assert await asyncio.create_task(nested()) == 1
            failing = asyncio.create_task(fails())
            await asyncio.gather(failing, return_exceptions=True)
            stuck = asyncio.create_task(wait_forever())
            await asyncio.sleep(0)
        await reap(stuck)
        owner.finish(ROUTE)
    spans = by_name(exporter)
    root = spans["GET /items/{item_id}"]
    outer = spans["task test_a_sampled_request_traces_each_task_as_a_child_span.<locals>.nested"]
    inner = spans["task finish_quickly"]
    failed = spans["task test_a_sampled_request_traces_each_task_as_a_child_span.<locals>.fails"]
    cancelled = spans["task wait_forever"]
    assert {span.context.trace_id for span in spans.values()} == {root.context.trace_id}
    assert outer.parent is not None
    assert outer.parent.span_id == root.context.span_id
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id
    assert [s.attributes["tailguard.task.state"] for s in (outer, failed, cancelled)] == [
        "finished",
        "exception",
        "cancelled",
    ]
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert cancelled.status.status_code is StatusCode.UNSET


async def test_an_unsampled_request_gets_no_task_spans(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    with Request(registry.RequestTasks()) as owner:
        await asyncio.create_task(finish_quickly())
    assert owner.spawned == 1
    assert exporter.get_finished_spans() == ()


async def test_task_spans_leave_unretrieved_exceptions_to_asyncio(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))

    async def fails() -> None:
        raise ValueError("nobody awaits me")

    try:
        with trace.get_tracer("t", tracer_provider=provider[0]).start_as_current_span("r") as root:
            owner = registry.RequestTasks()
            owner.span = root
            with Request(owner):
                task = asyncio.create_task(fails())
            await settle()
            assert task.done()
            owner.finish(ROUTE)
        del task
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == ["Task exception was never retrieved"]
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("task ")]
    assert span.attributes is not None
    assert span.attributes["tailguard.task.state"] == "exception"


async def test_an_explicit_context_is_copied_not_changed(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer = provider[0].get_tracer("test")
    with tracer.start_as_current_span("GET /x") as server:
        owner = registry.RequestTasks()
        owner.span = server
        with Request(owner):
            mine = contextvars.copy_context()
        seen: list[trace.Span] = []

        async def look() -> None:
            seen.append(trace.get_current_span())

        await asyncio.get_running_loop().create_task(look(), context=mine)
    assert seen[0] is not server
    assert seen[0].is_recording() is False
    assert mine.run(trace.get_current_span) is server
    assert owner.spawned == 1


async def test_orphans_of_a_sampled_request_are_marked_on_its_span(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    with tracer_provider.get_tracer("test").start_as_current_span("GET /x") as server:
        owner = registry.RequestTasks()
        owner.span = server
        with Request(owner):
            leftover = asyncio.create_task(wait_forever())
        await asyncio.sleep(0)
        assert owner.finish("/x", cancel=True) == 1
    await asyncio.gather(leftover, return_exceptions=True)
    await settle()
    spans = by_name(exporter)
    (event,) = spans["GET /x"].events
    assert event.name == "tailguard.tasks_orphaned"
    assert dict(event.attributes or {}) == {
        "tailguard.tasks.count": 1,
        "tailguard.tasks.action": "cancelled",
        "tailguard.tasks.coroutines": ("wait_forever",),
    }
    assert spans["task wait_forever"].attributes == {
        "tailguard.task.coroutine": "wait_forever",
        "tailguard.task.state": "cancelled",
    }
