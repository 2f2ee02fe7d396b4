"""A caller's budget too short for the route is shed with its own reason, not as overload."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard

pytestmark = pytest.mark.anyio

USUAL = 0.05
"""What the route usually takes; the callers' budget below is 1 ms: far apart."""


async def slow(request: Request) -> Response:
    await asyncio.sleep(USUAL)
    return PlainTextResponse("done")


async def shed_once() -> tuple[httpx.Response, CollectorRegistry]:
    registry = CollectorRegistry()
    guard = Tailguard(routes={"/slow": RoutePolicy(deadline=30.0)}, registry=registry)
    app = guard.install(Starlette(routes=[Route("/slow", slow)]), tracing=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        await asyncio.gather(*(http.get("/slow") for _ in range(25)))  # learn the usual time
        shed = await http.get("/slow", headers={"x-request-timeout-ms": "1"})
    return shed, registry


async def test_the_shed_says_budget_and_is_counted_so() -> None:
    shed, registry = await shed_once()
    assert shed.status_code == 503
    assert shed.headers["x-tailguard-reason"] == "budget"
    labels = {"route": "/slow", "reason": "budget"}
    assert registry.get_sample_value("tailguard_requests_shed_total", labels) == 1
    overload = {"route": "/slow", "reason": "deadline"}
    assert registry.get_sample_value("tailguard_requests_shed_total", overload) is None


async def test_the_shed_does_not_invite_a_retry() -> None:
    shed, _ = await shed_once()
    assert "retry-after" not in shed.headers
