"""Every thread pool in a guard's snapshot, and tailguard's endpoints served under a root path."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import Tailguard, chaos

pytestmark = pytest.mark.anyio


async def test_snapshot_lists_every_pool_including_the_loop_thread_pools() -> None:
    """The snapshot shows every pool's state: asyncio's executor and anyio's threads too."""
    registry = CollectorRegistry()
    guard = Tailguard(registry=registry)

    def sync_endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/sync", sync_endpoint)])
    guard.install(app, tracing=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.get("/sync")).status_code == 200
    await asyncio.to_thread(int)
    text = repr(guard.snapshot())
    assert "anyio" in text, sorted(guard.snapshot())
    assert "asyncio" in text


async def test_metrics_and_control_api_are_served_under_a_root_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn --root-path puts the prefix in scope['path']: both endpoints are still found."""
    caplog.set_level(logging.CRITICAL, logger="tailguard.chaos")
    guard = Tailguard(registry=CollectorRegistry(), chaos=chaos.Chaos(enabled=True))

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/a", endpoint)])
    token = "t" * 20
    guard.install(app, tracing=False, control_token=token)
    transport = httpx.ASGITransport(app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/api/a")).status_code == 200
        metrics = await client.get("/api/metrics")
        status = await client.get(
            "/api/_tailguard/status", headers={"authorization": f"Bearer {token}"}
        )
    assert (metrics.status_code, status.status_code) == (200, 200)
