"""Dependency: one bulkhead behind async with, @decorator, call(), run_sync() and httpx transports.

Timing rule: no test asserts how long anything took. Ordering comes from events
and futures; budgets are tiny (0.05 s) against work that would take 30 s, or
waits are generous (20 s) upper bounds for things that happen at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

import tailguard
from tailguard import Deadline, DeadlineExceeded, _context
from tailguard.admission import LimiterState, Rejected
from tailguard.dependency import Dependency, DependencyState
from tailguard.dependency.seam import Seam
from tailguard.dependency.threads import ThreadPool

pytestmark = pytest.mark.anyio

SHORT = 0.05
"""A budget the work under test is sure to outlast."""
FOREVER = 30.0
WAIT = 20.0
"""A generous bound for things that happen at once, even on a loaded machine."""
URL = "http://downstream.test/items"
HEADER = "x-request-timeout-ms"

Work = Callable[[], Coroutine[Any, Any, None]]


# -- helpers --------------------------------------------------------------------------


@pytest.fixture
def deps() -> Iterator[Callable[..., Dependency]]:
    """Make dependencies; their thread pools are shut down after the test."""
    made: list[Dependency] = []

    def make(name: str = "db", **settings: Any) -> Dependency:
        settings.setdefault("max_concurrency", 1)
        dep = Dependency(name, **settings)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.close()


class ThreadGate:
    """A job for worker threads: reports its arrival to the loop, then blocks until opened."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.arrived: asyncio.Queue[str] = asyncio.Queue()
        self.opened = threading.Event()
        self.finished = 0

    def __call__(self) -> str:
        name = threading.current_thread().name
        self.loop.call_soon_threadsafe(self.arrived.put_nowait, name)
        if not self.opened.wait(WAIT):
            raise TimeoutError("the test never opened the gate")
        self.finished += 1
        return name

    async def next_arrival(self) -> str:
        return await asyncio.wait_for(self.arrived.get(), WAIT)


@pytest.fixture
def gates() -> Iterator[Callable[[], ThreadGate]]:
    """Make thread gates; all are opened after the test so no thread stays blocked."""
    made: list[ThreadGate] = []

    def make() -> ThreadGate:
        made.append(ThreadGate())
        return made[-1]

    yield make
    for gate in made:
        gate.opened.set()


async def wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        await asyncio.sleep(0.001)


async def hold(dep: Dependency, release: asyncio.Event) -> asyncio.Task[None]:
    """A task holding one slot of ``dep`` until ``release`` is set."""
    entered = asyncio.Event()

    async def holder() -> None:
        async with dep:
            entered.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.wait_for(entered.wait(), WAIT)
    return task


@contextmanager
def unarmed_deadline(seconds: float) -> Iterator[Deadline]:
    """A deadline in force that no timer enforces: only the code under test can act on it."""
    deadline = Deadline.after(seconds, source="test")
    token = _context.current.set(_context.Frame(deadline, None))
    try:
        yield deadline
    finally:
        _context.current.reset(token)


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """What each call reported to its seam's ``release`` (``None`` for success)."""
    seen: list[BaseException | None] = []
    original = Seam.release

    def spy(self: Seam, permit: Any, error: BaseException | None, status: int = 0) -> None:
        seen.append(error)
        original(self, permit, error, status)

    monkeypatch.setattr(Seam, "release", spy)
    return seen


ENTRIES = ["async_with", "call", "decorator", "transport", "run_sync"]


async def through(dep: Dependency, entry: str, work: Work) -> None:
    """Run ``work`` inside ``dep``'s bulkhead through one of its entry points."""
    if entry == "async_with":
        async with dep:
            await work()
    elif entry == "call":
        await dep.call(work)
    elif entry == "decorator":
        await dep(work)()
    elif entry == "transport":

        async def handler(request: httpx.Request) -> httpx.Response:
            await work()
            return httpx.Response(200)

        transport = dep.transport(httpx.MockTransport(handler))
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(URL)
    else:
        assert entry == "run_sync"
        loop = asyncio.get_running_loop()
        # The thread blocks until ``work`` has run on the loop.
        await dep.run_sync(lambda: asyncio.run_coroutine_threadsafe(work(), loop).result(WAIT))


async def nothing() -> None:
    pass


# -- construction -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", None, 3, b"db"])
def test_bad_name_is_refused(name: Any) -> None:
    with pytest.raises(ValueError, match="dependency name must be a non-empty str"):
        Dependency(name, max_concurrency=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrency", 0),
        ("max_concurrency", True),
        ("max_concurrency", 1.5),
        ("max_concurrency", "8"),
        ("max_queue", -1),
        ("max_queue", False),
        ("queue_timeout", 0),
        ("queue_timeout", -1.0),
        ("queue_timeout", math.inf),
        ("queue_timeout", math.nan),
        ("queue_timeout", True),
        ("queue_timeout", "1"),
    ],
)
def test_bad_settings_name_the_dependency_and_the_field(field: str, value: Any) -> None:
    settings: dict[str, Any] = {"max_concurrency": 2, field: value}
    with pytest.raises(ValueError, match=rf"^dependency 'inventory': {field} must be"):
        Dependency("inventory", **settings)


def test_settings_and_repr(deps: Callable[..., Dependency]) -> None:
    dep = deps("inventory", max_concurrency=8, max_queue=16, queue_timeout=2)
    assert (dep.name, dep.max_concurrency, dep.max_queue, dep.queue_timeout) == (
        "inventory",
        8,
        16,
        2,
    )
    assert dep.limiter.name == "inventory"
    assert repr(dep) == "<Dependency 'inventory' in_use=0/8 queued=0/16>"
    assert deps("other", max_concurrency=1).queue_timeout is None


def test_state_has_the_limiter_and_the_pool(deps: Callable[..., Dependency]) -> None:
    state = deps("inventory", max_concurrency=3, max_queue=5).state()
    assert isinstance(state, DependencyState)
    assert isinstance(state.limiter, LimiterState)
    assert state.name == state.limiter.name == "inventory"
    assert (state.limiter.limit, state.limiter.max_queue) == (3, 5)
    assert (state.threads_in_use, state.threads_max, state.thread_queue_wait) == (0, 3, 0.0)


# -- async with --------------------------------------------------------------------------


async def test_async_with_holds_a_slot_for_the_block(
    deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps(max_concurrency=2)
    async with dep as entered:
        assert entered is None
        assert dep.limiter.in_use == 1
    assert dep.limiter.in_use == 0
    assert exits == [None]


async def test_async_with_releases_on_error_and_lets_it_through(
    deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()
    with pytest.raises(KeyError):
        async with dep:
            raise KeyError("boom")
    assert dep.limiter.in_use == 0
    assert isinstance(exits[0], KeyError)


async def test_async_with_nests_in_one_task(deps: Callable[..., Dependency]) -> None:
    dep = deps(max_concurrency=2)
    async with dep:
        async with dep:
            assert dep.limiter.in_use == 2
        assert dep.limiter.in_use == 1
    assert dep.limiter.in_use == 0


async def test_async_with_from_fifty_concurrent_tasks(deps: Callable[..., Dependency]) -> None:
    dep = deps(max_concurrency=5, max_queue=50)
    release = asyncio.Event()
    active = peak = 0

    async def worker() -> None:
        nonlocal active, peak
        async with dep:
            active += 1
            peak = max(peak, active)
            await release.wait()
            active -= 1

    tasks = [asyncio.create_task(worker()) for _ in range(50)]
    await wait_until(lambda: dep.limiter.in_use == 5 and dep.limiter.queued == 45)
    assert active == 5
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 5
    assert (dep.limiter.in_use, dep.limiter.queued) == (0, 0)
    assert dep.state().limiter.admitted == 50


async def test_blocks_of_two_dependencies_may_exit_out_of_order(
    deps: Callable[..., Dependency],
) -> None:
    a, b = deps("a"), deps("b")
    await a.__aenter__()
    await b.__aenter__()
    await a.__aexit__(None, None, None)  # as an async generator interleaved with its caller can
    assert (a.limiter.in_use, b.limiter.in_use) == (0, 1)
    await b.__aexit__(None, None, None)
    assert b.limiter.in_use == 0


async def test_exit_without_enter_is_an_error(deps: Callable[..., Dependency]) -> None:
    a, b = deps("a"), deps("b")
    with pytest.raises(RuntimeError, match="without __aenter__"):
        await a.__aexit__(None, None, None)
    await b.__aenter__()
    with pytest.raises(RuntimeError, match="without __aenter__"):
        await a.__aexit__(None, None, None)
    await b.__aexit__(None, None, None)
    assert b.limiter.in_use == 0


async def test_a_slot_taken_in_another_task_is_not_exited_here(
    deps: Callable[..., Dependency],
) -> None:
    dep = deps()
    await asyncio.create_task(dep.__aenter__())  # the task's context, not ours, holds it
    with pytest.raises(RuntimeError, match="without __aenter__"):
        await dep.__aexit__(None, None, None)


async def test_cancelled_while_queued_leaves_the_queue(deps: Callable[..., Dependency]) -> None:
    dep = deps(max_queue=1)
    release = asyncio.Event()
    holder = await hold(dep, release)

    async def waiter() -> None:
        async with dep:
            raise AssertionError("never admitted")  # pragma: no cover

    task = asyncio.create_task(waiter())
    await wait_until(lambda: dep.limiter.queued == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (dep.limiter.in_use, dep.limiter.queued) == (1, 0)
    release.set()
    await holder
    assert dep.limiter.in_use == 0


async def test_cancelled_inside_the_block_releases(
    deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()
    entered = asyncio.Event()

    async def worker() -> None:
        async with dep:
            entered.set()
            await asyncio.sleep(FOREVER)

    task = asyncio.create_task(worker())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dep.limiter.in_use == 0
    assert isinstance(exits[0], asyncio.CancelledError)


# -- decorator and call() ---------------------------------------------------------------


async def test_decorator_keeps_the_signature_and_runs_inside(
    deps: Callable[..., Dependency],
) -> None:
    dep = deps()

    async def fetch(item: str, *, count: int = 1) -> tuple[str, int, int]:
        """Fetch an item."""
        return item, count, dep.limiter.in_use

    guarded = dep(fetch)
    assert guarded.__name__ == "fetch"
    assert guarded.__doc__ == "Fetch an item."
    assert guarded.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(guarded) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(guarded)
    assert await guarded("apple", count=3) == ("apple", 3, 1)
    assert dep.limiter.in_use == 0


async def test_decorator_on_a_method(deps: Callable[..., Dependency]) -> None:
    dep = deps()

    class Client:
        @dep
        async def get(self, key: str) -> str:
            return f"{key}:{dep.limiter.in_use}"

    assert await Client().get("a") == "a:1"


def test_decorator_refuses_a_sync_function(deps: Callable[..., Dependency]) -> None:
    dep = deps("inventory")
    with pytest.raises(TypeError, match="@inventory decorates async functions"):
        dep(len)  # type: ignore[arg-type]


async def test_call_passes_arguments_and_releases_on_error(
    deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()

    async def add(a: int, b: int = 0) -> int:
        return a + b + dep.limiter.in_use

    async def fail() -> None:
        raise ValueError("down")

    assert await dep.call(add, 1, b=2) == 4
    with pytest.raises(ValueError, match="down"):
        await dep.call(fail)
    assert dep.limiter.in_use == 0
    assert exits[0] is None
    assert isinstance(exits[1], ValueError)


# -- queueing and rejection ------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
async def test_full_bulkhead_rejects(entry: str, deps: Callable[..., Dependency]) -> None:
    dep = deps("inventory")
    release = asyncio.Event()
    holder = await hold(dep, release)
    with pytest.raises(Rejected) as caught:
        await through(dep, entry, nothing)
    assert (caught.value.reason, caught.value.limiter) == ("queue_full", "inventory")
    release.set()
    await holder
    assert dep.state().limiter.rejected["queue_full"] == 1
    assert dep.limiter.in_use == 0


async def test_queue_timeout_rejects(deps: Callable[..., Dependency]) -> None:
    dep = deps(max_queue=1, queue_timeout=SHORT)
    release = asyncio.Event()
    holder = await hold(dep, release)
    with pytest.raises(Rejected) as caught:
        async with dep:
            raise AssertionError("never admitted")  # pragma: no cover
    assert caught.value.reason == "queue_timeout"
    release.set()
    await holder
    assert (dep.limiter.in_use, dep.limiter.queued) == (0, 0)


async def test_queued_calls_get_in_one_slot_at_a_time(deps: Callable[..., Dependency]) -> None:
    dep = deps(max_concurrency=1, max_queue=3)
    release = asyncio.Event()
    holder = await hold(dep, release)
    active = peak = done = 0

    async def work() -> None:
        nonlocal active, peak, done
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        active -= 1
        done += 1

    tasks = [
        asyncio.create_task(through(dep, e, work)) for e in ("call", "decorator", "async_with")
    ]
    await wait_until(lambda: dep.limiter.queued == 3)
    with pytest.raises(Rejected, match="queue_full"):
        await dep.call(work)
    assert done == 0
    release.set()
    await asyncio.gather(holder, *tasks)
    assert (done, peak) == (3, 1)


# -- deadlines ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
async def test_no_time_left_fails_fast_without_trying(
    entry: str, deps: Callable[..., Dependency]
) -> None:
    dep = deps()
    ran = False

    async def work() -> None:  # pragma: no cover - must not run
        nonlocal ran
        ran = True

    with unarmed_deadline(0) as deadline, pytest.raises(DeadlineExceeded) as caught:
        await through(dep, entry, work)
    assert caught.value.deadline == deadline
    assert not ran
    state = dep.state().limiter
    assert state.admitted == 0
    assert sum(state.rejected.values()) == 0


@pytest.mark.parametrize("entry", ENTRIES)
async def test_wait_for_a_slot_is_bounded_by_the_deadline(
    entry: str, deps: Callable[..., Dependency]
) -> None:
    dep = deps(max_queue=4)
    release = asyncio.Event()
    holder = await hold(dep, release)
    with pytest.raises(DeadlineExceeded), tailguard.deadline(SHORT):
        await through(dep, entry, nothing)
    assert (dep.limiter.in_use, dep.limiter.queued) == (1, 0)
    release.set()
    await holder
    assert dep.limiter.in_use == 0


async def test_wait_capped_at_the_deadline_even_without_a_timer(
    deps: Callable[..., Dependency],
) -> None:
    dep = deps(max_queue=4)
    release = asyncio.Event()
    holder = await hold(dep, release)
    with unarmed_deadline(SHORT) as deadline, pytest.raises(DeadlineExceeded) as caught:
        async with dep:
            raise AssertionError("never admitted")  # pragma: no cover
    assert caught.value.deadline == deadline
    assert isinstance(caught.value.__cause__, Rejected)
    assert caught.value.__cause__.reason == "deadline"
    assert dep.limiter.queued == 0
    release.set()
    await holder


@pytest.mark.parametrize("entry", ["async_with", "call", "decorator", "transport"])
async def test_work_outlasting_the_deadline_is_cancelled_and_releases(
    entry: str, deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()

    async def slow() -> None:
        await asyncio.sleep(FOREVER)

    with pytest.raises(DeadlineExceeded), tailguard.deadline(SHORT):
        await through(dep, entry, slow)
    assert dep.limiter.in_use == 0
    assert isinstance(exits[0], asyncio.CancelledError)


async def test_generous_or_infinite_deadline_admits(deps: Callable[..., Dependency]) -> None:
    dep = deps()
    with tailguard.deadline(math.inf):
        async with dep:
            assert dep.limiter.in_use == 1
    with tailguard.deadline(FOREVER):
        assert await dep.call(asyncio.sleep, 0, "ok") == "ok"


# -- run_sync -----------------------------------------------------------------------------


async def test_run_sync_uses_the_dependencys_own_threads(
    deps: Callable[..., Dependency],
    gates: Callable[[], ThreadGate],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()

    def no_default_executor(*args: Any) -> Any:
        raise AssertionError("the shared default executor was used")

    monkeypatch.setattr(loop, "run_in_executor", no_default_executor)
    dep = deps("inventory", max_concurrency=2, max_queue=1)
    gate = gates()
    calls = [asyncio.create_task(dep.run_sync(gate)) for _ in range(3)]
    names = {await gate.next_arrival(), await gate.next_arrival()}
    assert names == {"tailguard-inventory-0", "tailguard-inventory-1"}
    assert threading.current_thread().name not in names
    await wait_until(lambda: dep.limiter.queued == 1)  # the third waits for a slot, not a thread
    state = dep.state()
    assert (state.threads_in_use, state.threads_max) == (2, 2)
    gate.opened.set()
    assert set(await asyncio.gather(*calls)) == names  # the third reused one of the two
    assert dep.state().threads_in_use == 0
    assert dep.state().thread_queue_wait >= 0.0


async def test_run_sync_copies_the_context_into_the_thread(
    deps: Callable[..., Dependency],
) -> None:
    dep = deps()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("request-42")

    def read() -> tuple[str, float]:
        return var.get(), tailguard.remaining()

    assert await dep.run_sync(read) == ("request-42", math.inf)
    with tailguard.deadline(FOREVER):
        value, left = await dep.run_sync(read)
    assert value == "request-42"
    assert 0 < left <= FOREVER


async def test_run_sync_passes_arguments_results_and_errors(
    deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()
    assert await dep.run_sync(divmod, 7, 2) == (3, 1)
    assert await dep.run_sync(int, "ff", base=16) == 255
    with pytest.raises(ZeroDivisionError):
        await dep.run_sync(divmod, 1, 0)
    assert exits[:2] == [None, None]
    assert isinstance(exits[2], ZeroDivisionError)
    assert dep.limiter.in_use == 0


async def test_run_sync_refuses_an_async_function(deps: Callable[..., Dependency]) -> None:
    with pytest.raises(TypeError, match="await call"):
        await deps().run_sync(nothing)  # type: ignore[unused-coroutine]


async def test_run_sync_holds_the_slot_until_the_thread_finishes(
    deps: Callable[..., Dependency], gates: Callable[[], ThreadGate]
) -> None:
    dep = deps()
    gate = gates()
    task = asyncio.create_task(dep.run_sync(gate))
    await gate.next_arrival()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The caller is gone but the thread is not: it still counts, and its slot stays taken.
    state = dep.state()
    assert (state.limiter.in_use, state.threads_in_use) == (1, 1)
    with pytest.raises(Rejected, match="queue_full"):
        await dep.run_sync(gate)
    gate.opened.set()
    await dep.aclose()
    assert gate.finished == 1
    state = dep.state()
    assert (state.limiter.in_use, state.threads_in_use) == (0, 0)


async def test_run_sync_wait_stops_at_the_deadline_but_the_thread_runs_on(
    deps: Callable[..., Dependency], gates: Callable[[], ThreadGate]
) -> None:
    dep = deps()
    gate = gates()
    with pytest.raises(DeadlineExceeded), tailguard.deadline(SHORT):
        await dep.run_sync(gate)  # would take 30 s (WAIT) if the gate stayed shut
    gate.opened.set()
    await dep.aclose()
    assert dep.limiter.in_use == 0
    assert dep.state().threads_in_use == 0


async def test_run_sync_job_cancelled_before_its_thread_started(
    deps: Callable[..., Dependency],
    gates: Callable[[], ThreadGate],
    exits: list[BaseException | None],
) -> None:
    dep = deps(max_concurrency=1)
    gate = gates()
    # Occupy the only thread behind the bulkhead's back, so the next job queues in the pool.
    blocker = asyncio.create_task(dep._pool.run(gate, done=lambda error: None))
    await gate.next_arrival()
    ran = threading.Event()
    task = asyncio.create_task(dep.run_sync(ran.set))
    await wait_until(lambda: dep.limiter.in_use == 1)
    await asyncio.sleep(0)  # let it submit and start waiting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: dep.limiter.in_use == 0)
    assert isinstance(exits[0], asyncio.CancelledError)
    gate.opened.set()
    await blocker
    assert not ran.is_set()


async def test_run_sync_that_cannot_submit_releases(
    deps: Callable[..., Dependency], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: ThreadPool, job: Any) -> Any:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(ThreadPool, "_submit", refuse)
    dep = deps()
    with pytest.raises(RuntimeError, match="interpreter shutdown"):
        await dep.run_sync(print)
    assert dep.limiter.in_use == 0


async def test_close_then_run_sync_starts_a_fresh_pool(deps: Callable[..., Dependency]) -> None:
    dep = deps("db", max_concurrency=1)

    def name() -> str:
        return threading.current_thread().name

    assert await dep.run_sync(name) == "tailguard-db-0"
    dep.close()
    dep.close()  # idempotent
    assert await dep.run_sync(name) == "tailguard-db-1"
    await dep.aclose()


def test_thread_finishing_after_its_loop_closed(deps: Callable[..., Dependency]) -> None:
    dep = deps()
    opened = threading.Event()
    started = threading.Event()

    def job() -> None:
        started.set()
        opened.wait(WAIT)

    async def main() -> None:
        task = asyncio.create_task(dep.run_sync(job))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    opened.set()
    give_up = time.monotonic() + WAIT
    while dep._pool._running or dep.state().threads_in_use:
        assert time.monotonic() < give_up
        time.sleep(0.001)
    # Nobody is left to hand the slot to: the closed loop's limiter keeps it.
    assert dep.limiter.in_use == 1


# -- httpx and httpx2 transports ----------------------------------------------------------


@pytest.fixture(params=[pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")])
def lib(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


async def test_transport_holds_a_slot_per_request_and_propagates_the_deadline(
    lib: ModuleType, deps: Callable[..., Dependency]
) -> None:
    dep = deps(max_concurrency=2)
    seen: list[tuple[int, str]] = []

    async def handler(request: Any) -> Any:
        seen.append((dep.limiter.in_use, request.headers.get(HEADER, "-")))
        return lib.Response(200, text="ok")

    transport = dep.transport(lib.MockTransport(handler))
    assert isinstance(transport, lib.AsyncBaseTransport)
    async with lib.AsyncClient(transport=transport) as client:
        assert (await client.get(URL)).text == "ok"
        with tailguard.deadline(FOREVER):
            await client.get(URL)
    assert seen[0] == (1, "-")
    assert seen[1][0] == 1
    assert 0 < int(seen[1][1]) <= FOREVER * 1000
    assert dep.limiter.in_use == 0


async def test_transport_custom_header(lib: ModuleType, deps: Callable[..., Dependency]) -> None:
    dep = deps()
    mock = lib.MockTransport(lambda request: lib.Response(200, text=request.headers["x-budget"]))
    async with lib.AsyncClient(transport=dep.transport(mock, header="x-budget")) as client:
        with tailguard.deadline(FOREVER):
            assert 0 < int((await client.get(URL)).text) <= FOREVER * 1000


async def body(first: asyncio.Event, rest: asyncio.Event) -> AsyncIterator[bytes]:
    yield b"first"
    first.set()
    await rest.wait()
    yield b"rest"


async def test_streamed_response_holds_the_slot_until_closed(
    lib: ModuleType, deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps(max_concurrency=1)
    first, rest = asyncio.Event(), asyncio.Event()
    mock = lib.MockTransport(lambda request: lib.Response(200, content=body(first, rest)))
    async with lib.AsyncClient(transport=dep.transport(mock)) as client:
        async with client.stream("GET", URL) as response:
            chunks = response.aiter_raw()
            assert await chunks.__anext__() == b"first"
            assert dep.limiter.in_use == 1
            with pytest.raises(Rejected):  # still full while the body is open
                await client.get(URL)
            await chunks.aclose()
        assert dep.limiter.in_use == 0
    assert exits[-1] is None


async def test_streamed_response_read_to_the_end_releases(
    lib: ModuleType, deps: Callable[..., Dependency]
) -> None:
    dep = deps()
    first, rest = asyncio.Event(), asyncio.Event()
    rest.set()
    mock = lib.MockTransport(lambda request: lib.Response(200, content=body(first, rest)))
    async with lib.AsyncClient(transport=dep.transport(mock)) as client:
        response = await client.send(client.build_request("GET", URL), stream=True)
        assert dep.limiter.in_use == 1
        assert await response.aread() == b"firstrest"
        assert dep.limiter.in_use == 0


async def test_body_that_fails_releases_at_once(
    lib: ModuleType, deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise ConnectionResetError("peer went away")

    mock = lib.MockTransport(lambda request: lib.Response(200, content=broken()))
    transport = dep.transport(mock)
    response = await transport.handle_async_request(lib.Request("GET", URL))
    chunks = []
    with pytest.raises(ConnectionResetError):
        async for chunk in response.stream:
            chunks.append(chunk)
    assert chunks == [b"part"]
    assert dep.limiter.in_use == 0  # before anyone closed the response
    assert isinstance(exits[0], ConnectionResetError)
    await response.aclose()
    assert len(exits) == 1


async def test_reader_stopping_early_is_not_a_failure(
    lib: ModuleType, deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()
    first, rest = asyncio.Event(), asyncio.Event()
    mock = lib.MockTransport(lambda request: lib.Response(200, content=body(first, rest)))
    response = await dep.transport(mock).handle_async_request(lib.Request("GET", URL))
    chunks = response.stream.__aiter__()
    assert await chunks.__anext__() == b"first"
    await chunks.aclose()  # GeneratorExit inside the stream
    assert dep.limiter.in_use == 1
    await response.aclose()
    assert dep.limiter.in_use == 0
    assert exits == [None]


async def test_inner_transport_error_releases(
    lib: ModuleType, deps: Callable[..., Dependency], exits: list[BaseException | None]
) -> None:
    dep = deps()

    def refuse(request: Any) -> Any:
        raise lib.ConnectError("refused", request=request)

    async with lib.AsyncClient(transport=dep.transport(lib.MockTransport(refuse))) as client:
        with pytest.raises(lib.ConnectError):
            await client.get(URL)
    assert dep.limiter.in_use == 0
    assert isinstance(exits[0], lib.ConnectError)


async def test_body_an_async_client_cannot_read_releases(
    lib: ModuleType, deps: Callable[..., Dependency]
) -> None:
    class SyncOnly(lib.SyncByteStream):  # type: ignore[name-defined,misc]
        def __iter__(self) -> Iterator[bytes]:
            yield b"sync"

    class Inner(lib.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        async def handle_async_request(self, request: Any) -> Any:
            return lib.Response(200, stream=SyncOnly())

    dep = deps()
    response = await dep.transport(Inner()).handle_async_request(lib.Request("GET", URL))
    assert isinstance(response.stream, SyncOnly)
    assert dep.limiter.in_use == 0


async def test_sync_client_is_refused(lib: ModuleType, deps: Callable[..., Dependency]) -> None:
    dep = deps("inventory")
    mock = lib.MockTransport(lambda request: lib.Response(200))
    with pytest.raises(TypeError, match="'inventory' is async-only"):
        lib.Client(transport=dep.transport(mock)).get(URL)
    with pytest.raises(TypeError, match="'inventory' is async-only"):
        with lib.Client(transport=dep.transport(mock)):
            pass  # pragma: no cover


async def test_transport_closes_its_inner_transport(
    lib: ModuleType, deps: Callable[..., Dependency]
) -> None:
    closed: list[bool] = []

    class Inner(lib.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        async def aclose(self) -> None:
            closed.append(True)

    async with deps().transport(Inner()):
        pass
    assert closed == [True]


@pytest.mark.parametrize(
    "inner",
    [object(), httpx.BaseTransport(), httpx2.BaseTransport()],
    ids=["object", "httpx-sync", "httpx2-sync"],
)
def test_transport_needs_an_async_httpx_transport(
    inner: object, deps: Callable[..., Dependency]
) -> None:
    with pytest.raises(TypeError, match="inner must be an httpx or httpx2 AsyncBaseTransport"):
        deps().transport(inner)  # type: ignore[call-overload]


async def test_default_inner_is_httpx_then_httpx2(
    deps: Callable[..., Dependency], monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deps()
    async with dep.transport() as transport:
        assert isinstance(transport, httpx.AsyncBaseTransport)
    monkeypatch.setitem(sys.modules, "tailguard.integrations.httpx", None)  # as if not installed
    async with dep.transport() as transport:
        assert isinstance(transport, httpx2.AsyncBaseTransport)
        assert not isinstance(transport, httpx.AsyncBaseTransport)


# -- everything at once -------------------------------------------------------------------


async def test_stress_mixed_outcomes_leak_no_slot(deps: Callable[..., Dependency]) -> None:
    dep = deps("stress", max_concurrency=4, max_queue=8)
    rng = random.Random(7)
    lock = threading.Lock()
    active = peak = 0

    def enter() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)

    def leave() -> None:
        nonlocal active
        with lock:
            active -= 1

    async def work(outcome: str, pause: float) -> None:
        enter()
        try:
            await asyncio.sleep(FOREVER if outcome == "slow" else pause)
            if outcome == "error":
                raise LookupError("injected")
        finally:
            leave()

    def blocking(outcome: str, pause: float) -> None:
        enter()
        try:
            time.sleep(SHORT * 2 if outcome == "slow" else pause)
            if outcome == "error":
                raise LookupError("injected")
        finally:
            leave()

    async def one(entry: str, outcome: str, arrival: float, pause: float) -> None:
        await asyncio.sleep(arrival)
        budget = {"slow": SHORT / 5, "expired": 0.0}.get(outcome, FOREVER)
        with tailguard.deadline(budget):
            if entry == "run_sync":
                await dep.run_sync(blocking, outcome, pause)
            else:
                await through(dep, entry, functools.partial(work, outcome, pause))

    outcomes = ["ok", "ok", "error", "slow", "expired", "cancel"]
    loop = asyncio.get_running_loop()
    tasks = []
    for _ in range(200):
        outcome, arrival = rng.choice(outcomes), rng.uniform(0, SHORT)
        task = asyncio.create_task(
            one(rng.choice(ENTRIES), outcome, arrival, rng.uniform(0, 0.002))
        )
        if outcome == "cancel":
            loop.call_later(arrival + rng.uniform(0, 0.005), task.cancel)
        tasks.append(task)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    allowed = (LookupError, Rejected, DeadlineExceeded, asyncio.CancelledError)
    assert [r for r in results if r is not None and not isinstance(r, allowed)] == []
    kinds = {type(result).__name__ for result in results}
    assert {"NoneType", "DeadlineExceeded"} <= kinds  # some got through, some ran out of time
    assert len(kinds) >= 4
    await dep.aclose()
    state = dep.state()
    assert (state.limiter.in_use, state.limiter.queued, state.threads_in_use) == (0, 0, 0)
    assert peak <= 4
    assert active == 0


def test_guard_dependency_is_one_per_name() -> None:
    from tailguard import Tailguard

    guard = Tailguard()
    inventory = guard.dependency("inventory", max_concurrency=4)
    assert guard.dependency("inventory") is inventory
    assert guard.dependency("inventory", max_concurrency=4, max_queue=16) is inventory
    assert (inventory.max_concurrency, inventory.max_queue) == (4, 16)
    with pytest.raises(ValueError, match="already exists"):
        guard.dependency("inventory", max_concurrency=5)
    assert dict(guard.dependencies) == {"inventory": inventory}


async def test_lifespan_shutdown_drains_dependency_pools() -> None:
    import threading

    from starlette.applications import Starlette

    from tailguard import Tailguard

    guard = Tailguard()
    app = guard.install(Starlette())
    slow = guard.dependency("slow", max_concurrency=1)
    release = threading.Event()
    job = asyncio.create_task(slow.run_sync(release.wait, 30))
    while slow.state().threads_in_use == 0:
        await asyncio.sleep(0.001)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return messages.pop(0)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            release.set()  # the job finishes while shutdown waits for it

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent[-1] == "lifespan.shutdown.complete"
    assert await job is True
    assert slow.state().threads_in_use == 0
