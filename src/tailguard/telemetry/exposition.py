"""The ``/metrics`` endpoint: prometheus_client's exposition as a small ASGI app.

In a single process it serves one registry (prometheus_client's default, or
the one given). With ``PROMETHEUS_MULTIPROC_DIR`` set it serves what every
worker wrote to that directory, merged by a fresh ``MultiProcessCollector``
per scrape: counters and histograms summed, gauges by their
``multiprocess_mode``. prometheus_client decides at import time whether
metrics go to that directory, so the variable must be set before the server
starts (as it must for any prometheus_client app).

Content negotiation, ``name[]`` filtering and gzip behave as in
``prometheus_client.make_asgi_app``: the text format by default, OpenMetrics
for scrapers that ask for it.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from urllib.parse import parse_qs

import anyio
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["metrics_app", "multiprocess_dir", "retire_worker"]

logger = logging.getLogger("tailguard.telemetry")

_ALLOW = [(b"allow", b"GET, HEAD")]


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` if it is set and not empty, else ``None``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_app(
    registry: CollectorRegistry | None = None,
    *,
    before_scrape: Callable[[], None] | None = None,
    multiprocess: str | None = None,
) -> ASGIApp:
    """An ASGI app that answers ``GET`` and ``HEAD`` with the metrics exposition.

    ``registry`` is the one served in a single process (default:
    prometheus_client's). ``multiprocess`` is the directory of a
    multiprocess deployment (default: :func:`multiprocess_dir`, read now);
    when there is one, ``registry`` is not served: the directory is.
    ``before_scrape()`` runs first on every scrape (to refresh gauges from
    live state); if it raises, the error is logged and the scrape still
    answers, with the gauges as they were.

    >>> import asyncio
    >>> from prometheus_client import Counter
    >>> registry = CollectorRegistry()
    >>> Counter("demo_total", "A demo counter.", registry=registry).inc()
    >>> app = metrics_app(registry)
    >>> sent = []
    >>> async def send(message): sent.append(message)
    >>> scope = {"type": "http", "method": "GET", "headers": [], "query_string": b""}
    >>> asyncio.run(app(scope, None, send))
    >>> sent[0]["status"], b"demo_total 1.0" in sent[1]["body"]
    (200, True)
    """
    path = multiprocess_dir() if multiprocess is None else multiprocess
    served = REGISTRY if registry is None else registry

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the metrics endpoint serves HTTP only, not {scope['type']!r}")
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, _ALLOW, b"")
            return
        if before_scrape is not None:
            try:
                before_scrape()
            except Exception:
                logger.exception("tailguard: refreshing gauges before a scrape failed")
        registry_now = served
        if path is not None:
            registry_now = CollectorRegistry()
            MultiProcessCollector(registry_now, path)  # type: ignore[no-untyped-call]
        accept: list[str] = []
        accept_encoding: list[str] = []
        for name, value in scope["headers"]:
            if name == b"accept":
                accept.append(value.decode("latin-1"))
            elif name == b"accept-encoding":
                accept_encoding.append(value.decode("latin-1"))
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        source: Collector = registry_now
        if "name[]" in params:
            source = registry_now.restricted_registry(params["name[]"])
        encoder, content_type = choose_encoder(",".join(accept))
        compress = gzip_accepted(",".join(accept_encoding))

        def render() -> bytes:
            body = encoder(source)
            return gzip.compress(body, compresslevel=6) if compress else body

        if path is not None:
            # Merging every worker's files reads the disk: not on the event loop.
            body = await anyio.to_thread.run_sync(render)
        else:
            # In one process, collecting folds the batched request counts, which
            # only the loop's thread may do without lag.
            body = render()
        headers = [(b"content-type", content_type.encode("latin-1"))]
        if compress:
            headers.append((b"content-encoding", b"gzip"))
        await _respond(send, 200, headers, b"" if method == "HEAD" else body, len(body))

    return app


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    length: int | None = None,
) -> None:
    size = len(body) if length is None else length
    headers = [*headers, (b"content-length", str(size).encode("ascii"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def retire_worker(pid: int | None = None, *, multiprocess: str | None = None) -> None:
    """Drop a worker's live gauges from a multiprocess exposition; no-op in a single process.

    A worker that exits leaves its ``live*`` gauges (in flight, in use,
    queued) in the directory until this is called for its ``pid``: by the
    worker itself on shutdown (default ``pid``: this process), or by the
    process manager when a worker dies (gunicorn's ``child_exit`` hook).
    Its counters and histograms stay, as they must.
    """
    path = multiprocess_dir() if multiprocess is None else multiprocess
    if path is not None:
        mark_process_dead(os.getpid() if pid is None else pid, path)  # type: ignore[no-untyped-call]
