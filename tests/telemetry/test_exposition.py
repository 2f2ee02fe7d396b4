"""The /metrics ASGI app: formats, refresh before scrape, methods, registries, multiprocess."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from starlette.types import ASGIApp

from tailguard.telemetry.exposition import metrics_app, multiprocess_dir, retire_worker
from tests.asgi import Sent, http_scope

pytestmark = pytest.mark.anyio


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def scrape_client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_text_format_by_default(registry: CollectorRegistry) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc(3)
    async with scrape_client(metrics_app(registry)) as http:
        response = await http.get("/metrics", headers={"accept-encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(response.headers["content-length"]) == len(response.content)
    assert samples(response.text)["jobs_total"] == 3


async def test_openmetrics_for_scrapers_that_ask(registry: CollectorRegistry) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with scrape_client(metrics_app(registry)) as http:
        response = await http.get("/metrics", headers={"accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_gzip_when_accepted(registry: CollectorRegistry) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc()
    sent = Sent()
    scope = http_scope("/metrics", headers=[("accept-encoding", "gzip, deflate")])
    await metrics_app(registry)(scope, _no_receive, sent)
    assert sent.headers[b"content-encoding"] == b"gzip"
    assert b"jobs_total 1.0" in gzip.decompress(sent.body)


async def test_name_filter(registry: CollectorRegistry) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc()
    Gauge("workers", "Workers.", registry=registry).set(4)
    async with scrape_client(metrics_app(registry)) as http:
        response = await http.get("/metrics", params={"name[]": "workers"})
    assert samples(response.text) == {"workers": 4.0}


async def test_before_scrape_runs_before_the_exposition_is_made(
    registry: CollectorRegistry,
) -> None:
    gauge = Gauge("refreshed", "Set right before each scrape.", registry=registry)
    scrapes = iter(range(1, 10))

    def refresh() -> None:
        gauge.set(next(scrapes))

    async with scrape_client(metrics_app(registry, before_scrape=refresh)) as http:
        first = await http.get("/metrics")
        second = await http.get("/metrics")
    assert samples(first.text)["refreshed"] == 1
    assert samples(second.text)["refreshed"] == 2


async def test_a_failing_refresh_is_logged_and_the_scrape_still_answers(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc()

    def refresh() -> None:
        raise RuntimeError("limiter state unavailable")

    with caplog.at_level(logging.ERROR, logger="tailguard.telemetry"):
        async with scrape_client(metrics_app(registry, before_scrape=refresh)) as http:
            response = await http.get("/metrics")
    assert response.status_code == 200
    assert samples(response.text)["jobs_total"] == 1
    assert "limiter state unavailable" in caplog.text


async def test_head_has_headers_and_no_body(registry: CollectorRegistry) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc()
    async with scrape_client(metrics_app(registry)) as http:
        get = await http.get("/metrics", headers={"accept-encoding": "identity"})
        head = await http.head("/metrics", headers={"accept-encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))


async def test_other_methods_are_refused(registry: CollectorRegistry) -> None:
    async with scrape_client(metrics_app(registry)) as http:
        response = await http.post("/metrics", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_only_http_is_served(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="HTTP only, not 'websocket'"):
        await metrics_app(registry)({"type": "websocket"}, _no_receive, Sent())


async def test_each_app_serves_its_own_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Counter("first_total", "First.", registry=first).inc()
    Counter("second_total", "Second.", registry=second).inc()
    async with scrape_client(metrics_app(second)) as http:
        response = await http.get("/metrics")
    assert "second_total" in samples(response.text)
    assert "first_total" not in samples(response.text)


async def test_the_default_registry_is_prometheus_clients() -> None:
    private = CollectorRegistry()
    Counter("only_in_a_private_registry_total", "Not on the default.", registry=private).inc()
    async with scrape_client(metrics_app()) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert "python_info" in samples(response.text)  # prometheus_client's own collectors
    assert "only_in_a_private_registry_total" not in samples(response.text)


async def test_a_multiprocess_directory_is_served_instead_of_the_registry(
    registry: CollectorRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Counter("in_process_total", "Only in this process's registry.", registry=registry).inc()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert multiprocess_dir() == str(tmp_path)
    refreshed: list[bool] = []
    app = metrics_app(registry, before_scrape=lambda: refreshed.append(True))
    async with scrape_client(app) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert samples(response.text) == {}  # no worker wrote anything yet
    assert refreshed == [True]  # this worker's gauges are still refreshed first
    # (test_multiprocess.py serves real workers' files.)


def test_multiprocess_dir_needs_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    assert multiprocess_dir() is None
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert multiprocess_dir() is None


def test_retire_worker_removes_only_live_gauges(tmp_path: Path) -> None:
    files = ("gauge_livesum_41.db", "gauge_livemax_41.db", "counter_41.db", "gauge_livesum_42.db")
    for name in files:
        (tmp_path / name).write_bytes(b"")
    retire_worker(41, multiprocess=str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "counter_41.db",
        "gauge_livesum_42.db",
    ]


def test_retire_worker_in_a_single_process_does_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    retire_worker()
    assert list(tmp_path.iterdir()) == []


async def _no_receive() -> dict[str, object]:
    raise AssertionError("the metrics app never reads the request body")


class _Gated(Collector):
    """A collector that counts its collections and holds each until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[int] = []

    def collect(self) -> Iterable[Metric]:
        self.threads.append(threading.get_ident())
        self.entered.set()
        # Bounded: before the fix this ran on the event loop, which nothing could
        # release from there; the test then fails on its counts instead of hanging.
        self.release.wait(5.0)
        family = GaugeMetricFamily("collections", "Collections so far.")
        family.add_metric([], len(self.threads))
        yield family


async def _wait_for(event: threading.Event) -> bool:
    for _ in range(2000):
        if event.is_set():
            return True
        await asyncio.sleep(0.005)
    return False


async def test_concurrent_scrapes_share_one_exposition_rendered_off_the_loop(
    registry: CollectorRegistry,
) -> None:
    gated = _Gated()
    registry.register(gated)
    app = metrics_app(registry)
    scrapes = [Sent() for _ in range(5)]
    first = asyncio.create_task(app(http_scope("/metrics"), _no_receive, scrapes[0]))
    assert await _wait_for(gated.entered)  # the loop is free while the first one renders
    rest = [
        asyncio.create_task(app(http_scope("/metrics"), _no_receive, sent)) for sent in scrapes[1:]
    ]
    for _ in range(5):
        await asyncio.sleep(0)  # every later scrape reaches the shared exposition
    gated.release.set()
    await asyncio.gather(first, *rest)
    assert len(gated.threads) == 1  # one exposition for five scrapes
    assert gated.threads[0] != threading.get_ident()  # rendered in a thread, not on the loop
    bodies = {sent.body for sent in scrapes}
    assert len(bodies) == 1
    assert b"collections 1.0" in bodies.pop()


async def test_scrapes_after_an_exposition_get_a_fresh_one(registry: CollectorRegistry) -> None:
    counter = Counter("jobs_total", "Jobs.", registry=registry)
    async with scrape_client(metrics_app(registry)) as http:
        counter.inc()
        first = await http.get("/metrics")
        counter.inc()
        second = await http.get("/metrics")
    assert samples(first.text)["jobs_total"] == 1
    assert samples(second.text)["jobs_total"] == 2


async def test_different_formats_are_not_shared(registry: CollectorRegistry) -> None:
    Counter("jobs_total", "Jobs.", registry=registry).inc()
    app = metrics_app(registry)
    plain, gzipped, filtered = Sent(), Sent(), Sent()
    await asyncio.gather(
        app(http_scope("/metrics"), _no_receive, plain),
        app(http_scope("/metrics", headers=[("accept-encoding", "gzip")]), _no_receive, gzipped),
        app({**http_scope("/metrics"), "query_string": b"name[]=nothing"}, _no_receive, filtered),
    )
    assert b"jobs_total 1.0" in plain.body
    assert b"jobs_total 1.0" in gzip.decompress(gzipped.body)
    assert b"jobs_total" not in filtered.body


async def test_a_scraper_that_leaves_does_not_cancel_the_others(
    registry: CollectorRegistry,
) -> None:
    gated = _Gated()
    registry.register(gated)
    app = metrics_app(registry)
    leaving, staying = Sent(), Sent()
    first = asyncio.create_task(app(http_scope("/metrics"), _no_receive, leaving))
    assert await _wait_for(gated.entered)
    second = asyncio.create_task(app(http_scope("/metrics"), _no_receive, staying))
    await asyncio.sleep(0)
    first.cancel()
    gated.release.set()
    await second
    assert first.cancelled()
    assert staying.status == 200
    assert len(gated.threads) == 1


async def test_a_failing_exposition_fails_every_scrape_that_shared_it(
    registry: CollectorRegistry,
) -> None:
    class Broken(Collector):
        def collect(self) -> Iterable[Metric]:
            raise RuntimeError("collector broke")

    registry.register(Broken())
    app = metrics_app(registry)
    results = await asyncio.gather(
        app(http_scope("/metrics"), _no_receive, Sent()),
        app(http_scope("/metrics"), _no_receive, Sent()),
        return_exceptions=True,
    )
    assert [str(r) for r in results] == ["collector broke", "collector broke"]


class _Timed(Collector):
    """Records when each collection started and ended; each takes ``busy`` seconds."""

    def __init__(self, busy: float) -> None:
        self.busy = busy
        self.spans: list[tuple[float, float]] = []

    def collect(self) -> Iterable[Metric]:
        started = time.monotonic()
        time.sleep(self.busy)
        self.spans.append((started, time.monotonic()))
        family = GaugeMetricFamily("renders", "Renders so far.")
        family.add_metric([], len(self.spans))
        yield family


async def test_back_to_back_expositions_rest_as_long_as_the_last_one_took(
    registry: CollectorRegistry,
) -> None:
    timed = _Timed(busy=0.05)
    registry.register(timed)
    app = metrics_app(registry)
    first, second = Sent(), Sent()
    await app(http_scope("/metrics"), _no_receive, first)
    asked = time.monotonic()
    await app(http_scope("/metrics"), _no_receive, second)
    (start1, end1), (start2, _) = timed.spans
    # The second starts after the scrape asked for it (fresh), and no sooner
    # than the first took after it ended (rendering holds at most half a core).
    assert start2 >= asked
    assert start2 - end1 >= 0.9 * (end1 - start1)
    assert b"renders 1.0" in first.body
    assert b"renders 2.0" in second.body
