"""The demo's table and its explanation, built from how each request ended.

:func:`format_table` and :func:`explain` are re-exported by
:mod:`tailguard.demo`, which is where to read about the demo itself.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tailguard.middleware.responses import REASON_HEADER

if TYPE_CHECKING:
    from tailguard.demo import Budget, Kind, Outcome, Scenario

__all__ = ["Row", "explain", "format_table"]

_REASON = REASON_HEADER.decode("latin-1")


@dataclass(frozen=True, slots=True)
class Row:
    """A scenario, the budget it got, and how its requests ended."""

    scenario: Scenario
    budget: Budget | None
    outcomes: Sequence[Outcome]

    def count(self, kind: Kind) -> int:
        """How many requests ended as ``kind``."""
        return sum(1 for outcome in self.outcomes if outcome.kind == kind)

    def latencies(self) -> list[float]:
        """Seconds each request took, sorted."""
        return sorted(outcome.seconds for outcome in self.outcomes)

    def budget_text(self) -> str:
        """``150 ms``, with where it came from unless that is the row's own route key."""
        budget = self.budget
        if budget is None:
            return "?"
        if budget.source == self.scenario.label:
            return _ms(budget.seconds)
        return f"{_ms(budget.seconds)} ({budget.source})"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    millis = seconds * 1000
    return f"{millis:.1f} ms" if millis < 10 else f"{millis:.0f} ms"


def format_table(rows: Sequence[Row]) -> str:
    """An aligned plain-text table, one line per row: counts, then p50 and max latency."""
    header = ("route", "budget", "requests", "2xx", "504", "aborted", "other", "p50", "max")
    lines = [header]
    for row in rows:
        latencies = row.latencies()
        lines.append(
            (
                row.scenario.label,
                row.budget_text(),
                str(len(row.outcomes)),
                str(row.count("2xx")),
                str(row.count("504")),
                str(row.count("aborted")),
                str(row.count("other")),
                _ms(statistics.median(latencies)) if latencies else "-",
                _ms(latencies[-1]) if latencies else "-",
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(line: tuple[str, ...]) -> str:
        # route and budget read left to right; the numbers align right
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rendered = [render(line) for line in lines]
    rule = "-" * max(len(text) for text in rendered)
    return "\n".join([rendered[0], rule, *rendered[1:]])


def _forwarded_ms(row: Row) -> list[int]:
    """The ``x-request-timeout-ms`` a route's 2xx bodies said they would send downstream."""
    found: list[int] = []
    for outcome in row.outcomes:
        try:
            found.append(int(json.loads(outcome.body)["forward_headers"]["x-request-timeout-ms"]))
        except (ValueError, TypeError, KeyError):
            continue
    return found


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def explain(rows: Sequence[Row]) -> str:
    """One paragraph, built from the outcomes, saying what tailguard did and why."""
    parts = [
        "Each request got the budget of the most specific route key (or the default), "
        "shrunk by any inbound deadline header."
    ]
    fine = [r.scenario.name for r in rows if r.outcomes and r.count("2xx") == len(r.outcomes)]
    if fine:
        parts.append(f"Every request to {_join(fine)} finished within budget.")
    for row in rows:
        budget, requests = row.budget, f"{len(row.outcomes)} requests to {row.scenario.name}"
        timed_out, aborted = row.count("504"), row.count("aborted")
        its = "" if budget is None else f" {_ms(budget.seconds)}"
        if timed_out and budget is not None and budget.header is not None:
            parts.append(
                f"{timed_out} of {requests} got a 504: the {budget.header} header cut the "
                f"route's {_ms(budget.route_seconds)} budget to {_ms(budget.seconds)}, too little "
                "for work that fits the route. Inbound headers only ever shrink a budget."
            )
        elif timed_out:
            parts.append(
                f"{timed_out} of {requests} ran past the{its} budget: tailguard cancelled the "
                f"handlers and answered 504 with {_REASON}: deadline_exceeded instead of keeping "
                "the callers waiting."
            )
        if aborted:
            parts.append(
                f"{aborted} of {requests} had started their response when the{its} budget ran "
                "out, so a 504 was no longer possible: tailguard aborted them and the client saw "
                "a truncated body (httpx raises RemoteProtocolError), never a second status line."
            )
        forwarded = _forwarded_ms(row)
        if forwarded:
            parts.append(
                f"{row.scenario.name} read tailguard.remaining() after its own work and would "
                f"hand {min(forwarded)}-{max(forwarded)} ms of its{its} budget to a downstream "
                "call as x-request-timeout-ms."
            )
    return " ".join(parts)
