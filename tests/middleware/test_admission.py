"""Admission control at the door: the middleware with limiters configured."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.admission import Rejected
from tailguard.routing.limits import build_limiters, tenant_resolver
from tests.asgi import Client, call, http_scope

pytestmark = pytest.mark.anyio

FOREVER = 30.0


class Gate:
    """Handlers park here until the test opens the gate."""

    def __init__(self) -> None:
        self.inside = 0
        self.arrived = asyncio.Event()
        self.open = asyncio.Event()

    async def wait(self) -> None:
        self.inside += 1
        self.arrived.set()
        try:
            await self.open.wait()
        finally:
            self.inside -= 1


def make_app(gate: Gate, **guard_options: Any) -> tuple[Starlette, Tailguard]:
    async def held(request: Request) -> Response:
        await gate.wait()
        return PlainTextResponse("ok")

    async def quick(request: Request) -> Response:
        delay = float(request.query_params.get("sleep", "0"))
        if delay:
            await asyncio.sleep(delay)
        return PlainTextResponse("ok")

    async def downstream_full(request: Request) -> Response:
        raise Rejected("queue_full", "inventory", 2.5)

    async def stream_then_shed(request: Request) -> Response:
        async def body() -> Any:
            yield b"partial"
            raise Rejected("queue_full", "inventory", 1.0)

        return StreamingResponse(body())

    app = Starlette(
        routes=[
            Route("/held", held),
            Route("/vip", held),
            Route("/quick", quick),
            Route("/downstream", downstream_full),
            Route("/stream", stream_then_shed),
        ]
    )
    guard = Tailguard(**guard_options)
    guard.install(app)
    return app, guard


async def get(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, **kwargs)


async def until(condition: Any) -> None:
    async with asyncio.timeout(FOREVER):  # a broken limiter fails the test, not the suite
        while not condition():
            await asyncio.sleep(0.001)


async def test_full_limiter_sheds_with_503_retry_after_and_reason() -> None:
    gate = Gate()
    app, guard = make_app(gate, routes={"/held": RoutePolicy(max_concurrency=1)})
    first = asyncio.create_task(get(app, "/held"))
    await gate.arrived.wait()
    shed = await get(app, "/held")
    assert shed.status_code == 503
    assert shed.headers["x-tailguard-reason"] == "queue_full"
    assert int(shed.headers["retry-after"]) >= 1
    assert shed.text == "overloaded: queue_full\n"
    gate.open.set()
    assert (await first).status_code == 200
    state = guard.limiters["/held"].state()
    assert (state.in_use, state.queued, state.rejected["queue_full"]) == (0, 0, 1)


async def test_queued_request_runs_when_a_slot_frees() -> None:
    gate = Gate()
    app, guard = make_app(gate, routes={"/held": RoutePolicy(max_concurrency=1, max_queue=1)})
    limiter = guard.limiters["/held"]
    first = asyncio.create_task(get(app, "/held"))
    await gate.arrived.wait()
    second = asyncio.create_task(get(app, "/held"))
    await until(lambda: limiter.queued == 1)
    assert gate.inside == 1
    gate.open.set()
    assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
    assert (limiter.in_use, limiter.queued) == (0, 0)


async def test_queue_wait_is_capped_by_queue_timeout() -> None:
    gate = Gate()
    app, _ = make_app(
        gate, routes={"/held": RoutePolicy(max_concurrency=1, max_queue=1, queue_timeout=0.01)}
    )
    first = asyncio.create_task(get(app, "/held"))
    await gate.arrived.wait()
    shed = await get(app, "/held")
    assert shed.headers["x-tailguard-reason"] == "queue_timeout"
    gate.open.set()
    await first


async def test_queue_wait_is_capped_by_the_deadline() -> None:
    gate = Gate()
    policy = RoutePolicy(deadline=FOREVER, max_concurrency=1, max_queue=1)
    app, _ = make_app(gate, routes={"/held": policy})
    first = asyncio.create_task(get(app, "/held"))
    await gate.arrived.wait()
    late = await get(app, "/held", headers={"x-request-timeout-ms": "10"})
    assert late.status_code in (503, 504)  # shed from the queue, or cut off by the deadline
    assert late.headers["x-tailguard-reason"] in ("deadline", "deadline_exceeded")
    gate.open.set()
    await first


async def test_shared_limiter_and_priority_eviction() -> None:
    gate = Gate()
    routes = {
        "/held": RoutePolicy(max_concurrency=1, max_queue=1, limiter="shared"),
        "/vip": RoutePolicy(limiter="shared", priority=9),
    }
    app, guard = make_app(gate, routes=routes)
    limiter = guard.limiters["shared"]
    running = asyncio.create_task(get(app, "/held"))
    await gate.arrived.wait()
    waiting = asyncio.create_task(get(app, "/held"))
    await until(lambda: limiter.queued == 1)
    vip = asyncio.create_task(get(app, "/vip"))
    evicted = await waiting
    assert evicted.status_code == 503
    assert evicted.headers["x-tailguard-reason"] == "priority"
    gate.open.set()
    assert (await running).status_code == 200
    assert (await vip).status_code == 200
    assert set(guard.limiters) == {"shared"}


async def test_tenant_cap_from_header() -> None:
    gate = Gate()
    app, guard = make_app(
        gate,
        routes={"/held": RoutePolicy(max_concurrency=4, max_queue=4, tenant_concurrency=1)},
        tenant_header="x-tenant-id",
        tenant_weights={"greedy": 1.0, "polite": 1.0},
    )
    greedy = {"x-tenant-id": "greedy"}
    first = asyncio.create_task(get(app, "/held", headers=greedy))
    await gate.arrived.wait()
    second = asyncio.create_task(get(app, "/held", headers=greedy))  # may queue behind its cap
    await until(lambda: guard.limiters["/held"].queued == 1)
    third = await get(app, "/held", headers=greedy)
    assert third.headers["x-tailguard-reason"] == "tenant_limit"
    other = asyncio.create_task(get(app, "/held", headers={"x-tenant-id": "polite"}))
    await until(lambda: gate.inside == 2)  # the other tenant is admitted at once
    gate.open.set()
    assert [r.status_code for r in await asyncio.gather(first, second, other)] == [200] * 3


async def test_tenant_from_a_callable() -> None:
    seen: list[str | None] = []

    def tenant(scope: Any) -> str | None:
        seen.append(scope["path"])
        return "t1"

    app, _ = make_app(Gate(), routes={"/quick": RoutePolicy(max_concurrency=2)}, tenant=tenant)
    assert (await get(app, "/quick")).status_code == 200
    assert seen == ["/quick"]


async def test_inbound_budget_below_the_usual_service_time_is_shed_at_the_door() -> None:
    app, _ = make_app(Gate(), routes={"/quick": RoutePolicy(deadline=FOREVER)})
    # Teach the route that it usually needs at least 50 ms.
    await asyncio.gather(*(get(app, "/quick?sleep=0.05") for _ in range(25)))
    shed = await get(app, "/quick", headers={"x-request-timeout-ms": "1"})
    assert shed.status_code == 503
    assert shed.headers["x-tailguard-reason"] == "budget"
    # The route's own budget is never judged that way.
    assert (await get(app, "/quick")).status_code == 200


async def test_unhandled_rejected_from_a_dependency_becomes_503() -> None:
    app, _ = make_app(Gate())
    response = await get(app, "/downstream")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-tailguard-reason"] == "queue_full"


async def test_rejected_after_the_response_started_aborts_it() -> None:
    app, _ = make_app(Gate())
    sent: list[dict[str, Any]] = []

    async def record(message: Any) -> None:
        sent.append(message)

    with pytest.raises(Rejected):
        await app(http_scope("/stream"), Client().receive, record)
    assert [m["type"] for m in sent].count("http.response.start") == 1


async def test_no_slot_leaks_under_mixed_outcomes() -> None:
    """Successes, 504s, disconnects, queue sheds and external cancels, all at once."""
    gate = Gate()
    app, guard = make_app(
        gate,
        routes={
            "/held": RoutePolicy(
                deadline=FOREVER, max_concurrency=3, max_queue=6, tenant_concurrency=4
            )
        },
        tenant_header="x-tenant-id",
        unlisted_tenants="separate",
    )
    limiter = guard.limiters["/held"]
    rng = random.Random(7)
    clients: list[Client] = []
    tasks: list[asyncio.Task[Any]] = []
    for i in range(60):
        client = Client()
        clients.append(client)
        headers = [("x-tenant-id", f"t{i % 5}")]
        if rng.random() < 0.3:
            headers.append(("x-request-timeout-ms", str(rng.choice([5, 20, 50]))))
        tasks.append(asyncio.create_task(call(app, "/held", headers=headers, client=client)))
    await until(lambda: gate.inside == 3)
    for client in rng.sample(clients, 10):
        client.gone.set()  # some clients give up
    for task in rng.sample(tasks, 5):
        task.cancel()  # and some requests are torn down from outside
    await asyncio.sleep(0.06)  # let the short budgets run out
    gate.open.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    statuses = {r.status for r in results if not isinstance(r, BaseException) and r.starts}
    assert statuses <= {200, 503, 504}
    assert 503 in statuses
    assert (limiter.in_use, limiter.queued) == (0, 0)


def test_limiter_configuration_errors_name_the_keys() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Tailguard(
            routes={
                "/a": RoutePolicy(max_concurrency=1, limiter="x"),
                "/b": RoutePolicy(max_concurrency=2, limiter="x"),
            }
        )
    with pytest.raises(ValueError, match=r"routes\['/a'\] uses limiter 'x'"):
        Tailguard(routes={"/a": RoutePolicy(limiter="x")})
    same = build_limiters(
        [
            ("/a", RoutePolicy(max_concurrency=2, limiter="x")),
            ("/b", RoutePolicy(max_concurrency=2, limiter="x", priority=3)),
            (None, RoutePolicy(max_concurrency=8)),
        ],
        {"gold": 3.0},
    )
    assert sorted(same) == ["default", "x"]


def test_tenant_resolver_validation() -> None:
    assert tenant_resolver(None, None) is None
    with pytest.raises(ValueError, match="not both"):
        tenant_resolver("x-tenant", lambda scope: None)
    with pytest.raises(TypeError, match="callable"):
        tenant_resolver(None, "x-tenant")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tenant_header"):
        tenant_resolver(" x", None)
    resolve = tenant_resolver("X-Tenant", None)
    assert resolve is not None
    assert resolve(http_scope(headers=[("x-tenant", "acme")])) == "acme"
    assert resolve(http_scope()) is None
