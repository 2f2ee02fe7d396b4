"""The lean server span against OpenTelemetry's ASGI middleware: the same requests, the same spans.

Two copies of one app, installed by ``guard.install`` with
``server_spans="otel"`` (OpenTelemetry's ``OpenTelemetryMiddleware``
outermost, as tailguard did before the lean path) and
``server_spans="tailguard"`` (the lean path), each with its own real SDK
provider and in-memory exporter. Every case sends the very same ASGI scope
and messages to both, and the server spans must match in name, kind, status
(code and description), parent, trace id, attributes and events; only
values that measure time (``tailguard.budget.*``, ``tailguard.queue.wait_ms``,
``exception.stacktrace``) are compared by key. Each case runs under each
``OTEL_SEMCONV_STABILITY_OPT_IN`` setting (old, new, both), with
request/response header capture and sanitisation and an excluded URL
configured through the environment variables OpenTelemetry documents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    get_global_response_propagator,
    set_global_response_propagator,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from tailguard import RoutePolicy, Tailguard

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TIMED = ("tailguard.budget.", "tailguard.queue.wait_ms", "exception.stacktrace")


@pytest.fixture(params=["", "http", "http/dup"], ids=["old", "new", "both"])
def semconv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One ``OTEL_SEMCONV_STABILITY_OPT_IN`` setting, with headers captured and a URL excluded."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", request.param)
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-custom-.*,authorization"
    )
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-answer,set-cookie"
    )
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "authorization,set-.*"
    )
    monkeypatch.setenv("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "/health")
    # OpenTelemetry reads the opt-in once per process: make both paths read it again.
    _OpenTelemetrySemanticConventionStability._initialized = False
    yield request.param
    _OpenTelemetrySemanticConventionStability._initialized = False


class Held:
    """Gates for the shed case: the first request holds the only slot until released."""

    def __init__(self) -> None:
        self.inside = asyncio.Event()
        self.release = asyncio.Event()


def make_app(held: Held) -> Starlette:
    async def item(request: Request) -> Response:
        return PlainTextResponse(request.path_params["item_id"])

    async def failing(request: Request) -> Response:
        return PlainTextResponse("no", status_code=500)

    async def raising(request: Request) -> Response:
        raise RuntimeError("the handler broke")

    async def answer(request: Request) -> Response:
        return PlainTextResponse(
            "headers", headers={"x-answer": "42", "set-cookie": "session=secret"}
        )

    async def stream(request: Request) -> Response:
        async def chunks() -> Any:
            for chunk in (b"a", b"b", b"c"):
                await asyncio.sleep(0)
                yield chunk

        return StreamingResponse(chunks())

    async def late_stream(request: Request) -> Response:
        async def chunks() -> Any:
            yield b"first"
            await asyncio.sleep(30)
            yield b"never"

        return StreamingResponse(chunks())

    async def slow(request: Request) -> Response:
        await asyncio.sleep(30)
        return PlainTextResponse("never")

    async def hold(request: Request) -> Response:
        held.inside.set()
        await held.release.wait()
        return PlainTextResponse("held")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/items/{item_id}", item, methods=["GET", "POST", "FOO"]),
            Route("/failing", failing),
            Route("/raising", raising),
            Route("/answer", answer),
            Route("/stream", stream),
            Route("/late-stream", late_stream),
            Route("/slow", slow),
            Route("/held", hold),
            Route("/health", health),
        ]
    )


@dataclass
class Path:
    """One way of making server spans: an app, its exporter, the shed gates."""

    server_spans: str
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    held: Held = field(default_factory=Held)
    app: ASGIApp | None = None

    def __post_init__(self) -> None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        guard = Tailguard(
            default=RoutePolicy(deadline=30.0),
            routes={
                "/slow": RoutePolicy(deadline=0.05),
                "/late-stream": RoutePolicy(deadline=0.05),
                "/held": RoutePolicy(max_concurrency=1, max_queue=0),
            },
            registry=CollectorRegistry(),
        )
        self.app = guard.install(
            make_app(self.held),
            tracer_provider=provider,
            server_spans=self.server_spans,  # type: ignore[arg-type]
        )

    def servers(self) -> list[ReadableSpan]:
        spans = [s for s in self.exporter.get_finished_spans() if s.kind.name != "INTERNAL"]
        self.exporter.clear()
        return sorted(spans, key=lambda span: span.end_time or 0)


def scope_for(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    query: bytes = b"",
    agent: bytes = b"curl/8.5.0",
) -> dict[str, Any]:
    """An http scope as uvicorn builds it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("10.1.2.3", 50123),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [
            (b"host", b"api.example:8000"),
            (b"user-agent", agent),
            *headers,
        ],
        "state": {},
    }


async def call(
    app: ASGIApp, scope: dict[str, Any], *, disconnect: bool = False
) -> tuple[list[Message], str | None]:
    """Drive one request; with ``disconnect`` the client leaves after sending it.

    Returns the messages sent and the name of the exception the server saw, if any.
    """
    sent: list[Message] = []
    requested = False
    gone = asyncio.Event()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if disconnect:
            gone.set()
        else:
            await asyncio.Event().wait()  # a client that stays until the response ends
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await app(dict(scope, headers=list(scope["headers"])), receive, send)
    except Exception as exc:  # the raising cases: the server would log it and close
        return sent, type(exc).__name__
    return sent, None


async def shed_pair(path: Path) -> None:
    """The first request holds the only slot; the second is shed with a 503."""
    first = asyncio.create_task(call(path.app, scope_for("GET", "/held")))  # type: ignore[arg-type]
    await asyncio.wait_for(path.held.inside.wait(), 30)  # a safety net, not a measurement
    second, _ = await call(path.app, scope_for("GET", "/held"))  # type: ignore[arg-type]
    assert second[0]["status"] == 503
    path.held.release.set()
    assert (await first)[0][0]["status"] == 200


CASES: dict[str, dict[str, Any]] = {
    "200": {"scope": ("GET", "/items/7")},
    "404": {"scope": ("GET", "/nowhere")},
    "500 answered": {"scope": ("GET", "/failing")},
    "500 raised": {"scope": ("GET", "/raising"), "error": "RuntimeError"},
    "streamed": {"scope": ("GET", "/stream")},
    "disconnect": {"scope": ("GET", "/slow"), "disconnect": True},
    "504": {"scope": ("GET", "/slow")},
    "aborted stream": {"scope": ("GET", "/late-stream"), "error": "DeadlineExceeded"},
    "traceparent": {
        "scope": (
            "GET",
            "/items/8",
            [
                (b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()),
                (b"tracestate", b"vendor=x"),
                (b"baggage", b"tenant=a"),
            ],
        )
    },
    "excluded": {"scope": ("GET", "/health")},
    "captured headers": {
        "scope": (
            "GET",
            "/answer",
            [
                (b"x-custom-one", b"1"),
                (b"x-custom-one", b"2"),
                (b"X-Custom-Two", b"two"),
                (b"authorization", b"Bearer secret"),
                (b"x-other", b"not captured"),
            ],
        )
    },
    "query, other method, bot": {
        "scope": (
            "FOO",
            "/items/9",
            [(b"user-agent", b"second agent, not read")],
            b"q=a%20b&sig=abc",
            b"Googlebot/2.1",
        )
    },
    "no user agent or host": {"scope": ("POST", "/items/10"), "bare": True},
}


def comparable(span: ReadableSpan) -> dict[str, Any]:
    attributes = {
        key: (None if key.startswith(TIMED) else value)
        for key, value in (span.attributes or {}).items()
    }
    events = [
        (
            event.name,
            {
                key: (None if key.startswith(TIMED) else value)
                for key, value in (event.attributes or {}).items()
            },
        )
        for event in span.events
    ]
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind,
        "status": (span.status.status_code, span.status.description),
        "parent": None if parent is None else (parent.trace_id, parent.span_id, parent.is_remote),
        "trace_id": span.context.trace_id if parent is not None else "random",
        "attributes": attributes,
        "events": events,
    }


async def spans_for(
    path: Path, case: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[Message], str | None]:
    scope = scope_for(*case["scope"])
    if case.get("bare"):
        scope["headers"] = []
    sent, error = await asyncio.wait_for(
        call(path.app, scope, disconnect=case.get("disconnect", False)),  # type: ignore[arg-type]
        30,  # a safety net, not a measurement
    )
    return [comparable(span) for span in path.servers()], sent, error


@pytest.mark.parametrize("case", list(CASES))
async def test_the_lean_span_is_the_asgi_middlewares_span(semconv: str, case: str) -> None:
    otel, lean = Path("otel"), Path("tailguard")
    expected, sent, error = await spans_for(otel, CASES[case])
    found, sent_lean, error_lean = await spans_for(lean, CASES[case])
    assert found == expected
    assert (sent_lean, error_lean) == (sent, error)  # the client and the server see the same
    assert error == CASES[case].get("error")
    if case == "excluded":
        assert expected == []
    else:
        assert len(expected) == 1
    if case == "traceparent":
        assert expected[0]["parent"] == (int(TRACE_ID, 16), int(PARENT_ID, 16), True)


async def test_a_shed_and_the_request_that_held_the_slot(semconv: str) -> None:
    otel, lean = Path("otel"), Path("tailguard")
    await shed_pair(otel)
    await shed_pair(lean)
    expected = [comparable(span) for span in otel.servers()]
    assert [comparable(span) for span in lean.servers()] == expected
    statuses = [
        span["attributes"].get("http.status_code")
        or span["attributes"]["http.response.status_code"]
        for span in expected
    ]
    assert statuses == [503, 200]


@pytest.fixture
def traceresponse() -> Iterator[None]:
    before = get_global_response_propagator()
    set_global_response_propagator(TraceResponsePropagator())
    yield
    set_global_response_propagator(before)


async def test_a_response_propagator_writes_the_same_headers(
    semconv: str, traceresponse: None
) -> None:
    headers = [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())]
    answers = []
    for server_spans in ("otel", "tailguard"):
        path = Path(server_spans)
        sent, _ = await call(path.app, scope_for("GET", "/items/1", headers))  # type: ignore[arg-type]
        (span,) = path.servers()
        own = f"00-{TRACE_ID}-{span.context.span_id:016x}-01".encode()
        answers.append(
            [
                [(k, v.replace(own, b"<server span>")) for k, v in message.get("headers", [])]
                for message in sent
            ]
        )
    assert answers[1] == answers[0]
    assert (b"traceresponse", b"<server span>") in answers[0][0]
