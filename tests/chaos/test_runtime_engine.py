"""The engine: enabling, starting and stopping, TTLs, halt, the cap, rates, composition, labels."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tailguard import Tailguard
from tailguard.chaos import (
    AbortWhen,
    Chaos,
    ChaosDisabled,
    ExperimentStatus,
    Hang,
    Latency,
    Raise,
    Reset,
    Respond,
    Uniform,
)
from tailguard.chaos._inject import Injection, InjectionSlots, Injector
from tailguard.telemetry.catalog import Catalog
from tests.chaos.runtime_support import (  # noqa: F401 (fixtures)
    FOREVER,
    SECRET,
    WAIT,
    FakeClock,
    FakeRequest,
    catalog_fixture,
    deps_fixture,
    engines_fixture,
    experiment,
    in_request,
    sample,
    spans_fixture,
    wait_until,
)

Engines = Callable[..., Chaos]
ENDED = "tailguard_chaos_experiments_ended_total"


def planned(engine: Chaos, name: str = "db", **options: Any) -> Injection | None:
    """Plan one call and give its place under the cap straight back."""
    injection = engine.plan(name, **options)
    if injection is not None:
        injection.finish()
    return injection


# -- enabling ---------------------------------------------------------------------------


def test_chaos_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILGUARD_CHAOS", raising=False)
    engine = Chaos()
    assert not engine.enabled
    assert not engine.armed
    with pytest.raises(ChaosDisabled, match="chaos is disabled: enable it with"):
        engine.start(experiment(Hang("db")))
    assert engine.experiments() == []
    assert not engine.armed


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("1", True),
        ("TRUE", True),
        (" on ", True),
        ("yes", True),
        ("0", False),
        ("off", False),
        ("", False),
    ],
)
def test_the_environment_variable_decides_when_enabled_is_none(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv("TAILGUARD_CHAOS", value)
    assert Chaos().enabled is enabled
    assert Chaos(enabled=False).enabled is False
    assert Chaos(enabled=True).enabled is True


def test_the_environment_variable_is_named_once_for_everyone() -> None:
    """One public spelling: the engine reads it and the game-day sets it through it."""
    from tailguard import chaos

    assert chaos.ENV_VAR == "TAILGUARD_CHAOS"
    assert chaos.ENV_VAR is chaos.engine.ENV_VAR


def test_an_unreadable_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILGUARD_CHAOS", "maybe")
    with pytest.raises(ValueError, match="TAILGUARD_CHAOS must be one of 1, true"):
        Chaos()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"enabled": 1}, "enabled must be True, False or None"),
        ({"seed": "7"}, "seed must be an int or None"),
        ({"seed": True}, "seed must be an int or None"),
        ({"max_injections": 0}, "max_injections must be an int >= 1"),
        ({"max_injections": 1.5}, "max_injections must be an int >= 1"),
        ({"max_experiments": 0}, "max_experiments must be an int >= 1"),
        ({"max_experiments": True}, "max_experiments must be an int >= 1"),
    ],
)
def test_bad_engine_settings_name_the_field(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Chaos(**settings)


def test_a_guard_has_a_disabled_engine_unless_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILGUARD_CHAOS", raising=False)
    guard = Tailguard(metrics=False)
    assert isinstance(guard.chaos, Chaos)
    assert not guard.chaos.enabled
    assert guard.dependency("db").chaos is guard.chaos
    monkeypatch.setenv("TAILGUARD_CHAOS", "1")
    assert Tailguard(metrics=False).chaos.enabled
    mine = Chaos(enabled=True)
    assert Tailguard(metrics=False, chaos=mine).chaos is mine
    with pytest.raises(TypeError, match=r"chaos must be a tailguard\.chaos\.Chaos or None"):
        Tailguard(metrics=False, chaos=True)  # type: ignore[arg-type]


def test_a_dependency_refuses_something_else_as_its_engine() -> None:
    from tailguard.dependency import Dependency

    with pytest.raises(TypeError, match="dependency 'db': chaos must be a Chaos or None"):
        Dependency("db", max_concurrency=1, chaos="on")  # type: ignore[arg-type]


# -- control ----------------------------------------------------------------------------


def test_start_stop_and_status(engines: Engines) -> None:
    engine = engines(seed=11)
    assert not engine.armed
    engine.start(experiment(Latency("db", delay=0.5), name="slow"), actor="alice")
    assert engine.armed
    assert repr(engine) == "<Chaos enabled experiments=['slow']>"
    [running] = engine.experiments()
    assert isinstance(running, ExperimentStatus)
    assert running.experiment.name == "slow"
    assert running.expires_at == pytest.approx(running.started_at + 60)
    assert (running.injections, running.skipped) == (0, 0)
    status = engine.status()
    assert json.loads(json.dumps(status)) == status
    assert status["enabled"] is True
    assert status["seed"] == 11
    assert status["max_injections"] == 100
    assert status["max_experiments"] == 32
    assert status["experiments"][0]["experiment"]["faults"][0]["kind"] == "latency"
    assert engine.stop("slow", actor="bob") is True
    assert engine.stop("slow") is False
    assert not engine.armed
    assert engine.status()["stopped"][0] == {
        "experiment": "slow",
        "reason": "stopped",
        "detail": None,
        "actor": "bob",
        "at": engine.status()["stopped"][0]["at"],
        "injections": 0,
        "injection_errors": 0,
    }
    assert repr(engine) == "<Chaos enabled experiments=[]>"


def test_a_duplicate_name_is_refused_and_changes_nothing(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Latency("db", delay=0.1), name="x"))
    with pytest.raises(ValueError, match="experiment 'x' is already running; stop it first"):
        engine.start(experiment(Raise("db", exc=OSError), name="x"))
    [running] = engine.experiments()
    assert running.experiment.faults == (Latency("db", delay=0.1),)
    with pytest.raises(TypeError, match="start\\(\\) takes an Experiment"):
        engine.start({"name": "x"})  # type: ignore[arg-type]


def test_status_redacts_the_header_secret(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Hang("db"), header="x-chaos", secret=SECRET))
    dumped = json.dumps(engine.status())
    assert SECRET not in dumped
    assert "<redacted>" in dumped


def test_status_describes_faults_the_schema_cannot(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Raise("db", exc=lambda: OSError("x")), header="x-chaos", secret=SECRET))
    [shown] = engine.status()["experiments"]
    assert shown["experiment"]["faults"][0]["kind"] == "raise"
    assert "Raise(target='db'" in shown["experiment"]["faults"][0]["repr"]
    assert shown["experiment"]["secret"] == "<redacted>"
    assert SECRET not in json.dumps(shown)


def test_halt_stops_everything_and_says_how_many(engines: Engines, catalog: Catalog) -> None:
    engine = engines()
    engine.start(experiment(Hang("db"), name="a"))
    engine.start(experiment(Hang("cache"), name="b"))
    assert sample(catalog, "tailguard_chaos_experiments_active") == 2
    assert engine.halt(actor="oncall") == 2
    assert not engine.armed
    assert engine.experiments() == []
    assert engine.halt() == 0
    assert sample(catalog, "tailguard_chaos_experiments_active") == 0
    for name in ("a", "b"):
        assert sample(catalog, ENDED, experiment=name, reason="halt") == 1
    assert [stop["reason"] for stop in engine.status()["stopped"]] == ["halt", "halt"]


def test_an_engine_records_only_into_the_catalog_it_is_bound_to(
    engines: Engines, catalog: Catalog
) -> None:
    bound = engines()
    loose = Chaos(enabled=True, seed=7)  # never bound
    try:
        for engine in (bound, loose):
            engine.start(experiment(Raise("db", exc=OSError), name="x"))
            assert planned(engine) is not None
            engine.stop("x")
    finally:
        loose.halt()
    injected = {"experiment": "x", "target": "db", "fault": "raise"}
    assert sample(catalog, "tailguard_chaos_injections_total", **injected) == 1
    assert sample(catalog, ENDED, experiment="x", reason="stopped") == 1
    bound.bind(None)
    bound.start(experiment(Raise("db", exc=OSError), name="x"))
    assert planned(bound) is not None
    assert sample(catalog, "tailguard_chaos_injections_total", **injected) == 1
    assert sample(catalog, "tailguard_chaos_experiments_active") == 0


def test_binding_counts_the_experiments_already_running() -> None:
    engine = Chaos(enabled=True, seed=7)
    try:
        engine.start(experiment(Hang("db"), name="early"))
        later = Catalog(CollectorRegistry())
        engine.bind(later)
        assert sample(later, "tailguard_chaos_experiments_active") == 1
    finally:
        engine.halt()
    assert sample(later, "tailguard_chaos_experiments_active") == 0
    assert sample(later, ENDED, experiment="early", reason="halt") == 1


def test_bind_takes_a_catalog_or_none() -> None:
    with pytest.raises(TypeError, match=r"bind\(\) takes a Catalog or None, got CollectorRegistry"):
        Chaos(enabled=True).bind(CollectorRegistry())  # type: ignore[arg-type]


def test_control_actions_are_logged_as_structured_lines(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailguard.chaos")
    engine = engines()
    engine.start(experiment(Latency("db", delay=0.1), name="x"), actor="alice")
    with pytest.raises(ValueError, match="already running"):
        engine.start(experiment(Latency("db", delay=0.1), name="x"), actor="mallory")
    engine.stop("x", actor="bob")
    engine.halt(actor="carol")
    with pytest.raises(ChaosDisabled):
        Chaos(enabled=False).start(experiment(Hang("db"), name="y"), actor="dave")
    records = [r for r in caplog.records if r.name == "tailguard.chaos"]
    seen = [(r.event, r.experiment, r.actor, r.reason) for r in records]  # type: ignore[attr-defined]
    assert seen == [
        ("start", "x", "alice", None),
        ("refused", "x", "mallory", "already running"),
        ("stop", "x", "bob", "stopped"),
        ("halt", None, "carol", None),
        ("refused", "y", "dave", "disabled"),
    ]
    for record in records:
        line = json.loads(record.getMessage())
        assert line["event"] == record.event  # type: ignore[attr-defined]
        assert line["at"].endswith("+00:00")
    assert json.loads(records[0].getMessage())["faults"] == ["latency db rate=1"]
    assert records[3].levelno == logging.WARNING


# -- TTL --------------------------------------------------------------------------------


def test_an_experiment_expires_by_its_clock_without_a_loop(
    engines: Engines, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailguard.chaos")
    clock = FakeClock()
    engine = engines(clock=clock)
    engine.start(experiment(Raise("db", exc=OSError), ttl=10, name="short"))
    clock.advance(9.999)
    assert planned(engine) is not None
    assert engine.armed
    clock.advance(0.001)
    assert planned(engine) is None  # checked lazily by the seam itself
    assert not engine.armed
    assert engine.status()["stopped"][0]["reason"] == "expired"
    assert engine.status()["stopped"][0]["actor"] == "ttl"
    assert sample(catalog, ENDED, experiment="short", reason="expired") == 1
    assert any(getattr(r, "reason", None) == "expired" for r in caplog.records)


def test_listing_experiments_expires_them_too(engines: Engines) -> None:
    clock = FakeClock()
    engine = engines(clock=clock)
    engine.start(experiment(Hang("db"), ttl=5, name="a"))
    engine.start(experiment(Hang("db"), ttl=50, name="b"))
    clock.advance(5)
    assert [s.experiment.name for s in engine.experiments()] == ["b"]
    assert engine.armed


@pytest.mark.anyio
async def test_the_ttl_timer_stops_an_experiment_nobody_calls(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Hang("db"), ttl=0.05))
    await wait_until(lambda: not engine.armed)  # the timer thread, not a seam, stopped it
    assert engine.status()["stopped"][0]["reason"] == "expired"


def test_a_stopped_experiment_cancels_its_timer(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Hang("db"), ttl=60, name="x"))
    timer = engine._ticker.thread
    assert timer is not None
    assert timer.daemon
    assert timer.is_alive()
    engine.stop("x")
    timer.join(WAIT)  # nothing left to wait for: the thread ends
    assert not timer.is_alive()
    assert engine._ticker.thread is None


# -- rates, composition, the cap ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["latency", "raise"])
def test_rates_0_and_1_are_exact(engines: Engines, kind: str) -> None:
    def fault(rate: float) -> Any:
        return Latency("db", delay=0, rate=rate) if kind == "latency" else Reset("db", rate=rate)

    never = engines(seed=1)
    never.start(experiment(fault(0.0)))
    assert sum(planned(never) is not None for _ in range(2000)) == 0
    always = engines(seed=1)
    always.start(experiment(fault(1.0)))
    assert sum(planned(always) is not None for _ in range(2000)) == 2000
    assert always.experiments()[0].injections == 2000


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [1, 2])
def test_rates_hit_within_3_sigma(engines: Engines, rate: float, seed: int) -> None:
    n = 4000
    engine = engines(seed=seed)
    engine.start(experiment(Raise("db", exc=OSError, rate=rate)))
    hits = sum(planned(engine) is not None for _ in range(n))
    assert abs(hits - n * rate) <= 3 * math.sqrt(n * rate * (1 - rate))


def test_the_same_seed_makes_the_same_decisions(engines: Engines) -> None:
    runs = []
    for _ in range(2):
        engine = engines(seed=42)
        engine.start(experiment(Latency("db", delay=Uniform(0, 1), rate=0.5)))
        runs.append([getattr(planned(engine), "delay", None) for _ in range(50)])
    assert runs[0] == runs[1]


def test_latencies_add_up_and_the_first_terminal_fault_wins(
    engines: Engines, catalog: Catalog
) -> None:
    engine = engines()
    engine.start(
        experiment(
            Latency("db", delay=0.001),
            Raise("db", exc=KeyError),
            Latency("d*", delay=0.002),
            name="a",
        )
    )
    engine.start(experiment(Latency("db", delay=0.004), Reset("db"), name="b"))
    injection = planned(engine)
    assert injection is not None
    assert injection.delay == pytest.approx(0.007)
    assert injection.terminal is not None
    run, fault = injection.terminal
    assert (run.name, fault) == ("a", Raise("db", exc=KeyError))
    assert [s.injections for s in engine.experiments()] == [3, 1]  # b's reset was not rolled
    assert (
        sample(
            catalog, "tailguard_chaos_injections_total", experiment="b", target="db", fault="reset"
        )
        == 0
    )
    assert (
        sample(
            catalog,
            "tailguard_chaos_injections_total",
            experiment="a",
            target="db",
            fault="latency",
        )
        == 2
    )


def test_a_terminal_fault_that_misses_lets_the_next_one_roll(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Raise("db", exc=KeyError, rate=0), name="a"))
    engine.start(experiment(Hang("db"), name="b"))
    injection = planned(engine)
    assert injection is not None
    assert injection.terminal is not None
    assert injection.terminal[0].name == "b"


def test_respond_only_applies_where_a_response_can_be_made(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Respond("db", status=503), Reset("db")))
    generic = planned(engine)
    assert generic is not None
    assert generic.terminal is not None
    assert generic.terminal[1].kind == "reset"
    http = planned(engine, respond=True)
    assert http is not None
    assert http.terminal is not None
    assert http.terminal[1].kind == "respond"
    only_respond = engines()
    only_respond.start(experiment(Respond("db", status=503)))
    assert planned(only_respond) is None
    assert only_respond.experiments()[0].injections == 0


def test_unrelated_and_inbound_faults_leave_a_dependency_alone(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Raise("payments*", exc=OSError), Respond("GET /db/*", status=500)))
    assert planned(engine, "db") is None
    assert planned(engine, "payments-eu") is not None
    assert engine._by_name.keys() == {"db", "payments-eu"}  # cached per name until a change
    engine.start(experiment(Hang("db"), name="other"))
    assert engine._by_name == {}


def test_the_cap_skips_and_counts_extra_injections(engines: Engines, catalog: Catalog) -> None:
    engine = engines(max_injections=2)
    engine.start(experiment(Raise("db", exc=OSError), name="x"))
    first, second = engine.plan("db"), engine.plan("db")
    assert first is not None
    assert second is not None
    assert engine.plan("db") is None
    assert engine.status()["injections_in_flight"] == 2
    assert engine.status()["injections_skipped"] == 1
    assert engine.experiments()[0].skipped == 1
    assert (
        sample(catalog, "tailguard_chaos_injections_skipped_total", experiment="x", fault="raise")
        == 1
    )
    first.finish()
    first.finish()  # once only
    assert engine.status()["injections_in_flight"] == 1
    assert engine.plan("db") is not None


def test_injections_are_marked_on_the_current_span(
    engines: Engines, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    engine = engines()
    engine.start(experiment(Latency("db", delay=0.25), Raise("db", exc=OSError), name="x"))
    with provider.get_tracer("test").start_as_current_span("request"):
        planned(engine)
    with provider.get_tracer("test").start_as_current_span("quiet"):
        planned(engine, "other")
    request, quiet = exporter.get_finished_spans()
    assert request.attributes is not None
    assert request.attributes["tailguard.chaos.injected"] is True
    events = [(e.name, dict(e.attributes or {})) for e in request.events]
    assert events == [
        (
            "tailguard.chaos.injection",
            {
                "tailguard.chaos.experiment": "x",
                "tailguard.chaos.fault": "latency",
                "tailguard.chaos.target": "db",
                "tailguard.chaos.delay": 0.25,
            },
        ),
        (
            "tailguard.chaos.injection",
            {
                "tailguard.chaos.experiment": "x",
                "tailguard.chaos.fault": "raise",
                "tailguard.chaos.target": "db",
            },
        ),
    ]
    assert not quiet.events
    assert "tailguard.chaos.injected" not in (quiet.attributes or {})


# -- scoping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "request_", "hit"),
    [
        ({}, None, True),
        ({}, FakeRequest(), True),
        ({"routes": ["GET /items/*"]}, None, False),
        ({"routes": ["GET /items/*"]}, FakeRequest("GET", "/items/{item_id}"), True),
        ({"routes": ["GET /items/*"]}, FakeRequest("PUT", "/items/{item_id}"), False),
        ({"routes": ["/orders", "/items/*"]}, FakeRequest("PUT", "/items/{item_id}"), True),
        ({"tenants": ["acme"]}, FakeRequest(tenant="acme"), True),
        ({"tenants": ["acme"]}, FakeRequest(tenant="globex"), False),
        ({"tenants": ["acme"]}, FakeRequest(tenant=None), False),
        ({"header": "x-chaos", "secret": SECRET}, FakeRequest(headers={"X-Chaos": SECRET}), True),
        (
            {"header": "x-chaos", "secret": SECRET},
            FakeRequest(headers={"x-chaos": SECRET + "x"}),
            False,
        ),
        (
            {"header": "x-chaos", "secret": SECRET},
            FakeRequest(headers={"x-chaos": "é" * 20}),
            False,
        ),
        ({"header": "x-chaos", "secret": SECRET}, FakeRequest(), False),
        ({"header": "x-chaos", "secret": SECRET}, None, False),
        ({"routes": ["/items/*"], "tenants": ["acme"]}, FakeRequest(tenant="acme"), True),
        ({"routes": ["/orders"], "tenants": ["acme"]}, FakeRequest(tenant="acme"), False),
    ],
)
def test_experiments_apply_only_within_their_scope(
    engines: Engines, scope: dict[str, Any], request_: FakeRequest | None, hit: bool
) -> None:
    engine = engines()
    engine.start(experiment(Reset("db"), **scope))
    with in_request(request_):
        assert (planned(engine) is not None) is hit


def test_a_header_without_opt_in_triggers_nothing(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Reset("db"), name="acme-only", tenants=["acme"]))
    # Clients cannot widen an experiment: no experiment reads a header it did not declare.
    forged = {"x-chaos": SECRET, "x-tailguard-chaos": "acme-only", "x-tenant-id": "acme"}
    with in_request(FakeRequest(tenant="globex", headers=forged)):
        assert planned(engine) is None
    with in_request(FakeRequest(tenant="acme")):
        assert planned(engine) is not None


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("db", "db", True),
        ("db", "db2", False),
        ("pay*", "payments", True),
        ("pay*", "Payments", False),
        ("cache-[ab]", "cache-b", True),
        ("cache-?", "cache-cd", False),
    ],
)
def test_dependency_targets_are_globs(engines: Engines, pattern: str, name: str, hit: bool) -> None:
    engine = engines()
    engine.start(experiment(Reset(pattern)))
    assert (planned(engine, name) is not None) is hit


# -- safeguard ------------------------------------------------------------------------------


def test_the_safeguard_stops_an_experiment_on_its_error_rate(
    engines: Engines, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailguard.chaos")
    clock = FakeClock()
    engine = engines(clock=clock)
    guarded = AbortWhen(error_rate=0.25, min_requests=8, window=10)
    engine.start(experiment(Reset("db"), name="x", routes=["GET /items/*"], abort=guarded))
    engine.start(experiment(Reset("db"), name="unguarded"))
    for _ in range(6):
        engine.observe_request("GET", "/items/{item_id}", 200, 0.01)
    for _ in range(20):
        engine.observe_request("GET", "/health", 500, 0.01)  # not an affected route
        engine.observe_request("POST", "/items/{item_id}", 500, 0.01)
        engine.observe_request("GET", "/items/{item_id}", 0, 0.01)  # no response: not counted
    engine.observe_request("GET", "/items/{item_id}", 503, 0.01)
    assert [s.experiment.name for s in engine.experiments()] == ["x", "unguarded"]
    engine.observe_request("GET", "/items/{item_id}", 504, 0.01)  # 2 of 8 > 0.25? no: equal
    assert len(engine.experiments()) == 2
    engine.observe_request("GET", "/items/{item_id}", 500, 0.01)  # 3 of 9
    assert [s.experiment.name for s in engine.experiments()] == ["unguarded"]
    stop = engine.status()["stopped"][0]
    assert (stop["experiment"], stop["reason"], stop["actor"]) == ("x", "safeguard", "safeguard")
    assert stop["detail"] == "error rate 0.333 > 0.25 over the last 10s (9 requests)"
    assert sample(catalog, ENDED, experiment="x", reason="safeguard") == 1
    [record] = [r for r in caplog.records if getattr(r, "reason", None) == "safeguard"]
    assert record.levelno == logging.WARNING
    assert record.detail == stop["detail"]  # type: ignore[attr-defined]
    engine.observe_request("GET", "/items/{item_id}", 500, 0.01)  # nobody watches now


def reach(engine: Chaos, route: str = "/a") -> None:
    """A call to ``db`` while handling a request on ``route``: the experiment reaches the route."""
    with in_request(FakeRequest("GET", route)):
        injection = engine.plan("db")
    if injection is not None:
        injection.finish()


def test_the_safeguard_trips_on_p99_over_its_window(engines: Engines) -> None:
    engine = engines(clock=FakeClock())
    engine.start(experiment(Hang("db"), abort=AbortWhen(p99=0.5, window=10, min_requests=100)))
    reach(engine)
    for _ in range(99):
        engine.observe_request("GET", "/a", 200, 0.01)
    engine.observe_request("GET", "/a", 200, 2.0)
    assert engine.armed  # one slow request in 100 is the maximum, not the p99
    slow = 1
    while engine.armed:
        engine.observe_request("GET", "/a", 200, 2.0)
        slow += 1
        assert slow <= 3, "the p99 is checked at least every 1 + n // 100 requests"
    detail = engine.status()["stopped"][0]["detail"]
    assert detail == f"p99 2s > 0.5s over the last 10s ({99 + slow} requests)"


def test_old_requests_leave_the_safeguard_window(engines: Engines) -> None:
    clock = FakeClock()
    engine = engines(clock=clock)
    engine.start(
        experiment(Hang("db"), abort=AbortWhen(error_rate=0.5, window=10, min_requests=10))
    )
    reach(engine)
    for _ in range(9):
        engine.observe_request("GET", "/a", 500, 0.01)
    clock.advance(11.5)  # those nine errors are now out of the window
    for _ in range(9):
        engine.observe_request("GET", "/a", 200, 0.01)
    engine.observe_request("GET", "/a", 500, 0.01)
    assert engine.armed  # 1 error in the 10 requests of the window
    for _ in range(10):
        engine.observe_request("GET", "/a", 500, 0.01)
    assert not engine.armed


def test_observing_costs_nothing_without_a_safeguard(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Hang("db")))
    assert engine._watchers == ()
    for _ in range(100):
        engine.observe_request("GET", "/a", 500, 9.0)
    assert engine.armed


@pytest.mark.anyio
async def test_a_safeguard_stop_ends_injections_in_progress(engines: Engines, deps: Any) -> None:
    engine = engines()
    dep = deps(chaos=engine)
    engine.start(
        experiment(Latency("db", delay=FOREVER), abort=AbortWhen(error_rate=0.1, min_requests=1))
    )
    with in_request(FakeRequest("GET", "/a")):  # the call reaches the route /a
        call = asyncio.create_task(dep.call(asyncio.sleep, 0, "real"))
    await wait_until(lambda: engine.status()["injections_in_flight"] == 1)
    engine.observe_request("GET", "/a", 500, 1.0)
    assert await asyncio.wait_for(call, WAIT) == "real"


# -- races, exercised directly ----------------------------------------------------------------


def test_ending_an_experiment_twice_changes_nothing(engines: Engines, catalog: Catalog) -> None:
    engine = engines()
    engine.start(experiment(Hang("db"), name="x"))
    run = engine._runs[0]
    engine.stop("x")
    engine._end(run, "safeguard", "safeguard")  # a safeguard that lost the race to stop()
    assert [stop["reason"] for stop in engine.status()["stopped"]] == ["stopped"]
    assert sample(catalog, ENDED, experiment="x", reason="safeguard") == 0


def test_a_stale_lookup_skips_experiments_that_ended(engines: Engines) -> None:
    engine = engines()
    engine.start(experiment(Reset("db"), name="x"))
    assert planned(engine) is not None  # looked up, and cached
    entries = engine._by_name["db"]
    engine.stop("x")
    slots = InjectionSlots(1)
    injector = Injector(random.Random(7), engine.clock, engine.expire, slots)
    assert injector.decide(entries, "db", None, respond=False) is None
    assert (slots.in_flight, slots.skipped) == (0, 0)


@pytest.mark.anyio
async def test_an_injection_whose_experiment_ended_before_it_ran_does_nothing(
    engines: Engines,
) -> None:
    engine = engines()
    engine.start(experiment(Latency("db", delay=FOREVER), Hang("db"), name="x"))
    early, threaded = engine.plan("db"), engine.plan("db")
    assert early is not None
    assert threaded is not None
    engine.stop("x")
    await asyncio.wait_for(early.apply(), WAIT)  # returns at once: nothing left to inject
    job, done = threaded.wrap_sync(lambda: "real", lambda error: None)
    assert await asyncio.wait_for(asyncio.to_thread(job), WAIT) == "real"
    done(None)
    assert engine.status()["injections_in_flight"] == 0


@pytest.mark.anyio
async def test_waking_a_sleeper_twice_is_harmless() -> None:
    from tailguard.chaos._inject import resolve_future, wake_future

    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    resolve_future(future)
    resolve_future(future)  # the timer and a stop can both fire
    assert future.done()
    closed = asyncio.new_event_loop()
    closed.close()
    wake_future(closed, closed.create_future())  # a loop that is gone: nothing to wake
