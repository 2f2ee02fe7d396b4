"""Deciding which faults hit one call, labelling them, and carrying them out at each seam.

The engine makes one :class:`Injector` and hands it what injecting needs:
its random source, its clock, its ``expire``, an :class:`InjectionSlots`
(the cap on concurrent injections) and the catalog it records into. So this
module never looks back at the engine.

:meth:`Injector.decide` rolls the faults that apply to a call (see
``docs/chaos.md`` for the composition rule) and returns an
:class:`Injection`, which each seam carries out its own way:
:meth:`~Injection.apply` for ``async with``, ``@dep`` and ``dep.call``;
:meth:`~Injection.apply_http` at the httpx transport;
:meth:`~Injection.wrap_sync` inside ``run_sync``'s worker thread; and
:meth:`~Injection.apply_inbound` for route faults in the middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import random
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.types import Send

from tailguard._context import RequestView
from tailguard._numbers import finite
from tailguard.chaos._log import log_event
from tailguard.chaos._run import Run
from tailguard.chaos.faults import Fault, Raise, Respond
from tailguard.telemetry.catalog import Catalog

if TYPE_CHECKING:
    from tailguard.integrations._transport import Library

__all__ = ["Entry", "Injection", "InjectionSlots", "Injector"]

T = TypeVar("T")

Entry = tuple[Run, Fault]
"""A fault of a running experiment that targets the call's dependency or route."""

CHAOS_HEADER = "x-tailguard-chaos"
"""Set on every synthesized response to the name of the experiment that made it."""

TIMER_SLACK = 0.0005
"""How much earlier than drawn an injected delay is scheduled on the event loop.

asyncio's selector rounds every timeout up to a whole millisecond, so a timer
fires on average half a millisecond late; scheduling that much early centres
the error on zero (benchmarks/chaos.py measures it). Worker threads wait on a
``threading.Event``, which has no such rounding.
"""


class InjectionSlots:
    """The cap on calls under injection at once: :meth:`take` a place, :meth:`release` it.

    Thread-safe: worker threads (``run_sync``) release their places too.

    >>> slots = InjectionSlots(1)
    >>> slots.take(), slots.take()
    (True, False)
    >>> slots.release()
    >>> slots.in_flight, slots.skipped
    (0, 1)
    """

    __slots__ = ("_lock", "in_flight", "limit", "skipped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """At most this many calls under injection at once (``max_injections``, or this
        worker's share of it in a fleet)."""
        self.in_flight = 0
        """Calls under injection now."""
        self.skipped = 0
        """Calls that faults hit but that were left alone because every place was taken."""
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take a place; False (and counted as skipped) when all ``limit`` are taken."""
        with self._lock:
            if self.in_flight >= self.limit:
                self.skipped += 1
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        """Give a place back (once per successful :meth:`take`)."""
        with self._lock:
            self.in_flight -= 1

    def resize(self, limit: int) -> None:
        """Set the cap to ``limit`` (``>= 0``), from any thread.

        Calls already under injection are never cut short: below them, the
        cap refuses new ones until enough have given their places back.

        >>> slots = InjectionSlots(2)
        >>> slots.take(), slots.take()
        (True, True)
        >>> slots.resize(1)
        >>> slots.release()
        >>> slots.take()
        False
        >>> slots.release()
        >>> slots.take()
        True
        """
        with self._lock:
            self.limit = limit


class Injector:
    """Decides which faults hit one call, and gives each :class:`Injection` what it needs.

    The engine makes one and hands it: ``rng`` for the draws, ``clock`` (the
    engine's monotonic clock, for experiments' ends), ``expire`` (stops the
    experiments whose TTL has run out), ``slots`` (the cap on concurrent
    injections) and ``catalog`` (where injections are counted; ``None``:
    nowhere, until the engine is bound to one).

    >>> import random, time
    >>> injector = Injector(random.Random(7), time.monotonic, lambda: None, InjectionSlots(1))
    >>> injector.decide([], "db", None, respond=False) is None
    True
    """

    __slots__ = ("catalog", "clock", "expire", "rng", "slots")

    def __init__(
        self,
        rng: random.Random,
        clock: Callable[[], float],
        expire: Callable[[], None],
        slots: InjectionSlots,
        catalog: Catalog | None = None,
    ) -> None:
        self.rng = rng
        self.clock = clock
        self.expire = expire
        self.slots = slots
        self.catalog = catalog

    def decide(
        self,
        entries: Sequence[Entry],
        target: str | None,
        request: RequestView | None,
        *,
        respond: bool,
        span: Span | None = None,
    ) -> Injection | None:
        """Roll ``entries`` for one call on ``target``; ``None`` when nothing hits.

        Latencies are rolled independently and add up; of the terminal faults,
        the first to hit (in experiment start order, then fault order) applies
        and the rest are not rolled. ``respond``: whether the seam can answer.
        ``target`` labels the injections (``None``: each fault's own target,
        for route faults); ``span`` is the call's own span, marked when faults hit.
        """
        rng = self.rng
        delay = 0.0
        terminal: Entry | None = None
        hits: list[tuple[Run, Fault, float | None]] = []
        verdicts: dict[Run, bool] = {}
        for run, fault in entries:
            if run.stopped:
                continue
            applies = verdicts.get(run)
            if applies is None:
                try:
                    applies = verdicts[run] = run.applies(request)
                except Exception as exc:  # the app's tenant function, say
                    self.failed(run, fault, target, exc)
                    return None
            if not applies:
                continue
            if run.watcher is not None and request is not None and not run.experiment.routes:
                run.reach(request)  # the safeguard judges the routes the faults can reach
            if fault.terminal:
                if terminal is not None or (not respond and isinstance(fault, Respond)):
                    continue
                if rng.random() < fault.rate:
                    terminal = (run, fault)
                    hits.append((run, fault, None))
            elif rng.random() < fault.rate:
                drawn = self._draw(run, fault, target)
                if drawn is None or not math.isfinite(delay + drawn):
                    if drawn is not None:  # finite draws that add up to more than a float holds
                        self.failed(run, fault, target, OverflowError("the delays add up to inf"))
                    # The call goes on as if no experiment had hit it: nothing counted, no place.
                    return None
                delay += drawn
                hits.append((run, fault, drawn))
        if not hits:
            return None
        catalog = self.catalog
        if not self.slots.take():
            for run, fault, _ in hits:
                run.skipped += 1
                if catalog is not None:
                    catalog.chaos_skipped.labels(run.name, fault.kind).inc()
            return None
        current = trace.get_current_span()
        recording = current.is_recording()
        for run, fault, drawn in hits:
            run.injections += 1
            label = fault.target if target is None else target
            if catalog is not None:
                catalog.chaos_injections.labels(run.name, label, fault.kind).inc()
            if recording:
                attributes: dict[str, str | float] = {
                    "tailguard.chaos.experiment": run.name,
                    "tailguard.chaos.fault": fault.kind,
                    "tailguard.chaos.target": label,
                }
                if drawn is not None:
                    attributes["tailguard.chaos.delay"] = drawn
                current.add_event("tailguard.chaos.injection", attributes)
        if recording:
            current.set_attribute("tailguard.chaos.injected", True)
        runs = tuple(dict.fromkeys(run for run, _, _ in hits))
        if span is not None:
            _mark(span, runs, hits, delay)
        return Injection(self, delay, terminal, runs, target)

    def _draw(self, run: Run, fault: Fault, target: str | None) -> float | None:
        """One delay from ``fault``'s distribution; ``None`` (counted as an error) if it fails.

        A user's own distribution may raise, or return something that is not
        a number of seconds (negative, NaN, infinite, not a number at all).
        """
        try:
            drawn = fault.distribution.sample(self.rng)  # type: ignore[attr-defined]
        except Exception as exc:
            self.failed(run, fault, target, exc)
            return None
        number = finite(drawn)
        if number is None or number < 0:
            error = ValueError(f"the delay drawn is not a number of seconds >= 0: {drawn!r}")
            self.failed(run, fault, target, error)
            return None
        return number

    def failed(self, run: Run, fault: Fault, target: str | None, error: Exception) -> None:
        """Count a fault that could not be planned or applied: metric, status and a log line.

        The log says it once per experiment and fault (the metric and the
        status count every one), so a fault that fails on every call cannot
        flood the log.
        """
        label = fault.target if target is None else target
        run.errors += 1
        run.last_error = f"{fault.kind} {label}: {type(error).__name__}: {error}"
        catalog = self.catalog
        if catalog is not None:
            catalog.chaos_injection_errors.labels(run.name, label, fault.kind).inc()
        if run.note_failing(fault):
            log_event(
                "injection_error",
                actor="engine",
                experiment=run.name,
                reason=run.last_error,
                level=logging.WARNING,
                fault=fault.kind,
                target=label,
            )


def _mark(
    span: Span, runs: tuple[Run, ...], hits: list[tuple[Run, Fault, float | None]], delay: float
) -> None:
    """Mark a dependency call's own span with the faults that hit it (names comma-separated)."""
    attributes: dict[str, str | bool | float] = {
        "tailguard.chaos.injected": True,
        "tailguard.chaos.experiment": ",".join(run.name for run in runs),
        "tailguard.chaos.fault": ",".join(dict.fromkeys(fault.kind for _, fault, _ in hits)),
    }
    if delay > 0:
        attributes["tailguard.chaos.delay_ms"] = delay * 1000.0
    span.set_attributes(attributes)


def wake_future(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Resolve ``future`` from any thread (a stop, a halt); a closed loop is left alone."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(resolve_future, future)


AFTER_END = 0.0001
"""Seconds past an experiment's end that a wait it capped lasts (timers may run a hair early)."""


def resolve_future(future: asyncio.Future[None]) -> None:
    """End a wait: the timer and the experiment's end may both call it, in either order."""
    if not future.done():
        future.set_result(None)


def _reset_error(experiment: str) -> ConnectionResetError:
    return ConnectionResetError(
        errno.ECONNRESET,
        f"Connection reset by peer (injected by tailguard chaos experiment {experiment})",
    )


class Injection:
    """The faults that hit one call: a total ``delay``, then at most one ``terminal`` fault.

    When any experiment it came from ends (stop, halt, TTL, safeguard), a
    delay or hang in progress ends at once and the call goes on to the real
    dependency, as if the experiment had never hit it.
    """

    __slots__ = ("_finished", "_injector", "delay", "runs", "target", "terminal")

    def __init__(
        self,
        injector: Injector,
        delay: float,
        terminal: Entry | None,
        runs: tuple[Run, ...],
        target: str | None = None,
    ) -> None:
        self._injector = injector
        self.delay = delay
        self.terminal = terminal
        self.runs = runs
        self.target = target
        """The dependency the call goes to (``None``: a route fault, labelled by its own key)."""
        self._finished = False

    def finish(self) -> None:
        """The injection is over: give back its place under ``max_injections`` (once)."""
        if not self._finished:
            self._finished = True
            self._injector.slots.release()

    def _error(self, run: Run, fault: Fault) -> BaseException | None:
        """The exception a raise or reset fault raises; ``None`` if making it failed.

        A ``Raise`` factory is the user's code: if it raises, or returns
        something that is not an exception, that is counted as an injection
        error and the call goes on without the fault.
        """
        try:
            if isinstance(fault, Raise):
                return fault.exception(run.name)
            return _reset_error(run.name)
        except Exception as exc:
            self._injector.failed(run, fault, self.target, exc)
            return None

    def _ended(self) -> bool:
        self._injector.expire()
        return any(run.stopped for run in self.runs)

    def _limit(self, seconds: float) -> tuple[float, bool]:
        """``seconds``, capped at the earliest end of the experiments involved; and if capped.

        A capped wait ends a moment after that end (``AFTER_END``), never before
        it, so the engine sees the experiment over when the call goes on.
        """
        ends_in = min(run.expires_at for run in self.runs) - self._injector.clock()
        if ends_in <= seconds:
            return max(0.0, ends_in) + AFTER_END, True
        return seconds, False

    # -- waiting ----------------------------------------------------------------------

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` (``inf``: until cancelled); False if an experiment ended first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        wake = functools.partial(wake_future, loop, future)
        runs = self.runs
        for run in runs:
            run.add_waker(wake)
        handle = None
        try:
            if not any(run.stopped for run in runs):
                limit, capped = self._limit(seconds)
                early = 0.0 if capped else min(TIMER_SLACK, limit / 2)
                handle = loop.call_later(limit - early, resolve_future, future)
                await future
        finally:
            if handle is not None:
                handle.cancel()
            for run in runs:
                run.discard_waker(wake)
        return not self._ended()

    def _block(self, seconds: float) -> bool:
        """:meth:`_wait` in a worker thread (nothing can cancel it; the experiment ends it)."""
        event = threading.Event()
        runs = self.runs
        for run in runs:
            run.add_waker(event.set)
        try:
            if not any(run.stopped for run in runs):
                event.wait(self._limit(seconds)[0])
        finally:
            for run in runs:
                run.discard_waker(event.set)
        return not self._ended()

    # -- the seams --------------------------------------------------------------------

    async def apply(self) -> None:
        """``async with``, ``@dep`` and ``dep.call``: delay, then hang, raise or reset."""
        try:
            if self.delay > 0 and not await self._wait(self.delay):
                return
            if self.terminal is not None:
                run, fault = self.terminal
                if fault.kind == "hang":
                    await self._wait(math.inf)
                else:
                    error = self._error(run, fault)
                    if error is not None:
                        raise error
        finally:
            self.finish()

    async def apply_http(self, request: Any, library: Library) -> Any:
        """The httpx transport: a synthesized response, or ``None`` to send the request.

        The request's own read timeout applies to injected waits as it would
        to a slow or silent server: a delay or hang longer than it ends in the
        library's ``ReadTimeout``.
        """
        timeout = (request.extensions.get("timeout") or {}).get("read")
        try:
            if self.delay > 0:
                if timeout is not None and self.delay > timeout:
                    if await self._wait(timeout):
                        raise self._read_timeout(request, library)
                    return None
                if not await self._wait(self.delay):
                    return None
            if self.terminal is None:
                return None
            run, fault = self.terminal
            if isinstance(fault, Respond):
                return self._response(run, fault, request, library)
            if fault.kind == "hang":
                if timeout is None:
                    await self._wait(math.inf)
                elif await self._wait(timeout):
                    raise self._read_timeout(request, library)
                return None
            if isinstance(fault, Raise):
                error = self._error(run, fault)
                if error is None:
                    return None
                raise error
            message = (
                f"Connection reset by peer (injected by tailguard chaos experiment {run.name})"
            )
            raise library.module.ReadError(message, request=request)
        finally:
            self.finish()

    def _response(self, run: Run, fault: Respond, request: Any, library: Library) -> Any:
        """The synthesized response; ``None`` (counted as an error) if the library refuses it."""
        try:
            return library.module.Response(
                fault.status,
                headers=_headers(fault, run.name),
                content=fault.body.encode(),
                request=request,
                extensions={"tailguard_chaos": run.name},
            )
        except Exception as exc:
            self._injector.failed(run, fault, self.target, exc)
            return None

    def _read_timeout(self, request: Any, library: Library) -> Exception:
        names = ", ".join(run.name for run in self.runs)
        error: Exception = library.module.ReadTimeout(
            f"timed out (injected by tailguard chaos experiment {names})", request=request
        )
        return error

    async def apply_inbound(self, send: Send) -> bool:
        """A route fault, before the app: True when the request was answered here."""
        try:
            if self.delay > 0 and not await self._wait(self.delay):
                return False
            if self.terminal is None:
                return False
            run, fault = self.terminal
            if isinstance(fault, Respond):
                headers = [(k.lower().encode(), v.encode()) for k, v in _headers(fault, run.name)]
                await send(
                    {"type": "http.response.start", "status": fault.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": fault.body.encode()})
                return True
            if isinstance(fault, Raise):
                error = self._error(run, fault)
                if error is None:
                    return False
                raise error
            await self._wait(math.inf)  # hang (reset has no inbound form)
            return False
        finally:
            self.finish()

    def wrap_sync(
        self, job: Callable[[], T], done: Callable[[BaseException | None], None]
    ) -> tuple[Callable[[], T], Callable[[BaseException | None], None]]:
        """``run_sync``: the delay and the fault happen in the worker thread, as a slow SDK's would.

        The thread is held (and the slot with it) for the delay even if the
        caller is cancelled, just as with a real blocking call; the
        experiment's end releases it.
        """

        def injected() -> T:
            if self.delay > 0 and not self._block(self.delay):
                return job()
            if self.terminal is not None:
                run, fault = self.terminal
                if fault.kind == "hang":
                    self._block(math.inf)
                else:
                    error = self._error(run, fault)
                    if error is not None:
                        raise error
            return job()

        def finished(error: BaseException | None) -> None:
            self.finish()
            done(error)

        return injected, finished


def _headers(fault: Respond, experiment: str) -> list[tuple[str, str]]:
    headers = [*fault.headers, (CHAOS_HEADER, experiment)]
    if fault.body and not any(name.lower() == "content-type" for name, _ in fault.headers):
        headers.append(("content-type", "text/plain; charset=utf-8"))
    return headers
