"""``with dependency:`` in FastAPI ``def`` endpoints: a slot from a worker thread.

FastAPI (and Starlette) run ``def`` endpoints on AnyIO worker threads. The
block takes its slot on the event loop, waits no longer than the request's
deadline, meets chaos in the thread, and is counted and traced as ``async
with`` is. Served in-process (``httpx.ASGITransport``) and by uvicorn.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import tailguard
from tailguard import DeadlineExceeded, RoutePolicy, Tailguard
from tailguard.admission import Rejected
from tailguard.chaos import Chaos, Experiment, Latency, Raise
from tailguard.dependency import Dependency
from tailguard.server import serve_in_thread

pytestmark = pytest.mark.anyio

WAIT = 20.0
"""A generous bound for cross-thread signals on a loaded machine."""


class Service:
    """A FastAPI app whose ``def`` endpoints use ``with db:``; the test holds them with a gate."""

    def __init__(
        self,
        *,
        deadline: float = 10.0,
        chaos: Chaos | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.guard = Tailguard(
            default=RoutePolicy(deadline=deadline), registry=self.registry, chaos=chaos
        )
        self.db = self.guard.dependency("db", max_concurrency=1, max_queue=4)
        self.gate = threading.Event()
        self.inside = threading.Event()
        self.seen: list[tuple[str, float, int]] = []  # thread, remaining, in_use
        self.ended: list[str] = []
        self.seen_thread = ""
        app = FastAPI()
        db = self.db

        @app.get("/held")
        def held() -> dict[str, str]:
            try:
                with db:
                    self.seen.append(
                        (threading.current_thread().name, tailguard.remaining(), db.limiter.in_use)
                    )
                    self.inside.set()
                    self.gate.wait(WAIT)
            except BaseException as exc:
                self.ended.append(type(exc).__name__)
                raise
            self.ended.append("ok")
            return {"ok": "yes"}

        @app.get("/quick")
        def quick() -> dict[str, int]:
            self.seen_thread = threading.current_thread().name
            try:
                with db:
                    in_use = db.limiter.in_use
            except BaseException as exc:
                self.ended.append(type(exc).__name__)
                raise
            self.ended.append("ok")
            return {"in_use": in_use}

        self.app = self.guard.install(app, tracer_provider=tracer_provider)

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://app", timeout=WAIT)

    def calls(self, outcome: str) -> float:
        labels = {"dependency": "db", "outcome": outcome, "status_class": "none"}
        return self.registry.get_sample_value("tailguard_dependency_calls_total", labels) or 0.0


async def wait_for(event: threading.Event) -> None:
    assert await anyio.to_thread.run_sync(event.wait, WAIT)


async def test_a_def_endpoint_takes_a_slot_and_sees_the_deadline() -> None:
    service = Service()
    async with service.client() as http:
        service.gate.set()
        response = await http.get("/held")
    assert response.status_code == 200
    ((thread, remaining, in_use),) = service.seen
    assert thread != threading.current_thread().name  # a worker thread
    assert 0 < remaining <= 10.0
    assert in_use == 1
    assert service.db.limiter.in_use == 0
    assert service.calls("ok") == 1
    assert (
        service.registry.get_sample_value(
            "tailguard_budget_spent_seconds_count",
            {"route": "/held", "phase": "dependency", "dependency": "db"},
        )
        == 1
    )


async def test_threads_share_the_bulkhead_with_the_loop() -> None:
    service = Service()
    async with service.client() as http:
        first = asyncio.create_task(http.get("/held"))
        await wait_for(service.inside)
        second = asyncio.create_task(http.get("/quick"))
        while service.db.limiter.queued == 0:  # the second thread waits for the slot
            await asyncio.sleep(0.001)
        assert service.db.limiter.in_use == 1
        service.gate.set()
        assert (await first).status_code == 200
        assert (await second).json() == {"in_use": 1}
    assert service.db.limiter.in_use == 0
    assert service.calls("ok") == 2


async def test_the_wait_for_a_slot_is_capped_by_the_deadline() -> None:
    service = Service(deadline=0.2)
    async with service.client() as http:
        first = asyncio.create_task(http.get("/held"))
        await wait_for(service.inside)
        cut = await http.get("/quick")  # would wait for the gate, 20 s
        assert cut.status_code == 504
        # The waiting thread was woken at the deadline too: it did not stay behind.
        give_up = time.monotonic() + WAIT
        while "DeadlineExceeded" not in service.ended:
            assert time.monotonic() < give_up
            await asyncio.sleep(0.005)
        assert service.db.limiter.queued == 0
        service.gate.set()
        await first
    assert service.calls("deadline_exceeded") == 1


async def test_a_full_bulkhead_sheds_the_thread() -> None:
    service = Service()
    service.db.limiter.max_queue = 0
    async with service.client() as http:
        first = asyncio.create_task(http.get("/held"))
        await wait_for(service.inside)
        shed = await http.get("/quick")
        service.gate.set()
        await first
    assert shed.status_code == 503
    assert shed.headers["x-tailguard-reason"] == "queue_full"
    assert service.ended.count("Rejected") == 1


async def test_chaos_faults_are_applied_in_the_worker_thread() -> None:
    chaos = Chaos(enabled=True, seed=3)
    service = Service(chaos=chaos)
    raised_in: list[str] = []

    class Broken(ConnectionError):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            raised_in.append(threading.current_thread().name)

    chaos.start(Experiment(name="down", ttl=60, faults=[Raise("db", exc=Broken)]))
    try:
        async with service.client() as http:
            response = await http.get("/quick")
        assert chaos.experiments()[0].injections == 1
    finally:
        chaos.halt()
    assert response.status_code == 500
    assert service.ended == ["Broken"]
    assert raised_in[-1] == service.seen_thread  # made (and raised) in the endpoint's thread
    assert service.seen_thread != threading.current_thread().name
    assert service.db.limiter.in_use == 0
    assert service.calls("error") == 1


async def test_an_injected_delay_is_spent_in_the_thread_then_the_block_runs() -> None:
    chaos = Chaos(enabled=True, seed=3)
    service = Service(chaos=chaos)
    chaos.start(Experiment(name="slow", ttl=60, faults=[Latency("db", delay=0.001)]))
    try:
        async with service.client() as http:
            response = await http.get("/quick")
        assert chaos.experiments()[0].injections == 1
    finally:
        chaos.halt()
    assert response.json() == {"in_use": 1}
    assert service.db.limiter.in_use == 0
    assert service.calls("ok") == 1


def test_a_thread_waiting_for_a_slot_is_woken_when_the_loop_shuts_down() -> None:
    db = Dependency("db", max_concurrency=1, max_queue=1, registry=None)
    ended: list[BaseException] = []
    woken = threading.Event()

    def work() -> None:
        try:
            with db:
                pass
        except BaseException as exc:
            ended.append(exc)
            woken.set()
            raise

    async def main() -> None:
        held = db.limiter.try_acquire()
        assert held is not None
        waiting = asyncio.ensure_future(anyio.to_thread.run_sync(work, abandon_on_cancel=True))
        while db.limiter.queued == 0:
            await asyncio.sleep(0.001)
        assert not waiting.done()
        # Returning leaves the thread waiting: asyncio.run cancels what is left.

    asyncio.run(main())
    assert woken.wait(WAIT)
    assert type(ended[0]).__name__ == "CancelledError"


async def test_the_block_is_a_dependency_span_under_the_server_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = Service(tracer_provider=provider)
    async with service.client() as http:
        assert (await http.get("/quick")).status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    child = spans["tailguard.dependency db"]
    server = spans["GET /quick"]
    assert child.parent is not None
    assert child.parent.span_id == server.context.span_id
    assert dict(child.attributes or {})["tailguard.dependency.outcome"] == "ok"
    assert not [name for name in spans if name.startswith("task ")]  # no helper task of ours


async def test_with_on_the_event_loop_is_refused() -> None:
    db = Dependency("db", max_concurrency=1, registry=None)
    with pytest.raises(RuntimeError, match="async with"), db:
        pass
    assert db.limiter.in_use == 0


def test_with_outside_an_anyio_worker_thread_says_what_to_do() -> None:
    db = Dependency("db", max_concurrency=1, registry=None)
    with pytest.raises(RuntimeError, match="AnyIO worker threads"), db:
        pass


async def test_anyio_threads_outside_requests_work_too() -> None:
    db = Dependency("db", max_concurrency=1, registry=None)

    def work() -> int:
        with db:
            return db.limiter.in_use

    assert await anyio.to_thread.run_sync(work) == 1
    assert db.limiter.in_use == 0
    with pytest.raises(DeadlineExceeded), tailguard.deadline(0.0002):
        await anyio.to_thread.run_sync(work)
    held = db.limiter.try_acquire()
    with pytest.raises(Rejected):
        await anyio.to_thread.run_sync(work)
    assert held is not None
    held.release()


# -- served by uvicorn ------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Service, str]]:
    service = Service()
    service.db.limiter.max_queue = 0
    with serve_in_thread(service.app, log_level="critical") as url:
        try:
            yield service, url
        finally:
            service.gate.set()


@pytest.mark.e2e
async def test_uvicorn_def_endpoints_share_one_bulkhead(served: tuple[Service, str]) -> None:
    service, url = served
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        first = asyncio.create_task(http.get("/held"))
        await wait_for(service.inside)
        shed = await http.get("/quick")
        service.gate.set()
        assert (await first).status_code == 200
        assert (await http.get("/quick")).json() == {"in_use": 1}
    assert shed.status_code == 503
    assert "retry-after" in shed.headers
    assert service.calls("ok") == 2
    assert service.calls("rejected") == 1
