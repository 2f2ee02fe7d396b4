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

import asyncio
import gzip
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.client import responses
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MetricsServer", "metrics_app", "multiprocess_dir", "retire_worker"]

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
    ``before_scrape()`` runs first on every exposition, on the event loop (to
    fold batched counts and refresh gauges from live state); if it raises,
    the error is logged and the scrape still answers, with the gauges as
    they were.

    A scrape is cheap for the event loop: the exposition is rendered in a
    thread of its own (one for the process, so expositions never compete
    with each other or with the app's thread pool), and at most one is in
    flight per format: scrapes that arrive while one is being rendered wait
    for it and get the same body. After an exposition that took *d* seconds,
    the next one starts no sooner than *d* seconds after it ended, so however
    often it is scraped, rendering takes at most half of a core; every scrape
    still gets an exposition that started after it arrived.

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
    exposition = _Exposition(served, before_scrape, path)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the metrics endpoint serves HTTP only, not {scope['type']!r}")
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, _ALLOW, b"")
            return
        accept: list[str] = []
        accept_encoding: list[str] = []
        for name, value in scope["headers"]:
            if name == b"accept":
                accept.append(value.decode("latin-1"))
            elif name == b"accept-encoding":
                accept_encoding.append(value.decode("latin-1"))
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        names = tuple(sorted(params["name[]"])) if "name[]" in params else None
        _, content_type = choose_encoder(",".join(accept))
        compress = gzip_accepted(",".join(accept_encoding))
        body = await exposition.body(_Format(content_type, compress, names), ",".join(accept))
        headers = [(b"content-type", content_type.encode("latin-1"))]
        if compress:
            headers.append((b"content-encoding", b"gzip"))
        await _respond(send, 200, headers, b"" if method == "HEAD" else body, len(body))

    return app


class _Format(NamedTuple):
    """What makes two expositions differ: scrapes asking the same share one."""

    content_type: str
    compress: bool
    names: tuple[str, ...] | None


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _render_thread() -> ThreadPoolExecutor:
    """The process's one exposition thread (made on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailguard-metrics")
        return _executor


class _Exposition:
    """Renders one registry (or multiprocess directory), one exposition per format at a time."""

    __slots__ = ("_before", "_in_flight", "_path", "_registry", "_rest_until")

    def __init__(
        self,
        registry: CollectorRegistry,
        before_scrape: Callable[[], None] | None,
        path: str | None,
    ) -> None:
        self._registry = registry
        self._before = before_scrape
        self._path = path
        # (loop, format) -> the task rendering it; removed when it is done.
        self._in_flight: dict[tuple[asyncio.AbstractEventLoop, _Format], asyncio.Task[bytes]] = {}
        # time.monotonic() before which no exposition starts: after one that took
        # d seconds, the next waits until d seconds after it ended.
        self._rest_until = 0.0

    async def body(self, fmt: _Format, accept: str) -> bytes:
        """The exposition in ``fmt``: the one being rendered, or a new one."""
        loop = asyncio.get_running_loop()
        key = (loop, fmt)
        task = self._in_flight.get(key)
        if task is None:
            task = loop.create_task(self._render(fmt, accept), name="tailguard metrics exposition")
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        # Shielded: a scraper that goes away does not cancel the others' exposition.
        return await asyncio.shield(task)

    def _done(
        self, key: tuple[asyncio.AbstractEventLoop, _Format], task: asyncio.Task[bytes]
    ) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every scraper left

    async def _render(self, fmt: _Format, accept: str) -> bytes:
        pause = self._rest_until - time.monotonic()
        if pause > 0:
            # Back-to-back scrapes: rest as long as the last exposition took, so
            # rendering takes at most half of a core (and of the GIL). Scrapes
            # arriving meanwhile join this exposition, which starts after them.
            await asyncio.sleep(pause)
        before = self._before
        if before is not None:
            # On the loop: folding the batched request counts belongs to the
            # thread that records them, so this exposition sees every request
            # finished before it started.
            try:
                before()
            except Exception:
                logger.exception("tailguard: refreshing gauges before a scrape failed")
        registry = self._registry
        path = self._path
        encoder, _ = choose_encoder(accept)

        def render() -> bytes:
            source: Collector = registry
            if path is not None:
                merged = CollectorRegistry()
                MultiProcessCollector(merged, path)  # type: ignore[no-untyped-call]
                source = merged
            if fmt.names is not None:
                assert isinstance(source, CollectorRegistry)
                source = source.restricted_registry(list(fmt.names))
            body = encoder(source)
            return gzip.compress(body, compresslevel=6) if fmt.compress else body

        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            return await loop.run_in_executor(_render_thread(), render)
        finally:
            ended = time.monotonic()
            self._rest_until = ended + (ended - started)


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


class MetricsServer:
    """Serves the metrics exposition on an address of its own, on the app's event loop.

    What ``install(metrics_port=...)`` uses, in the manner of
    prometheus_client's ``start_http_server``: every path answers with the
    exposition, so the metrics are not on the application's port at all and
    can be bound where only the scraper reaches (``127.0.0.1`` by default).
    A plain HTTP/1.1 server (keep-alive, no request bodies, idle connections
    closed after :attr:`IDLE_TIMEOUT` seconds); :meth:`start` and :meth:`stop`
    follow the app's lifespan.

    >>> import asyncio, urllib.request
    >>> from prometheus_client import Counter
    >>> registry = CollectorRegistry()
    >>> Counter("demo_total", "A demo counter.", registry=registry).inc()
    >>> server = MetricsServer(metrics_app(registry), port=0)
    >>> async def scrape():
    ...     await server.start()
    ...     url = f"http://127.0.0.1:{server.port}/metrics"
    ...     body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
    ...     await server.stop()
    ...     return b"demo_total 1.0" in body
    >>> asyncio.run(scrape())
    True
    """

    IDLE_TIMEOUT = 30.0
    """Seconds a connection may wait for its next request (or the rest of one)."""
    MAX_HEAD = 16384
    """Bytes a request's line and headers may take."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"metrics_host must be a host name or address, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"metrics_port must be a port number (0-65535), got {port!r}")
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        """The bound port while serving (``port=0`` picks a free one)."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def serving(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    async def start(self) -> None:
        """Bind and serve; a no-op while serving. Raises ``OSError`` if it cannot bind."""
        if self._server is not None:
            return
        self._server = server = await asyncio.start_server(
            self._connection, self.host, self.requested_port, limit=self.MAX_HEAD
        )
        self.port = server.sockets[0].getsockname()[1]
        logger.info("tailguard: serving metrics on http://%s:%s/metrics", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections; a no-op when not serving."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._connections):
            writer.close()
        await server.wait_closed()
        self.port = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (
            ConnectionError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # the scraper went away, was idle too long or sent too much: nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether the connection stays open for another."""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.IDLE_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _write(writer, 400, [], b"bad request\n", keep_alive=False)
            return False
        method, target, version = parts
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append(
                    (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
                )
        fields = dict(headers)
        if fields.get(b"transfer-encoding") or fields.get(b"content-length", b"0") != b"0":
            await _write(writer, 400, [], b"request bodies are not accepted\n", keep_alive=False)
            return False
        connection = fields.get(b"connection", b"").lower()
        keep_alive = connection != b"close" and (
            version == "HTTP/1.1" or connection == b"keep-alive"
        )
        path, _, query = target.partition("?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": version[5:],
            "method": method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": writer.get_extra_info("peername"),
            "server": writer.get_extra_info("sockname"),
        }
        response: dict[str, Any] = {}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = list(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                response["body"] = response.get("body", b"") + message.get("body", b"")

        await self.app(scope, receive, send)
        await _write(
            writer,
            response.get("status", 500),
            response.get("headers", []),
            response.get("body", b""),
            keep_alive=keep_alive,
            head=method == "HEAD",
        )
        return keep_alive


async def _write(
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
    head: bool = False,
) -> None:
    lines = [f"HTTP/1.1 {status} {responses.get(status, '')}".encode("latin-1")]
    if not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"connection: keep-alive" if keep_alive else b"connection: close")
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body))
    await writer.drain()
