"""The faults an experiment injects: Latency, Raise, Respond, Hang and Reset.

Each fault has a ``target`` and a ``rate`` (the probability, from 0 to 1,
that a call it applies to is hit). The target is a dependency name or glob
(``payments*``), for faults on outbound calls, or a route key
(``GET /items/*``), for faults on inbound requests, applied by the middleware
before the route's admission limiter. :class:`Reset` has no inbound form
(ASGI cannot drop a connection).

Faults are frozen and validated when created: bad input raises
``ValueError`` naming the fault and the field.

>>> Latency("inventory", delay=0.05, rate=0.3)
Latency(target='inventory', delay=0.05, rate=0.3)
>>> Raise("payments*", exc=ConnectionResetError).inbound
False
>>> Respond("GET /items/*", status=503).inbound
True
>>> Reset("GET /items/*")
Traceback (most recent call last):
...
ValueError: Reset: target must be a dependency name or glob, not a route key: 'GET /items/*'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar, Final

from tailguard._numbers import finite
from tailguard.chaos._match import RouteKey, check_dependency_glob, is_route_key
from tailguard.chaos.distributions import Distribution, Fixed

__all__ = [
    "NO_BODY_STATUSES",
    "RESERVED_HEADERS",
    "Fault",
    "Hang",
    "Latency",
    "Raise",
    "Reset",
    "Respond",
    "reserved_header",
]

_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE: Final = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
RESERVED_HEADERS: Final = frozenset(
    {"connection", "content-length", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
"""Framing and hop-by-hop headers a :class:`Respond` may not set (nor any ``proxy-*``)."""
NO_BODY_STATUSES: Final = frozenset({204, 205, 304})
"""Statuses whose responses cannot carry a body (RFC 9110 15.3.5, 15.3.6, 15.4.5; 1xx too).

A server sends such a response without one; a body given anyway makes
uvicorn drop the connection ("Response content longer than Content-Length").
"""


def reserved_header(name: str) -> bool:
    """Whether ``name`` frames the message or is hop-by-hop: the server's, not a fault's, to set.

    >>> reserved_header("Content-Length"), reserved_header("proxy-authenticate")
    (True, True)
    >>> reserved_header("retry-after")
    False
    """
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith("proxy-")


class Fault:
    """What every fault has: a ``target``, a ``rate`` and a ``kind``."""

    __slots__ = ()

    kind: ClassVar[str]
    """``latency``, ``raise``, ``respond``, ``hang`` or ``reset`` (the metric's ``fault`` label)."""
    terminal: ClassVar[bool] = True
    """Whether the fault ends the call (all but :class:`Latency`, which only delays it)."""

    target: str
    rate: float
    route: RouteKey | None
    """The parsed route key of an inbound fault; ``None`` for a dependency fault."""

    @property
    def inbound(self) -> bool:
        """Whether the fault applies to inbound requests (its target is a route key)."""
        return self.route is not None

    def _check(self, inbound_allowed: bool = True) -> None:
        owner = type(self).__name__
        target, rate = self.target, self.rate
        if not isinstance(target, str) or not target:
            raise ValueError(f"{owner}: target must be a non-empty str, got {target!r}")
        route: RouteKey | None = None
        if is_route_key(target):
            if not inbound_allowed:
                raise ValueError(
                    f"{owner}: target must be a dependency name or glob, not a route key: "
                    f"{target!r}"
                )
            try:
                route = RouteKey.parse(target)
            except ValueError as exc:
                raise ValueError(f"{owner}: target: {exc}") from None
        else:
            try:
                check_dependency_glob(target)
            except ValueError as exc:
                raise ValueError(f"{owner}: {exc}") from None
        number = finite(rate)
        if number is None or not 0 <= number <= 1:
            raise ValueError(f"{owner}: rate must be a number from 0 to 1, got {rate!r}")
        object.__setattr__(self, "rate", number)
        object.__setattr__(self, "route", route)


@dataclass(frozen=True, slots=True)
class Latency(Fault):
    """Delay the call by ``delay``: a number of seconds, or a :class:`Distribution` of them.

    The delay happens inside the dependency's bulkhead slot, as a slow
    dependency's would, and ends early when the experiment ends.

    >>> from tailguard.chaos import LogNormal
    >>> Latency("db", delay=LogNormal(p50=0.05, p99=0.5)).rate
    1.0
    """

    kind: ClassVar[str] = "latency"
    terminal: ClassVar[bool] = False

    target: str
    _: KW_ONLY
    delay: float | Distribution
    rate: float = 1.0
    route: RouteKey | None = field(init=False, repr=False, compare=False, default=None)
    distribution: Distribution = field(init=False, repr=False, compare=False)
    """``delay`` as a distribution (a number becomes :class:`Fixed`)."""

    def __post_init__(self) -> None:
        self._check()
        delay = self.delay
        if isinstance(delay, Distribution):
            distribution: Distribution = delay
        else:
            try:
                distribution = Fixed(delay)
            except ValueError:
                raise ValueError(
                    "Latency: delay must be a number of seconds >= 0 or a distribution "
                    f"(Fixed, Uniform, LogNormal, Pareto, Empirical), got {delay!r}"
                ) from None
            object.__setattr__(self, "delay", distribution.seconds)
        object.__setattr__(self, "distribution", distribution)


@dataclass(frozen=True, slots=True)
class Raise(Fault):
    """Raise ``exc`` instead of calling the dependency: the dependency's own exception type.

    ``exc`` is an exception class, created with a message that says the
    error was injected, or a factory ``() -> exception`` for exceptions that
    need more arguments. On an inbound route the middleware raises it as if
    the handler had (the app's own error handling answers, normally a 500).

    >>> Raise("db", exc=TimeoutError).exception("slow-db")
    TimeoutError('injected by tailguard chaos experiment slow-db')
    """

    kind: ClassVar[str] = "raise"

    target: str
    _: KW_ONLY
    exc: type[BaseException] | Callable[[], BaseException]
    rate: float = 1.0
    route: RouteKey | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self._check()
        exc = self.exc
        if isinstance(exc, type):
            if not issubclass(exc, Exception):
                raise ValueError(
                    "Raise: exc must be an Exception subclass (not cancellation, exit or "
                    f"interrupt) or a factory, got {exc!r}"
                )
            try:
                exc("probe")
            except Exception as error:
                raise ValueError(
                    f"Raise: exc {exc.__qualname__} cannot be created from a message "
                    f"({error}); pass a factory such as lambda: {exc.__qualname__}(...)"
                ) from None
        elif not callable(exc):
            raise ValueError(
                f"Raise: exc must be an exception class or a factory returning one, got {exc!r}"
            )

    def exception(self, experiment: str) -> BaseException:
        """A fresh exception to raise, noted as injected by ``experiment``."""
        message = f"injected by tailguard chaos experiment {experiment}"
        exc = self.exc
        made = exc(message) if isinstance(exc, type) else exc()
        if not isinstance(made, Exception):
            raise TypeError(
                f"chaos experiment {experiment!r}: the Raise factory for {self.target!r} "
                f"returned {made!r}, not an Exception"
            )
        if not isinstance(exc, type):
            made.add_note(message)
        return made


@dataclass(frozen=True, slots=True)
class Respond(Fault):
    """Answer with ``status``, ``body`` and ``headers`` instead of calling the service.

    At a dependency's httpx transport, a response is synthesized without
    calling the inner transport; on an inbound route, the middleware answers
    for the app. Other dependency seams have no response to fake, so the
    fault does not apply there. Statuses that have no body (204, 205, 304:
    :data:`NO_BODY_STATUSES`) take no ``body``. Responses carry ``x-tailguard-chaos: <experiment>``.
    Framing and hop-by-hop headers (``content-length``, ``transfer-encoding``,
    ``connection``, ``proxy-*``...: :func:`reserved_header`) are refused.

    >>> Respond("inventory", status=503, headers={"retry-after": "1"}).headers
    (('retry-after', '1'),)
    """

    kind: ClassVar[str] = "respond"

    target: str
    _: KW_ONLY
    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    """The extra headers, as ``(name, value)`` pairs (any mapping is accepted)."""
    rate: float = 1.0
    route: RouteKey | None = field(init=False, repr=False, compare=False, default=None)

    def __init__(
        self,
        target: str,
        *,
        status: int,
        body: str = "",
        headers: Mapping[str, str] | None = None,
        rate: float = 1.0,
    ) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "rate", rate)
        self._check()
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"Respond: status must be an int from 200 to 599, got {status!r}")
        if not isinstance(body, str):
            raise ValueError(f"Respond: body must be a str, got {type(body).__name__}")
        if body and status in NO_BODY_STATUSES:
            raise ValueError(
                f"Respond: body must be empty with status {status}, which has no body; "
                f"got {len(body)} characters"
            )
        if headers is None:
            headers = {}
        if not isinstance(headers, Mapping):
            raise ValueError(f"Respond: headers must be a mapping of str to str, got {headers!r}")
        pairs: list[tuple[str, str]] = []
        for name, value in headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise ValueError(f"Respond: headers: {name!r} is not a valid header name")
            if reserved_header(name):
                raise ValueError(
                    f"Respond: headers: {name!r} is a framing or hop-by-hop header, which the "
                    "server sets; leave it out"
                )
            if not isinstance(value, str) or not _HEADER_VALUE.match(value):
                raise ValueError(f"Respond: headers[{name!r}] must be a str without line breaks")
            pairs.append((name, value))
        object.__setattr__(self, "headers", tuple(pairs))


@dataclass(frozen=True, slots=True)
class Hang(Fault):
    """Never answer: the call blocks until it is cancelled (its deadline) or the experiment ends.

    >>> Hang("db", rate=0.01).kind
    'hang'
    """

    kind: ClassVar[str] = "hang"

    target: str
    _: KW_ONLY
    rate: float = 1.0
    route: RouteKey | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self._check()


@dataclass(frozen=True, slots=True)
class Reset(Fault):
    """Fail as a connection reset by the peer: the seam's own error.

    ``httpx.ReadError`` (or ``httpx2.ReadError``) at the transport,
    :class:`ConnectionResetError` at the other seams.

    >>> Reset("payments*").kind
    'reset'
    """

    kind: ClassVar[str] = "reset"

    target: str
    _: KW_ONLY
    rate: float = 1.0
    route: RouteKey | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self._check(inbound_allowed=False)
