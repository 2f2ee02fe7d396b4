"""Scrapes rendered in the exposition thread neither lose nor double-count requests."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.exposition import metrics_app
from tailguard.telemetry.requests import RequestRecorder
from tests.asgi import Sent, http_scope

pytestmark = pytest.mark.anyio


async def _no_receive() -> dict[str, str]:  # pragma: no cover - never called
    raise AssertionError("the metrics endpoint reads no body")


def requests_total(body: bytes) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "tailguard_requests_total"
    )


async def test_every_request_is_counted_once_under_concurrent_scrapes() -> None:
    recorder = RequestRecorder(Catalog(CollectorRegistry()))
    route = recorder.route("/items/{item_id}", "GET")
    # The loop folds its batches before each exposition (as install() does);
    # the exposition thread's own collection folds what it finds: both at once.
    app = metrics_app(recorder.catalog.registry, before_scrape=recorder.flush)
    done = asyncio.Event()

    async def scrape_all_along() -> None:
        while not done.is_set():
            await app(http_scope("/metrics"), _no_receive, Sent())

    scrapers = [asyncio.create_task(scrape_all_along()) for _ in range(4)]
    recorded = 0
    for _ in range(300):
        for _ in range(20):
            route.begin()
            route.end(200, "ok", duration=0.001, queue_wait=None, dependencies=None)
            recorded += 1
        await asyncio.sleep(0)
    done.set()
    await asyncio.gather(*scrapers)
    final = Sent()
    await app(http_scope("/metrics"), _no_receive, final)
    assert requests_total(final.body) == recorded
