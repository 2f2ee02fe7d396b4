"""An :class:`Experiment`: named faults, a TTL, a scope, and an optional safeguard.

>>> from tailguard.chaos import Latency, LogNormal
>>> experiment = Experiment(
...     "slow-inventory",
...     faults=[Latency("inventory", delay=LogNormal(p50=0.05, p99=0.5), rate=0.3)],
...     ttl=300,
...     routes=["GET /items/*"],
...     abort=AbortWhen(error_rate=0.05),
... )
>>> experiment.ttl, experiment.routes
(300.0, ('GET /items/*',))
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Final

from tailguard._numbers import finite
from tailguard.chaos._match import RouteKey
from tailguard.chaos.faults import Fault

__all__ = ["MAX_TTL", "AbortWhen", "Experiment"]

MAX_TTL: Final = 86_400.0
"""The longest TTL an experiment may have: one day. Chaos never runs open-ended."""

MIN_SECRET: Final = 16
"""Shortest header secret: long enough not to be guessed by a client trying values."""

_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEADER: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SECRET: Final = re.compile(r"^[\x21-\x7e]+$")


def _positive(owner: str, name: str, value: object, upper: float = math.inf) -> float:
    number = finite(value)
    if number is None or not 0 < number <= upper:
        limit = "" if math.isinf(upper) else f" up to {upper:g}"
        raise ValueError(f"{owner}: {name} must be a number > 0{limit}, got {value!r}")
    return number


def _strings(owner: str, name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}: {name} must be a list of str, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{owner}: {name}[{i}] must be a non-empty str, got {item!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortWhen:
    """A safeguard: stop the experiment when the affected routes break their SLO.

    Over the last ``window`` seconds of requests on the experiment's routes
    (if it names none: the routes its faults reach), once at least
    ``min_requests`` have completed: stop if the share of errors (5xx
    responses, and clients that gave up) exceeds ``error_rate``, or if the
    99th percentile of their durations exceeds ``p99`` seconds. 404s and
    unmatched requests are left out.

    >>> AbortWhen(p99=0.5, window=60).min_requests
    20
    >>> AbortWhen()
    Traceback (most recent call last):
    ...
    ValueError: AbortWhen: give error_rate, p99 or both
    """

    error_rate: float | None = None
    p99: float | None = None
    window: float = 30.0
    min_requests: int = 20

    def __post_init__(self) -> None:
        owner = "AbortWhen"
        if self.error_rate is None and self.p99 is None:
            raise ValueError(f"{owner}: give error_rate, p99 or both")
        if self.error_rate is not None:
            rate = self.error_rate
            number = finite(rate)
            if number is None or not 0 <= number < 1:
                raise ValueError(
                    f"{owner}: error_rate must be a number from 0 to below 1, got {rate!r}"
                )
            object.__setattr__(self, "error_rate", number)
        if self.p99 is not None:
            object.__setattr__(self, "p99", _positive(owner, "p99", self.p99))
        object.__setattr__(self, "window", _positive(owner, "window", self.window, MAX_TTL))
        count = self.min_requests
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{owner}: min_requests must be an int >= 1, got {count!r}")


@dataclass(frozen=True, slots=True)
class Experiment:
    """Faults to inject for ``ttl`` seconds, optionally scoped and guarded.

    * ``name``: letters, digits, ``.``, ``_``, ``-`` (at most 64): it is a
      metric label and part of the control API's URLs.
    * ``faults``: at least one; how several faults on one call compose is
      described in ``docs/chaos.md``.
    * ``ttl``: seconds, mandatory, at most :data:`MAX_TTL`; the experiment
      stops by itself then.
    * ``routes``: route keys; when given, the experiment only applies while
      handling a request on one of them (and its safeguard watches them).
    * ``tenants``: when given, only requests of these tenants.
    * ``header`` and ``secret``: only requests carrying ``header`` with the
      value ``secret`` (compared in constant time), for chaos on your own
      test traffic. A secret is at least 16 printable characters.
    * ``abort``: an :class:`AbortWhen` safeguard.
    * ``allow_unknown``: start even if a target or route names nothing the
      service has (yet): an engine that knows the service's dependencies and
      routes refuses such an experiment otherwise (a typo would "prove"
      resilience with zero injections).

    Any scope (``routes``, ``tenants``, ``header``) limits the experiment to
    calls made while handling a matching request; without one, it applies to
    every call, background work included.

    >>> Experiment("x", faults=[], ttl=1)
    Traceback (most recent call last):
    ...
    ValueError: experiment 'x': faults must be a non-empty list of faults, got []
    """

    name: str
    _: KW_ONLY
    faults: Sequence[Fault]
    ttl: float
    routes: Sequence[str] = ()
    tenants: Sequence[str] = ()
    header: str | None = None
    secret: str | None = field(default=None, repr=False)
    abort: AbortWhen | None = None
    allow_unknown: bool = False
    route_keys: tuple[RouteKey, ...] = field(init=False, repr=False, compare=False, default=())
    """``routes``, parsed."""

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                "experiment name must be 1-64 letters, digits, '.', '_' or '-' "
                f"(starting with a letter or digit), got {name!r}"
            )
        owner = f"experiment {name!r}"
        faults = self.faults
        if isinstance(faults, str | bytes) or not isinstance(faults, Sequence) or not faults:
            raise ValueError(f"{owner}: faults must be a non-empty list of faults, got {faults!r}")
        for i, fault in enumerate(faults):
            if not isinstance(fault, Fault):
                raise ValueError(
                    f"{owner}: faults[{i}] must be a Latency, Raise, Respond, Hang or Reset, "
                    f"got {fault!r}"
                )
        object.__setattr__(self, "faults", tuple(faults))
        object.__setattr__(self, "ttl", _positive(owner, "ttl", self.ttl, MAX_TTL))
        routes = _strings(owner, "routes", self.routes)
        keys = []
        for i, route in enumerate(routes):
            try:
                keys.append(RouteKey.parse(route))
            except ValueError as exc:
                raise ValueError(f"{owner}: routes[{i}]: {exc}") from None
        object.__setattr__(self, "routes", routes)
        object.__setattr__(self, "route_keys", tuple(keys))
        object.__setattr__(self, "tenants", _strings(owner, "tenants", self.tenants))
        self._check_header(owner)
        if self.abort is not None and not isinstance(self.abort, AbortWhen):
            raise ValueError(f"{owner}: abort must be an AbortWhen or None, got {self.abort!r}")
        if not isinstance(self.allow_unknown, bool):
            raise ValueError(
                f"{owner}: allow_unknown must be True or False, got {self.allow_unknown!r}"
            )

    def _check_header(self, owner: str) -> None:
        header, secret = self.header, self.secret
        if header is None:
            if secret is not None:
                raise ValueError(f"{owner}: secret is only used with header; give both or neither")
            return
        if not isinstance(header, str) or not _HEADER.match(header):
            raise ValueError(f"{owner}: header must be a valid HTTP header name, got {header!r}")
        if secret is None:
            raise ValueError(
                f"{owner}: header needs a secret: header-triggered chaos is only honoured "
                "with a secret the client must present"
            )
        if not isinstance(secret, str) or len(secret) < MIN_SECRET or not _SECRET.match(secret):
            raise ValueError(
                f"{owner}: secret must be at least {MIN_SECRET} printable ASCII characters "
                "without spaces"
            )
        object.__setattr__(self, "header", header.lower())

    @property
    def scoped(self) -> bool:
        """Whether the experiment only applies inside matching requests."""
        return bool(self.routes or self.tenants or self.header)
