"""Deadline propagation for httpx-style clients: one implementation for httpx and httpx2.

``httpx`` and ``httpx2`` share an API but not their classes, so the logic lives
here, parameterised by a :class:`Library` (the package's timeout exception,
transport and stream base classes, default transports), and each integration
module only declares a ``DeadlineTransport`` that mixes :class:`DeadlineTransportBase`
into that package's own transport base classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

from tailguard.deadlines import (
    DEADLINE_HEADER,
    MIN_BUDGET,
    Deadline,
    DeadlineExceeded,
    current_deadline,
)

__all__ = ["DEFAULT_HEADER", "DeadlineTransportBase", "HostAllowList", "Library"]

DEFAULT_HEADER: Final = DEADLINE_HEADER
"""The header that carries the remaining budget downstream, in integer milliseconds."""

_TIMEOUT_KEYS: Final = ("connect", "read", "write", "pool")
_MAX_MILLIS_DIGITS: Final = 12
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _URL(Protocol):
    @property
    def host(self) -> str: ...


class _Request(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...

    @property
    def url(self) -> _URL: ...

    extensions: dict[str, Any]


class _Response(Protocol):
    stream: Any


_RequestT = TypeVar("_RequestT", bound=_Request)
_ResponseT = TypeVar("_ResponseT", bound=_Response)
_RequestT_contra = TypeVar("_RequestT_contra", contravariant=True)
_ResponseT_co = TypeVar("_ResponseT_co", covariant=True)


class _AsyncInner(Protocol[_RequestT_contra, _ResponseT_co]):
    async def handle_async_request(self, request: _RequestT_contra) -> _ResponseT_co: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...


class _SyncInner(Protocol[_RequestT_contra, _ResponseT_co]):
    def handle_request(self, request: _RequestT_contra) -> _ResponseT_co: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...


def _is_millis(value: str) -> bool:
    # Bounded length: int() of a huge digit string is slow, then refused.
    return value.isascii() and value.isdigit() and len(value) <= _MAX_MILLIS_DIGITS


@contextmanager
def _as_deadline_exceeded(deadline: Deadline, timeout: type[Exception]) -> Iterator[None]:
    """Turn the library's timeout into :class:`DeadlineExceeded` once the budget is spent.

    A timeout that fires while budget is left was the caller's own (shorter)
    timeout, so it stays the library's exception.
    """
    try:
        yield
    except timeout as exc:
        if deadline.remaining() > 0:
            raise
        raise DeadlineExceeded(deadline) from exc


class _SyncStream:
    """A response body whose read timeouts past the deadline become ``DeadlineExceeded``."""

    _timeout: ClassVar[type[Exception]]

    def __init__(self, stream: Any, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        with _as_deadline_exceeded(self._deadline, self._timeout):
            yield from self._stream

    def close(self) -> None:
        self._stream.close()


class _AsyncStream:
    """The async twin of :class:`_SyncStream`."""

    _timeout: ClassVar[type[Exception]]

    def __init__(self, stream: Any, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_deadline_exceeded(self._deadline, self._timeout):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass(frozen=True, slots=True)
class HostAllowList:
    """The hosts a transport sends the budget header to: exact names and ``*.suffix`` patterns.

    Names compare case-insensitively; ``*.svc.cluster.local`` matches every
    host under that domain (not the domain itself: list it too if needed).

    >>> hosts = HostAllowList.of(["inventory", "*.svc.cluster.local"])
    >>> hosts.allows("Inventory"), hosts.allows("db.ns.svc.cluster.local")
    (True, True)
    >>> hosts.allows("api.openai.com")
    False
    >>> HostAllowList.of(None) is None
    True
    >>> HostAllowList.of("inventory")
    Traceback (most recent call last):
    ...
    TypeError: propagate_to must be a list of host names, got 'inventory'
    """

    names: frozenset[str]
    suffixes: tuple[str, ...]

    @classmethod
    def of(cls, hosts: Iterable[str] | None) -> HostAllowList | None:
        """The allow-list of ``hosts`` (``None``: every host gets the header)."""
        if hosts is None:
            return None
        if isinstance(hosts, str) or not isinstance(hosts, Iterable):
            raise TypeError(f"propagate_to must be a list of host names, got {hosts!r}")
        names: set[str] = set()
        suffixes: list[str] = []
        for host in hosts:
            if not isinstance(host, str) or not host.strip("*.") or " " in host:
                raise ValueError(f"propagate_to: {host!r} is not a host name or *.domain pattern")
            host = host.lower()
            if host.startswith("*."):
                suffixes.append(host[1:])
            elif "*" in host:
                raise ValueError(f"propagate_to: {host!r}: a wildcard may only start a pattern")
            else:
                names.add(host)
        return cls(frozenset(names), tuple(suffixes))

    def allows(self, host: str) -> bool:
        """Whether ``host`` gets the budget header."""
        host = host.lower()
        return host in self.names or host.endswith(self.suffixes)


@dataclass(frozen=True, slots=True)
class Library:
    """What the shared transport needs from an httpx-compatible package.

    >>> import httpx
    >>> Library.of(httpx).timeout_exception is httpx.TimeoutException
    True
    """

    module: ModuleType
    name: str
    timeout_exception: type[Exception]
    async_transport: type[Any]
    sync_transport: type[Any]
    async_stream: type[Any]
    sync_stream: type[Any]
    wrap_async_stream: Callable[[Any, Deadline], Any]
    wrap_sync_stream: Callable[[Any, Deadline], Any]

    @classmethod
    def of(cls, module: ModuleType) -> Library:
        """Describe ``module`` (``httpx`` or ``httpx2``)."""
        name = module.__name__
        timeout: type[Exception] = module.TimeoutException
        # Response.aread()/read() check the stream against the package's own byte
        # stream classes, so the wrappers must subclass them.
        attrs = {"__module__": f"tailguard.integrations.{name}", "_timeout": timeout}
        wrap_async = type("DeadlineAsyncStream", (_AsyncStream, module.AsyncByteStream), attrs)
        wrap_sync = type("DeadlineSyncStream", (_SyncStream, module.SyncByteStream), attrs)
        return cls(
            module=module,
            name=name,
            timeout_exception=timeout,
            async_transport=module.AsyncBaseTransport,
            sync_transport=module.BaseTransport,
            async_stream=module.AsyncByteStream,
            sync_stream=module.SyncByteStream,
            wrap_async_stream=wrap_async,
            wrap_sync_stream=wrap_sync,
        )

    def default_transports(self) -> tuple[Any, Any]:
        """The package's default async and sync transports, sharing one SSL context.

        Loading CA certificates takes tens of milliseconds; doing it once, up
        front, keeps it off the first request's budget and the event loop.
        """
        ssl_context = self.module.create_ssl_context()
        return (
            self.module.AsyncHTTPTransport(verify=ssl_context),
            self.module.HTTPTransport(verify=ssl_context),
        )


class DeadlineTransportBase(Generic[_RequestT, _ResponseT]):
    """The logic of ``DeadlineTransport``; subclasses set ``_library``.

    See :class:`tailguard.integrations.httpx.DeadlineTransport` for the behaviour.
    """

    _library: ClassVar[Library]

    def __init__(
        self,
        inner: _AsyncInner[_RequestT, _ResponseT] | _SyncInner[_RequestT, _ResponseT] | None = None,
        *,
        header: str = DEFAULT_HEADER,
        propagate_to: Iterable[str] | None = None,
    ) -> None:
        lib = self._library
        self.propagate_to = HostAllowList.of(propagate_to)
        if not isinstance(header, str):
            raise TypeError(f"header must be a str, not {type(header).__name__}")
        if not _TOKEN.fullmatch(header):
            raise ValueError(f"header must be a valid HTTP header name, got {header!r}")
        if inner is not None and not isinstance(inner, (lib.async_transport, lib.sync_transport)):
            raise TypeError(
                f"inner must be a {lib.name}.AsyncBaseTransport or {lib.name}.BaseTransport,"
                f" not {type(inner).__module__}.{type(inner).__qualname__}"
            )
        self.header = header.lower()
        self._async_inner: _AsyncInner[_RequestT, _ResponseT] | None
        self._sync_inner: _SyncInner[_RequestT, _ResponseT] | None
        if inner is None:
            self._async_inner, self._sync_inner = lib.default_transports()
        else:
            self._async_inner = inner if isinstance(inner, lib.async_transport) else None
            self._sync_inner = inner if isinstance(inner, lib.sync_transport) else None

    # -- inner transports -----------------------------------------------------------

    def _async(self) -> _AsyncInner[_RequestT, _ResponseT]:
        if self._async_inner is None:
            raise TypeError(
                f"the inner transport is sync-only: use {self._library.name}.Client,"
                " or pass an async transport"
            )
        return self._async_inner

    def _sync(self) -> _SyncInner[_RequestT, _ResponseT]:
        if self._sync_inner is None:
            raise TypeError(
                f"the inner transport is async-only: use {self._library.name}.AsyncClient,"
                " or pass a sync transport"
            )
        return self._sync_inner

    # -- the request ----------------------------------------------------------------

    def _prepare(self, request: _RequestT) -> Deadline | None:
        """Stamp the budget on ``request``; ``None`` when no deadline is in force."""
        deadline = current_deadline()
        if deadline is None:
            return None
        left = deadline.remaining()
        if math.isinf(left):
            return None
        if left < MIN_BUDGET:
            raise DeadlineExceeded(deadline)
        millis = math.floor(left * 1000)
        hosts = self.propagate_to
        if hosts is None or hosts.allows(request.url.host):
            existing = request.headers.get(self.header, "")
            # A budget the caller already put on the request can only be tightened.
            if not (_is_millis(existing) and 0 < int(existing) <= millis):
                request.headers[self.header] = str(millis)
        timeouts = dict(request.extensions.get("timeout") or {})
        for key in _TIMEOUT_KEYS:
            value = timeouts.get(key)
            timeouts[key] = left if value is None else min(value, left)
        # A new dict rather than an update: the old one may be shared with other requests.
        request.extensions["timeout"] = timeouts
        return deadline

    async def handle_async_request(self, request: _RequestT) -> _ResponseT:
        """Send ``request`` through the inner async transport under the current deadline."""
        inner = self._async()
        deadline = self._prepare(request)
        if deadline is None:
            return await inner.handle_async_request(request)
        lib = self._library
        with _as_deadline_exceeded(deadline, lib.timeout_exception):
            response = await inner.handle_async_request(request)
        if isinstance(response.stream, lib.async_stream):
            response.stream = lib.wrap_async_stream(response.stream, deadline)
        return response

    def handle_request(self, request: _RequestT) -> _ResponseT:
        """Send ``request`` through the inner sync transport under the current deadline."""
        inner = self._sync()
        deadline = self._prepare(request)
        if deadline is None:
            return inner.handle_request(request)
        lib = self._library
        with _as_deadline_exceeded(deadline, lib.timeout_exception):
            response = inner.handle_request(request)
        if isinstance(response.stream, lib.sync_stream):
            response.stream = lib.wrap_sync_stream(response.stream, deadline)
        return response

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the inner sync transport, if there is one."""
        if self._sync_inner is not None:
            self._sync_inner.close()

    async def aclose(self) -> None:
        """Close the inner async transport, if there is one."""
        if self._async_inner is not None:
            await self._async_inner.aclose()

    def __enter__(self) -> Self:
        self._sync().__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._sync().__exit__(exc_type, exc_value, traceback)

    async def __aenter__(self) -> Self:
        await self._async().__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self._async().__aexit__(exc_type, exc_value, traceback)
