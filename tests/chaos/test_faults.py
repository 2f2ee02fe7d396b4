"""Faults, distributions, experiments and safeguards: what they accept, refuse and compute."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import httpx
import pytest

from tailguard.chaos import (
    AbortWhen,
    Distribution,
    Empirical,
    Experiment,
    Fixed,
    Hang,
    Latency,
    LogNormal,
    Pareto,
    Raise,
    Reset,
    Respond,
    Uniform,
)
from tailguard.chaos._match import RouteKey, is_route_key

# -- distributions ----------------------------------------------------------------------


def _draws(distribution: Distribution, n: int = 20_000, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [distribution.sample(rng) for _ in range(n)]


def _share_below(draws: list[float], value: float) -> float:
    return sum(d <= value for d in draws) / len(draws)


def _within_3_sigma(share: float, p: float, n: int) -> bool:
    return abs(share - p) <= 3 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(
    "distribution",
    [
        Uniform(0.01, 0.03),
        LogNormal(p50=0.05, p99=0.5),
        Pareto(minimum=0.01, alpha=1.5),
        Empirical([0.001, 0.002, 0.004, 0.008, 0.5]),
    ],
    ids=repr,
)
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_draws_match_the_quantiles_each_distribution_reports(
    distribution: Distribution, q: float
) -> None:
    draws = _draws(distribution)
    assert all(d >= 0 for d in draws)
    share = _share_below(draws, distribution.quantile(q))
    # Empirical is discrete: the nearest-rank quantile covers at least q of the mass.
    if isinstance(distribution, Empirical):
        assert share >= q - 3 * math.sqrt(q * (1 - q) / len(draws))
    else:
        assert _within_3_sigma(share, q, len(draws))


def test_lognormal_is_fitted_to_its_two_percentiles() -> None:
    fitted = LogNormal(p50=0.02, p99=0.4)
    assert fitted.quantile(0.5) == pytest.approx(0.02)
    assert fitted.quantile(0.99) == pytest.approx(0.4)
    assert LogNormal(p50=0.1, p99=0.1).sample(random.Random(3)) == pytest.approx(0.1)


def test_fixed_uniform_and_pareto_have_their_closed_forms() -> None:
    assert Fixed(0.25).sample(random.Random()) == 0.25
    assert Fixed(0).quantile(0.5) == 0.0
    assert Uniform(1, 3).quantile(0.25) == 1.5
    assert Pareto(minimum=0.1, alpha=1).quantile(0.9) == pytest.approx(1.0)
    assert min(_draws(Pareto(minimum=0.1, alpha=3), 2000)) >= 0.1


def test_empirical_replays_only_observed_values() -> None:
    observed = [0.003, 0.007, 0.7]
    draws = _draws(Empirical(observed), 3000)
    assert set(draws) == set(observed)
    assert statistics.median(sorted(Empirical([0.1, 0.2, 0.3]).samples)) == 0.2
    assert Empirical((1, 2)).samples == (1.0, 2.0)


def test_a_seed_replays_the_same_delays() -> None:
    shape = LogNormal(p50=0.05, p99=0.5)
    assert _draws(shape, 50, seed=9) == _draws(shape, 50, seed=9)
    assert _draws(shape, 50, seed=9) != _draws(shape, 50, seed=10)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Fixed(-1), "Fixed: seconds must be >= 0"),
        (lambda: Fixed(math.inf), "Fixed: seconds must be a finite number"),
        (lambda: Fixed(True), "Fixed: seconds must be a finite number"),
        (lambda: Fixed("1"), "Fixed: seconds must be a finite number"),
        (lambda: Uniform(0.2, 0.1), r"Uniform: high must be >= low \(0.2\)"),
        (lambda: Uniform(math.nan, 1), "Uniform: low must be"),
        (lambda: LogNormal(p50=0, p99=1), "LogNormal: p50 must be > 0"),
        (lambda: LogNormal(p50=0.5, p99=0.1), r"LogNormal: p99 must be >= p50 \(0.5\)"),
        (lambda: Pareto(minimum=0, alpha=1), "Pareto: minimum must be > 0"),
        (lambda: Pareto(minimum=1, alpha=0), "Pareto: alpha must be a finite number > 0"),
        (lambda: Pareto(minimum=1, alpha=math.inf), "Pareto: alpha must be"),
        (lambda: Empirical([]), "Empirical: samples must be a non-empty sequence"),
        (lambda: Empirical("0.1"), "Empirical: samples must be a non-empty sequence"),
        (lambda: Empirical([0.1, -2]), r"Empirical: samples\[1\] must be >= 0"),
    ],
)
def test_bad_distribution_arguments_name_the_field(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("q", [0, 1, -0.5, 2])
def test_quantile_refuses_q_outside_0_1(q: float) -> None:
    for distribution in (
        Fixed(1),
        Uniform(0, 1),
        LogNormal(p50=1, p99=2),
        Pareto(minimum=1, alpha=2),
    ):
        with pytest.raises(ValueError, match="q must be between 0 and 1"):
            distribution.quantile(q)
    with pytest.raises(ValueError, match="q must be between 0 and 1"):
        Empirical([1.0]).quantile(q)


def test_the_base_distribution_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Distribution().sample(random.Random())
    with pytest.raises(NotImplementedError):
        Distribution().quantile(0.5)


# -- faults -----------------------------------------------------------------------------


def test_faults_know_their_kind_target_and_direction() -> None:
    faults = [
        Latency("db", delay=0.1),
        Raise("pay*", exc=TimeoutError),
        Respond("GET /items/*", status=503),
        Hang("/admin/*"),
        Reset("cache-[ab]"),
    ]
    assert [f.kind for f in faults] == ["latency", "raise", "respond", "hang", "reset"]
    assert [f.inbound for f in faults] == [False, False, True, True, False]
    assert [f.terminal for f in faults] == [False, True, True, True, True]
    assert faults[2].route == RouteKey("GET", "/items/", True)
    assert all(f.rate == 1.0 for f in faults)


def test_a_latency_number_becomes_a_fixed_distribution() -> None:
    latency = Latency("db", delay=1, rate=0)
    assert latency.delay == 1.0
    assert isinstance(latency.delay, float)
    assert latency.distribution == Fixed(1.0)
    shaped = Latency("db", delay=Uniform(0, 1))
    assert shaped.distribution is shaped.delay
    assert Latency("db", delay=0.5) == Latency("db", delay=0.5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Latency("", delay=1), "Latency: target must be a non-empty str"),
        (lambda: Latency(None, delay=1), "Latency: target must be a non-empty str"),
        (lambda: Latency("my db", delay=1), "Latency: target must be a dependency name or glob"),
        (lambda: Latency("GET items", delay=1), "Latency: target must be a dependency name"),
        (lambda: Latency("GET /a b", delay=1), "Latency: target: a route key is"),
        (lambda: Latency("/a*b", delay=1), "Latency: target: a route key is"),
        (lambda: Latency("db", delay=1, rate=1.5), "Latency: rate must be a number from 0 to 1"),
        (lambda: Latency("db", delay=1, rate=-0.1), "Latency: rate must be"),
        (lambda: Latency("db", delay=1, rate=math.nan), "Latency: rate must be"),
        (lambda: Latency("db", delay=1, rate=True), "Latency: rate must be"),
        (lambda: Latency("db", delay=-1), "Latency: delay must be a number of seconds >= 0"),
        (lambda: Latency("db", delay="1"), "Latency: delay must be a number"),
        (lambda: Raise("db", exc=KeyboardInterrupt), "Raise: exc must be an Exception subclass"),
        (lambda: Raise("db", exc=BaseException), "Raise: exc must be an Exception subclass"),
        (lambda: Raise("db", exc="OSError"), "Raise: exc must be an exception class or a factory"),
        (
            lambda: Raise("db", exc=httpx.HTTPStatusError),
            "Raise: exc HTTPStatusError cannot be created from a message",
        ),
        (lambda: Respond("db", status=199), "Respond: status must be an int from 200 to 599"),
        (lambda: Respond("db", status=600), "Respond: status must be"),
        (lambda: Respond("db", status=True), "Respond: status must be"),
        (lambda: Respond("db", status=200, body=b"x"), "Respond: body must be a str"),
        (
            lambda: Respond("db", status=200, headers=[("a", "b")]),
            "Respond: headers must be a mapping",
        ),
        (lambda: Respond("db", status=200, headers={"a b": "c"}), "Respond: headers: 'a b' is not"),
        (lambda: Respond("db", status=200, headers={"a": "c\r\nx: y"}), r"Respond: headers\['a'\]"),
        (lambda: Respond("db", status=200, headers={"a": 1}), r"Respond: headers\['a'\]"),
        (
            lambda: Respond("db", status=200, headers={"Content-Length": "0"}),
            "Respond: headers: 'Content-Length' is a framing or hop-by-hop header",
        ),
        (
            lambda: Respond("/items/*", status=200, headers={"proxy-authenticate": "Basic"}),
            "Respond: headers: 'proxy-authenticate' is a framing or hop-by-hop header",
        ),
        (lambda: Hang("db", rate=2), "Hang: rate must be"),
        (lambda: Reset("/items/*"), "Reset: target must be a dependency name or glob, not a route"),
        (lambda: Reset("db", rate="1"), "Reset: rate must be"),
    ],
)
def test_bad_fault_arguments_name_the_fault_and_field(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_raise_marks_its_exception_as_injected() -> None:
    made = Raise("db", exc=ConnectionError).exception("db-down")
    assert type(made) is ConnectionError
    assert "injected by tailguard chaos experiment db-down" in str(made)

    def factory() -> Exception:
        return httpx.ConnectError("refused")

    from_factory = Raise("db", exc=factory).exception("db-down")
    assert isinstance(from_factory, httpx.ConnectError)
    assert from_factory.__notes__ == ["injected by tailguard chaos experiment db-down"]


def test_a_factory_that_returns_no_exception_fails_loudly() -> None:
    fault = Raise("db", exc=lambda: "oops")  # type: ignore[arg-type,return-value]
    with pytest.raises(
        TypeError, match=r"experiment 'x': the Raise factory for 'db' returned 'oops'"
    ):
        fault.exception("x")


@pytest.mark.parametrize(
    "name",
    [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "Keep-Alive",
        "TE",
        "trailer",
        "upgrade",
        "Proxy-Connection",
        "proxy-authorization",
    ],
)
def test_respond_refuses_framing_and_hop_by_hop_headers(name: str) -> None:
    with pytest.raises(ValueError, match=f"Respond: headers: '{name}' is a framing or hop-by-hop"):
        Respond("db", status=503, headers={"retry-after": "1", name: "x"})


@pytest.mark.parametrize(
    "name", ["retry-after", "content-type", "tea", "x-te", "proxy", "trailers"]
)
def test_respond_accepts_headers_that_only_look_alike(name: str) -> None:
    assert Respond("db", status=503, headers={name: "x"}).headers == ((name, "x"),)


def test_respond_keeps_its_headers_as_pairs() -> None:
    fault = Respond("db", status=503, body="busy", headers={"Retry-After": "2"})
    assert fault.headers == (("Retry-After", "2"),)
    assert Respond("db", status=200).headers == ()
    assert fault == Respond("db", status=503, body="busy", headers={"Retry-After": "2"})


# -- route keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "method", "template", "expected"),
    [
        ("GET /items/*", "GET", "/items/{item_id}", True),
        ("GET /items/*", "POST", "/items/{item_id}", False),
        ("/items/*", "POST", "/items/{item_id}", True),
        ("/items/{item_id}", "GET", "/items/{item_id}", True),
        ("/items/{item_id}", "GET", "/items/{item_id}/tags", False),
        ("/*", "GET", "/anything", True),
        ("/*", "GET", "", False),
    ],
)
def test_route_keys_match_method_and_template(
    key: str, method: str, template: str, expected: bool
) -> None:
    assert RouteKey.parse(key).matches(method, template) is expected


def test_targets_that_look_like_routes_are_route_keys() -> None:
    assert is_route_key("/items")
    assert is_route_key("DELETE /items")
    assert not is_route_key("payments*")
    assert not is_route_key("GET")


# -- experiments --------------------------------------------------------------------------


def test_an_experiment_normalizes_its_collections() -> None:
    made = Experiment(
        "game-day.1",
        faults=[Hang("db")],
        ttl=10,
        routes=["GET /items/*"],
        tenants=["acme"],
        header="X-Chaos",
        secret="0123456789abcdef",
        abort=AbortWhen(p99=1),
    )
    assert made.faults == (Hang("db"),)
    assert made.routes == ("GET /items/*",)
    assert made.tenants == ("acme",)
    assert made.route_keys == (RouteKey("GET", "/items/", True),)
    assert made.header == "x-chaos"
    assert made.ttl == 10.0
    assert made.scoped
    assert "0123456789abcdef" not in repr(made)
    assert not Experiment("plain", faults=[Hang("db")], ttl=1).scoped


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"name": ""}, "experiment name must be 1-64 letters"),
        ({"name": "a b"}, "experiment name must be"),
        ({"name": "-x"}, "experiment name must be"),
        ({"name": "x" * 65}, "experiment name must be"),
        ({"faults": []}, "experiment 'e': faults must be a non-empty list"),
        ({"faults": "hang"}, "experiment 'e': faults must be"),
        ({"faults": [Hang("db"), "x"]}, r"experiment 'e': faults\[1\] must be a Latency"),
        ({"ttl": 0}, "experiment 'e': ttl must be a number > 0 up to 86400"),
        ({"ttl": 86_401}, "experiment 'e': ttl must be"),
        ({"ttl": math.inf}, "experiment 'e': ttl must be"),
        ({"ttl": None}, "experiment 'e': ttl must be"),
        ({"routes": "GET /x"}, "experiment 'e': routes must be a list of str"),
        ({"routes": ["GET /x", ""]}, r"experiment 'e': routes\[1\] must be a non-empty str"),
        ({"routes": ["items"]}, r"experiment 'e': routes\[0\]: a route key is"),
        ({"tenants": [None]}, r"experiment 'e': tenants\[0\] must be a non-empty str"),
        ({"header": "x-chaos"}, "experiment 'e': header needs a secret"),
        ({"secret": "0123456789abcdef"}, "experiment 'e': secret is only used with header"),
        ({"header": "x chaos", "secret": "0123456789abcdef"}, "header must be a valid HTTP"),
        ({"header": "x-chaos", "secret": "short"}, "secret must be at least 16 printable"),
        ({"header": "x-chaos", "secret": "0123456789 abcdef"}, "secret must be at least 16"),
        ({"abort": {"error_rate": 0.1}}, "experiment 'e': abort must be an AbortWhen"),
    ],
)
def test_bad_experiments_name_the_field(settings: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"name": "e", "faults": [Hang("db")], "ttl": 60, **settings}
    name = arguments.pop("name")
    with pytest.raises(ValueError, match=message):
        Experiment(name, **arguments)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "AbortWhen: give error_rate, p99 or both"),
        ({"error_rate": 1}, "AbortWhen: error_rate must be a number from 0 to below 1"),
        ({"error_rate": -0.1}, "AbortWhen: error_rate must be"),
        ({"error_rate": True}, "AbortWhen: error_rate must be"),
        ({"p99": 0}, "AbortWhen: p99 must be a number > 0"),
        ({"p99": 1, "window": 0}, "AbortWhen: window must be a number > 0 up to 86400"),
        ({"p99": 1, "min_requests": 0}, "AbortWhen: min_requests must be an int >= 1"),
        ({"p99": 1, "min_requests": 2.0}, "AbortWhen: min_requests must be an int"),
    ],
)
def test_bad_safeguards_name_the_field(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AbortWhen(**settings)


def test_a_safeguard_keeps_numbers_as_floats() -> None:
    abort = AbortWhen(error_rate=0, p99=2, window=10)
    assert (abort.error_rate, abort.p99, abort.window, abort.min_requests) == (0.0, 2.0, 10.0, 20)
