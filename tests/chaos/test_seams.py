"""Each fault at each dependency seam: async with, @dep, call, httpx/httpx2 transports, run_sync."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import tailguard
from tailguard.admission import Rejected
from tailguard.chaos import Chaos, Hang, Latency, Raise, Reset, Respond
from tailguard.dependency import Dependency
from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.tracing import tracer, use_tracer_provider
from tests.chaos.runtime_support import (  # noqa: F401 (fixtures)
    FOREVER,
    GENERIC,
    SEAMS,
    URL,
    WAIT,
    FakeRequest,
    Reached,
    catalog_fixture,
    deps_fixture,
    engines_fixture,
    experiment,
    in_request,
    sample,
    spans_fixture,
    through,
    wait_until,
)

pytestmark = pytest.mark.anyio

Engines = Callable[..., Chaos]
Deps = Callable[..., Dependency]
TRANSPORTS = {"transport": httpx, "httpx2": httpx2}


def in_flight(engine: Chaos) -> int:
    value: int = engine.status()["injections_in_flight"]
    return value


@pytest.fixture
def setup(engines: Engines, deps: Deps) -> tuple[Chaos, Dependency]:
    engine = engines()
    return engine, deps("db", chaos=engine)


# -- latency ----------------------------------------------------------------------------


@pytest.mark.parametrize("seam", SEAMS)
async def test_latency_delays_the_call_then_lets_it_through(
    setup: tuple[Chaos, Dependency], catalog: Catalog, seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Latency("db", delay=0.001), name="slow"))
    reached = Reached()
    await through(dep, seam, reached)
    assert reached.count == 1
    assert (
        sample(
            catalog,
            "tailguard_chaos_injections_total",
            experiment="slow",
            target="db",
            fault="latency",
        )
        == 1
    )
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0


@pytest.mark.parametrize("seam", SEAMS)
@pytest.mark.parametrize("end", ["halt", "stop"])
async def test_latency_holds_the_slot_until_the_experiment_ends(
    setup: tuple[Chaos, Dependency], seam: str, end: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Latency("db", delay=FOREVER), name="slow"))
    reached = Reached()
    call = asyncio.create_task(through(dep, seam, reached))
    await wait_until(lambda: in_flight(engine) == 1)
    assert dep.limiter.in_use == 1  # the delay is spent inside the bulkhead
    assert reached.count == 0
    if end == "halt":
        assert engine.halt() == 1
    else:
        assert engine.stop("slow")
    await asyncio.wait_for(call, WAIT)
    assert reached.count == 1  # the experiment is over: the real dependency answers
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0


async def test_a_slow_dependency_fills_its_bulkhead(engines: Engines, deps: Deps) -> None:
    engine = engines()
    dep = deps("db", chaos=engine, max_concurrency=1, max_queue=0)
    engine.start(experiment(Latency("db", delay=FOREVER)))
    first = asyncio.create_task(dep.call(asyncio.sleep, 0))
    await wait_until(lambda: dep.limiter.in_use == 1)
    with pytest.raises(Rejected) as shed:
        await dep.call(asyncio.sleep, 0)
    assert shed.value.reason == "queue_full"
    engine.halt()
    await asyncio.wait_for(first, WAIT)


@pytest.mark.parametrize("seam", [*GENERIC, "transport"])
async def test_a_deadline_cuts_an_injected_delay_short(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Latency("db", delay=FOREVER)))
    with pytest.raises(tailguard.DeadlineExceeded):
        with tailguard.deadline(0.05):
            await through(dep, seam)
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0


async def test_run_sync_spends_the_delay_in_the_worker_thread(
    setup: tuple[Chaos, Dependency],
) -> None:
    engine, dep = setup
    engine.start(experiment(Latency("db", delay=FOREVER)))
    # The caller gives up at its deadline; the thread, like a real blocking
    # call, cannot be stopped and keeps its slot until the experiment ends.
    with pytest.raises(tailguard.DeadlineExceeded):
        with tailguard.deadline(0.05):
            await dep.run_sync(lambda: None)
    assert dep.limiter.in_use == 1
    assert dep.state().threads_in_use == 1
    engine.halt()
    await wait_until(lambda: dep.limiter.in_use == 0)
    assert in_flight(engine) == 0


# -- raise and reset -----------------------------------------------------------------------


@pytest.mark.parametrize("seam", SEAMS)
async def test_raise_fails_the_call_with_the_given_exception(
    setup: tuple[Chaos, Dependency], catalog: Catalog, seam: str
) -> None:
    engine, dep = setup

    class InventoryError(Exception):
        pass

    engine.start(experiment(Raise("db", exc=InventoryError), name="down"))
    reached = Reached()
    with pytest.raises(InventoryError, match="injected by tailguard chaos experiment down"):
        await through(dep, seam, reached)
    assert reached.count == 0
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0
    assert (
        sample(
            catalog,
            "tailguard_chaos_injections_total",
            experiment="down",
            target="db",
            fault="raise",
        )
        == 1
    )


@pytest.mark.parametrize("seam", TRANSPORTS)
async def test_raise_at_the_transport_can_use_the_librarys_errors(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    library: Any = TRANSPORTS[seam]
    engine.start(experiment(Raise("db", exc=library.ConnectError)))
    with pytest.raises(library.ConnectError) as raised:
        await through(dep, seam)
    assert raised.value.request.url == URL  # the client attached the request, as for a real one


@pytest.mark.parametrize("seam", [*GENERIC, "run_sync"])
async def test_reset_raises_connection_reset_error(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Reset("db"), name="rst"))
    reached = Reached()
    with pytest.raises(ConnectionResetError, match=r"injected by tailguard chaos experiment rst"):
        await through(dep, seam, reached)
    assert reached.count == 0
    assert dep.limiter.in_use == 0


@pytest.mark.parametrize("seam", TRANSPORTS)
async def test_reset_at_the_transport_is_the_librarys_read_error(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    library: Any = TRANSPORTS[seam]
    engine.start(experiment(Reset("db"), name="rst"))
    reached = Reached()
    with pytest.raises(library.ReadError, match=r"Connection reset by peer \(injected") as raised:
        await through(dep, seam, reached)
    assert raised.value.request.url == URL
    assert reached.count == 0
    assert dep.limiter.in_use == 0


# -- respond ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seam", TRANSPORTS)
async def test_respond_synthesizes_a_response_without_calling_the_service(
    setup: tuple[Chaos, Dependency], catalog: Catalog, seam: str
) -> None:
    engine, dep = setup
    engine.start(
        experiment(
            Respond("db", status=503, body="overloaded", headers={"Retry-After": "1"}), name="busy"
        )
    )
    reached = Reached()
    response = await through(dep, seam, reached)
    assert reached.count == 0
    assert isinstance(response, TRANSPORTS[seam].Response)
    assert response.status_code == 503
    assert response.text == "overloaded"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-tailguard-chaos"] == "busy"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.extensions["tailguard_chaos"] == "busy"
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0
    assert (
        sample(
            catalog,
            "tailguard_chaos_injections_total",
            experiment="busy",
            target="db",
            fault="respond",
        )
        == 1
    )


async def test_respond_keeps_a_content_type_it_was_given(setup: tuple[Chaos, Dependency]) -> None:
    engine, dep = setup
    engine.start(
        experiment(
            Respond("db", status=200, body="{}", headers={"Content-Type": "application/json"})
        )
    )
    response = await through(dep, "transport")
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.json() == {}


@pytest.mark.parametrize("seam", [*GENERIC, "run_sync"])
async def test_respond_does_not_apply_where_there_is_no_response(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Respond("db", status=503)))
    reached = Reached()
    await through(dep, seam, reached)
    assert reached.count == 1
    assert engine.experiments()[0].injections == 0


# -- hang ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seam", SEAMS)
async def test_hang_blocks_until_halt_then_the_call_goes_on(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Hang("db")))
    reached = Reached()
    call = asyncio.create_task(through(dep, seam, reached))
    await wait_until(lambda: in_flight(engine) == 1)
    await asyncio.sleep(0.01)
    assert not call.done()
    assert reached.count == 0
    engine.halt()
    await asyncio.wait_for(call, WAIT)
    assert reached.count == 1
    assert dep.limiter.in_use == 0


@pytest.mark.parametrize("seam", [*GENERIC, "httpx2"])
async def test_hang_ends_at_the_deadline(setup: tuple[Chaos, Dependency], seam: str) -> None:
    engine, dep = setup
    engine.start(experiment(Hang("db")))
    with pytest.raises(tailguard.DeadlineExceeded):
        with tailguard.deadline(0.05):
            await through(dep, seam)
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0


@pytest.mark.parametrize("seam", ["call", "run_sync"])
async def test_hang_ends_when_the_ttl_runs_out(engines: Engines, deps: Deps, seam: str) -> None:
    engine = engines()
    dep = deps("db", chaos=engine)
    engine.start(experiment(Hang("db"), ttl=0.1, name="brief"))
    reached = Reached()
    await asyncio.wait_for(through(dep, seam, reached), WAIT)
    assert reached.count == 1
    assert engine.status()["stopped"][0]["reason"] == "expired"


@pytest.mark.parametrize("seam", TRANSPORTS)
@pytest.mark.parametrize("fault", ["hang", "latency"])
async def test_the_clients_read_timeout_fires_on_an_injected_wait(
    setup: tuple[Chaos, Dependency], seam: str, fault: str
) -> None:
    engine, dep = setup
    library: Any = TRANSPORTS[seam]
    slow = Hang("db") if fault == "hang" else Latency("db", delay=FOREVER)
    engine.start(experiment(slow, name="silent"))
    reached = Reached()

    async def handler(request: Any) -> Any:
        await reached()
        return library.Response(200)

    transport = dep.transport(library.MockTransport(handler))
    async with library.AsyncClient(transport=transport, timeout=0.05) as client:
        with pytest.raises(
            library.ReadTimeout, match="injected by tailguard chaos experiment silent"
        ):
            await client.get(URL)
        engine.stop("silent")
        engine.start(experiment(Latency("db", delay=0.001), name="quick"))
        assert (await client.get(URL)).status_code == 200  # shorter than the timeout
    assert reached.count == 1
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0


@pytest.mark.parametrize("read_timeout", [FOREVER / 2, None])
@pytest.mark.parametrize("fault", ["hang", "latency"])
async def test_an_injected_wait_under_a_read_timeout_ends_with_the_experiment(
    setup: tuple[Chaos, Dependency], fault: str, read_timeout: float | None
) -> None:
    engine, dep = setup
    slow = Hang("db") if fault == "hang" else Latency("db", delay=FOREVER)
    engine.start(experiment(slow))
    transport = dep.transport(httpx.MockTransport(lambda request: httpx.Response(204)))
    async with httpx.AsyncClient(transport=transport, timeout=read_timeout) as client:
        call = asyncio.create_task(client.get(URL))
        await wait_until(lambda: in_flight(engine) == 1)
        engine.halt()
        assert (await asyncio.wait_for(call, WAIT)).status_code == 204


async def test_cancelling_a_hung_call_gives_everything_back(
    setup: tuple[Chaos, Dependency],
) -> None:
    engine, dep = setup
    engine.start(experiment(Hang("db")))
    call = asyncio.create_task(dep.call(asyncio.sleep, 0))
    await wait_until(lambda: in_flight(engine) == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert dep.limiter.in_use == 0
    assert in_flight(engine) == 0
    assert engine._runs[0]._wakers == set()


# -- how a seam decides ---------------------------------------------------------------------


@pytest.mark.parametrize("seam", SEAMS)
async def test_no_engine_no_experiment_or_another_target_change_nothing(
    engines: Engines, deps: Deps, seam: str
) -> None:
    engine = engines()
    engine.start(experiment(Reset("payments*")))
    for dep in (deps("db"), deps("db", chaos=Chaos(enabled=False)), deps("db", chaos=engine)):
        reached = Reached()
        await through(dep, seam, reached)
        assert reached.count == 1


async def test_scoped_experiments_follow_the_request_into_the_seam(
    setup: tuple[Chaos, Dependency],
) -> None:
    engine, dep = setup
    engine.start(experiment(Reset("db"), routes=["GET /items/*"], tenants=["acme"]))
    with in_request(FakeRequest("GET", "/items/{item_id}", tenant="acme")):
        with pytest.raises(ConnectionResetError):
            await dep.call(asyncio.sleep, 0)
        with pytest.raises(ConnectionResetError):
            await dep.run_sync(lambda: None)  # the decision is made on the loop, in the request
    with in_request(FakeRequest("GET", "/items/{item_id}", tenant="globex")):
        await dep.call(asyncio.sleep, 0)
    await dep.call(asyncio.sleep, 0)


async def test_an_experiment_started_mid_flight_hits_the_next_call(
    setup: tuple[Chaos, Dependency],
) -> None:
    engine, dep = setup
    engine.start(experiment(Reset("cache"), name="other"))
    await dep.call(asyncio.sleep, 0)  # "db" is cached as untargeted
    engine.start(experiment(Reset("db"), name="now"))
    with pytest.raises(ConnectionResetError):
        await dep.call(asyncio.sleep, 0)
    engine.stop("now")
    await dep.call(asyncio.sleep, 0)


async def test_a_skipped_injection_leaves_the_call_alone(engines: Engines, deps: Deps) -> None:
    engine = engines(max_injections=1)
    dep = deps("db", chaos=engine)
    engine.start(experiment(Hang("db", rate=1.0)))
    hung = asyncio.create_task(dep.call(asyncio.sleep, 0))
    await wait_until(lambda: in_flight(engine) == 1)
    reached = Reached()
    await dep.call(reached)  # over the cap: runs as if no experiment ran
    assert reached.count == 1
    assert engine.status()["injections_skipped"] == 1
    engine.halt()
    await asyncio.wait_for(hung, WAIT)


@pytest.mark.parametrize("seam", ["call", "run_sync"])
async def test_halt_from_another_thread_wakes_injections(
    setup: tuple[Chaos, Dependency], seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Hang("db")))
    reached = Reached()
    call = asyncio.create_task(through(dep, seam, reached))
    await wait_until(lambda: in_flight(engine) == 1)
    assert await asyncio.to_thread(engine.halt, actor="signal-handler") == 1
    await asyncio.wait_for(call, WAIT)
    assert reached.count == 1


# -- the dependency call's own span -----------------------------------------------------------


@pytest.fixture
def tracing(spans: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    """tailguard's spans go to an in-memory exporter; yields it."""
    provider, exporter = spans
    use_tracer_provider(provider)
    yield exporter
    use_tracer_provider(None)


def dependency_span(exporter: InMemorySpanExporter) -> dict[str, Any]:
    [span] = [s for s in exporter.get_finished_spans() if s.name == "tailguard.dependency db"]
    return dict(span.attributes or {})


@pytest.mark.parametrize("seam", SEAMS)
async def test_an_injected_fault_is_marked_on_the_calls_span(
    setup: tuple[Chaos, Dependency], tracing: InMemorySpanExporter, seam: str
) -> None:
    engine, dep = setup
    engine.start(experiment(Latency("db", delay=0.002), name="slow-db"))
    with tracer().start_as_current_span("request"):
        await through(dep, seam)
    attributes = dependency_span(tracing)
    assert attributes["tailguard.chaos.injected"] is True
    assert attributes["tailguard.chaos.experiment"] == "slow-db"
    assert attributes["tailguard.chaos.fault"] == "latency"
    assert attributes["tailguard.chaos.delay_ms"] == pytest.approx(2.0)
    assert attributes["tailguard.dependency.outcome"] == "ok"


async def test_the_span_names_every_experiment_and_fault_that_hit(
    setup: tuple[Chaos, Dependency], tracing: InMemorySpanExporter
) -> None:
    engine, dep = setup
    engine.start(experiment(Latency("db", delay=0.001), name="a"))
    engine.start(experiment(Latency("d*", delay=0.001), Respond("db", status=503), name="b"))
    with tracer().start_as_current_span("request"):
        response = await through(dep, "transport")
    assert response.status_code == 503
    attributes = dependency_span(tracing)
    assert attributes["tailguard.chaos.experiment"] == "a,b"
    assert attributes["tailguard.chaos.fault"] == "latency,respond"
    assert attributes["tailguard.chaos.delay_ms"] == pytest.approx(2.0)


async def test_a_call_no_fault_hits_carries_no_mark(
    setup: tuple[Chaos, Dependency], tracing: InMemorySpanExporter
) -> None:
    engine, dep = setup
    engine.start(experiment(Raise("db", exc=OSError, rate=0.0), Reset("cache")))
    with tracer().start_as_current_span("request"):
        await through(dep, "call")
    attributes = dependency_span(tracing)
    assert not any(key.startswith("tailguard.chaos") for key in attributes)


async def test_a_terminal_fault_marks_the_span_without_a_delay(
    setup: tuple[Chaos, Dependency], tracing: InMemorySpanExporter
) -> None:
    engine, dep = setup
    engine.start(experiment(Reset("db"), name="flaky"))
    with tracer().start_as_current_span("request"), pytest.raises(ConnectionResetError):
        await through(dep, "async_with")
    attributes = dependency_span(tracing)
    assert (attributes["tailguard.chaos.experiment"], attributes["tailguard.chaos.fault"]) == (
        "flaky",
        "reset",
    )
    assert "tailguard.chaos.delay_ms" not in attributes
    assert attributes["tailguard.dependency.outcome"] == "error"


async def test_an_injected_fault_is_marked_on_the_dependency_span() -> None:
    """Through the real middleware: the request's span and the dependency's own."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = Chaos(enabled=True, seed=1)
    guard = tailguard.Tailguard(registry=CollectorRegistry(), chaos=engine)
    db = guard.dependency("db", max_concurrency=2)

    async def endpoint(request: Request) -> PlainTextResponse:
        async with db:
            pass
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/a", endpoint)])
    guard.install(app, tracer_provider=provider)
    engine.start(experiment(Latency("db", delay=0.0), name="slow-db"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            assert (await c.get("/a")).status_code == 200
    finally:
        engine.halt()
        use_tracer_provider(None)
    attributes = dependency_span(exporter)
    assert attributes["tailguard.chaos.injected"] is True
    assert attributes["tailguard.chaos.experiment"] == "slow-db"
    assert attributes["tailguard.chaos.fault"] == "latency"
