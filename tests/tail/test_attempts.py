"""Bookkeeping under every helper: the loop watch the tests rely on, eager task factories."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

import tailguard
from tests.tail.support import Metrics, Remote, watch_loop

pytestmark = pytest.mark.anyio


async def test_the_loop_watch_sees_a_leaked_task_and_an_unretrieved_exception() -> None:
    # The tests' guarantee is only as good as this watch: show that it can fail.
    async def boom() -> None:
        raise RuntimeError("nobody looks at me")

    watch = None
    with pytest.raises(AssertionError, match="exception was never retrieved"):
        with watch_loop() as watch:
            task = asyncio.create_task(boom())
            await asyncio.sleep(0)
            assert task.done()
            assert watch.pending() == []
            del task
    assert watch is not None
    assert watch.created == 1


async def test_the_loop_watch_counts_pending_tasks() -> None:
    with watch_loop() as watch:
        task = asyncio.create_task(asyncio.sleep(30))
        assert watch.pending() == [task]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class Finished(asyncio.Future[Any]):
    """A task that ran to completion inside the factory (names only, as Task has)."""

    name = ""

    def set_name(self, name: str) -> None:
        self.name = name


def eager(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
    """Run a coroutine that never waits to completion at creation, as an eager factory would."""
    future = Finished(loop=loop)
    try:
        coro.send(None)
    except StopIteration as stop:
        future.set_result(stop.value)
        return future
    raise AssertionError("this factory only runs coroutines that finish without waiting")


async def test_attempts_finished_before_create_task_returned_are_seen() -> None:
    async def fast(value: str) -> str:
        return value

    loop = asyncio.get_running_loop()
    factory = getattr(asyncio, "eager_task_factory", eager)  # Python 3.12+ has a real one
    previous = loop.get_task_factory()
    loop.set_task_factory(factory)
    try:
        assert await tailguard.race(lambda: fast("a"), lambda: fast("b")) == "a"
        assert await tailguard.quorum(2, [lambda: fast("a"), lambda: fast("b")]) == ["a", "b"]
    finally:
        loop.set_task_factory(previous)


async def test_a_leg_that_finished_as_the_winner_was_chosen_is_not_cancelled(
    metrics: Metrics,
) -> None:
    remote = Remote()
    with watch_loop() as loop:
        call = asyncio.create_task(tailguard.race(remote, remote, name="replicas"))
        first, second = await remote.arrivals(2)
        first.succeed("first")
        # One loop turn later the second leg finishes too, in the very turn
        # the race wakes up to pick the first: it is done, not a loser to cancel.
        await asyncio.sleep(0)
        second.succeed("second")
        assert await call == "first"
        assert loop.pending() == []
    assert not second.cancelled.is_set()
    assert metrics.cancelled("replicas", "race") == 0
