"""Inbound deadline headers: what the caller says it can still wait.

Three formats are understood, each of which can only *shrink* the route's
budget:

* ``x-request-timeout-ms`` (tailguard's own; the name is configurable):
  integer milliseconds, which is also what tailguard sends downstream;
* ``grpc-timeout``: gRPC's ``TimeoutValue TimeoutUnit``, at most eight digits
  followed by one of ``H M S m u n`` (``100m`` is 100 ms, ``2S`` two seconds);
* ``x-envoy-expected-rq-timeout-ms``: Envoy's integer milliseconds.

A malformed or absurd value (not a number, negative, zero, too many digits) is
ignored rather than failing the request: a bad header must not take a route
down. Zero is ignored too, because Envoy and others use ``0`` to mean "no
timeout".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter

from tailguard.deadlines import DEADLINE_HEADER

__all__ = ["InboundDeadlines", "parse_grpc_timeout", "parse_milliseconds"]

_name = itemgetter(0)

_GRPC_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
_MAX_MS_DIGITS = 12  # about 31 years; anything longer is not a real budget


def parse_milliseconds(value: bytes) -> float | None:
    """Seconds from an integer-milliseconds header value, or ``None`` if unusable.

    >>> parse_milliseconds(b"250")
    0.25
    >>> parse_milliseconds(b"-5") is None, parse_milliseconds(b"soon") is None
    (True, True)
    """
    value = value.strip()
    if not value.isdigit() or len(value) > _MAX_MS_DIGITS:
        return None
    millis = int(value)
    return millis / 1000.0 if millis > 0 else None


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` value such as ``100m`` or ``2S``, or ``None``.

    >>> parse_grpc_timeout(b"100m")
    0.1
    >>> parse_grpc_timeout(b"2S")
    2.0
    >>> parse_grpc_timeout(b"123456789S") is None  # more than eight digits
    True
    """
    value = value.strip()
    if len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], _GRPC_UNITS.get(value[-1])
    if unit is None or not digits.isdigit():
        return None
    amount = int(digits)
    return amount * unit if amount > 0 else None


class InboundDeadlines:
    """Reads the tightest deadline a caller sent, from the headers it honours.

    >>> inbound = InboundDeadlines()
    >>> inbound.budget([(b"grpc-timeout", b"50m"), (b"x-request-timeout-ms", b"80")])
    (0.05, 'grpc-timeout')
    """

    __slots__ = ("_names", "_parsers")

    def __init__(
        self,
        header: str = DEADLINE_HEADER,
        *,
        grpc: bool = True,
        envoy: bool = True,
    ) -> None:
        if not isinstance(header, str) or not header.strip() or header != header.strip():
            raise ValueError(f"deadline_header must be a non-empty header name, got {header!r}")
        parsers = {header.lower().encode("latin-1"): parse_milliseconds}
        if grpc:
            parsers[b"grpc-timeout"] = parse_grpc_timeout
        if envoy:
            parsers[b"x-envoy-expected-rq-timeout-ms"] = parse_milliseconds
        self._parsers = parsers
        self._names = frozenset(parsers)

    def budget(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[float, str] | None:
        """The smallest valid budget in ``headers`` and the header it came from."""
        # Most requests carry none of these headers: look with C-level iteration
        # first, walk the headers in Python only when one is there.
        if self._names.isdisjoint(map(_name, headers)):
            return None
        return self._tightest(headers)

    def _tightest(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[float, str] | None:
        best: tuple[float, str] | None = None
        parsers = self._parsers
        for name, value in headers:
            parse = parsers.get(name)
            if parse is None:
                continue
            seconds = parse(value)
            if seconds is not None and (best is None or seconds < best[0]):
                best = (seconds, name.decode("latin-1"))
        return best
