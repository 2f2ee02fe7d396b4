"""Dependency: a bulkhead per named outbound dependency.

A :class:`Dependency` is a database, a downstream HTTP service or a blocking
library, given a name and a limit of its own. Every call to it, however it is
made (``async with``, a decorator, :meth:`~Dependency.call`, an httpx transport
or :meth:`~Dependency.run_sync`), takes a slot of the same bulkhead first, so
a slow dependency fills its own queue and is shed with
:class:`~tailguard.admission.Rejected` instead of tying up the whole service.
Waits for a slot never outlast the request's deadline.

This is the one seam where bulkhead, deadline, chaos, metrics and spans meet
for an outbound call: every entry point goes through ``Dependency._enter`` and
``Dependency._exit``.

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
import importlib
import inspect
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextvars import ContextVar
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, ParamSpec, TypeVar, overload

from tailguard._threads import ThreadPool
from tailguard.admission import Limiter, LimiterState, Permit, Rejected
from tailguard.deadlines import DeadlineExceeded, current_deadline
from tailguard.integrations._transport import DEFAULT_HEADER, MIN_BUDGET

if TYPE_CHECKING:
    import httpx
    import httpx2

__all__ = ["Dependency", "DependencyState"]

P = ParamSpec("P")
T = TypeVar("T")


class DependencyState(NamedTuple):
    """A snapshot of a dependency for telemetry.

    >>> state = Dependency("db", max_concurrency=2).state()
    >>> state.limiter.in_use, state.threads_in_use, state.threads_max
    (0, 0, 2)
    """

    name: str
    limiter: LimiterState
    """The bulkhead: slots in use, queued, rejections by reason, mean waits."""
    threads_in_use: int
    """Threads of the dependency's pool running a job now (abandoned ones included)."""
    threads_max: int
    thread_queue_wait: float
    """Recent mean seconds a job waited for a thread of the pool."""


class _Held(NamedTuple):
    """One ``async with dependency:`` block in progress, on a per-context stack."""

    dependency: Dependency
    permit: Permit
    below: _Held | None


_held: Final[ContextVar[_Held | None]] = ContextVar("tailguard.dependency", default=None)


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
    * ``@dependency`` on an ``async def``, and ``await dependency.call(fn, ...)``;
    * ``httpx.AsyncClient(transport=dependency.transport())``;
    * ``await dependency.run_sync(fn, ...)`` for blocking work, in the
      dependency's own pool of ``max_concurrency`` threads.

    One dependency serves one event loop at a time.

    >>> import asyncio
    >>> inventory = Dependency("inventory", max_concurrency=8, max_queue=16)
    >>> @inventory
    ... async def stock(item: str) -> int:
    ...     return inventory.limiter.in_use
    >>> asyncio.run(stock("apple"))
    1
    """

    __slots__ = ("_pool", "limiter", "name")

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int,
        max_queue: int = 0,
        queue_timeout: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"dependency name must be a non-empty str, got {name!r}")
        _check_int(name, "max_concurrency", max_concurrency, 1)
        _check_int(name, "max_queue", max_queue, 0)
        if queue_timeout is not None and (
            isinstance(queue_timeout, bool)
            or not isinstance(queue_timeout, int | float)
            or not math.isfinite(queue_timeout)
            or queue_timeout <= 0
        ):
            raise ValueError(
                f"dependency {name!r}: queue_timeout must be None or a positive, finite"
                f" number of seconds, got {queue_timeout!r}"
            )
        self.name: Final = name
        self.limiter: Final = Limiter(
            name, max_concurrency=max_concurrency, max_queue=max_queue, queue_timeout=queue_timeout
        )
        self._pool = ThreadPool(name, max_concurrency)

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
            self.name, self.limiter.state(), pool.in_use, pool.max_workers, pool.mean_wait
        )

    # -- the seam -----------------------------------------------------------------------

    async def _enter(self) -> Permit:
        """Take a slot for one call; every entry point starts here.

        Chaos, metrics and spans hook in here and in :meth:`_exit`.
        """
        deadline = current_deadline()
        if deadline is None:
            return await self.limiter.acquire()
        if deadline.remaining() < MIN_BUDGET:
            raise DeadlineExceeded(deadline)
        try:
            return await self.limiter.acquire(deadline_at=deadline.at)
        except Rejected as exc:
            if exc.reason != "deadline":
                raise
            # The wait was capped at the deadline and ran into it: the request's
            # own scope is about to fire, so report what it would.
            raise DeadlineExceeded(deadline) from exc

    def _exit(self, permit: Permit, error: BaseException | None) -> None:
        """Give a call's slot back; ``error`` is what the call raised, ``None`` if it went well."""
        permit.release(ok=error is None)

    # -- entry points -------------------------------------------------------------------

    async def __aenter__(self) -> None:
        permit = await self._enter()
        # Per call, per context: concurrent tasks each have their own stack.
        _held.set(_Held(self, permit, _held.get()))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(self._pop(), exc)

    def _pop(self) -> Permit:
        node = _held.get()
        above: list[_Held] = []
        while node is not None and node.dependency is not self:
            above.append(node)
            node = node.below
        if node is None:
            raise RuntimeError(f"{self!r}: __aexit__ without __aenter__ in this context")
        # Blocks of other dependencies exited out of order (an async generator
        # interleaved with its caller) keep their slots.
        below = node.below
        for other in reversed(above):
            below = _Held(other.dependency, other.permit, below)
        _held.set(below)
        return node.permit

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` inside the bulkhead.

        >>> import asyncio
        >>> db = Dependency("db", max_concurrency=1)
        >>> asyncio.run(db.call(asyncio.sleep, 0, "done"))
        'done'
        """
        permit = await self._enter()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._exit(permit, exc)
            raise
        self._exit(permit, None)
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
        permit = await self._enter()
        context = contextvars.copy_context()
        job = functools.partial(context.run, fn, *args, **kwargs)
        return await self._pool.run(job, functools.partial(self._exit, permit))

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
        self, inner: httpx.AsyncBaseTransport, *, header: str = ...
    ) -> httpx.AsyncBaseTransport: ...
    @overload
    def transport(
        self, inner: httpx2.AsyncBaseTransport, *, header: str = ...
    ) -> httpx2.AsyncBaseTransport: ...
    @overload
    def transport(self, inner: None = None, *, header: str = ...) -> Any: ...

    def transport(self, inner: Any = None, *, header: str = DEFAULT_HEADER) -> Any:
        """An async httpx (or httpx2) transport that calls this dependency through its bulkhead.

        Each request takes a slot (waiting as :class:`Dependency` describes),
        then goes through :class:`tailguard.integrations.httpx.DeadlineTransport`
        (the remaining budget in ``header``, timeouts clipped to it) to
        ``inner``. The slot is held until the response is closed: for a
        streamed response, until it is read to the end or closed. ``inner``'s
        library is the one used; ``inner=None`` means the library's default
        transport, httpx's if it is installed, else httpx2's.

        >>> import asyncio, httpx
        >>> api = Dependency("api", max_concurrency=4)
        >>> mock = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
        >>> async def main():
        ...     async with httpx.AsyncClient(transport=api.transport(mock)) as client:
        ...         return (await client.get("http://api/")).text, api.limiter.in_use
        >>> asyncio.run(main())
        ('ok', 0)
        """
        integration = _integration_for(inner)
        return _transport_class(integration)(
            self, integration.DeadlineTransport(inner, header=header)
        )


class _BulkheadTransport:
    """Takes a slot of ``dependency`` per request and holds it until the response closes."""

    _stream: ClassVar[type[_SlotStream]]
    _async_stream: ClassVar[type[Any]]

    def __init__(self, dependency: Dependency, inner: Any) -> None:
        self.dependency = dependency
        self._inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        dependency = self.dependency
        permit = await dependency._enter()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            dependency._exit(permit, exc)
            raise
        # A body read already (a mock's), or one an async client cannot read (it
        # will say so), is done with the dependency: only open streams hold the slot.
        if response.is_closed or not isinstance(response.stream, self._async_stream):
            dependency._exit(permit, None)
        else:
            response.stream = self._stream(response.stream, dependency, permit)
        return response

    def handle_request(self, *request: Any) -> Any:
        raise TypeError(
            f"the transport of dependency {self.dependency.name!r} is async-only: use an "
            "AsyncClient, or a sync client inside dependency.run_sync()"
        )

    __enter__ = handle_request  # a sync client opens its transport first

    async def aclose(self) -> None:
        await self._inner.aclose()


class _SlotStream:
    """A response body that gives the slot back when it is closed, or fails."""

    def __init__(self, stream: Any, dependency: Dependency, permit: Permit) -> None:
        self._stream = stream
        self._dependency = dependency
        self._permit: Permit | None = permit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except GeneratorExit:  # the reader stopped early; closing the response releases
            raise
        except BaseException as exc:
            self._release(exc)
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release(None)

    def _release(self, error: BaseException | None) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            self._dependency._exit(permit, error)


def _integration_for(inner: object) -> ModuleType:
    """``tailguard.integrations.httpx`` or ``.httpx2``, whichever ``inner`` belongs to."""
    if inner is None:
        try:
            return importlib.import_module("tailguard.integrations.httpx")
        except ImportError:
            return importlib.import_module("tailguard.integrations.httpx2")
    for library in ("httpx", "httpx2"):
        module = sys.modules.get(library)
        if module is not None and isinstance(inner, module.AsyncBaseTransport):
            return importlib.import_module(f"tailguard.integrations.{library}")
    raise TypeError(
        "inner must be an httpx or httpx2 AsyncBaseTransport (or None),"
        f" not {type(inner).__module__}.{type(inner).__qualname__}"
    )


@functools.cache
def _transport_class(integration: ModuleType) -> type[_BulkheadTransport]:
    # Subclass the library's own base classes: clients and Response.aread() check them.
    library = integration.DeadlineTransport._library
    stream = type("DependencyStream", (_SlotStream, library.async_stream), {"__module__": __name__})
    attrs = {"__module__": __name__, "_stream": stream, "_async_stream": library.async_stream}
    return type("DependencyTransport", (_BulkheadTransport, library.async_transport), attrs)


def _check_int(name: str, field: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"dependency {name!r}: {field} must be an int >= {low}, got {value!r}")
