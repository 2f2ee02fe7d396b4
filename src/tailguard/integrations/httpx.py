"""Outbound deadline propagation for `httpx <https://www.python-httpx.org/>`_ clients.

Wrap a client's transport in :class:`DeadlineTransport` and every request sent
inside a request's deadline carries the remaining budget downstream, cannot
wait past it, and reports running out of it as :class:`tailguard.DeadlineExceeded`.

>>> import httpx
>>> from tailguard.integrations.httpx import DeadlineTransport
>>> client = httpx.AsyncClient(transport=DeadlineTransport())

For ``httpx2`` (which Starlette 1.x prefers) use
:mod:`tailguard.integrations.httpx2`; it behaves the same.
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:
    raise ImportError(
        "tailguard.integrations.httpx needs httpx: pip install 'tailguard[httpx]'"
    ) from exc

from tailguard.integrations._transport import DEFAULT_HEADER, DeadlineTransportBase, Library

__all__ = ["DEFAULT_HEADER", "DeadlineTransport"]


class DeadlineTransport(
    DeadlineTransportBase[httpx.Request, httpx.Response],
    httpx.AsyncBaseTransport,
    httpx.BaseTransport,
):
    """An httpx transport that propagates and enforces the current tailguard deadline.

    When a deadline is in force (:func:`tailguard.remaining` is finite), each
    request

    * gets the header ``header`` (default ``x-request-timeout-ms``) set to the
      remaining budget in whole milliseconds, rounded down (a smaller value the
      caller already set is kept);
    * with ``propagate_to`` (a list of host names and ``*.domain`` patterns),
      gets that header only if its host is listed: third-party APIs need not
      learn your budgets (timeouts are clipped either way);
    * has its connect/read/write/pool timeouts clipped to the remaining budget
      (a tighter timeout of its own is kept; ``None`` becomes the budget);
    * is not sent at all, raising :class:`tailguard.DeadlineExceeded`, when
      less than 1 ms is left;
    * raises :class:`tailguard.DeadlineExceeded` (chained from httpx's error)
      when an :class:`httpx.TimeoutException` fires after the budget ran out,
      also while reading the response body. A timeout that fires while budget
      is left was the caller's own and stays an httpx exception.

    With no deadline in force a request passes through untouched.

    ``inner`` is the transport that does the work; ``None`` means httpx's
    default :class:`httpx.AsyncHTTPTransport` and :class:`httpx.HTTPTransport`,
    created here (sharing one SSL context) so that loading certificates never
    delays a request. It works with both :class:`httpx.AsyncClient` and
    :class:`httpx.Client`; a sync client in a worker thread sees the deadline
    when the thread runs in a copy of the request's context (as
    ``asyncio.to_thread`` and ``anyio.to_thread.run_sync`` do).

    >>> import httpx, tailguard
    >>> def echo(request):
    ...     return httpx.Response(200, text=request.headers.get("x-request-timeout-ms", "-"))
    >>> client = httpx.Client(transport=DeadlineTransport(httpx.MockTransport(echo)))
    >>> client.get("http://inventory/").text
    '-'
    >>> with tailguard.deadline(30):
    ...     0 < int(client.get("http://inventory/").text) <= 30_000
    True
    """

    _library = Library.of(httpx)
