"""Calls through a dependency's transport carry a status class; 5xx and 429 are errors.

The docs' "which dependency is failing us?" query divides calls with
``outcome!="ok"`` by all calls: a dependency that answers 503 (or has a
chaos experiment answer 503 for it) must show up there.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tailguard.chaos import Chaos, Experiment, Respond
from tailguard.dependency import Dependency

pytestmark = pytest.mark.anyio


def answering(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, text="x"))


def calls(registry: CollectorRegistry, outcome: str, status_class: str) -> float:
    labels = {"dependency": "api", "outcome": outcome, "status_class": status_class}
    return registry.get_sample_value("tailguard_dependency_calls_total", labels) or 0.0


@pytest.mark.parametrize(
    ("status", "outcome", "status_class"),
    [
        (200, "ok", "2xx"),
        (404, "ok", "4xx"),
        (429, "error", "4xx"),
        (500, "error", "5xx"),
        (503, "error", "5xx"),
    ],
)
async def test_answers_are_counted_by_status_class(
    status: int, outcome: str, status_class: str
) -> None:
    registry = CollectorRegistry()
    api = Dependency("api", max_concurrency=2, registry=registry)
    async with httpx.AsyncClient(transport=api.transport(answering(status))) as client:
        assert (await client.get("http://api/")).status_code == status
    assert calls(registry, outcome, status_class) == 1
    assert api.limiter.in_use == 0


async def test_a_streamed_5xx_is_counted_when_its_body_is_closed() -> None:
    registry = CollectorRegistry()
    api = Dependency("api", max_concurrency=1, registry=registry)

    async def body():  # type: ignore[no-untyped-def]
        yield b"busy"

    inner = httpx.MockTransport(lambda request: httpx.Response(503, content=body()))
    async with (
        httpx.AsyncClient(transport=api.transport(inner)) as client,
        client.stream("GET", "http://api/") as response,
    ):
        assert api.limiter.in_use == 1
        await response.aread()
    assert calls(registry, "error", "5xx") == 1


async def test_an_injected_503_is_an_error_too() -> None:
    registry = CollectorRegistry()
    chaos = Chaos(enabled=True, seed=1)
    chaos.bind(None)
    api = Dependency("api", max_concurrency=1, chaos=chaos, registry=registry)
    chaos.start(Experiment(name="busy", ttl=60, faults=[Respond("api", status=503)]))
    try:
        async with httpx.AsyncClient(transport=api.transport(answering(200))) as client:
            assert (await client.get("http://api/")).status_code == 503
    finally:
        chaos.halt()
    assert calls(registry, "error", "5xx") == 1
    assert calls(registry, "ok", "2xx") == 0


async def test_calls_without_a_response_have_no_status_class() -> None:
    registry = CollectorRegistry()
    db = Dependency("api", max_concurrency=1, registry=registry)
    async with db:
        pass
    assert calls(registry, "ok", "none") == 1


async def test_failed_answers_do_not_feed_the_latency_estimate() -> None:
    api = Dependency("api", max_concurrency=1, registry=None)
    async with httpx.AsyncClient(transport=api.transport(answering(503))) as client:
        await client.get("http://api/")
    assert api.latency.count == 0
    async with httpx.AsyncClient(transport=api.transport(answering(200))) as client:
        await client.get("http://api/")
    assert api.latency.count == 1
