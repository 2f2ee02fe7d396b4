"""A small shop API guarded by tailguard, served by ``tailguard demo``. Copy it to start your own.

Serve it:       uvicorn tailguard.gameday.shop:app    (or examples.shop:app in a checkout)
See it work:    tailguard demo    (serves this app, sends it a burst of requests, then
                                   runs a mini game-day against its inventory bulkhead)
Game-day:       TAILGUARD_CHAOS=1 TAILGUARD_TOKEN=... uvicorn tailguard.gameday.shop:app
                then tailguard chaos start FILE | status | halt  (docs/chaos-control.md)

It is a plain Starlette app, so it runs wherever tailguard does: Starlette
is one of tailguard's own dependencies (a FastAPI app is guarded the same
way, with ``guard.install(app)``).

Every request gets a time budget from ``guard``: the most specific route key
wins, and anything no key matches gets the default. Handlers can ask how much
is left with ``tailguard.remaining()``. When a budget runs out, tailguard
cancels the handler and answers ``504`` with ``x-tailguard-reason:
deadline_exceeded``; if the response had already started streaming, it aborts
it instead, so the client sees a truncated response rather than a short one
that looks complete.

``GET /stock/{item_id}`` reads through ``inventory``, a dependency bulkhead:
at most 4 lookups at once and 8 waiting, so a slow inventory service fills
its own queue and is shed with 503s instead of tying up the whole shop.
Chaos is off unless ``TAILGUARD_CHAOS=1``; the control API (``/_tailguard``,
used by ``tailguard chaos``) is mounted only when ``TAILGUARD_TOKEN`` is set.
Both are read once, when this module is imported.

The shop's other dependencies are simulated in this process (no external
service needed), each a log-normal latency (:data:`LATENCIES`, overridable
with ``SHOP_LATENCIES='{"payments": [0.05, 0.2]}'``, p50 and p99 in seconds)
behind its own bulkhead, so chaos experiments can target them by name:

* ``GET /products/{item_id}``: the product page. The product comes from a
  ``cache`` → ``replica`` → ``primary`` fallback (``tailguard.fallback``),
  the replica read hedged across two replicas (``tailguard.hedge``), and the
  ``recommendations`` are an optional fan-out leg with a 20 ms grace period
  (``tailguard.fanout``): a slow recommender drops the recommendations, not
  the page. Budget 250 ms.
* ``POST /orders`` (``{"item": 1}``, tenant in ``x-tenant-id``: ``acme`` or
  ``globex``, fairly queued, 8 at a time each): reserves stock through
  ``inventory``, then charges through ``payments`` within a tight 300 ms of
  its own. Budget 1 s.

The simulated inventory service itself serves 8 calls at a time and queues
the rest, as a real one would: without the bulkhead in front of it, a slow
inventory grows that queue without bound.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import random
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import tailguard
from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import Chaos

__all__ = ["LATENCIES", "app", "guard", "inventory", "simulated"]

guard = Tailguard(
    default=RoutePolicy(deadline=1.0),  # routes no key below matches
    routes={
        "GET /items/{item_id}": RoutePolicy(deadline=0.1),  # a lookup: fast or not at all
        "GET /search": RoutePolicy(deadline=0.15),
        "/reports/*": RoutePolicy(deadline=2.0),  # a prefix key: every route under /reports/
        "GET /feed": RoutePolicy(deadline=0.3),  # the budget covers the whole stream
        "GET /stock/{item_id}": RoutePolicy(deadline=0.25),
        "GET /products/{item_id}": RoutePolicy(deadline=0.25),
        "POST /orders": RoutePolicy(
            deadline=1.0, max_concurrency=16, max_queue=32, tenant_concurrency=8
        ),
    },
    tenant_header="x-tenant-id",
    tenant_weights={"acme": 1, "globex": 1},
    chaos=Chaos(),  # off unless TAILGUARD_CHAOS=1; never enabled=True in code you ship
)
inventory = guard.dependency("inventory", max_concurrency=4, max_queue=8)
catalog_cache = guard.dependency("cache", max_concurrency=64, max_queue=64)
catalog_replica = guard.dependency("replica", max_concurrency=16, max_queue=32)
catalog_primary = guard.dependency("primary", max_concurrency=8, max_queue=16)
payments = guard.dependency("payments", max_concurrency=8, max_queue=16)
recommendations = guard.dependency("recommendations", max_concurrency=8, max_queue=8)

LATENCIES: Mapping[str, tuple[float, float]] = {
    "cache": (0.0005, 0.002),
    "replica": (0.003, 0.03),
    "primary": (0.006, 0.05),
    "inventory": (0.005, 0.02),
    "payments": (0.03, 0.12),
    "recommendations": (0.01, 0.15),
    **{
        name: (float(p50), float(p99))
        for name, (p50, p99) in json.loads(os.environ.get("SHOP_LATENCIES", "{}")).items()
    },
}
"""Each simulated dependency's latency: a log-normal with this ``(p50, p99)``, in seconds."""
_INVENTORY_SERVER_SLOTS = 8
_inventory_server: asyncio.Semaphore | None = None
_Z99 = 2.326  # the 99th percentile of the standard normal

ITEMS = {1: "lamp", 2: "chair", 3: "desk"}
PRICES = {1: 49.0, 2: 120.0, 3: 310.0}
STOCK = {1: 12, 2: 0, 3: 4}
_latency = random.Random(7)  # seeded: the "random" search times repeat from run to run
_MU = math.log(0.06)  # search times: log-normal with a 60 ms median and a long tail


def _left_ms() -> int | None:
    """Milliseconds left in this request's budget; ``None`` with no deadline in force
    (shadow mode, ``TAILGUARD_ENFORCE=shadow``: the budget is decided, not enforced)."""
    left = tailguard.remaining()
    return round(left * 1000) if math.isfinite(left) else None


def _work_ms(request: Request) -> float | None:
    """The ``?work_ms=`` query parameter, ``None`` without one; a 422 if it is not a number."""
    text = request.query_params.get("work_ms")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise HTTPException(422, f"work_ms must be a number of milliseconds, got {text!r}")
    return value


async def get_item(request: Request) -> Response:
    """The fast path: done in a few milliseconds of its 100 ms budget."""
    item_id: int = request.path_params["item_id"]
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    return JSONResponse({"id": item_id, "name": ITEMS[item_id]})


async def search(request: Request) -> Response:
    """Variable work against a 150 ms budget: most searches finish, the slow tail gets a 504.

    The time a search takes is drawn from a seeded long-tailed distribution
    (median 60 ms), or fixed with ``?work_ms=`` so a demo can be deterministic.
    """
    q = request.query_params.get("q", "")
    work_ms = _work_ms(request)
    seconds = work_ms / 1000 if work_ms is not None else _latency.lognormvariate(_MU, 0.8)
    await asyncio.sleep(seconds)  # stands in for querying a search index
    hits = [name for name in ITEMS.values() if q in name]
    return JSONResponse({"q": q, "hits": hits, "budget_left_ms": _left_ms()})


async def report(request: Request) -> Response:
    """Slow but allowed to be: the ``/reports/*`` prefix key gives it 2 s.

    A caller can still ask for less. With ``x-request-timeout-ms: 50`` this
    request's budget is 50 ms and the 300 ms report gets a 504: inbound
    deadline headers (also ``grpc-timeout`` and Envoy's) only ever shrink a budget.
    """
    work_ms = _work_ms(request)
    await asyncio.sleep((300 if work_ms is None else work_ms) / 1000)  # an expensive query
    return JSONResponse({"report": request.path_params["name"], "budget_left_ms": _left_ms()})


async def feed(request: Request) -> Response:
    """A stream that outlives its 300 ms budget, so tailguard aborts it mid-response.

    The status line and the first events go out at once. Once a response has
    started, a 504 is no longer possible: when the budget runs out tailguard
    cancels the generator and the server drops the connection (the client
    sees an incomplete chunked body).
    """

    async def events() -> AsyncIterator[str]:
        for n in range(100):  # 100 events, 50 ms apart: 5 s, far beyond the budget
            yield f"event {n}: {_left_ms()} ms left\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/plain")


async def quote(request: Request) -> Response:
    """Outbound budget: a downstream call gets what is left of this request's budget.

    No key matches, so the 1 s default applies. After its own work, the
    handler passes the remainder on as ``x-request-timeout-ms`` so the next
    service stops when this one stops waiting.
    """
    item_id: int = request.path_params["item_id"]
    if item_id not in PRICES:
        raise HTTPException(404, "no such item")
    await asyncio.sleep(0.02)  # local work: pricing rules
    left = _left_ms()
    forward = {"x-request-timeout-ms": str(left)} if left is not None else {}
    # e.g. await tax_client.get("/rates", headers=forward, timeout=tailguard.remaining())
    return JSONResponse({"item_id": item_id, "price": PRICES[item_id], "forward_headers": forward})


async def stock(request: Request) -> Response:
    """A lookup through the ``inventory`` bulkhead, within a 250 ms budget.

    The lookup takes a slot of the bulkhead first (waiting, within the budget,
    if all 4 are taken; shed with a 503 if 8 are already waiting). A chaos
    experiment targeting ``inventory`` strikes inside the slot, as a slow
    inventory service would: the slot is held, later lookups queue, and the
    budget still ends any lookup that runs past it with a 504.
    """
    item_id: int = request.path_params["item_id"]
    if item_id not in STOCK:
        raise HTTPException(404, "no such item")
    await _inventory_call()  # asks the (simulated) inventory service
    count = STOCK[item_id]
    return JSONResponse({"item_id": item_id, "in_stock": count, "budget_left_ms": _left_ms()})


async def simulated(name: str) -> float:
    """A call to the simulated dependency ``name``, through its bulkhead; the seconds it took.

    >>> asyncio.run(simulated("cache")) < 1
    True
    """
    p50, p99 = LATENCIES[name]
    sigma = max(math.log(p99 / p50) / _Z99, 1e-6)
    seconds = _latency.lognormvariate(math.log(p50), sigma)
    async with guard.dependency(name):
        await asyncio.sleep(seconds)
    return seconds


async def _inventory_call() -> None:
    """Inventory as a real service behaves: 8 calls at a time, the rest wait in its queue."""
    global _inventory_server
    if _inventory_server is None:
        _inventory_server = asyncio.Semaphore(_INVENTORY_SERVER_SLOTS)
    async with inventory, _inventory_server:
        p50, p99 = LATENCIES["inventory"]
        sigma = max(math.log(p99 / p50) / _Z99, 1e-6)
        await asyncio.sleep(_latency.lognormvariate(math.log(p50), sigma))


async def _from_cache(item_id: int) -> dict[str, object]:
    await simulated("cache")
    if _latency.random() < 0.7:  # most product pages miss the cache
        raise LookupError(f"item {item_id} not cached")
    return {"id": item_id, "name": ITEMS[item_id], "from": "cache"}


async def _from_replica(item_id: int) -> dict[str, object]:
    await simulated("replica")
    return {"id": item_id, "name": ITEMS[item_id], "from": "replica"}


async def _from_primary(item_id: int) -> dict[str, object]:
    await simulated("primary")
    return {"id": item_id, "name": ITEMS[item_id], "from": "primary"}


async def product(request: Request) -> Response:
    """The product page: cache → hedged replicas → primary, and optional recommendations."""
    item_id: int = request.path_params["item_id"]
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    replica = functools.partial(_from_replica, item_id)

    async def hedged_replica() -> dict[str, object]:
        return await tailguard.hedge(replica, delay="p95", max_extra=0.05, name="catalog.replicas")

    async def details() -> dict[str, object]:
        return await tailguard.fallback(
            functools.partial(_from_cache, item_id),
            hedged_replica,
            functools.partial(_from_primary, item_id),
            budget_split=[1, 3, 6],
            name="catalog.tiers",
        )

    async def recommended() -> list[int]:
        await simulated("recommendations")
        return [other for other in ITEMS if other != item_id]

    page = await tailguard.fanout(
        required=[details], optional=[recommended], grace=0.02, name="product.page"
    )
    return JSONResponse(
        {**page.required[0], "recommended": page.optional.get(0, []), "complete": page.complete}
    )


async def order(request: Request) -> Response:
    """Checkout: reserve stock through inventory, then charge within a tight 300 ms."""
    try:
        body = await request.json()
        item_id = int(body["item"])
    except (ValueError, KeyError, TypeError):
        raise HTTPException(422, 'expected {"item": <item id>}') from None
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    await _inventory_call()
    with tailguard.deadline(0.3):  # payments answer fast or the order fails fast
        await simulated("payments")
    tenant = request.headers.get("x-tenant-id", "anonymous")
    return JSONResponse({"item": item_id, "tenant": tenant, "status": "paid"}, status_code=201)


async def _json_error(request: Request, exc: Exception) -> Response:
    """Errors as ``{"detail": ...}``, as FastAPI answers them."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


app = Starlette(
    routes=[
        Route("/items/{item_id:int}", get_item, methods=["GET"]),
        Route("/search", search, methods=["GET"]),
        Route("/reports/{name}", report, methods=["GET"]),
        Route("/feed", feed, methods=["GET"]),
        Route("/quote/{item_id:int}", quote, methods=["GET"]),
        Route("/stock/{item_id:int}", stock, methods=["GET"]),
        Route("/products/{item_id:int}", product, methods=["GET"]),
        Route("/orders", order, methods=["POST"]),
    ],
    exception_handlers={HTTPException: _json_error},
)
# No token, no control API. An empty or short one is refused here, at startup.
guard.install(app, control_token=os.environ.get("TAILGUARD_TOKEN"))
