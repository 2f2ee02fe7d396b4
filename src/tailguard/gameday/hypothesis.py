"""The steady-state hypothesis: which route each request counts under, and whether its SLOs held.

Routes are route templates, so ``/items/1`` and ``/items/2`` count together
under ``GET /items/{item_id}``. A request of the mix takes the first
template that fits its path, from the hypothesis, then from the service's
own ``/metrics`` (the routes tailguard has labelled), else its own path.

>>> from tailguard.gameday.plan import Check, RequestSpec
>>> mix = [RequestSpec("/items/1"), RequestSpec("/items/2"), RequestSpec("/orders", "POST")]
>>> route_labels(mix, [Check("GET /items/{item_id}", {"p99": 0.1})], set())
['GET /items/{item_id}', 'GET /items/{item_id}', 'POST /orders']
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from tailguard.gameday.load import Stats
from tailguard.gameday.plan import ALL_ROUTES, Check, RequestSpec, template_matches

__all__ = ["Verdict", "evaluate", "route_labels"]


def route_labels(
    requests: Sequence[RequestSpec],
    checks: Iterable[Check],
    known: Collection[tuple[str, str]],
) -> list[str]:
    """``METHOD /template`` for each request of the mix (see the module's docstring)."""
    templates: list[tuple[str | None, str]] = []
    for check in checks:
        if check.route != ALL_ROUTES:
            head, _, path = check.route.rpartition(" ")
            templates.append((head or None, path))
    # The service's own templates, the most specific (fewest parameters, longest) first.
    templates += sorted(known, key=lambda found: (found[1].count("{"), -len(found[1])))
    labels = []
    for spec in requests:
        label = f"{spec.method} {spec.path.partition('?')[0]}"
        for method, template in templates:
            if method in (None, spec.method) and template_matches(template, spec.path):
                label = f"{spec.method} {template}"
                break
        labels.append(label)
    return labels


@dataclass(frozen=True, slots=True)
class Verdict:
    """One SLO of one route in one phase: its target, what was observed, and whether it held.

    ``by`` is how far the observation is on the wrong side of the target
    (positive: broke by that much; negative: held with that margin).

    >>> Verdict("GET /items/{item_id}", "p99", 0.1, 0.25).held
    False
    """

    route: str
    slo: str
    target: float
    observed: float | None
    """``None`` when the phase sent no request on this route."""

    @property
    def held(self) -> bool:
        """Whether the SLO held (an SLO on no requests did not)."""
        return self.by is not None and self.by <= 0

    @property
    def by(self) -> float | None:
        """How far past the target (negative: the margin it held by)."""
        if self.observed is None:
            return None
        if self.slo == "goodput":
            return self.target - self.observed
        return self.observed - self.target


def observe(stats: Stats, slo: str, *, within: float) -> float | None:
    """The value of ``slo`` in ``stats``; ``None`` when nothing was sent.

    Latencies (``p50``, ``p99``, ``p999``, ``max``) are seconds from the
    intended send time, timeouts included; ``error_rate`` is the share of
    ended requests answered 5xx, timed out or failed; ``goodput`` the share
    of *offered* requests answered 2xx within ``within`` seconds.
    """
    if slo == "goodput":
        return stats.ok.count_within(within) / stats.offered if stats.offered else None
    if not stats.answered:
        return None
    if slo == "error_rate":
        return stats.errors / stats.answered
    if slo == "max":
        return stats.latency.max
    return stats.latency.percentile({"p50": 50.0, "p99": 99.0, "p999": 99.9}[slo])


def evaluate(checks: Iterable[Check], routes: dict[str, Stats], *, timeout: float) -> list[Verdict]:
    """Every SLO of ``checks`` against the phase's ``routes`` (by label, ``*`` for all)."""
    found = []
    for check in checks:
        for label, stats in routes.items():
            if (check.route == ALL_ROUTES) != (label == ALL_ROUTES):
                continue
            if label != ALL_ROUTES:
                method, _, template = label.partition(" ")
                if not check.matches(method, template):
                    continue
            for slo, target in check.slos.items():
                observed = observe(stats, slo, within=check.within or timeout)
                found.append(Verdict(label, slo, target, observed))
    return found
