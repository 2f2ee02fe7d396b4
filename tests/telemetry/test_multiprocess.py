"""Multiprocess exposition: two real worker processes, one PROMETHEUS_MULTIPROC_DIR.

Each worker is a fresh Python process (prometheus_client picks its multiprocess
storage at import time, so the variable is set before it starts), records
through tailguard's own limiter, dependency pool and refresher, and then waits.
The test process scrapes the directory as a third worker's /metrics would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tailguard.telemetry.exposition import metrics_app, retire_worker

WAIT = 60.0
"""Generous: a worker imports tailguard and prometheus_client on a loaded 2-core machine."""

WORKER = """
import asyncio, os, sys
from prometheus_client import CollectorRegistry
from tailguard.admission import Limiter, Rejected
from tailguard.dependency import Dependency
from tailguard.telemetry.catalog import catalog_for
from tailguard.telemetry.exposition import retire_worker
from tailguard.telemetry.pools import Refresher

share = int(sys.argv[1])  # this worker's load: slots held, requests, rejections, jobs
registry = CollectorRegistry()
catalog = catalog_for(registry)
orders = Limiter("orders", max_concurrency=share)
inventory = Dependency("inventory", max_concurrency=2, registry=registry)
refresh = Refresher(catalog, lambda: {"orders": orders}, lambda: {"inventory": inventory})

async def main():
    held = [orders.try_acquire() for _ in range(share)]
    for _ in range(share):
        try:
            await orders.acquire()
        except Rejected:
            pass
        await inventory.run_sync(int)
    await inventory.aclose()
    catalog.requests.labels("/items/{item_id}", "GET", "2xx", "ok").inc(share)
    catalog.request_duration.labels("/items/{item_id}", "GET", "admitted").observe(0.25 * share)
    catalog.chaos_experiments_active.set(share)
    refresh()
    return held

held = asyncio.run(main())
print("ready", os.getpid(), flush=True)
if sys.stdin.readline().strip() == "retire":
    retire_worker()  # a graceful shutdown takes its live gauges with it
"""

Key = tuple[str, frozenset[tuple[str, str]]]


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


ROUTE = {"route": "/items/{item_id}", "method": "GET"}
REQUESTS = key("tailguard_requests_total", **ROUTE, status_class="2xx", outcome="ok")
ADMITTED = {**ROUTE, "admission": "admitted"}
REJECTIONS = key(
    "tailguard_limiter_rejections_total", limiter="orders", kind="route", reason="queue_full"
)
IN_USE = key("tailguard_limiter_in_use", limiter="orders", kind="route")
ACTIVE = key("tailguard_chaos_experiments_active")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[dict[int, subprocess.Popen[str]]]:
    """Two workers, sharing the load 2 and 3, writing to ``tmp_path``."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    started = {
        share: subprocess.Popen(
            [sys.executable, "-c", WORKER, str(share)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in (2, 3)
    }
    try:
        for worker in started.values():
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line.startswith("ready"):
                worker.kill()
                _, errors = worker.communicate(timeout=WAIT)
                pytest.fail(f"a worker failed to start: {errors}")
        yield started
    finally:
        for worker in started.values():
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=WAIT)


def scrape(path: Path) -> dict[Key, float]:
    """The directory's exposition through the metrics app: sample name and label values."""

    async def get() -> str:
        transport = httpx.ASGITransport(app=metrics_app(multiprocess=str(path)))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        return response.text

    text = asyncio.run(get())
    return {
        key(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_workers_are_summed_and_dead_workers_gauges_go(
    workers: dict[int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    metrics = scrape(tmp_path)
    # Counters and histograms add up across workers.
    assert metrics[REQUESTS] == 5
    assert metrics[key("tailguard_request_duration_seconds_count", **ADMITTED)] == 2
    assert metrics[key("tailguard_request_duration_seconds_sum", **ADMITTED)] == pytest.approx(1.25)
    bucket = "tailguard_request_duration_seconds_bucket"
    assert metrics[key(bucket, **ADMITTED, le="0.5")] == 1  # worker 2's 0.5 s
    assert metrics[key(bucket, **ADMITTED, le="1.0")] == 2  # and worker 3's 0.75 s
    assert metrics[REJECTIONS] == 5
    assert metrics[key("tailguard_pool_queue_wait_seconds_count", pool="inventory")] == 5
    # Live gauges: livesum adds the workers up, livemax takes the larger, no pid label.
    assert metrics[IN_USE] == 5
    assert metrics[key("tailguard_limiter_limit", limiter="orders", kind="route")] == 5
    assert metrics[key("tailguard_pool_threads_max", pool="inventory")] == 4
    assert metrics[ACTIVE] == 3
    assert not [labels for _, labels in metrics if "pid" in dict(labels)]

    # A worker that dies leaves its files: its live gauges stay until it is marked dead.
    crashed = workers[3]
    crashed.kill()
    crashed.wait(WAIT)
    assert scrape(tmp_path)[IN_USE] == 5
    retire_worker(crashed.pid, multiprocess=str(tmp_path))
    metrics = scrape(tmp_path)
    assert metrics[IN_USE] == 2
    assert metrics[ACTIVE] == 2
    assert metrics[REQUESTS] == 5  # what it counted before it died still counts
    assert metrics[REJECTIONS] == 5

    # A worker shutting down gracefully retires itself.
    graceful = workers[2]
    assert graceful.stdin is not None
    graceful.stdin.write("retire\n")
    graceful.stdin.flush()
    assert graceful.wait(WAIT) == 0
    metrics = scrape(tmp_path)
    assert IN_USE not in metrics
    assert ACTIVE not in metrics
    assert metrics[REQUESTS] == 5
