"""Reading tailguard's ``/metrics``: samples summed over labels, windows, histogram quantiles.

The service's counters and histograms count from its start. A probe over a
window scrapes twice, ``window`` seconds apart, and judges the difference:
what ``increase(...[window])`` and ``histogram_quantile`` would say in
Prometheus, without needing a Prometheus.

>>> scrape = parse('''
... # TYPE tailguard_requests_total counter
... tailguard_requests_total{route="/a",method="GET",status_class="2xx",outcome="ok"} 9
... tailguard_requests_total{route="/a",method="GET",status_class="5xx",outcome="error"} 1
... ''', "http://svc/metrics")
>>> totals(scrape, "tailguard_requests_total", {"route": "/a"}, by="outcome")
{'ok': 9.0, 'error': 1.0}
>>> quantile(0.5, {0.1: 2.0, 0.2: 4.0, math.inf: 4.0})
0.1
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tailguard.chaostoolkit._service import ActivityFailed, Settings, fetch_metrics

__all__ = ["Scrape", "observe", "parse", "quantile", "routes", "totals", "windowed"]

MAX_WINDOW = 3600.0
"""The longest window a probe may wait for (an hour): a probe is not a monitor."""


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape, by sample name (``x_bucket``, ``x_total``...)."""

    url: str
    samples: Mapping[str, tuple[tuple[Mapping[str, str], float], ...]]


def parse(text: str, url: str) -> Scrape:
    """The samples in a Prometheus text exposition; an error naming ``url`` if it is not one."""
    samples: dict[str, list[tuple[Mapping[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    except ValueError as exc:
        raise ActivityFailed(f"{url} did not answer in the Prometheus text format: {exc}") from None
    if not any(name.startswith("tailguard_") for name in samples):
        raise ActivityFailed(
            f"{url} has no tailguard metrics yet: is it a tailguard service, "
            "and has it served a request?"
        )
    return Scrape(url, {name: tuple(found) for name, found in samples.items()})


def totals(
    scrape: Scrape, name: str, labels: Mapping[str, str], *, by: str | None = None
) -> dict[str, float]:
    """The sum of ``name``'s samples whose labels include ``labels``, grouped by label ``by``."""
    summed: dict[str, float] = {}
    for found, value in scrape.samples.get(name, ()):
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            key = found.get(by, "") if by else ""
            summed[key] = summed.get(key, 0.0) + value
    return summed


def routes(scrape: Scrape, name: str) -> list[str]:
    """The route labels ``name`` has series for."""
    return sorted({found["route"] for found, _ in scrape.samples.get(name, ()) if "route" in found})


def windowed(
    before: Scrape | None, after: Scrape, name: str, labels: Mapping[str, str], by: str | None
) -> dict[str, float]:
    """:func:`totals` over the window between two scrapes (since the start without ``before``)."""
    now = totals(after, name, labels, by=by)
    if before is None:
        return now
    then = totals(before, name, labels, by=by)
    if any(now.get(key, 0.0) < value for key, value in then.items()):
        raise ActivityFailed(
            f"{name} went down between two scrapes of {after.url}: the service restarted, "
            "or another worker answered (run one worker, or point each probe at one "
            "worker, or use Prometheus multiprocess mode)"
        )
    return {key: value - then.get(key, 0.0) for key, value in now.items()}


def observe(configuration: Settings, window: float, who: str) -> tuple[Scrape | None, Scrape]:
    """Two scrapes ``window`` seconds apart, or one (and ``None``) for a window of 0."""
    if (
        isinstance(window, bool)
        or not isinstance(window, int | float)
        or not 0 <= window <= MAX_WINDOW
    ):
        raise ActivityFailed(
            f"{who}: window must be a number of seconds from 0 (since the service started) "
            f"to {MAX_WINDOW:g}, got {window!r}"
        )
    before = None
    if window:
        before = parse(*fetch_metrics(configuration))
        time.sleep(window)
    return before, parse(*fetch_metrics(configuration))


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The ``q`` quantile of cumulative bucket counts keyed by upper bound, as Prometheus does it.

    Linear interpolation inside the bucket the rank falls in; the first
    bucket starts at 0; a rank in the ``+Inf`` bucket gives the highest
    finite bound. ``nan`` without observations.

    >>> quantile(0.99, {0.25: 90.0, 0.5: 100.0, math.inf: 100.0})
    0.475
    >>> quantile(0.99, {0.25: 90.0, 0.5: 90.0, math.inf: 100.0})
    0.5
    """
    bounds = sorted(buckets)
    counts: list[float] = []
    for bound in bounds:  # scrapes of a live histogram can be off by one: keep them monotonic
        counts.append(max(buckets[bound], counts[-1] if counts else 0.0))
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if math.isinf(bounds[index]):
        return bounds[index - 1] if index else math.nan
    lower = bounds[index - 1] if index else min(0.0, bounds[0])
    previous = counts[index - 1] if index else 0.0
    return lower + (bounds[index] - lower) * (rank - previous) / (counts[index] - previous)
