"""Hedged requests: send a second copy when the first is slower than usual, keep the first answer.

From Dean & Barroso, "The Tail at Scale": most slow responses are slow by
bad luck (a pause, a queue, a lost packet), so a second copy sent after the
first has taken longer than, say, 95 % of calls usually take, will most often
answer first. The cost is a few percent more calls; :func:`hedge` caps it with
a budget so that hedging cannot double the load when *everything* is slow.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar, cast

from tailguard._numbers import finite
from tailguard.deadlines import remaining
from tailguard.tail import sites
from tailguard.tail._attempts import Attempt, Attempts, all_failed, check_fn, failure_of
from tailguard.tail.sites import HedgeSite

__all__ = ["hedge", "parse_delay"]

T = TypeVar("T")

_PERCENTILE: Final = re.compile(r"p(\d{1,2}(?:\.\d+)?)")


@functools.lru_cache(maxsize=64)
def _percentile(text: str) -> float | None:
    match = _PERCENTILE.fullmatch(text)
    if match is None:
        return None
    q = round(float(match.group(1)) / 100, 12)
    return q if 0 < q < 1 else None


def parse_delay(delay: object) -> tuple[float | None, float | None]:
    """``(seconds, None)`` for a number, ``(None, quantile)`` for ``"pNN"``; else ``ValueError``.

    >>> parse_delay(0.02), parse_delay("p95"), parse_delay("p99.9")
    ((0.02, None), (None, 0.95), (None, 0.999))
    """
    if isinstance(delay, str):
        q = _percentile(delay)
        if q is not None:
            return None, q
    elif (seconds := finite(delay)) is not None and seconds >= 0:
        return seconds, None
    raise ValueError(
        "hedge: delay must be seconds (a finite number >= 0) or a percentile of the call "
        f"site's latency such as 'p95' or 'p99.9', got {delay!r}"
    )


async def hedge(
    fn: Callable[[], Awaitable[T]],
    *,
    delay: float | str,
    max_hedges: int = 1,
    max_extra: float = 0.05,
    name: str | None = None,
    site: HedgeSite | None = None,
) -> T:
    """``await fn()``; if no answer came after ``delay``, call ``fn()`` again; first success wins.

    * ``delay``: seconds, or a percentile of this call site's observed
      latency (``"p95"``, ``"p99.5"``), estimated online. Until the site has
      enough observations for that percentile (200 for p95, 1000 for p99;
      see :func:`~tailguard.tail.sketch.samples_needed`) no hedge is sent.
    * ``max_hedges``: extra copies at most, sent ``delay`` apart.
    * ``max_extra``: the budget: each call earns ``max_extra`` of a hedge,
      each hedge costs one (:class:`~tailguard.tail.budget.ExtraBudget`, per
      site, up to 20 saved up), so hedges never exceed ``max_extra`` times
      the calls. A hedge due with no budget left is not sent. Hedging at
      ``pNN`` makes about ``(100 - NN) %`` of calls due for a hedge: give
      ``max_extra`` some headroom above that (``0.055`` for ``"p95"``).
    * No hedge is sent when the remaining deadline
      (:func:`tailguard.remaining`) is shorter than a typical call (the
      site's median, or ``delay`` before that is known).
    * ``name``: the call site (a constant: it labels metrics and owns the
      sketch and the budget). Defaults to ``fn``'s ``module.qualname`` for a
      function or method; a lambda, a ``functools.partial`` or another
      callable needs ``name=``. Or pass ``site=`` (a :class:`HedgeSite`) to
      bring your own sketch and budget.

    When the first attempt (or a hedge) succeeds, the others are cancelled
    and awaited before ``hedge`` returns. A failed attempt does not trigger a
    hedge (hedging is for latency, not a retry); when every attempt started
    has failed, ``hedge`` raises an ``ExceptionGroup`` of all of them.
    Cancelling the caller cancels every attempt, waits for them, and
    propagates.

    The site's sketch records the *first* attempt's latency: exactly when it
    succeeds, and its running time when a hedge beat it (a lower bound that
    keeps its rank above the hedge delay), so hedging does not drag the
    estimate of the percentile down.

    >>> import asyncio, tailguard
    >>> async def fetch() -> str:
    ...     return "stock: 3"
    >>> asyncio.run(tailguard.hedge(fetch, delay=0.05, name="doc.inventory"))
    'stock: 3'
    """
    check_fn("hedge", "fn", fn)
    seconds, quantile = parse_delay(delay)
    if isinstance(max_hedges, bool) or not isinstance(max_hedges, int) or max_hedges < 0:
        raise ValueError(f"hedge: max_hedges must be an int >= 0, got {max_hedges!r}")
    extra = finite(max_extra)
    if extra is None or extra < 0:
        raise ValueError(f"hedge: max_extra must be a finite number >= 0, got {max_extra!r}")
    where = _resolve_site(fn, name, site)
    wait = seconds if quantile is None else where.latency.quantile(quantile)
    where.budget.earn(extra)
    label = where.name

    async with Attempts("hedge", label) as group:
        catalog = group.catalog
        if wait is not None:
            group.span.set_attribute("tailguard.hedge.delay", wait)
        group.span.set_attribute("tailguard.hedges", 0)
        primary = group.start(fn, "primary")
        failures: list[BaseException] = []
        sent = 0
        due = None if wait is None or max_hedges == 0 else primary.started + wait
        while True:
            for attempt in await group.wait(due):
                failure = failure_of(attempt)
                if failure is not None:
                    failures.append(failure)
                    continue
                group.won(attempt)
                if where.observe:
                    _observe_primary(where, primary, group.now())
                if attempt is not primary and catalog is not None:
                    catalog.hedges.labels(label, "won").inc()
                return cast(T, attempt.task.result())
            if not group.pending:
                raise all_failed("hedge", label, failures, f"all {len(failures)} attempts failed")
            if due is None or group.now() < due:
                continue
            assert wait is not None
            refused = _refusal(where, wait)
            if refused is not None:
                due = None
                group.span.set_attribute("tailguard.hedge.refused", refused)
                if catalog is not None:
                    catalog.hedges.labels(label, refused).inc()
                continue
            group.start(fn, "hedge")
            sent += 1
            group.span.set_attribute("tailguard.hedges", sent)
            if catalog is not None:
                catalog.hedges.labels(label, "sent").inc()
            due = due + wait if sent < max_hedges else None


def _resolve_site(fn: Callable[..., object], name: str | None, site: HedgeSite | None) -> HedgeSite:
    if site is not None:
        if name is not None:
            raise ValueError("hedge: pass name= or site=, not both")
        if not isinstance(site, HedgeSite):
            raise TypeError(f"hedge: site must be a HedgeSite, not {type(site).__name__}")
        return site
    if name is None:
        name = sites.derived_name(fn)
        if name is None:
            raise TypeError(
                f"hedge: name= is required for {fn!r}: a lambda, partial or callable object "
                "has no stable name to keep a latency estimate and a budget under"
            )
    return sites.site(name)


def _refusal(where: HedgeSite, wait: float) -> str | None:
    """Why a hedge that is due now is not sent (an event of ``tailguard_hedges_total``)."""
    typical = where.latency.quantile(0.5)
    if remaining() < (wait if typical is None else typical):
        return "deadline"
    if not where.budget.spend():
        return "budget_exhausted"
    return None


def _observe_primary(where: HedgeSite, primary: Attempt, now: float) -> None:
    task = primary.task
    if not task.done():  # beaten by a hedge: it ran at least this long
        where.latency.observe(now - primary.started)
    elif not task.cancelled() and task.exception() is None:
        where.latency.observe(primary.latency)
