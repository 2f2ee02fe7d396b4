"""An open-loop HTTP/1.1 load generator on asyncio, over raw keep-alive connections.

Open loop: the send times are drawn in advance (Poisson arrivals, one seeded
stream per tenant, merged) and each request is sent at its time whether or not
earlier requests have been answered, as independent clients would. A
closed-loop tool (wrk, ab, a fixed pool of workers) waits for a response before
sending the next request, so a slow server slows the load down and hides its
own latency ("coordinated omission"); here latency runs from the *intended*
send time to the last byte of the response, and the time the generator itself
was late sending (the send lag) is reported so a run with a lagging generator
can be flagged instead of trusted.

Connections: a pool of keep-alive connections, most recently used first, that
grows when every open connection has a request in flight, up to
``max_connections``; a request that finds the pool at its cap fails at once on
the client (``no_connection``). HTTP/1.1 without pipelining: one request per
connection at a time. A request not answered within ``timeout`` seconds of its
send fails (``timeout``) and its connection is aborted, as a client with a
timeout would do; the server sees the disconnect.

Everything is callbacks on one event loop (a protocol per connection, a timer
per request); the only tasks are the pacing loop and one per new connection.
The response parser handles what the benchmark servers send: a status line,
headers and a ``content-length`` body (it keeps ``x-tailguard-reason``).
The collector is disabled during a run (a full collection over thousands of
live objects would stall the generator for milliseconds) and restored after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CLIENT_FAILURES",
    "LoadResult",
    "Record",
    "Stream",
    "poisson_schedule",
    "run_load",
]

TIMEOUT = -1
NO_CONNECTION = -2
CONNECT_ERROR = -3
CLOSED = -4
BAD_RESPONSE = -5
CLIENT_FAILURES = {
    TIMEOUT: "timeout",
    NO_CONNECTION: "no_connection",
    CONNECT_ERROR: "connect_error",
    CLOSED: "closed",
    BAD_RESPONSE: "bad_response",
}
"""Pseudo-statuses (negative) for requests that got no HTTP response, by name."""


@dataclass(frozen=True)
class Stream:
    """One Poisson arrival stream: a name, a rate (requests/s), extra request headers."""

    name: str
    rate: float
    headers: tuple[tuple[str, str], ...] = ()
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One request's outcome; times in seconds, ``intended`` from the start of the run."""

    stream: int
    intended: float
    lag: float
    """How late the generator sent it, after its intended time."""
    latency: float
    """From the intended send time to the end of the response (or the failure)."""
    status: int
    """The HTTP status, or a negative key of :data:`CLIENT_FAILURES`."""
    reason: str
    """``x-tailguard-reason`` of the response, if any."""


@dataclass
class LoadResult:
    records: list[Record]
    streams: Sequence[Stream]
    warmup: float
    seconds: float
    connections_opened: int = 0
    peak_connections: int = 0
    client_cpu: float = 0.0
    """CPU seconds this process used during the measured window."""
    marks: dict[str, float] = field(default_factory=dict)
    window: tuple[float, float] = (0.0, 0.0)
    """The measured window on the ``time.monotonic()`` clock."""


def poisson_schedule(streams: Sequence[Stream], seconds: float) -> list[tuple[float, int]]:
    """Intended send times ``(t, stream index)`` for ``seconds``, merged and sorted."""
    items: list[tuple[float, int]] = []
    for index, stream in enumerate(streams):
        if stream.rate <= 0:
            continue
        rng = random.Random(stream.seed)
        t = rng.expovariate(stream.rate)
        while t < seconds:
            items.append((t, index))
            t += rng.expovariate(stream.rate)
    items.sort()
    return items


class _Request:
    __slots__ = ("connection", "done", "handle", "intended", "lag", "stream")

    def __init__(self, stream: int, intended: float, lag: float) -> None:
        self.stream = stream
        self.intended = intended
        self.lag = lag
        self.done = False
        self.handle: asyncio.TimerHandle | None = None
        self.connection: _Connection | None = None


class _Connection(asyncio.Protocol):
    __slots__ = ("_buffer", "_client", "request", "transport")

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.request: _Request | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(buffer[:end]).split(b"\r\n")
        try:
            status = int(lines[0][9:12])
        except ValueError:
            self._client.respond(self, BAD_RESPONSE, "", keep_alive=False)
            return
        length = 0
        reason = ""
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-tailguard-reason":
                reason = value.strip().decode("latin-1")
            elif name == b"connection" and value.strip().lower() == b"close":
                keep_alive = False
        total = end + 4 + length
        if len(buffer) < total:
            return
        del buffer[:total]
        self._client.respond(self, status, reason, keep_alive=keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.lost(self)


class _Client:
    """The pool, the requests in flight and the records; all on one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        path: str,
        streams: Sequence[Stream],
        *,
        timeout: float,
        max_connections: int,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_connections = max_connections
        self.payloads = [
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in stream.headers)
                + "\r\n"
            ).encode("latin-1")
            for stream in streams
        ]
        self.idle: list[_Connection] = []
        self.open = 0
        self.opened = 0
        self.peak = 0
        self.pending = 0
        self.start = 0.0
        self.records: list[Record] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.all_sent = False
        self.drained = asyncio.Event()

    def send(self, stream: int, intended: float, now: float) -> None:
        request = _Request(stream, intended, now - intended)
        self.pending += 1
        idle = self.idle
        if idle:
            connection = idle.pop()
            self._write(connection, request)
        elif self.open < self.max_connections:
            self.open += 1
            self.peak = max(self.peak, self.open)
            request.handle = self.loop.call_later(self.timeout, self._expire, request)
            task = self.loop.create_task(self._connect(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self._finish(request, NO_CONNECTION, "")

    def _write(self, connection: _Connection, request: _Request) -> None:
        connection.request = request
        request.connection = connection
        if request.handle is None:
            request.handle = self.loop.call_later(self.timeout, self._expire, request)
        assert connection.transport is not None
        connection.transport.write(self.payloads[request.stream])

    async def _connect(self, request: _Request) -> None:
        try:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError:
            self.open -= 1
            if not request.done:
                self._finish(request, CONNECT_ERROR, "")
            return
        self.opened += 1
        if request.done:  # timed out while connecting: the connection is still good
            self.idle.append(connection)
            return
        self._write(connection, request)

    def respond(
        self, connection: _Connection, status: int, reason: str, *, keep_alive: bool
    ) -> None:
        request = connection.request
        connection.request = None
        if request is not None and not request.done:
            self._finish(request, status, reason)
        if keep_alive and status > 0 and request is not None:
            self.idle.append(connection)
        elif connection.transport is not None:
            connection.transport.abort()

    def lost(self, connection: _Connection) -> None:
        self.open -= 1
        request = connection.request
        connection.request = None
        if request is not None and not request.done:
            self._finish(request, CLOSED, "")
        if connection in self.idle:
            self.idle.remove(connection)

    def _expire(self, request: _Request) -> None:
        request.handle = None
        if request.done:
            return
        self._finish(request, TIMEOUT, "")
        connection = request.connection
        if connection is not None and connection.transport is not None:
            connection.request = None
            connection.transport.abort()  # a late response must not reach the next request

    def _finish(self, request: _Request, status: int, reason: str) -> None:
        request.done = True
        self.pending -= 1
        if not self.pending and self.all_sent:
            self.drained.set()
        if request.handle is not None:
            request.handle.cancel()
            request.handle = None
        self.records.append(
            Record(
                request.stream,
                request.intended - self.start,
                request.lag,
                self.loop.time() - request.intended,
                status,
                reason,
            )
        )

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.abort()
        self.idle.clear()


async def run_load(
    host: str,
    port: int,
    path: str,
    streams: Sequence[Stream],
    *,
    warmup: float,
    seconds: float,
    client_timeout: float,
    max_connections: int,
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Offer ``streams`` to ``http://host:port/path`` for ``warmup + seconds``, open loop.

    Waits for the last answers (at most ``client_timeout``), then closes every
    connection. ``on_window("start")`` and ``on_window("end")`` are called at
    the start and the end of the measured window (after the warm-up).
    """
    loop = asyncio.get_running_loop()
    schedule = poisson_schedule(streams, warmup + seconds)
    client = _Client(
        loop, host, port, path, streams, timeout=client_timeout, max_connections=max_connections
    )
    result = LoadResult(client.records, streams, warmup, seconds)

    def mark(name: str) -> None:
        result.marks[name] = time.process_time()
        if on_window is not None:
            on_window(name)

    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = client.start = loop.time() + 0.02
        result.window = (start + warmup, start + warmup + seconds)
        loop.call_at(start + warmup, mark, "start")
        loop.call_at(start + warmup + seconds, mark, "end")
        for offset, stream in schedule:
            at = start + offset
            now = loop.time()
            if at > now:
                await asyncio.sleep(at - now)
                now = loop.time()
            client.send(stream, at, now)
        client.all_sent = True
        if client.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.drained.wait(), client_timeout + 1.0)
        await asyncio.sleep(max(0.0, result.window[1] - loop.time()) + 0.001)  # "end" mark
    finally:
        client.close()
        if was_enabled:
            gc.enable()
    await asyncio.sleep(0)  # let the aborted transports call connection_lost
    result.connections_opened = client.opened
    result.peak_connections = client.peak
    result.client_cpu = result.marks.get("end", 0.0) - result.marks.get("start", 0.0)
    return result
