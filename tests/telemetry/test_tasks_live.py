"""The orphan registry: weak, capped, and keeping tailguard_tasks_live right."""

from __future__ import annotations

import asyncio
import gc
from time import monotonic
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.live import Orphans, coroutine_name

pytestmark = pytest.mark.anyio


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(CollectorRegistry())


def live(catalog: Catalog, route: str) -> float:
    found = catalog.registry.get_sample_value("tailguard_tasks_live", {"route": route})
    return 0.0 if found is None else found


async def test_the_cap_limits_what_is_listed_not_what_is_gauged(catalog: Catalog) -> None:
    registry = Orphans(cap=1)
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(2)]
    for future in futures:
        registry.adopt(future, "/r", "Future", monotonic(), cancelled=False, catalog=catalog)
    assert len(registry) == 1
    assert live(catalog, "/r") == 2
    for future in futures:
        future.set_result(None)
    assert list(registry.items()) == []  # done, even before the callbacks have run
    await asyncio.sleep(0)
    assert len(registry) == 0
    assert live(catalog, "/r") == 0


async def test_a_pending_orphan_that_is_collected_leaves_the_registry(catalog: Catalog) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    registry = Orphans()

    async def forgotten() -> None:
        await loop.create_future()  # nothing else will ever reference it

    try:
        task = asyncio.create_task(forgotten())
        await asyncio.sleep(0)
        registry.adopt(
            task, "/r", coroutine_name(task), monotonic(), cancelled=False, catalog=catalog
        )
        assert live(catalog, "/r") == 1
        del task
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == ["Task was destroyed but it is pending!"]
    assert len(registry) == 0
    assert live(catalog, "/r") == 0


async def test_without_metrics_orphans_are_still_listed() -> None:
    registry = Orphans()
    future = asyncio.get_running_loop().create_future()
    registry.adopt(future, "/r", "Future", monotonic(), cancelled=True)
    ((found, orphan),) = registry.items()
    assert found is future
    assert (orphan.route, orphan.coroutine, orphan.cancelled) == ("/r", "Future", True)
    future.cancel()
    await asyncio.sleep(0)
    assert len(registry) == 0


async def test_a_bare_future_is_named_by_its_type() -> None:
    assert coroutine_name(asyncio.get_running_loop().create_future()) == "Future"
