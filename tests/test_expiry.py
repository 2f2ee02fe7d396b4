from __future__ import annotations

import asyncio
import time

import pytest

from tailguard.middleware.expiry import ExpiryQueue

pytestmark = pytest.mark.anyio


class Request:
    def __init__(self, again: list[float] | None = None) -> None:
        self.finished = False
        self.calls = 0
        self.fired = asyncio.Event()
        self._again = list(again or [])

    def expire(self) -> float | None:
        self.calls += 1
        self.fired.set()
        return self._again.pop(0) if self._again else None


async def test_fires_due_requests_and_skips_finished_ones() -> None:
    queue = ExpiryQueue(asyncio.get_running_loop())
    now = time.monotonic()
    done, due, later = Request(), Request(), Request()
    queue.add(now + 0.001, done)
    queue.add(now + 0.002, due)
    queue.add(now + 30, later)
    done.finished = True
    await asyncio.wait_for(due.fired.wait(), 30)
    assert (done.calls, due.calls, later.calls) == (0, 1, 0)
    assert len(queue) == 1  # only the far one is left, and the timer is armed for it
    later.finished = True


async def test_an_earlier_deadline_rearms_the_timer() -> None:
    queue = ExpiryQueue(asyncio.get_running_loop())
    slow, fast = Request(), Request()
    queue.add(time.monotonic() + 30, slow)
    queue.add(time.monotonic() + 0.001, fast)
    await asyncio.wait_for(fast.fired.wait(), 30)
    assert slow.calls == 0
    slow.finished = True


async def test_a_request_can_ask_to_be_called_again() -> None:
    queue = ExpiryQueue(asyncio.get_running_loop())
    request = Request(again=[time.monotonic() + 0.002])
    queue.add(time.monotonic() + 0.001, request)
    while request.calls < 2:
        request.fired.clear()
        await asyncio.wait_for(request.fired.wait(), 30)
    assert len(queue) == 0


async def test_finished_requests_are_compacted_away() -> None:
    queue = ExpiryQueue(asyncio.get_running_loop())
    far = time.monotonic() + 60
    keep = Request()
    queue.add(far, keep)
    for _ in range(ExpiryQueue.COMPACT_AT):
        finished = Request()
        finished.finished = True
        queue.add(far, finished)
    assert len(queue) == 1  # everything but the live request was dropped
    keep.finished = True
