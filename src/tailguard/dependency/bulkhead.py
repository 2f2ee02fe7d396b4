"""Dependency: a bulkhead per named outbound dependency.

A :class:`Dependency` is a database, a downstream HTTP service or a blocking
library, given a name and a limit of its own. Every call to it, however it is
made (``async with``, a decorator, :meth:`~Dependency.call`, an httpx transport
or :meth:`~Dependency.run_sync`), takes a slot of the same bulkhead first, so
a slow dependency fills its own queue and is shed with
:class:`~tailguard.admission.Rejected` instead of tying up the whole service.
Waits for a slot never outlast the request's deadline.

Bulkhead, deadline, chaos, metrics and spans meet for an outbound call in
one place, the dependency's :class:`~tailguard.dependency.seam.Seam`: every
entry point takes its slot there, meets chaos inside the slot, and gives the
slot back there.

>>> import asyncio
>>> db = Dependency("db", max_concurrency=4)
>>> async def main():
...     async with db:
...         inside = db.limiter.in_use
...     return inside, await db.run_sync(sum, [1, 2, 3])
>>> asyncio.run(main())
(1, 6)
>>> db.close()
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

from prometheus_client import REGISTRY, CollectorRegistry

from tailguard.admission import Limiter
from tailguard.chaos.engine import Chaos
from tailguard.deadlines import DEADLINE_HEADER
from tailguard.dependency import held
from tailguard.dependency.options import check_options
from tailguard.dependency.seam import Seam
from tailguard.dependency.threads import ThreadPool
from tailguard.dependency.transport import bulkhead_transport
from tailguard.enforcement import Enforcement, Mode
from tailguard.tail.hedge import hedge as run_hedge
from tailguard.tail.sites import HedgeSite
from tailguard.tail.sketch import LatencySketch
from tailguard.telemetry.catalog import catalog_for
from tailguard.telemetry.pools import DependencyState

if TYPE_CHECKING:
    import httpx
    import httpx2

__all__ = ["Dependency", "DependencyState"]

P = ParamSpec("P")
T = TypeVar("T")


class Dependency:
    """A bulkhead for one named dependency: at most ``max_concurrency`` calls at once.

    Up to ``max_queue`` more calls wait for a slot, each for at most
    ``queue_timeout`` seconds (``None``: as long as the deadline allows); the
    rest are shed with :class:`~tailguard.admission.Rejected` (``reason``
    ``"queue_full"`` or ``"queue_timeout"``). Under a request deadline a call
    with less than 1 ms left fails at once with :class:`~tailguard.DeadlineExceeded`,
    and a wait for a slot that runs into the deadline raises it too.

    Entry points, all sharing the one bulkhead (:attr:`limiter`):

    * ``async with dependency:`` around a block;
    * ``with dependency:`` around blocking code on a worker thread (a FastAPI
      ``def`` endpoint's), taking the slot on the event loop;
    * ``@dependency`` on an ``async def``, and ``await dependency.call(fn, ...)``;
    * ``httpx.AsyncClient(transport=dependency.transport())``;
    * ``await dependency.run_sync(fn, ...)`` for blocking work, in the
      dependency's own pool of ``max_concurrency`` threads.

    One dependency serves one event loop at a time. ``chaos`` is the
    :class:`~tailguard.chaos.Chaos` engine whose experiments may hit the
    dependency's calls (:meth:`Tailguard.dependency <tailguard.Tailguard.dependency>`
    passes ``guard.chaos``); ``None``: none ever do. Its metrics go to
    ``registry`` (prometheus_client's default; :meth:`Tailguard.dependency
    <tailguard.Tailguard.dependency>` passes the guard's), ``None``: none.
    ``enforce``: ``"on"`` (a full bulkhead queues and sheds), ``"shadow"`` (calls
    run anyway and what would have been shed is counted) or the fraction of
    calls enforced (inside a request, the request's own pick).

    >>> import asyncio
    >>> inventory = Dependency("inventory", max_concurrency=8, max_queue=16)
    >>> @inventory
    ... async def stock(item: str) -> int:
    ...     return inventory.limiter.in_use
    >>> asyncio.run(stock("apple"))
    1
    """

    __slots__ = (
        "_hedge_site",
        "_pool",
        "_seam",
        "chaos",
        "enforcement",
        "latency",
        "limiter",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        chaos: Chaos | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        enforce: Mode | Enforcement = "on",
    ) -> None:
        check_options(name, max_concurrency, max_queue, queue_timeout)
        enforcement = enforce if isinstance(enforce, Enforcement) else Enforcement(enforce)
        if chaos is not None and not isinstance(chaos, Chaos):
            raise TypeError(f"dependency {name!r}: chaos must be a Chaos or None, got {chaos!r}")
        catalog = catalog_for(registry) if registry is not None else None
        self.name: Final = name
        self.limiter: Final = Limiter(
            name, max_concurrency=max_concurrency, max_queue=max_queue, queue_timeout=queue_timeout
        )
        self._pool = ThreadPool(name, max_concurrency, catalog)
        self.chaos: Final = chaos
        """The chaos engine whose experiments may hit this dependency (``guard.chaos``)."""
        self.latency: Final = LatencySketch()
        """Slot-hold times of recent calls (successes, and cancelled calls as lower bounds)."""
        self.enforcement: Final = enforcement
        """The bulkhead's mode: ``"on"`` sheds, shadow counts what it would shed (live)."""
        self._seam = Seam(name, self.limiter, chaos, self.latency, catalog, enforcement)
        self._hedge_site: HedgeSite | None = None

    def __repr__(self) -> str:
        limiter = self.limiter
        return (
            f"<Dependency {self.name!r} in_use={limiter.in_use}/{limiter.limit} "
            f"queued={limiter.queued}/{limiter.max_queue}>"
        )

    @property
    def max_concurrency(self) -> int:
        """Calls that may run at once (also the size of the thread pool)."""
        return self.limiter.max_concurrency

    @property
    def max_queue(self) -> int:
        """Calls that may wait for a slot."""
        return self.limiter.max_queue

    @property
    def queue_timeout(self) -> float | None:
        """Longest wait for a slot in seconds; ``None``: only the deadline caps it."""
        return self.limiter.queue_timeout

    def state(self) -> DependencyState:
        """A snapshot of the bulkhead and the thread pool, for telemetry."""
        pool = self._pool
        return DependencyState(
            self.name,
            self.limiter.state(),
            pool.in_use,
            pool.max_workers,
            pool.mean_wait,
            pool.queued,
        )

    @property
    def seam(self) -> Seam:
        """Where every call takes its slot, meets chaos and is counted (the transport's way in)."""
        return self._seam

    async def hedge(
        self,
        fn: Callable[[], Awaitable[T]],
        /,
        *,
        delay: float | str = "p95",
        max_hedges: int = 1,
        max_extra: float = 0.05,
    ) -> T:
        """:func:`tailguard.hedge` for this dependency: each attempt takes a slot of its own.

        ``delay="p95"`` reads :attr:`latency`, the dependency's own estimate
        fed by every call through any seam; the hedge budget is this
        dependency's too (call site: its name, in metrics and spans).

        >>> import asyncio
        >>> replica = Dependency("replica", max_concurrency=4)
        >>> asyncio.run(replica.hedge(lambda: asyncio.sleep(0, "row"), delay=0.05))
        'row'
        """
        return await run_hedge(
            functools.partial(self.call, fn),
            delay=delay,
            max_hedges=max_hedges,
            max_extra=max_extra,
            site=self._site(),
        )

    def _site(self) -> HedgeSite:
        site = self._hedge_site
        if site is None:
            site = self._hedge_site = HedgeSite(self.name, latency=self.latency, observe=False)
        return site

    # -- entry points -------------------------------------------------------------------

    async def __aenter__(self) -> None:
        held.push(self, await self._seam.enter())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._seam.release(held.pop(self), exc)

    def __enter__(self) -> None:
        """``with dependency:`` in blocking code on a worker thread (a ``def`` endpoint's).

        Blocks the thread until it has a slot; the wait is capped by the
        request's deadline (the thread sees it through its copied context) and
        by ``queue_timeout``, and ends in :class:`~tailguard.admission.Rejected`
        or :class:`~tailguard.DeadlineExceeded` as ``async with`` does. Chaos
        faults are applied in the thread. Works on AnyIO worker threads: FastAPI
        and Starlette run ``def`` endpoints there, as do ``run_in_threadpool``
        and ``anyio.to_thread.run_sync``. On the event loop use ``async with``.

        >>> import anyio
        >>> db = Dependency("db", max_concurrency=2)
        >>> def blocking() -> int:
        ...     with db:
        ...         return db.limiter.in_use
        >>> anyio.run(anyio.to_thread.run_sync, blocking)
        1
        """
        permit, loop = self._seam.enter_from_thread()
        held.push(self, (permit, loop))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, loop = held.pop(self)
        self._seam.release_from_thread(loop, permit, exc)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` inside the bulkhead.

        >>> import asyncio
        >>> db = Dependency("db", max_concurrency=1)
        >>> asyncio.run(db.call(asyncio.sleep, 0, "done"))
        'done'
        """
        seam = self._seam
        permit = await seam.enter()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            seam.release(permit, exc)
            raise
        seam.release(permit, None)
        return result

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so that every call runs inside the bulkhead."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@{self.name} decorates async functions, not {fn!r}; "
                "run blocking functions with run_sync()"
            )

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def run_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking ``fn(*args, **kwargs)`` on one of the dependency's own threads.

        The thread runs in a copy of the caller's context, so
        :func:`tailguard.remaining` works there. The caller stops waiting when
        it is cancelled (by the request's deadline, say), but a thread cannot
        be stopped: the job runs on, and its slot is given back only when it
        returns, so the pool is never oversubscribed.

        >>> import asyncio, threading
        >>> db = Dependency("db", max_concurrency=2)
        >>> asyncio.run(db.run_sync(lambda: threading.current_thread().name))
        'tailguard-db-0'
        >>> db.close()
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"run_sync() runs blocking functions, not {fn!r}; await call() instead")
        seam = self._seam
        permit = await seam.acquire()
        context = contextvars.copy_context()
        job: Callable[[], T] = functools.partial(context.run, fn, *args, **kwargs)
        done: Callable[[BaseException | None], None] = functools.partial(seam.release, permit)
        injection = seam.plan(permit)
        if injection is not None:
            # In the worker thread, as a slow blocking call's time is spent.
            job, done = injection.wrap_sync(job, done)
        return await self._pool.run(job, done)

    def close(self) -> None:
        """Shut the thread pool down without waiting; jobs still running finish on their own.

        A later :meth:`run_sync` starts a fresh pool.
        """
        self._pool.shutdown()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the jobs still running (their slots are back after)."""
        self.close()
        await self._pool.drain()

    # -- httpx ----------------------------------------------------------------------------

    @overload
    def transport(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        header: str = ...,
        propagate_to: Iterable[str] | None = ...,
    ) -> httpx.AsyncBaseTransport: ...
    @overload
    def transport(
        self,
        inner: httpx2.AsyncBaseTransport,
        *,
        header: str = ...,
        propagate_to: Iterable[str] | None = ...,
    ) -> httpx2.AsyncBaseTransport: ...
    @overload
    def transport(
        self,
        inner: None = None,
        *,
        header: str = ...,
        propagate_to: Iterable[str] | None = ...,
    ) -> Any: ...

    def transport(
        self,
        inner: Any = None,
        *,
        header: str = DEADLINE_HEADER,
        propagate_to: Iterable[str] | None = None,
    ) -> Any:
        """An async httpx (or httpx2) transport that calls this dependency through its bulkhead.

        Each request takes a slot (waiting as :class:`Dependency` describes),
        then goes through :class:`tailguard.integrations.httpx.DeadlineTransport`
        (the remaining budget in ``header``, timeouts clipped to it) to
        ``inner``. The slot is held until the response is closed: for a
        streamed response, until it is read to the end or closed. ``inner``'s
        library is the one used; ``inner=None`` means the library's default
        transport, httpx's if it is installed, else httpx2's. ``propagate_to``:
        the hosts that get ``header`` (names and ``*.domain`` patterns;
        ``None``: every host), so a third-party API is not told your budgets.

        >>> import asyncio, httpx
        >>> api = Dependency("api", max_concurrency=4)
        >>> mock = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
        >>> async def main():
        ...     async with httpx.AsyncClient(transport=api.transport(mock)) as client:
        ...         return (await client.get("http://api/")).text, api.limiter.in_use
        >>> asyncio.run(main())
        ('ok', 0)
        """
        return bulkhead_transport(self.name, self._seam, inner, header, propagate_to)
