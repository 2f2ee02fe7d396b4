from __future__ import annotations

import asyncio
import math
import threading

import pytest

import tailguard
from tailguard import Deadline, DeadlineExceeded
from tailguard.deadlines import CancelScope

pytestmark = pytest.mark.anyio


def test_no_deadline_means_infinite_budget() -> None:
    assert tailguard.remaining() == math.inf
    assert tailguard.current_deadline() is None


def test_deadline_value() -> None:
    d = Deadline.after(30, source="route")
    assert 0 < d.remaining() <= 30
    assert not d.expired()
    assert Deadline.after(0, source="route").expired()


def test_deadline_exceeded_is_a_timeout_error_naming_the_budget() -> None:
    exc = DeadlineExceeded(Deadline.after(0.25, source="grpc-timeout"))
    assert isinstance(exc, TimeoutError)
    assert "0.250s" in str(exc)
    assert "grpc-timeout" in str(exc)
    assert str(DeadlineExceeded(None)) == "deadline exceeded: budget ran out"
    assert str(DeadlineExceeded(None, "custom")) == "custom"


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan])
def test_negative_or_nan_seconds_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        tailguard.deadline(bad)


@pytest.mark.parametrize("bad", ["1", None, True])
def test_non_numbers_rejected(bad: object) -> None:
    with pytest.raises(TypeError, match="seconds must be a number"):
        tailguard.deadline(bad)  # type: ignore[arg-type]


async def test_scope_sets_and_restores_the_budget() -> None:
    with tailguard.deadline(30) as d:
        assert 0 < tailguard.remaining() <= 30
        assert tailguard.current_deadline() is d
        assert d.source == "scope"
    assert tailguard.remaining() == math.inf


async def test_scope_raises_when_its_own_budget_runs_out() -> None:
    finished = False
    with pytest.raises(DeadlineExceeded) as info:
        with tailguard.deadline(0.01):
            await asyncio.sleep(30)
            finished = True
    assert not finished
    assert info.value.deadline is not None
    assert info.value.deadline.budget == pytest.approx(0.01)
    assert isinstance(info.value.__cause__, asyncio.CancelledError)


async def test_zero_budget_fires_at_the_first_await() -> None:
    with pytest.raises(DeadlineExceeded):
        with tailguard.deadline(0):
            await asyncio.sleep(0)
            await asyncio.sleep(30)


async def test_async_with_form() -> None:
    with pytest.raises(DeadlineExceeded):
        async with tailguard.deadline(0.01):
            await asyncio.sleep(30)


async def test_inner_scope_never_extends_the_outer_budget() -> None:
    with tailguard.deadline(0.5) as outer:
        with tailguard.deadline(30) as inner:
            assert inner is outer
            assert tailguard.remaining() <= 0.5


async def test_outer_expiry_passes_through_inner_scope() -> None:
    inner_caught = False
    with pytest.raises(DeadlineExceeded) as info:
        with tailguard.deadline(0.01):
            try:
                with tailguard.deadline(30):
                    await asyncio.sleep(30)
            except DeadlineExceeded:
                inner_caught = True
                raise
    assert not inner_caught
    assert info.value.deadline is not None
    assert info.value.deadline.budget == pytest.approx(0.01)


async def test_inner_expiry_is_caught_by_inner_and_outer_goes_on() -> None:
    with tailguard.deadline(30):
        with pytest.raises(DeadlineExceeded) as info:
            with tailguard.deadline(0.01):
                await asyncio.sleep(30)
        assert info.value.deadline is not None
        assert info.value.deadline.budget == pytest.approx(0.01)
        await asyncio.sleep(0)  # the outer scope is still healthy
        assert 0 < tailguard.remaining() <= 30


async def test_external_cancellation_is_not_converted() -> None:
    entered = asyncio.Event()

    async def work() -> None:
        with tailguard.deadline(30):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_requested_alongside_expiry_still_propagates() -> None:
    async def work() -> None:
        with tailguard.deadline(0):
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # someone else asks too, before the scope fires
            await asyncio.sleep(30)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(work())


async def test_child_tasks_see_the_same_deadline() -> None:
    with tailguard.deadline(30) as d:
        seen = await asyncio.create_task(_read_deadline())
    assert seen is d


async def _read_deadline() -> Deadline | None:
    return tailguard.current_deadline()


def test_outside_a_task_the_scope_only_narrows_remaining() -> None:
    with tailguard.deadline(30):
        assert tailguard.remaining() <= 30
    assert tailguard.remaining() == math.inf


def test_worker_thread_with_copied_context_sees_the_budget() -> None:
    import contextvars

    seen: list[float] = []
    with tailguard.deadline(30):
        ctx = contextvars.copy_context()
    thread = threading.Thread(target=lambda: seen.append(ctx.run(tailguard.remaining)))
    thread.start()
    thread.join()
    assert 0 < seen[0] <= 30


async def test_cancel_scope_swallowing_block_finishes_normally() -> None:
    with CancelScope(0.0) as scope:  # already due: fires at the first await
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # the block chose to absorb it; nothing escapes the scope
    assert scope.fired
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_cancel_scope_without_deadline_never_fires() -> None:
    with CancelScope(None) as scope:
        await asyncio.sleep(0)
    assert not scope.fired


def test_cancel_scope_outside_a_task_is_inert() -> None:
    with CancelScope(0.0) as scope:
        pass
    assert not scope.fired
