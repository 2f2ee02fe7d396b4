from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tailguard import _context
from tailguard.telemetry import tasks as registry

pytestmark = pytest.mark.anyio


async def _sleep_forever() -> None:
    await asyncio.sleep(30)


async def test_tasks_are_attributed_to_the_bound_request_including_nested() -> None:
    loop = asyncio.get_running_loop()
    registry.ensure_task_factory(loop)
    owned = registry.RequestTasks()
    token = _context.current.set(_context.Frame(None, owned))
    try:
        assert registry.current_request_tasks() is owned

        async def parent() -> asyncio.Task[None]:
            return asyncio.create_task(_sleep_forever())

        outer = asyncio.create_task(parent())
        inner = await outer
    finally:
        _context.current.reset(token)
    unrelated = asyncio.create_task(_sleep_forever())
    assert set(owned.pending()) == {inner}
    assert owned.cancel_pending() == 1
    with pytest.raises(asyncio.CancelledError):
        await inner
    assert owned.pending() == []
    unrelated.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unrelated


async def test_explicit_context_decides_the_owner() -> None:
    import contextvars

    loop = asyncio.get_running_loop()
    registry.ensure_task_factory(loop)
    owned = registry.RequestTasks()
    token = _context.current.set(_context.Frame(None, owned))
    try:
        detached = loop.create_task(_sleep_forever(), context=contextvars.Context())
    finally:
        _context.current.reset(token)
    assert owned.pending() == []
    detached.cancel()
    with pytest.raises(asyncio.CancelledError):
        await detached


async def test_a_factory_installed_earlier_still_runs_and_is_chained_once() -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    built: list[str] = []

    def counting_factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        built.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting_factory)
    try:
        registry.ensure_task_factory(loop)
        registry.ensure_task_factory(loop)  # idempotent: no second layer
        factory = loop.get_task_factory()
        assert factory is not None
        assert factory.tailguard_inner is counting_factory  # type: ignore[attr-defined]
        owned = registry.RequestTasks()
        token = _context.current.set(_context.Frame(None, owned))
        try:
            task = asyncio.create_task(_sleep_forever())
        finally:
            _context.current.reset(token)
        assert built == ["_sleep_forever"]
        assert owned.pending() == [task]
        outside = asyncio.create_task(_sleep_forever())  # no request: chained, not tracked
        assert built == ["_sleep_forever", "_sleep_forever"]
        assert owned.pending() == [task]
        outside.cancel()
        owned.cancel_pending()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        loop.set_task_factory(previous)


async def test_already_finished_tasks_are_not_tracked() -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    owned = registry.RequestTasks()
    owned.add(done)  # e.g. an eager task factory ran it to completion
    assert owned.pending() == []
    assert owned._live is None
