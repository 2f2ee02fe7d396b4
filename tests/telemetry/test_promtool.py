"""`promtool check metrics` on the real exposition of every catalog metric.

promtool is Prometheus' own linter (Debian package ``prometheus``). Where it
is missing the test skips, except under CI (``CI`` or
``TAILGUARD_REQUIRE_PROMTOOL`` set, as ``make test`` does), where it fails:
the check must not silently stop running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tailguard.admission import Limiter, Rejected
from tailguard.dependency import Dependency
from tailguard.telemetry.catalog import Catalog, catalog_for
from tailguard.telemetry.exposition import metrics_app
from tailguard.telemetry.loop import LoopMonitor
from tailguard.telemetry.pools import Refresher, instrument_threads

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

LABEL_VALUES = {
    "route": "/items/{item_id}",
    "method": "GET",
    "status_class": "2xx",
    "outcome": "ok",
    "reason": "queue_full",
    "stage": "before_response",
    "phase": "handler",
    "dependency": "inventory",
    "tenant": "acme",
    "limiter": "orders",
    "kind": "route",
    "pool": "inventory",
    "site": "checkout",
    "helper": "hedge",
    "event": "sent",
    "experiment": "slow-inventory",
    "target": "inventory",
    "fault": "latency",
    "action": "left",
}
"""Realistic values for the catalog's labels; a label not listed here gets "x"."""


def _required() -> bool:
    return any(
        os.environ.get(name, "").lower() not in ("", "0", "false")
        for name in ("CI", "TAILGUARD_REQUIRE_PROMTOOL")
    )


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is not None:
        return found
    if _required():
        pytest.fail("promtool is not installed: apt-get install prometheus (make test does)")
    pytest.skip("promtool is not installed (apt-get install prometheus); CI requires it")


@pytest.fixture
def catalog() -> Catalog:
    """A fresh registry's catalog, which the test's dependency records into as well."""
    return catalog_for(CollectorRegistry())


def metrics_of(catalog: Catalog) -> dict[str, MetricWrapperBase]:
    """Every metric the catalog declares, by family name (a counter's without ``_total``)."""
    found = {}
    for metric in vars(catalog).values():
        if isinstance(metric, MetricWrapperBase):
            found[metric._name] = metric
    return found


def fill(metric: MetricWrapperBase) -> None:
    """Give ``metric`` one sample, with realistic label values."""
    labels = [LABEL_VALUES.get(name, "x") for name in metric._labelnames]
    child = metric.labels(*labels) if labels else metric
    if isinstance(metric, Counter):
        child.inc()
    elif isinstance(metric, Gauge):
        child.set(1)
    elif isinstance(metric, Histogram):
        child.observe(0.003)
    else:
        raise AssertionError(f"the catalog has a metric of an unexpected type: {metric!r}")


async def exercise(catalog: Catalog) -> Refresher:
    """Record through tailguard's own pool, limiter and loop code, as a live service would."""
    orders = Limiter("orders", max_concurrency=1)
    inventory = Dependency("inventory", max_concurrency=2, registry=catalog.registry)
    refresh = Refresher(catalog, lambda: {"orders": orders}, lambda: {"inventory": inventory})
    instrument_threads(catalog=catalog)
    assert orders.try_acquire() is not None
    with pytest.raises(Rejected):
        await orders.acquire()
    await inventory.run_sync(int)
    await asyncio.to_thread(int)
    await anyio.to_thread.run_sync(int)
    ticked = asyncio.Event()
    monitor = LoopMonitor(interval=0.001, refresh=ticked.set, catalog=catalog)
    monitor.start()
    await asyncio.wait_for(ticked.wait(), 20)
    monitor.stop()
    await inventory.aclose()
    return refresh


async def test_the_exposition_of_every_metric_passes_promtool(
    catalog: Catalog, promtool: str
) -> None:
    refresh = await exercise(catalog)
    families = metrics_of(catalog)
    recorded = {family.name for family in catalog.registry.collect() if family.samples}
    for name, metric in families.items():
        if name not in recorded:  # what the middleware, chaos and tail helpers record
            fill(metric)
    transport = httpx.ASGITransport(app=metrics_app(catalog.registry, before_scrape=refresh))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/metrics")
    exposed = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name in families:
        assert exposed[name].samples, f"{name} has no samples in the exposition"
    pools = {
        sample.labels["pool"] for sample in exposed["tailguard_pool_queue_wait_seconds"].samples
    }
    assert pools == {"inventory", "asyncio", "anyio"}
    check = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=response.content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (check.stdout + check.stderr).decode()
    assert check.returncode == 0, problems
    assert problems.strip() == ""


def test_promtool_does_reject_a_bad_exposition(promtool: str) -> None:
    # The check above can fail: promtool lints, for example, a counter without _total.
    bad = b"# HELP tailguard_jobs_seconds Jobs.\n# TYPE tailguard_jobs_seconds counter\n"
    bad += b"tailguard_jobs_seconds 1\n"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=bad, capture_output=True, timeout=60, check=False
    )
    assert check.returncode != 0
    assert b"_total" in check.stdout + check.stderr


def test_missing_promtool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CI", "TAILGUARD_REQUIRE_PROMTOOL"):
        monkeypatch.delenv(name, raising=False)
    assert not _required()
    monkeypatch.setenv("CI", "false")
    assert not _required()
    monkeypatch.setenv("CI", "true")
    assert _required()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TAILGUARD_REQUIRE_PROMTOOL", "1")
    assert _required()


def test_the_catalog_reference_lists_every_metric(catalog: Catalog) -> None:
    reference = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    names = [
        f"{name}_total" if isinstance(metric, Counter) else name
        for name, metric in metrics_of(catalog).items()
    ]
    missing = [name for name in names if f"`{name}`" not in reference]
    assert missing == [], f"docs/metrics.md does not describe {missing}"
