"""The histogram quantile the latency probe reports, as Prometheus's ``histogram_quantile``."""

from __future__ import annotations

import math

import pytest

from tailguard.chaostoolkit._metrics import quantile

INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Linear inside the bucket the rank falls in; the first bucket starts at 0.
        (0.5, {0.1: 50.0, 0.2: 100.0, INF: 100.0}, 0.1),
        (0.25, {0.1: 50.0, 0.2: 100.0, INF: 100.0}, 0.05),
        (0.75, {0.1: 50.0, 0.2: 100.0, INF: 100.0}, 0.15),
        (1.0, {0.1: 50.0, 0.2: 100.0, INF: 100.0}, 0.2),
        # A rank in +Inf answers the highest finite bound.
        (0.99, {0.1: 50.0, 0.2: 90.0, INF: 100.0}, 0.2),
        # Empty buckets below the rank are skipped.
        (0.5, {0.1: 0.0, 0.2: 0.0, 0.4: 10.0, INF: 10.0}, 0.3),
        # Counts read from a live histogram may step back by one: kept monotonic.
        (0.5, {0.1: 6.0, 0.2: 5.0, INF: 10.0}, 0.1 * 5 / 6),
    ],
)
def test_as_histogram_quantile(q: float, buckets: dict[float, float], expected: float) -> None:
    assert quantile(q, buckets) == pytest.approx(expected)


def test_nothing_observed_has_no_quantile() -> None:
    assert math.isnan(quantile(0.99, {0.1: 0.0, INF: 0.0}))
    assert math.isnan(quantile(0.99, {}))
    assert math.isnan(quantile(0.5, {INF: 3.0}))  # no finite bound to answer
