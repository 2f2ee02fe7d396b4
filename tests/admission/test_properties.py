"""Random interleavings of acquire, release and cancel keep every invariant."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailguard.admission import Limiter, Permit, Rejected
from tests.admission.support import FakeClock, check_idle, check_invariants, settle

TENANTS = [None, "a", "b"]

actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("acquire"),
            st.integers(0, 2),  # tenant
            st.integers(0, 2),  # priority
            st.sampled_from([None, -1.0, 100.0]),  # deadline, relative to the fake clock
        ),
        st.tuples(st.just("release"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("tick")),
        st.tuples(st.just("later"), st.floats(0.0, 0.3)),
    ),
    max_size=60,
)

configs = st.fixed_dictionaries(
    {
        "max_concurrency": st.integers(1, 3),
        "max_queue": st.integers(0, 5),
        "tenant_concurrency": st.one_of(st.none(), st.integers(1, 2)),
        "tenant_weights": st.sampled_from([None, {"a": 2.0}, {"b": 0.5, None: 3.0}]),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, steps=actions)
def test_random_interleavings_keep_invariants(
    config: dict[str, Any], steps: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run(config, steps))


async def run(config: dict[str, Any], steps: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    limiter = Limiter("prop", clock=clock, **config)
    held: list[Permit] = []
    tasks: list[asyncio.Task[None]] = []
    shed = 0

    async def acquirer(tenant: object, priority: int, deadline: float | None) -> None:
        nonlocal shed
        try:
            permit = await limiter.acquire(
                priority=priority,
                tenant=tenant,
                deadline_at=None if deadline is None else clock.now + deadline,
            )
        except Rejected:
            shed += 1
        else:
            held.append(permit)

    for step in steps:
        kind = step[0]
        if kind == "acquire":
            _, tenant, priority, deadline = step
            tasks.append(asyncio.create_task(acquirer(TENANTS[tenant], priority, deadline)))
        elif kind == "release" and held:
            held.pop(step[1] % len(held)).release(ok=step[2])
        elif kind == "cancel" and tasks:
            tasks[step[1] % len(tasks)].cancel()
        elif kind == "tick":
            await asyncio.sleep(0)
        elif kind == "later":
            clock.now += step[1]  # moves the CoDel clock: LIFO and short caps kick in
        check_invariants(limiter)
    await settle()
    check_invariants(limiter)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for permit in held:
        permit.release()
    check_idle(limiter)
    # A waiter shed and cancelled in the same step counts as shed but raises CancelledError.
    assert sum(limiter.state().rejected.values()) >= shed
