"""``Limiter.would_shed`` (shadow mode) decides as ``acquire`` does, and changes nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from tailguard.admission import Limiter, Rejected

pytestmark = pytest.mark.anyio


async def verdict_of_acquire(limiter: Limiter, **kwargs: object) -> str | None:
    """The reason ``acquire`` sheds at once, or ``None`` if it queued (then cancelled)."""
    task = asyncio.ensure_future(limiter.acquire(**kwargs))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    if task.done():
        try:
            task.result()
        except Rejected as exc:
            return exc.reason
        return None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return None


@pytest.mark.parametrize(
    ("options", "kwargs", "expected"),
    [
        ({"max_concurrency": 1}, {}, "queue_full"),
        ({"max_concurrency": 1, "max_queue": 1}, {}, None),
        ({"max_concurrency": 1, "max_queue": 1}, {"deadline_at": 0.0}, "deadline"),
        (
            {"max_concurrency": 2, "tenant_concurrency": 1, "tenant_weights": {"a": 1}},
            {"tenant": "a"},
            "tenant_limit",
        ),
    ],
)
async def test_would_shed_says_what_acquire_does(
    options: dict[str, object], kwargs: dict[str, object], expected: str | None
) -> None:
    limiter = Limiter("api", **options)  # type: ignore[arg-type]
    tenant = kwargs.get("tenant")
    held = limiter.try_acquire(tenant=tenant)
    assert held is not None
    if "deadline_at" in kwargs:
        kwargs = {**kwargs, "deadline_at": time.monotonic() - 1.0}
    before = limiter.state()
    would = limiter.would_shed(
        tenant=tenant,
        deadline_at=kwargs.get("deadline_at"),  # type: ignore[arg-type]
    )
    assert would == expected
    assert limiter.state() == before  # nothing counted, nothing queued
    assert await verdict_of_acquire(limiter, **kwargs) == expected
    held.release()


async def test_force_acquire_goes_beyond_the_limit_and_gives_back() -> None:
    limiter = Limiter("api", max_concurrency=1, tenant_concurrency=1, tenant_weights={"a": 1})
    first = limiter.try_acquire(tenant="a")
    forced = limiter.force_acquire("a")
    assert limiter.in_use == 2
    assert limiter.would_shed(tenant="a") == "queue_full"
    forced.release()
    assert first is not None
    first.release()
    assert limiter.in_use == 0
    assert limiter.try_acquire(tenant="a") is not None


def test_shadowed_requests_beyond_the_limit_stand_for_the_queue_they_would_form() -> None:
    limiter = Limiter("api", max_concurrency=2, max_queue=2)
    taken = [limiter.try_acquire(), limiter.try_acquire()]
    assert limiter.would_shed() is None  # enforced, it would wait in the (empty) queue
    forced = [limiter.force_acquire(), limiter.force_acquire()]  # the two it would queue
    assert limiter.would_shed() == "queue_full"
    for permit in [*taken, *forced]:
        assert permit is not None
        permit.release()


def test_a_tenants_shadowed_excess_stands_for_its_queued_requests() -> None:
    limiter = Limiter(
        "api", max_concurrency=16, max_queue=32, tenant_concurrency=2, tenant_weights={"a": 1}
    )
    permits = [limiter.force_acquire("a") for _ in range(3)]
    assert limiter.would_shed(tenant="a") is None  # one of its two queue places is left
    permits.append(limiter.force_acquire("a"))
    assert limiter.would_shed(tenant="a") == "tenant_limit"
    assert limiter.would_shed(tenant="b") is None
    for permit in permits:
        permit.release()
