"""A fault that cannot be planned or applied never costs the call anything (issue 13, item 1).

Sampling a delay can fail (a user's own distribution raises, or returns NaN,
a negative or an infinite number), and so can making the exception of a
``Raise`` fault (a factory is user code). Either way the call keeps nothing
of chaos: its slot and its injection place go back, it reaches the real
dependency as if no experiment were running, and the failure is counted as
an injection error (``tailguard_chaos_injection_errors_total``, one
``tailguard.chaos`` log line per fault, and the experiment's status).
Distributions whose parameters could overflow are refused when built.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import (
    Chaos,
    Distribution,
    ExperimentError,
    Fixed,
    Latency,
    LogNormal,
    Pareto,
    Raise,
    Respond,
    experiment_from_dict,
)
from tailguard.chaos.distributions import LARGEST_DRAW
from tailguard.dependency import Dependency
from tailguard.telemetry.catalog import Catalog
from tests.chaos.runtime_support import (  # noqa: F401 (fixtures)
    SEAMS,
    FakeRequest,
    Reached,
    catalog_fixture,
    deps_fixture,
    engines_fixture,
    experiment,
    in_request,
    sample,
    through,
)

pytestmark = pytest.mark.anyio

Engines = Callable[..., Chaos]
Deps = Callable[..., Dependency]


class Broken(Distribution):
    """A user's distribution that draws ``value`` (or raises it, if it is an exception)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def sample(self, rng: random.Random) -> float:
        if isinstance(self.value, BaseException):
            # A fresh one each time: a raised instance keeps its traceback (and the
            # request frames in it) alive for as long as the strategy holds it.
            raise type(self.value)(*self.value.args)
        return self.value  # type: ignore[return-value]

    def quantile(self, q: float) -> float:
        return 0.0


BAD_DRAWS = [
    pytest.param(OverflowError(34, "Numerical result out of range"), id="raises-overflow"),
    pytest.param(ZeroDivisionError("float division by zero"), id="raises-zero-division"),
    pytest.param(RuntimeError("my distribution is broken"), id="raises-runtime-error"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(-1.0, id="negative"),
    pytest.param("0.1", id="not-a-number"),
    pytest.param(10**400, id="huge-int"),
]


def errors(catalog: Catalog, fault: str, target: str = "db", name: str = "exp") -> float:
    return sample(
        catalog,
        "tailguard_chaos_injection_errors_total",
        experiment=name,
        target=target,
        fault=fault,
    )


def registry_errors(registry: CollectorRegistry, fault: str, target: str, name: str) -> float:
    value = registry.get_sample_value(
        "tailguard_chaos_injection_errors_total",
        {"experiment": name, "target": target, "fault": fault},
    )
    return value or 0.0


@pytest.mark.parametrize("seam", SEAMS)
@pytest.mark.parametrize("draw", BAD_DRAWS)
async def test_a_delay_that_cannot_be_drawn_leaves_the_call_as_without_chaos(
    engines: Engines, deps: Deps, catalog: Catalog, seam: str, draw: object
) -> None:
    engine = engines()
    dep = deps("db", chaos=engine, max_concurrency=1)
    engine.start(experiment(Latency("db", delay=Broken(draw))))
    reached = Reached()
    for _ in range(2):  # a leaked slot (max_concurrency=1) would make the second call wait
        result = await through(dep, seam, reached)
        assert result == "done" or result.text == "real"
    assert reached.count == 2
    assert dep.limiter.in_use == 0
    status = engine.status()
    assert status["injections_in_flight"] == 0
    [running] = status["experiments"]
    assert running["injections"] == 0
    assert running["injection_errors"] == 2
    assert running["last_injection_error"].startswith("latency db: ")
    assert errors(catalog, "latency") == 2
    assert sample(catalog, "tailguard_chaos_injections_total", experiment="exp") == 0


async def test_an_error_is_logged_once_per_fault_and_counted_every_time(
    engines: Engines, deps: Deps, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engines()
    dep = deps("db", chaos=engine)
    engine.start(experiment(Latency("db", delay=Broken(RuntimeError("nope")))))
    with caplog.at_level(logging.WARNING, logger="tailguard.chaos"):
        for _ in range(5):
            await dep.call(Reached())
    logged = [r for r in caplog.records if getattr(r, "event", None) == "injection_error"]
    assert len(logged) == 1
    assert logged[0].experiment == "exp"  # type: ignore[attr-defined]
    assert "RuntimeError: nope" in logged[0].getMessage()
    assert errors(catalog, "latency") == 5
    engine.halt()
    assert engine.status()["stopped"][0]["injection_errors"] == 5


async def test_delays_that_add_up_past_a_float_are_an_error_too(
    engines: Engines, deps: Deps, catalog: Catalog
) -> None:
    engine = engines()
    dep = deps("db", chaos=engine)
    huge = Broken(1.5e308)  # finite alone; two of them are inf
    engine.start(experiment(Latency("db", delay=huge), Latency("db", delay=huge)))
    reached = Reached()
    await dep.call(reached)
    assert reached.count == 1
    assert errors(catalog, "latency") == 1
    assert engine.status()["injections_in_flight"] == 0


def failing_factory() -> BaseException:
    raise RuntimeError("cannot build the exception")


def not_an_exception() -> BaseException:
    return "oops"  # type: ignore[return-value]


@pytest.mark.parametrize("seam", SEAMS)
@pytest.mark.parametrize("factory", [failing_factory, not_an_exception])
async def test_a_raise_factory_that_fails_leaves_the_call_as_without_chaos(
    engines: Engines,
    deps: Deps,
    catalog: Catalog,
    seam: str,
    factory: Callable[[], BaseException],
) -> None:
    engine = engines()
    dep = deps("db", chaos=engine, max_concurrency=1)
    engine.start(experiment(Raise("db", exc=factory)))
    reached = Reached()
    for _ in range(2):
        await through(dep, seam, reached)
    assert reached.count == 2
    assert dep.limiter.in_use == 0
    assert engine.status()["injections_in_flight"] == 0
    assert errors(catalog, "raise") == 2
    assert engine.status()["experiments"][0]["injection_errors"] == 2


async def test_a_scope_that_cannot_be_judged_is_an_error_not_a_failed_call(
    engines: Engines, deps: Deps, catalog: Catalog
) -> None:
    class Unreadable(FakeRequest):
        def header(self, name: str) -> str | None:
            raise RuntimeError("header lookup failed")

    engine = engines()
    dep = deps("db", chaos=engine)
    engine.start(experiment(Raise("db", exc=ConnectionError), header="x-chaos", secret="s" * 16))
    reached = Reached()
    with in_request(Unreadable()):
        await dep.call(reached)
    assert reached.count == 1
    assert errors(catalog, "raise") == 1


async def test_route_faults_that_fail_let_the_app_answer() -> None:
    engine = Chaos(enabled=True, seed=3)
    registry = CollectorRegistry()
    guard = Tailguard(
        routes={"GET /items/{item_id}": RoutePolicy(deadline=5.0, max_concurrency=1)},
        chaos=engine,
        registry=registry,
    )

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("from the app")

    app = guard.install(
        Starlette(routes=[Route("/items/{item_id}", item)]), metrics_path=None, tracing=False
    )
    engine.start(
        experiment(
            Latency("GET /items/*", delay=Broken(ZeroDivisionError())),
            Raise("GET /items/*", exc=failing_factory),
        )
    )
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            for _ in range(2):
                answer = await client.get("/items/1")
                assert (answer.status_code, answer.text) == (200, "from the app")
        # The delay failed first (the call went on un-injected), then the factory alone.
        engine.halt()
        engine.start(experiment(Raise("GET /items/*", exc=failing_factory), name="raise"))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            assert (await client.get("/items/1")).text == "from the app"
    finally:
        engine.halt()
    route = "GET /items/*"
    assert registry_errors(registry, "latency", route, "exp") == 2
    assert registry_errors(registry, "raise", route, "raise") == 1
    assert guard.limiters["GET /items/{item_id}"].in_use == 0


# -- refused when built ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Pareto(minimum=0.01, alpha=0.001), "alpha"),
        (lambda: Pareto(minimum=1, alpha=0.05), "alpha"),
        (lambda: LogNormal(p50=0.05, p99=1e300), "p99"),
        (lambda: LogNormal(p50=1e-300, p99=1.0), "p99"),
    ],
)
def test_distributions_that_could_overflow_are_refused_naming_the_field(
    make: Callable[[], Distribution], field: str
) -> None:
    with pytest.raises(ValueError, match=f": {field} "):
        make()


@pytest.mark.parametrize(
    ("delay", "field"),
    [
        ({"pareto": {"minimum": 0.01, "alpha": 0.001}}, "faults[0].delay.pareto.alpha"),
        ({"lognormal": {"p50": 0.05, "p99": 1e300}}, "faults[0].delay.lognormal.p99"),
        ({"fixed": 1e308}, "faults[0].delay.fixed"),
        ({"uniform": {"low": 0, "high": 1e308}}, "faults[0].delay.uniform.high"),
        ({"empirical": [0.1, 1e308]}, "faults[0].delay.empirical[1]"),
    ],
)
def test_experiment_documents_with_such_delays_are_refused_naming_the_field(
    delay: dict[str, Any], field: str
) -> None:
    document = {
        "name": "x",
        "ttl": 60,
        "faults": [{"kind": "latency", "target": "db", "delay": delay}],
    }
    with pytest.raises(ExperimentError) as refused:
        experiment_from_dict(document)
    assert refused.value.field == field


class Extreme(random.Random):
    """A random source at the edge: the largest uniform ``random()`` can return."""

    def random(self) -> float:
        return 1.0 - 2.0**-53


@pytest.mark.parametrize(
    ("minimum", "alpha"), [(1.0, 0.0532), (1e-6, 0.0522), (100.0, 0.06), (0.01, 0.5)]
)
def test_the_largest_pareto_draw_of_an_accepted_alpha_stays_finite(
    minimum: float, alpha: float
) -> None:
    assert Pareto(minimum=minimum, alpha=alpha).sample(Extreme()) <= LARGEST_DRAW


def test_fixed_delays_past_the_largest_draw_are_refused() -> None:
    with pytest.raises(ValueError, match="Fixed: seconds must be at most 1e\\+300 seconds"):
        Fixed(1e301)


async def test_a_response_the_library_refuses_to_build_lets_the_call_through(
    engines: Engines, deps: Deps, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines()
    dep = deps("db", chaos=engine)
    engine.start(experiment(Respond("db", status=503)))
    real = httpx.Response

    def refuse(*args: Any, **kwargs: Any) -> httpx.Response:
        raise ValueError("cannot build that response")

    monkeypatch.setattr(
        httpx, "Response", refuse
    )  # what the transport builds synthesized ones with
    transport = dep.transport(httpx.MockTransport(lambda request: real(200, text="real")))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://downstream.test/")).text == "real"
    assert errors(catalog, "respond") == 1
    assert dep.limiter.in_use == 0
