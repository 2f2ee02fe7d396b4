"""A small shop API guarded by tailguard. Copy it to start your own.

Serve it:       uvicorn examples.shop:app
See it work:    tailguard demo    (serves this app, sends it a burst of requests, then
                                   runs a mini game-day against its inventory bulkhead)
Game-day:       TAILGUARD_CHAOS=1 TAILGUARD_TOKEN=... uvicorn examples.shop:app
                then tailguard chaos start FILE | status | halt  (docs/chaos-control.md)

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
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

import tailguard
from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import Chaos

guard = Tailguard(
    default=RoutePolicy(deadline=1.0),  # routes no key below matches
    routes={
        "GET /items/{item_id}": RoutePolicy(deadline=0.1),  # a lookup: fast or not at all
        "GET /search": RoutePolicy(deadline=0.15),
        "/reports/*": RoutePolicy(deadline=2.0),  # a prefix key: every route under /reports/
        "GET /feed": RoutePolicy(deadline=0.3),  # the budget covers the whole stream
        "GET /stock/{item_id}": RoutePolicy(deadline=0.25),
    },
    chaos=Chaos(),  # off unless TAILGUARD_CHAOS=1; never enabled=True in code you ship
)
inventory = guard.dependency("inventory", max_concurrency=4, max_queue=8)
app = FastAPI(title="shop")
# No token, no control API. An empty or short one is refused here, at startup.
guard.install(app, control_token=os.environ.get("TAILGUARD_TOKEN"))

ITEMS = {1: "lamp", 2: "chair", 3: "desk"}
PRICES = {1: 49.0, 2: 120.0, 3: 310.0}
STOCK = {1: 12, 2: 0, 3: 4}
_latency = random.Random(7)  # seeded: the "random" search times repeat from run to run
_MU = math.log(0.06)  # search times: log-normal with a 60 ms median and a long tail


def _left_ms() -> int:
    """Milliseconds left in this request's budget."""
    return round(tailguard.remaining() * 1000)


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    """The fast path: done in a few milliseconds of its 100 ms budget."""
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail="no such item")
    return {"id": item_id, "name": ITEMS[item_id]}


@app.get("/search")
async def search(q: str = "", work_ms: float | None = None) -> dict[str, object]:
    """Variable work against a 150 ms budget: most searches finish, the slow tail gets a 504.

    The time a search takes is drawn from a seeded long-tailed distribution
    (median 60 ms), or fixed with ``?work_ms=`` so a demo can be deterministic.
    """
    seconds = work_ms / 1000 if work_ms is not None else _latency.lognormvariate(_MU, 0.8)
    await asyncio.sleep(seconds)  # stands in for querying a search index
    hits = [name for name in ITEMS.values() if q in name]
    return {"q": q, "hits": hits, "budget_left_ms": _left_ms()}


@app.get("/reports/{name}")
async def report(name: str, work_ms: float = 300) -> dict[str, object]:
    """Slow but allowed to be: the ``/reports/*`` prefix key gives it 2 s.

    A caller can still ask for less. With ``x-request-timeout-ms: 50`` this
    request's budget is 50 ms and the 300 ms report gets a 504: inbound
    deadline headers (also ``grpc-timeout`` and Envoy's) only ever shrink a budget.
    """
    await asyncio.sleep(work_ms / 1000)  # stands in for an expensive query
    return {"report": name, "budget_left_ms": _left_ms()}


@app.get("/feed")
async def feed() -> StreamingResponse:
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


@app.get("/quote/{item_id}")
async def quote(item_id: int) -> dict[str, object]:
    """Outbound budget: a downstream call gets what is left of this request's budget.

    No key matches, so the 1 s default applies. After its own work, the
    handler passes the remainder on as ``x-request-timeout-ms`` so the next
    service stops when this one stops waiting.
    """
    if item_id not in PRICES:
        raise HTTPException(status_code=404, detail="no such item")
    await asyncio.sleep(0.02)  # local work: pricing rules
    forward = {"x-request-timeout-ms": str(_left_ms())}
    # e.g. await tax_client.get("/rates", headers=forward, timeout=tailguard.remaining())
    return {"item_id": item_id, "price": PRICES[item_id], "forward_headers": forward}


@app.get("/stock/{item_id}")
async def stock(item_id: int) -> dict[str, object]:
    """A lookup through the ``inventory`` bulkhead, within a 250 ms budget.

    The lookup takes a slot of the bulkhead first (waiting, within the budget,
    if all 4 are taken; shed with a 503 if 8 are already waiting). A chaos
    experiment targeting ``inventory`` strikes inside the slot, as a slow
    inventory service would: the slot is held, later lookups queue, and the
    budget still ends any lookup that runs past it with a 504.
    """
    if item_id not in STOCK:
        raise HTTPException(status_code=404, detail="no such item")
    async with inventory:
        await asyncio.sleep(0.005)  # stands in for asking the inventory service
        count = STOCK[item_id]
    return {"item_id": item_id, "in_stock": count, "budget_left_ms": _left_ms()}
