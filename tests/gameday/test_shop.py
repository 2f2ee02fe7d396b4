"""The bundled shop (``tailguard.gameday.shop``): answers the demo does not exercise.

The demo's burst and game-day (test_burst.py, test_gameday.py) cover its
budgets end to end; here, in-process, what a caller gets for a wrong request.
"""

from __future__ import annotations

import httpx
import pytest

from tailguard.gameday import shop


async def get(path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=shop.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.get(path)


@pytest.mark.anyio
async def test_items_and_reports_answer_json() -> None:
    assert (await get("/items/1")).json() == {"id": 1, "name": "lamp"}
    answer = (await get("/reports/sales?work_ms=0")).json()
    assert answer["report"] == "sales"
    assert 0 < answer["budget_left_ms"] <= 2000


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/items/9", "/quote/9", "/stock/9"])
async def test_an_unknown_item_is_a_json_404(path: str) -> None:
    response = await get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "no such item"}


@pytest.mark.anyio
@pytest.mark.parametrize("work_ms", ["abc", "nan", "inf"])
async def test_work_ms_must_be_a_finite_number(work_ms: str) -> None:
    response = await get(f"/search?work_ms={work_ms}")
    assert response.status_code == 422
    assert response.json() == {
        "detail": f"work_ms must be a number of milliseconds, got {work_ms!r}"
    }


async def send(method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=shop.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_product_page_reads_through_the_tiers_and_recommends() -> None:
    answer = (await send("GET", "/products/1")).json()
    assert answer["id"] == 1
    assert answer["from"] in ("cache", "replica", "primary")
    assert answer["recommended"] == [2, 3]
    assert answer["complete"] is True
    assert (await send("GET", "/products/9")).status_code == 404


@pytest.mark.anyio
async def test_an_order_is_paid_for_its_tenant() -> None:
    answer = await send("POST", "/orders", json={"item": 2}, headers={"x-tenant-id": "acme"})
    assert answer.status_code == 201
    assert answer.json() == {"item": 2, "tenant": "acme", "status": "paid"}
    assert (await send("POST", "/orders", json={"item": 9})).status_code == 404
    refused = await send("POST", "/orders", json={"nope": 1})
    assert refused.status_code == 422
    assert refused.json() == {"detail": 'expected {"item": <item id>}'}


def test_every_simulated_dependency_is_a_bulkhead_chaos_can_target() -> None:
    assert set(shop.LATENCIES) <= set(shop.guard.dependencies)
    assert all(p50 < p99 for p50, p99 in shop.LATENCIES.values())


@pytest.mark.anyio
async def test_in_shadow_mode_the_shop_answers_without_a_budget() -> None:
    """TAILGUARD_ENFORCE=shadow (the demo's second run): no deadline in force, no crash."""
    shop.guard.enforce("shadow", who="test")
    try:
        stock = await get("/stock/1")
        quote = await get("/quote/1")
    finally:
        shop.guard.enforce("on", who="test")
    assert stock.status_code == 200
    assert stock.json()["budget_left_ms"] is None
    assert quote.status_code == 200
    assert quote.json()["forward_headers"] == {}
    assert (await get("/stock/1")).json()["budget_left_ms"] > 0
