"""The limiter and its permits: every request is admitted, queued, or shed.

A :class:`Limiter` holds ``limit`` slots. A request that finds a free slot (and
nobody eligible waiting) gets a :class:`Permit` at once, synchronously, from
:meth:`Limiter.try_acquire`, and gives the slot back with
:meth:`Permit.release`. Otherwise it may wait in a bounded queue, served
by priority, then fairly across tenants (see :mod:`.queue`), for no longer than
its cap: the smaller of ``queue_timeout`` and the time left before its
deadline. Everything else is shed with :class:`Rejected` and a reason.

Queue time is kept short under sustained load the way Facebook's servers do it
("Fail at Scale", ACM Queue 2015): a CoDel-style check and adaptive LIFO. If
a tenant's waiters have not all drained at any moment during the last
``codel_interval``, its backlog is *standing*: it no longer absorbs a burst, it
only adds delay to every request. New waiters of that tenant may then wait only
``codel_target``, and its newest waiter is served first: that client is the
most likely to still be waiting, while the oldest are the most likely to have
given up (or to be about to time out). A burst the queue can absorb still
waits in FIFO order with its full cap. The check is per tenant, as in Linux's
``fq_codel``, so a tenant that floods the limiter trips it for itself only;
with one tenant (or none) it is exactly Facebook's queue-wide check.

Tenants are whatever the caller says, and a client may say anything: a client
that sends a new tenant id with every request would get a fresh lane and a
fresh tenant cap each time, and crowd out the tenants that play fair. So only
*listed* tenants (the keys of ``tenant_weights``) and ``None`` (no tenant) get
lanes and caps of their own; every other tenant is counted as
:data:`UNLISTED`, one tenant sharing one lane and one ``tenant_concurrency``
cap. ``unlisted_tenants="separate"`` gives unlisted tenants their own, for
tenants clients cannot forge; at most ``max_tenants`` of them at once (the
rest share :data:`UNLISTED`), so the per-tenant tables stay bounded.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Hashable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from tailguard._numbers import finite
from tailguard.admission.adaptive import AdaptiveLimit, LimitController
from tailguard.admission.errors import REASONS, Reason, Rejected
from tailguard.admission.queue import PRIORITY_LEVELS, Waiter, WaitQueue

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["MAX_TENANTS", "UNLISTED", "Limiter", "LimiterState", "Permit", "UnlistedTenants"]

UnlistedTenants = Literal["shared", "separate"]
"""How a limiter counts tenants missing from ``tenant_weights``: as one, or each apart."""

MAX_TENANTS: Final = 256
"""With ``unlisted_tenants="separate"``: tenants a limiter keeps state for before new
unlisted ones count as :data:`UNLISTED` (per table: permits held, waiters queued)."""


class _Unlisted:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNLISTED"


UNLISTED: Final = _Unlisted()
"""The tenant every unlisted tenant is counted as (``Permit.tenant`` of their permits).

>>> limiter = Limiter("api", max_concurrency=4, tenant_concurrency=1, tenant_weights={"gold": 1})
>>> limiter.try_acquire(tenant="gold").tenant, limiter.try_acquire(tenant="a7f3").tenant
('gold', UNLISTED)
>>> limiter.try_acquire(tenant="b912") is None  # the unlisted tenants' one slot is taken
True
"""

_WARMUP = 20
"""Hold and wait means are plain means of the first 20 samples, then EWMAs of weight 1/20."""

_WAIT_MARGIN = 2.0
"""A request is queued only if twice its expected wait fits in its cap."""


class LimiterState(NamedTuple):
    """A snapshot of a limiter for telemetry: cheap to take, safe to keep.

    >>> state = Limiter("db", max_concurrency=2).state()
    >>> state.in_use, state.limit, state.rejected["queue_full"]
    (0, 2, 0)
    """

    name: str
    in_use: int
    queued: int
    limit: int
    """The effective limit (the adaptive one, if any)."""
    max_concurrency: int
    max_queue: int
    overloaded: bool
    """Some tenant's backlog has stood for ``codel_interval``: its waits are cut short."""
    rejected: dict[str, int]
    """Requests shed so far, by reason (a copy)."""
    admitted: int
    mean_hold: float
    """Recent mean seconds a permit is held (0 before the first release)."""
    mean_queue_wait: float
    """Recent mean seconds spent queued by requests that left the queue granted or shed."""
    tenants: int
    """Tenants the limiter keeps state for now (queued, or holding permits under a tenant cap)."""


class Limiter:
    """Bounded concurrency with a bounded, fair, deadline-aware queue.

    ``max_concurrency`` permits may be held at once (fewer while an
    ``adaptive`` limit holds it lower). Up to ``max_queue`` requests wait for
    one, each for at most ``queue_timeout`` seconds and never past its
    deadline; higher ``priority`` (0..9) is served first, and tenants share
    the queue by ``tenant_weights`` (default 1). ``tenant_concurrency`` caps
    each tenant's permits *and* its queued requests. Tenants not listed in
    ``tenant_weights`` share one lane and one cap, as :data:`UNLISTED`, unless
    ``unlisted_tenants="separate"`` (then up to ``max_tenants`` of them at once
    get their own; only for tenants clients cannot forge). ``clock`` must be the
    clock of the ``deadline_at`` values passed in (``time.monotonic``); tests
    may inject a fake one. One limiter serves one event loop.

    >>> import asyncio
    >>> limiter = Limiter("orders", max_concurrency=1, max_queue=1, queue_timeout=0.01)
    >>> held = limiter.try_acquire()
    >>> limiter.try_acquire() is None  # full: the fast path says no, it never waits
    True
    >>> try:
    ...     asyncio.run(limiter.acquire())  # waits 0.01 s in the queue, then is shed
    ... except Rejected as exc:
    ...     print(exc.reason)
    queue_timeout
    >>> held.release()
    >>> asyncio.run(limiter.acquire()).release()
    >>> limiter.state().rejected["queue_timeout"], limiter.in_use
    (1, 0)
    """

    __slots__ = (
        "_admitted",
        "_clock",
        "_controller",
        "_holds",
        "_listed",
        "_mean_hold",
        "_mean_wait",
        "_queue",
        "_rejected",
        "_tenant_cap",
        "_tenant_in_use",
        "_waits",
        "codel_interval",
        "codel_target",
        "in_use",
        "limit",
        "max_concurrency",
        "max_queue",
        "max_tenants",
        "name",
        "queue_timeout",
        "tenant_concurrency",
        "unlisted_tenants",
    )

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        tenant_concurrency: int | None = None,
        tenant_weights: Mapping[Hashable, float] | None = None,
        unlisted_tenants: UnlistedTenants = "shared",
        max_tenants: int = MAX_TENANTS,
        adaptive: AdaptiveLimit | None = None,
        codel_target: float = 0.005,
        codel_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Limiter.name must be a non-empty str, got {name!r}")
        _check_int("max_concurrency", max_concurrency, 1)
        _check_int("max_queue", max_queue, 0)
        if queue_timeout is not None:
            _check_seconds("queue_timeout", queue_timeout)
        if tenant_concurrency is not None:
            _check_int("tenant_concurrency", tenant_concurrency, 1)
        for tenant, weight in (tenant_weights or {}).items():
            _check_seconds(f"tenant_weights[{tenant!r}]", weight, what="a positive, finite number")
        if unlisted_tenants not in ("shared", "separate"):
            raise ValueError(
                f"Limiter.unlisted_tenants must be 'shared' or 'separate', got {unlisted_tenants!r}"
            )
        _check_int("max_tenants", max_tenants, 1)
        _check_seconds("codel_target", codel_target)
        _check_seconds("codel_interval", codel_interval)
        if not callable(clock):
            raise ValueError(f"Limiter.clock must be callable, got {clock!r}")
        self.name = name
        self.max_concurrency: int = max_concurrency
        self.max_queue: int = max_queue
        self.queue_timeout = queue_timeout
        self.tenant_concurrency = tenant_concurrency
        self.unlisted_tenants: UnlistedTenants = unlisted_tenants
        self.max_tenants = max_tenants
        self._listed: frozenset[Hashable] = frozenset(tenant_weights or ())
        self.codel_target = codel_target
        self.codel_interval = codel_interval
        self._clock = clock
        self._controller: LimitController | None = None
        self.limit: int = max_concurrency
        """The effective limit: ``max_concurrency``, or lower under an adaptive limit."""
        if adaptive is not None:
            self._controller = adaptive.start(max_concurrency)
            self.limit = self._controller.limit
        self.in_use: int = 0
        """Permits held now."""
        self._tenant_in_use: dict[Hashable, int] | None = None if tenant_concurrency is None else {}
        self._tenant_cap = tenant_concurrency or 0
        self._queue: WaitQueue[Permit | Rejected] = WaitQueue(tenant_weights)
        self._admitted = 0
        self._rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._holds = 0
        self._mean_hold = 0.0
        self._waits = 0
        self._mean_wait = 0.0

    def __repr__(self) -> str:
        return (
            f"<Limiter {self.name!r} in_use={self.in_use}/{self.limit} "
            f"queued={self._queue.count}/{self.max_queue}>"
        )

    @property
    def queued(self) -> int:
        """Requests waiting for a permit now."""
        return self._queue.count

    @property
    def overloaded(self) -> bool:
        """Whether some tenant's waiters have not drained for a whole ``codel_interval``.

        Its new waiters then wait at most ``codel_target`` and are served newest first.
        """
        standing = self._queue.standing_since
        return bool(standing) and min(standing.values()) <= self._clock() - self.codel_interval

    def state(self) -> LimiterState:
        """A snapshot of the limiter for telemetry."""
        return LimiterState(
            self.name,
            self.in_use,
            self._queue.count,
            self.limit,
            self.max_concurrency,
            self.max_queue,
            self.overloaded,
            dict(self._rejected),
            self._admitted,
            self._mean_hold,
            self._mean_wait,
            len(self._queue.tenant_counts.keys() | (self._tenant_in_use or {}).keys()),
        )

    def _tenant_key(self, tenant: Hashable) -> Hashable:
        """The tenant a request is counted as: itself, or :data:`UNLISTED`.

        Listed tenants and ``None`` are themselves. Unlisted ones are
        :data:`UNLISTED`, unless ``unlisted_tenants="separate"``: then
        themselves while the limiter keeps state for fewer than ``max_tenants``
        tenants (or already keeps some for this one). The same answer twice in
        a row (nothing changes in between), so callers may ask again.
        """
        if tenant is None or tenant in self._listed:
            return tenant
        if self.unlisted_tenants == "shared":
            return UNLISTED
        queued = self._queue.tenant_counts
        held = self._tenant_in_use
        if tenant in queued or (held is not None and tenant in held):
            return tenant
        known = len(queued) + (len(held) if held is not None else 0)
        return tenant if known < self.max_tenants else UNLISTED

    def try_acquire(self, priority: int = 0, tenant: Hashable = None) -> Permit | None:
        """A permit now if a slot is free, else ``None``; never waits, never sheds.

        The fast path, synchronous and cheap. Free slots are only ever left
        while nobody eligible waits (releases hand slots straight to waiters),
        so a newcomer can never jump the queue. ``priority`` must be an int
        0..9 (``ValueError`` otherwise); ``tenant`` any hashable.
        """
        if priority.__class__ is not int or not 0 <= priority < PRIORITY_LEVELS:
            raise _bad_priority(priority)
        if self.in_use < self.limit:
            if tenant is not None:
                tenant = self._tenant_key(tenant)
            counts = self._tenant_in_use
            if counts is not None:
                held = counts.get(tenant, 0)
                if held >= self._tenant_cap:
                    return None
                counts[tenant] = held + 1
            self.in_use += 1
            self._admitted += 1
            return Permit(self, tenant, self._clock())
        return None

    async def acquire(
        self,
        *,
        priority: int = 0,
        tenant: Hashable = None,
        deadline_at: float | None = None,
        service_estimate: float | None = None,
    ) -> Permit:
        """A permit, waiting in the queue if need be; raises :class:`Rejected` if shed.

        ``deadline_at`` is the caller's deadline on the limiter's clock
        (``time.monotonic()``); ``service_estimate`` the seconds the work will
        need once admitted. The wait is capped so that much time is left, and a
        request that cannot afford to wait at all is shed at once (``deadline``).
        A cancelled waiter leaves the queue; cancellation always propagates.
        """
        if service_estimate is not None and not service_estimate >= 0.0:
            raise ValueError(f"service_estimate must be >= 0, got {service_estimate!r}")
        permit = self.try_acquire(priority, tenant)
        if permit is not None:
            return permit
        waiter = self._enqueue(priority, tenant, deadline_at, service_estimate)
        future = waiter.future
        try:
            outcome = await future
        except BaseException:
            if future.done() and not future.cancelled():
                # Granted (or shed) in the same loop iteration as the cancellation.
                granted = future.result()
                if isinstance(granted, Permit):
                    granted._discard()
            elif self._queue.remove(waiter) and waiter.handle is not None:
                waiter.handle.cancel()
            raise
        if isinstance(outcome, Permit):
            return outcome
        try:
            raise outcome
        finally:
            del outcome  # no exception -> traceback -> this frame -> exception cycle

    def _enqueue(
        self,
        priority: int,
        tenant: Hashable,
        deadline_at: float | None,
        service_estimate: float | None,
    ) -> Waiter[Permit | Rejected]:
        tenant = self._tenant_key(tenant)
        now = self._clock()
        verdict = self._verdict(priority, tenant, deadline_at, service_estimate, now)
        if isinstance(verdict, str):
            raise self._reject(verdict, tenant)
        cap, reason, victim = verdict
        if victim is not None:
            # Outranked, or its tenant is the one filling the queue.
            self._shed(victim, "priority" if victim.priority < priority else "queue_full", now)
        loop = asyncio.get_running_loop()
        waiter = Waiter(loop.create_future(), priority, tenant, now)
        self._queue.push(waiter, now)
        if cap != math.inf:
            waiter.handle = loop.call_later(cap, self._expire, waiter, reason)
        return waiter

    def _verdict(
        self,
        priority: int,
        tenant: Hashable,
        deadline_at: float | None,
        service_estimate: float | None,
        now: float,
        backlog: int = 0,
        tenant_backlog: int = 0,
    ) -> Reason | tuple[float, Reason, Waiter[Permit | Rejected] | None]:
        """What becomes of a newcomer no slot was free for: the reason it is shed, or
        the cap on its wait (with the reason it would be shed at the cap) and the
        waiter it pushes out of a full queue, if any. Changes nothing.

        ``backlog`` (``tenant_backlog``): requests (of this tenant) that would be
        waiting but are not, being shadowed (see :meth:`would_shed`)."""
        queue = self._queue
        if self.max_queue == 0:
            # With a free slot, only the tenant's own cap kept this request out.
            return "tenant_limit" if self.in_use < self.limit else "queue_full"
        cap = math.inf if self.queue_timeout is None else self.queue_timeout
        reason: Reason = "queue_timeout"
        if deadline_at is not None:
            budget = deadline_at - now
            if service_estimate is not None:
                budget -= service_estimate
            if not budget > 0.0:  # also catches a NaN deadline
                return "deadline"
            if budget < cap:
                cap, reason = budget, "deadline"
        tenant_cap = self.tenant_concurrency
        if (
            tenant_cap is not None
            and queue.tenant_counts.get(tenant, 0) + tenant_backlog >= tenant_cap
        ):
            return "tenant_limit"
        lifo_since = now - self.codel_interval
        standing = queue.standing_since.get(tenant)
        if standing is not None and standing <= lifo_since and self.codel_target < cap:
            cap, reason = self.codel_target, "queue_timeout"
        expected = self._expected_wait(priority, tenant, backlog, tenant_backlog)
        if self._mean_hold > 0.0 and _WAIT_MARGIN * expected > cap:
            # It would likely wait out its cap and be shed then: shed it now, while
            # a 503 is cheap for the client too. The margin absorbs hold times that
            # vary around their mean; without it the last waiters of a full queue
            # time out whenever service slows a little.
            return reason
        victim = None
        if queue.count + backlog >= self.max_queue:
            victim = queue.victim(priority, tenant, lifo_since=lifo_since) if queue.count else None
            if victim is None:
                return "queue_full"
        return cap, reason, victim

    def would_shed(
        self,
        priority: int = 0,
        tenant: Hashable = None,
        *,
        deadline_at: float | None = None,
        service_estimate: float | None = None,
    ) -> Reason | None:
        """Shadow mode: the reason :meth:`acquire` would shed this request *now*, or
        ``None`` if it would get a slot or wait in the queue. Changes nothing; call it
        after :meth:`try_acquire` said no.

        >>> limiter = Limiter("api", max_concurrency=1)
        >>> held = limiter.try_acquire()
        >>> limiter.would_shed(), limiter.state().rejected["queue_full"]
        ('queue_full', 0)
        """
        if self.in_use < self.limit and self._tenant_in_use is None:
            return None
        tenant = self._tenant_key(tenant)
        # Shadowed requests never wait: those admitted beyond the limit (or beyond
        # their tenant's cap) stand for the queue they would have formed.
        backlog = max(0, self.in_use - self.limit)
        counts = self._tenant_in_use
        tenant_backlog = max(0, counts.get(tenant, 0) - self._tenant_cap) if counts else 0
        verdict = self._verdict(
            priority, tenant, deadline_at, service_estimate, self._clock(), backlog, tenant_backlog
        )
        return verdict if isinstance(verdict, str) else None

    def force_acquire(self, tenant: Hashable = None) -> Permit:
        """Shadow mode: a permit even beyond the limit, so ``in_use`` stays the true
        concurrency and later requests are judged against it. Never waits, never sheds.

        >>> limiter = Limiter("api", max_concurrency=1)
        >>> first, second = limiter.try_acquire(), limiter.force_acquire()
        >>> limiter.in_use, limiter.try_acquire() is None
        (2, True)
        """
        if tenant is not None:
            tenant = self._tenant_key(tenant)
        counts = self._tenant_in_use
        if counts is not None:
            counts[tenant] = counts.get(tenant, 0) + 1
        self.in_use += 1
        self._admitted += 1
        return Permit(self, tenant, self._clock())

    def _expected_wait(
        self, priority: int, tenant: Hashable, backlog: int = 0, tenant_backlog: int = 0
    ) -> float:
        """Seconds a newcomer would likely wait: the work ahead of it, drained
        ``limit`` at a time (or through the tenant's own cap, when that is full)."""
        counts = self._tenant_in_use
        if counts is not None and counts.get(tenant, 0) >= self._tenant_cap:
            own = self._queue.tenant_counts.get(tenant, 0) + tenant_backlog
            return (own + 1) * self._mean_hold / self._tenant_cap
        ahead = self._queue.ahead(priority, tenant) + backlog
        return (ahead + 1) * self._mean_hold / self.limit

    def _expire(self, waiter: Waiter[Permit | Rejected], reason: Reason) -> None:
        waiter.handle = None
        self._shed(waiter, reason, self._clock())

    def _shed(self, waiter: Waiter[Permit | Rejected], reason: Reason, now: float) -> None:
        self._queue.remove(waiter)  # always queued: leaving the queue cancels the timer
        if waiter.handle is not None:
            waiter.handle.cancel()
        if not waiter.future.done():  # a cancelled waiter needs no verdict
            self._note_wait(now - waiter.enqueued_at)
            waiter.future.set_result(self._reject(reason, waiter.tenant))

    def _reject(self, reason: Reason, tenant: Hashable) -> Rejected:
        self._rejected[reason] += 1
        # Time for the work ahead to drain: requests queued (plus this one), each
        # holding a slot for the mean hold time, ``limit`` at a time. A tenant
        # over its own cap drains through its own cap.
        cap = self.tenant_concurrency
        if reason == "tenant_limit" and cap is not None:
            ahead = self._queue.tenant_counts.get(tenant, 0) + 1
            return Rejected(reason, self.name, ahead * self._mean_hold / cap)
        ahead = self._queue.count + 1
        return Rejected(reason, self.name, ahead * self._mean_hold / self.limit)

    def _discard(self, tenant: Hashable) -> None:
        self.in_use -= 1
        counts = self._tenant_in_use
        if counts is not None:
            _decrement(counts, tenant)
        if self._queue.count:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to eligible waiters, best first."""
        queue = self._queue
        now = self._clock()
        # Adaptive LIFO only until the hold time is known. After that, admission
        # queues only requests predicted to be served within their cap, in FIFO
        # order; serving the newest first would starve exactly those and turn
        # them into slow 503s (the overload benchmark's 350 ms p99).
        lifo_since = now - self.codel_interval if self._mean_hold == 0.0 else -math.inf
        counts = self._tenant_in_use
        cap = self._tenant_cap
        while self.in_use < self.limit and queue.count:
            waiter = queue.pop(lifo_since=lifo_since, busy=counts, cap=cap)
            if waiter is None:
                return
            if waiter.handle is not None:
                waiter.handle.cancel()
            future = waiter.future
            # Cancelled while queued (its acquire() is unwinding), or left behind by
            # an event loop that was closed (a test client's): nobody to grant to.
            if future.done() or future.get_loop().is_closed():
                continue
            self._note_wait(now - waiter.enqueued_at)
            tenant = waiter.tenant
            if counts is not None:
                counts[tenant] = counts.get(tenant, 0) + 1
            self.in_use += 1
            self._admitted += 1
            future.set_result(Permit(self, tenant, now))

    def _note_wait(self, wait: float) -> None:
        waits = self._waits = self._waits + 1
        self._mean_wait += (wait - self._mean_wait) / (waits if waits < _WARMUP else _WARMUP)


class Permit:
    """A slot held in a :class:`Limiter`; give it back with :meth:`release`.

    Release is idempotent: the first call returns the slot, later ones do
    nothing. ``with permit:`` releases on exit, with ``ok=False`` if the block
    raised, so the adaptive limit can tell timeouts from successes.

    >>> limiter = Limiter("db", max_concurrency=1)
    >>> with limiter.try_acquire() as permit:
    ...     limiter.in_use
    1
    >>> permit.released, limiter.in_use
    (True, 0)
    """

    __slots__ = ("_limiter", "acquired_at", "requested_at", "span", "tenant")

    def __init__(self, limiter: Limiter, tenant: Hashable, acquired_at: float) -> None:
        self._limiter: Limiter | None = limiter
        self.tenant = tenant
        self.acquired_at = acquired_at
        self.requested_at = acquired_at
        """When the caller asked (earlier than ``acquired_at`` if it waited); set by callers."""
        self.span: Span | None = None
        """A span the holder attaches (a dependency call's), ended when the slot goes back."""

    @property
    def released(self) -> bool:
        """Whether the slot has been given back."""
        return self._limiter is None

    def release(self, *, ok: bool = True) -> None:
        """Give the slot back (once), recording how long it was held and whether it went well."""
        limiter = self._limiter
        if limiter is None:
            return
        self._limiter = None
        # The limiter's half of a release, inlined rather than a call into the
        # limiter because it runs once per request. A permit is the limiter's own
        # handle: this is the one place outside Limiter that writes its fields,
        # which is why it lives in this file.
        hold = limiter._clock() - self.acquired_at
        holds = limiter._holds = limiter._holds + 1
        limiter._mean_hold += (hold - limiter._mean_hold) / (holds if holds < _WARMUP else _WARMUP)
        in_use = limiter.in_use
        limiter.in_use = in_use - 1
        counts = limiter._tenant_in_use
        if counts is not None:
            _decrement(counts, self.tenant)
        controller = limiter._controller
        if controller is not None:
            limiter.limit = controller.sample(hold, in_use, ok)
        if limiter._queue.count:
            limiter._dispatch()

    def _discard(self) -> None:
        # Granted to a waiter that was cancelled before it could use it: the
        # slot goes back without a hold-time sample (it was never used).
        limiter = self._limiter
        assert limiter is not None  # a fresh permit nobody else has seen
        self._limiter = None
        limiter._discard(self.tenant)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(ok=exc_type is None)


def _bad_priority(priority: object) -> ValueError:
    return ValueError(f"priority must be an int from 0 to {PRIORITY_LEVELS - 1}, got {priority!r}")


def _check_int(field: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Limiter.{field} must be an int >= {low}, got {value!r}")


def _check_seconds(
    field: str, value: object, *, what: str = "a positive, finite number of seconds"
) -> None:
    number = finite(value)
    if number is None or number <= 0:
        raise ValueError(f"Limiter.{field} must be {what}, got {value!r}")


def _decrement(counts: dict[Hashable, int], tenant: Hashable) -> None:
    left = counts[tenant] - 1
    if left:
        counts[tenant] = left
    else:
        del counts[tenant]  # tenants are unbounded: keep only those holding permits
