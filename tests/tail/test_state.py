"""What the helpers keep between calls: the latency sketch, the extra-attempt budget, the sites."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tailguard
from tailguard import HedgeSite
from tailguard.tail import ExtraBudget, LatencySketch, amplification, sites
from tailguard.tail.sketch import REFRESH, samples_needed

# -- the sketch ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_the_relative_accuracy_of_the_exact_ones(seed: int) -> None:
    rng = random.Random(seed)
    sketch = LatencySketch(window=10_000)
    values = [rng.lognormvariate(math.log(0.005), 0.8) for _ in range(5000)]
    values += [0.2 + rng.lognormvariate(math.log(0.005), 0.5) for _ in range(100)]  # stalls
    for value in values:
        sketch.observe(value)
    values.sort()
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = values[int(q * (len(values) - 1))]
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= 0.0101 * exact, (q, estimate, exact)


def test_the_sketch_forgets_what_is_two_windows_old() -> None:
    sketch = LatencySketch(window=100)
    for _ in range(200):
        sketch.observe(0.001)
    for _ in range(50):
        sketch.observe(0.1)
    # A window of the old level and half a window of the new one.
    assert sketch.count == 150
    assert sketch.quantile(0.5) == pytest.approx(0.001, rel=0.011)
    assert sketch.quantile(0.95) == pytest.approx(0.1, rel=0.011)
    for _ in range(150):
        sketch.observe(0.1)
    assert sketch.count == 100  # a window just turned over: still warm
    assert sketch.quantile(0.5) == pytest.approx(0.1, rel=0.011)
    assert sketch.quantile(0.05) == pytest.approx(0.1, rel=0.011)


def test_a_cached_quantile_is_refreshed_after_a_few_observations() -> None:
    sketch = LatencySketch(window=10_000)
    for _ in range(100):
        sketch.observe(0.001)
    low = sketch.quantile(0.5)
    for _ in range(REFRESH - 1):
        sketch.observe(1.0)
    assert sketch.quantile(0.5) == low  # still cached
    for _ in range(200):
        sketch.observe(1.0)
    assert sketch.quantile(0.5) == pytest.approx(1.0, rel=0.011)


def test_odd_observations() -> None:
    sketch = LatencySketch()
    for value in (-1.0, math.nan, -math.inf):
        sketch.observe(value)
    assert sketch.count == 0
    for _ in range(20):
        sketch.observe(0.0)
    assert sketch.quantile(0.5) == pytest.approx(1e-6, rel=0.011)
    assert repr(sketch) == "<LatencySketch count=20 window=2048>"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"relative_accuracy": 0}, "relative_accuracy"),
        ({"relative_accuracy": 1}, "relative_accuracy"),
        ({"relative_accuracy": True}, "relative_accuracy"),
        ({"relative_accuracy": math.nan}, "relative_accuracy"),
        ({"relative_accuracy": "0.01"}, "relative_accuracy"),
        ({"window": 0}, "window"),
        ({"window": 1.5}, "window"),
        ({"window": True}, "window"),
    ],
)
def test_bad_sketch_settings(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencySketch(**options)


@pytest.mark.parametrize("q", [0, 1, -0.5, 1.5])
def test_quantile_wants_a_probability(q: float) -> None:
    with pytest.raises(ValueError, match="q must be between 0 and 1"):
        LatencySketch().quantile(q)


def test_samples_needed_grows_with_the_quantile() -> None:
    assert [samples_needed(q) for q in (0.1, 0.5, 0.9, 0.95, 0.99, 0.999)] == [
        20,
        20,
        100,
        200,
        1000,
        10_000,
    ]


# -- the budget ----------------------------------------------------------------------------


@given(
    ratio=st.floats(0, 2),
    burst=st.floats(1, 50),
    steps=st.lists(st.booleans(), max_size=300),
)
def test_extras_never_exceed_the_ratio_times_the_primaries(
    ratio: float, burst: float, steps: list[bool]
) -> None:
    budget = ExtraBudget(burst)
    primaries = extras = 0
    for is_primary in steps:
        if is_primary:
            budget.earn(ratio)
            primaries += 1
        elif budget.spend():
            extras += 1
        assert 0 <= budget.tokens <= burst
    assert extras <= ratio * primaries + 1e-6


def test_the_bucket_saves_at_most_the_burst() -> None:
    budget = ExtraBudget(burst=3)
    for _ in range(1000):
        budget.earn(0.5)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    assert repr(budget) == "<ExtraBudget tokens=0.00/3>"


@pytest.mark.parametrize("burst", [0.5, math.inf, math.nan, True, "10"])
def test_bad_burst(burst: Any) -> None:
    with pytest.raises(ValueError, match="burst must be"):
        ExtraBudget(burst)


# -- sites ---------------------------------------------------------------------------------


def test_sites_are_created_once_per_name() -> None:
    inventory = sites.site("inventory")
    assert sites.site("inventory") is inventory
    assert repr(inventory) == ("<HedgeSite 'inventory' samples=0 <ExtraBudget tokens=0.00/20>>")


def test_too_many_sites_means_names_carry_request_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sites, "MAX_SITES", 3)
    for i in range(2):
        sites.site(f"site-{i}")
    sites.leg_latency("shards")
    with pytest.raises(ValueError, match="never per-request data"):
        sites.site("user-12345")
    with pytest.raises(ValueError, match="never per-request data"):
        sites.leg_latency("user-12345")
    assert "user-12345" not in sites._sites
    assert "user-12345" not in sites._legs
    assert sites.site("site-0").name == "site-0"  # existing ones still resolve
    assert sites.leg_latency("shards").count == 0


@pytest.mark.parametrize("name", ["", None, 42])
def test_site_names_must_be_non_empty_strings(name: Any) -> None:
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        HedgeSite(name)


def test_a_hedge_site_takes_only_a_latency_sketch() -> None:
    with pytest.raises(TypeError, match="latency must be a LatencySketch"):
        HedgeSite("db", latency=[])  # type: ignore[arg-type]
    assert HedgeSite("db", burst=2).budget.burst == 2


def test_derived_names() -> None:
    class Client:
        async def get(self) -> None:
            return None

    assert sites.derived_name(Client().get) == (
        f"{__name__}.test_derived_names.<locals>.Client.get"
    )
    assert sites.derived_name(print) is None
    assert sites.derived_name(Client()) is None


# -- amplification -------------------------------------------------------------------------


def test_amplification_is_one_minus_the_chance_that_no_leg_is_slow() -> None:
    assert tailguard.amplification(0.01, 100) == pytest.approx(0.634, abs=0.001)
    assert amplification(0.0, 100) == 0.0
    assert amplification(1.0, 1) == 1.0


@pytest.mark.parametrize(
    ("p", "n", "message"),
    [
        (-0.1, 1, "p must be"),
        (1.1, 1, "p must be"),
        (True, 1, "p must be"),
        (math.nan, 1, "p must be"),
        (10**400, 1, "p must be"),
        (0.1, -1, "n must be"),
        (0.1, 1.5, "n must be"),
        (0.1, False, "n must be"),
    ],
)
def test_amplification_checks_its_input(p: Any, n: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        amplification(p, n)
