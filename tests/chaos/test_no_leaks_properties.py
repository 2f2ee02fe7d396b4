"""No accepted experiment, under any sampled value, leaves anything behind after ``halt``.

Issue 13, item 1. Hypothesis builds experiment documents with the strategies
of ``test_schema_properties`` (every fault kind, every distribution, scopes,
safeguards), adds faults whose delays are arbitrary drawn values (NaN,
infinities, negatives, huge numbers, exceptions: what a user's own
``Distribution`` may return or raise), starts the accepted ones on a real
guard with a Starlette app, and sends requests whose handlers call
dependencies through every seam (``async with``, ``call``, ``run_sync``, the
httpx transport), plus calls outside any request. Then ``halt``. Afterwards
no route or dependency slot is held, no injection is in flight, no task the
scenario started is pending, and the engine is disarmed.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import Chaos, Distribution, Experiment, ExperimentError, Latency
from tailguard.chaos.schema import experiment_from_dict
from tailguard.dependency import Dependency
from tests.chaos.test_schema_properties import dependencies, documents, routes

WAIT = 20.0
"""A generous bound for "at once" on a loaded machine."""
DEPENDENCIES = ("db", "payments-eu", "inventory", "cache-a", "svca")
"""One name matching each glob of the strategies' targets."""
SEAMS = ("async_with", "call", "run_sync", "transport")


class Drawn(Distribution):
    """A user's distribution returning (or raising) whatever Hypothesis drew."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def sample(self, rng: random.Random) -> float:
        if isinstance(self.value, BaseException):
            # A fresh one each time: a raised instance keeps its traceback (and the
            # request frames in it) alive for as long as the strategy holds it.
            raise type(self.value)(*self.value.args)
        return self.value  # type: ignore[return-value]

    def quantile(self, q: float) -> float:
        return 0.0

    def __repr__(self) -> str:
        return f"Drawn({self.value!r})"


draw_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 0.002),
    st.integers(-(10**400), 10**400),
    st.sampled_from(
        [OverflowError(34, "Numerical result out of range"), ZeroDivisionError(), ValueError()]
    ),
    st.text(max_size=3),
    st.none(),
)
drawn_faults = st.lists(
    st.builds(
        lambda target, value, rate: Latency(target, delay=Drawn(value), rate=rate),
        dependencies | routes,
        draw_values,
        st.sampled_from([0.5, 1.0]),
    ),
    max_size=3,
)


async def call(dep: Dependency, seam: str) -> None:
    """Call ``dep`` through ``seam``; whatever chaos raises is the dependency's failure."""
    try:
        if seam == "async_with":
            async with dep:
                await asyncio.sleep(0)
        elif seam == "call":
            await dep.call(asyncio.sleep, 0)
        elif seam == "run_sync":
            await dep.run_sync(lambda: None)
        else:
            transport = dep.transport(httpx.MockTransport(lambda request: httpx.Response(200)))
            async with httpx.AsyncClient(transport=transport) as client:
                await client.get("http://downstream.test/")
    except Exception:
        pass


def service(engine: Chaos) -> tuple[Tailguard, Starlette, list[Dependency]]:
    guard = Tailguard(
        default=RoutePolicy(deadline=10.0, max_concurrency=16),
        routes={"POST /orders": RoutePolicy(deadline=10.0, max_concurrency=4)},
        tenant_header="x-tenant-id",
        chaos=engine,
        registry=CollectorRegistry(),
    )
    deps = [guard.dependency(name, max_concurrency=4, max_queue=64) for name in DEPENDENCIES]

    async def handler(request: Request) -> PlainTextResponse:
        await asyncio.gather(*(call(dep, seam) for dep in deps for seam in SEAMS))
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/items/{item_id}", handler),
            Route("/orders", handler, methods=["POST"]),
            Route("/reports/{name}", handler),
        ]
    )
    return guard, guard.install(app, metrics_path=None, tracing=False), deps


async def scenario(experiment: Experiment, seed: int) -> None:
    engine = Chaos(enabled=True, seed=seed)
    guard, app, deps = service(engine)
    headers = {}
    if experiment.header is not None and experiment.secret is not None:
        headers[experiment.header] = experiment.secret
    if experiment.tenants:
        headers["x-tenant-id"] = experiment.tenants[0]
    before = asyncio.all_tasks()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://service", headers=headers, timeout=WAIT
    ) as client:
        engine.start(experiment)
        work = [
            asyncio.ensure_future(client.request(method, path))
            for method, path in (
                ("GET", "/items/1"),
                ("POST", "/orders"),
                ("GET", "/reports/daily"),
                ("GET", "/items/2"),
            )
        ]
        work += [asyncio.ensure_future(call(dep, seam)) for dep in deps for seam in SEAMS]
        await asyncio.wait(work, timeout=0.02)  # injected delays and hangs are under way
        engine.halt()
        done, pending = await asyncio.wait(work, timeout=WAIT)
        assert not pending, f"still running after halt: {pending}"
        for task in done:
            task.result()  # requests answer (any status); calls swallow their failures
    for dep in deps:
        await dep.aclose()  # run_sync jobs have returned and given their slots back
    assert not engine.armed
    status = engine.status()
    assert status["injections_in_flight"] == 0
    assert status["experiments"] == []
    assert {name: limiter.in_use for name, limiter in guard.limiters.items()} == dict.fromkeys(
        guard.limiters, 0
    )
    assert {dep.name: dep.limiter.in_use for dep in deps} == dict.fromkeys(DEPENDENCIES, 0)
    assert {dep.name: dep.limiter.queued for dep in deps} == dict.fromkeys(DEPENDENCIES, 0)
    assert asyncio.all_tasks() - before == set()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(document=documents, extra=drawn_faults, seed=st.integers(0, 2**32 - 1))
def test_no_accepted_experiment_leaves_a_slot_a_task_or_an_injection_behind_after_halt(
    document: dict[str, Any], extra: list[Latency], seed: int
) -> None:
    try:
        accepted = experiment_from_dict(document)
    except ExperimentError:
        assume(False)
        return
    experiment = Experiment(
        accepted.name,
        faults=[*accepted.faults, *extra],
        ttl=max(accepted.ttl, 60.0),  # running when the calls come; halt ends it
        routes=accepted.routes,
        tenants=accepted.tenants,
        header=accepted.header,
        secret=accepted.secret,
        abort=accepted.abort,
    )
    asyncio.run(scenario(experiment, seed))
