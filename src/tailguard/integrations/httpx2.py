"""Outbound deadline propagation for ``httpx2`` clients.

``httpx2`` has httpx's API but its own classes, and Starlette 1.x prefers it.
This module is :mod:`tailguard.integrations.httpx` for it: same behaviour,
same implementation, but the transport subclasses httpx2's base classes and
converts httpx2's timeouts.

>>> import httpx2
>>> from tailguard.integrations.httpx2 import DeadlineTransport
>>> client = httpx2.AsyncClient(transport=DeadlineTransport())
"""

from __future__ import annotations

try:
    import httpx2
except ImportError as exc:
    raise ImportError(
        "tailguard.integrations.httpx2 needs httpx2: pip install 'tailguard[httpx2]'"
    ) from exc

from tailguard.integrations._transport import DEFAULT_HEADER, DeadlineTransportBase, Library

__all__ = ["DEFAULT_HEADER", "DeadlineTransport"]


class DeadlineTransport(
    DeadlineTransportBase[httpx2.Request, httpx2.Response],
    httpx2.AsyncBaseTransport,
    httpx2.BaseTransport,
):
    """An httpx2 transport that propagates and enforces the current tailguard deadline.

    Sets ``x-request-timeout-ms`` (or ``header``) to the remaining budget,
    clips the request's timeouts to it, fails fast with
    :class:`tailguard.DeadlineExceeded` when less than 1 ms is left, and turns
    an :class:`httpx2.TimeoutException` that fires after the budget ran out
    into :class:`tailguard.DeadlineExceeded`. With no deadline in force a
    request passes through untouched. ``propagate_to`` limits the header to
    the hosts listed (names and ``*.domain`` patterns). See
    :class:`tailguard.integrations.httpx.DeadlineTransport` for the details.

    ``inner=None`` means httpx2's default :class:`httpx2.AsyncHTTPTransport`
    and :class:`httpx2.HTTPTransport`, created here and sharing one SSL context.

    >>> import httpx2, tailguard
    >>> def echo(request):
    ...     return httpx2.Response(200, text=request.headers.get("x-request-timeout-ms", "-"))
    >>> client = httpx2.Client(transport=DeadlineTransport(httpx2.MockTransport(echo)))
    >>> with tailguard.deadline(30):
    ...     0 < int(client.get("http://inventory/").text) <= 30_000
    True
    """

    _library = Library.of(httpx2)
