"""OpenTelemetry: the request's server span, annotated by tailguard, and tailguard's child spans.

The server span comes from one of two places. By default tailguard makes it
itself (:mod:`tailguard.telemetry.server_span`, the lean path); with
``install(server_spans="otel")``, :func:`instrument` puts OpenTelemetry's own
ASGI middleware outermost on the app (unless the app is instrumented already).
Either way tailguard's middleware finds the server span current and
annotates it through the helpers here: the route template, the deadline, the
admission decision, how the budget was spent, events for shedding and deadline
expiry, and child spans for what is worth seeing (queue waits, dependency
calls, spawned tasks).

Every helper that takes a ``span`` expects a *recording* one: callers get it
once per request from :func:`recording_span`, which is ``None`` for unsampled
requests, so those pay for one lookup and nothing else.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> from tailguard.telemetry.tracing import use_tracer_provider
>>> exporter = InMemorySpanExporter()
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(exporter))
>>> use_tracer_provider(provider)
>>> with provider.get_tracer("demo").start_as_current_span("GET /items/7"):
...     span = recording_span()
...     annotate_request(span, "GET", "/items/7", "/items/{item_id}", 0.1, "route")
...     dependency = start_dependency_span("inventory")
...     end_dependency_span(dependency, "ok", slot_wait=0.0)
>>> [span.name for span in exporter.get_finished_spans()]
['tailguard.dependency inventory', 'GET /items/{item_id}']
>>> use_tracer_provider(None)
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tailguard.telemetry.live import task_name
from tailguard.telemetry.tracing import tracer, use_tracer_provider

__all__ = [
    "DEFAULT_EXCLUDE_SPANS",
    "annotate_request",
    "check_options",
    "end_dependency_span",
    "end_task_span",
    "excluded_urls_from_env",
    "http_client_attributes",
    "instrument",
    "is_instrumented",
    "mark_instrumented",
    "record_budget",
    "record_deadline_exceeded",
    "record_queue_wait",
    "record_shed",
    "record_would",
    "recording_span",
    "start_dependency_span",
    "start_task_span",
]

DEFAULT_EXCLUDE_SPANS: Final = ("receive", "send")
"""The ASGI middleware's per-message spans tailguard leaves out by default.

One ``receive`` and one ``send`` span per ASGI message add about 120 µs a
request and say little: the server span already has the timing and status,
and tailguard's own events say why a request was slow or cut off.
"""

_SPAN_KINDS: Final = frozenset(DEFAULT_EXCLUDE_SPANS)
_INSTRUMENTED: Final = "_is_instrumented_by_opentelemetry"  # contrib instrumentors' marker


def excluded_urls_from_env() -> str:
    """``OTEL_PYTHON_ASGI_EXCLUDED_URLS``, or else ``OTEL_PYTHON_EXCLUDED_URLS``, or ``""``.

    >>> isinstance(excluded_urls_from_env(), str)
    True
    """
    return os.environ.get("OTEL_PYTHON_ASGI_EXCLUDED_URLS") or os.environ.get(
        "OTEL_PYTHON_EXCLUDED_URLS", ""
    )


# -- installing OpenTelemetry's middleware ----------------------------------------------


def is_instrumented(app: object) -> bool:
    """Whether ``app`` already gets server spans from OpenTelemetry.

    True after ``FastAPIInstrumentor``/``StarletteInstrumentor`` (they mark the
    app) or with an ``OpenTelemetryMiddleware`` among the app's middleware.

    >>> from starlette.applications import Starlette
    >>> is_instrumented(Starlette())
    False
    """
    if getattr(app, _INSTRUMENTED, False):
        return True
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    for middleware in getattr(app, "user_middleware", ()):
        cls = getattr(middleware, "cls", None)
        if isinstance(cls, type) and issubclass(cls, OpenTelemetryMiddleware):
            return True
    return False


def mark_instrumented(app: object) -> None:
    """Mark ``app`` as getting server spans, as OpenTelemetry's instrumentors do.

    ``FastAPIInstrumentor.instrument_app`` and its kin check the mark and
    leave a marked app alone, so a later call does not add a second server span.

    >>> from starlette.applications import Starlette
    >>> app = Starlette()
    >>> mark_instrumented(app)
    >>> is_instrumented(app)
    True
    """
    setattr(app, _INSTRUMENTED, True)


def instrument(
    app: Any,
    tracer_provider: trace.TracerProvider | None = None,
    *,
    exclude_spans: Iterable[str] | None = DEFAULT_EXCLUDE_SPANS,
    **options: Any,
) -> bool:
    """Add OpenTelemetry's ASGI middleware outermost on a Starlette/FastAPI ``app``.

    Call it after tailguard's middleware is added (``add_middleware`` puts the
    newest outermost), so the server span is current inside tailguard.
    tailguard's own spans come from ``tracer_provider`` too (``None``: the
    global provider). ``exclude_spans`` defaults to :data:`DEFAULT_EXCLUDE_SPANS`
    (``None`` or ``()`` keeps OpenTelemetry's per-message spans); ``options``
    go to ``OpenTelemetryMiddleware`` (``excluded_urls``, ``server_request_hook``,
    ...). An app that is instrumented already is left as it is. Returns whether
    the middleware was added.

    >>> from starlette.applications import Starlette
    >>> app = Starlette()
    >>> instrument(app), instrument(app)
    (True, False)
    >>> use_tracer_provider(None)
    """
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    excluded = check_options(exclude_spans, **options)
    add_middleware = getattr(app, "add_middleware", None)
    if add_middleware is None:
        raise TypeError(
            f"instrument() needs a Starlette or FastAPI application, got {type(app).__name__}; "
            "wrap other ASGI apps in OpenTelemetryMiddleware yourself"
        )
    use_tracer_provider(tracer_provider)
    if is_instrumented(app):
        return False
    add_middleware(
        OpenTelemetryMiddleware, tracer_provider=tracer_provider, exclude_spans=excluded, **options
    )
    mark_instrumented(app)
    return True


def check_options(
    exclude_spans: Iterable[str] | None = DEFAULT_EXCLUDE_SPANS, **options: Any
) -> list[str] | None:
    """Check :func:`instrument`'s options without touching an app; returns ``exclude_spans``.

    For callers that must refuse bad input before they change anything.

    >>> check_options(["send"])
    ['send']
    >>> check_options(["body"])
    Traceback (most recent call last):
    ...
    ValueError: exclude_spans: unknown span kind(s) ['body']; use 'receive', 'send'
    """
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    try:
        inspect.signature(OpenTelemetryMiddleware).bind(None, **options)
    except TypeError as exc:
        raise TypeError(f"instrument(): bad OpenTelemetryMiddleware option: {exc}") from None
    if exclude_spans is None:
        return None
    if isinstance(exclude_spans, str):
        raise TypeError(
            f"exclude_spans must be a list such as ['receive', 'send'], got {exclude_spans!r}"
        )
    excluded = list(exclude_spans)
    unknown = [kind for kind in excluded if kind not in _SPAN_KINDS]
    if unknown:
        raise ValueError(f"exclude_spans: unknown span kind(s) {unknown!r}; use 'receive', 'send'")
    return excluded or None


# -- the server span ----------------------------------------------------------------------


def recording_span() -> Span | None:
    """The current span if it is recording (the request is sampled), else ``None``.

    >>> recording_span() is None
    True
    """
    span = trace.get_current_span()
    return span if span.is_recording() else None


def annotate_request(
    span: Span,
    method: str,
    path: str,
    route: str | None,
    budget: float | None,
    source: str,
    into: dict[str, Any] | None = None,
    *,
    routed: bool = False,
) -> None:
    """Set the route template and the deadline on a request's server span.

    The ASGI middleware names spans ``"{method} {path}"``, one name per item
    id; with a template known the span is renamed ``"{method} {route}"``, and
    without one (a 404) just ``"{method}"``, as the HTTP semantic conventions
    ask. Names chosen by someone else are kept.
    ``source`` is ``"route"`` or the header the budget came from; the budget
    and its source are set only for a header (attributes cost ~0.5 µs each
    on the SDK's spans, and a route's budget is its configuration). With
    ``into``, the attributes are added to that dict (to be set in one call
    later, which is cheaper) instead of to the span. ``routed``: the span
    already has its name and ``http.route`` (tailguard's own server span
    starts with them); only the deadline is left.
    """
    attributes: dict[str, Any] = {} if into is None else into
    if not routed:
        if getattr(span, "name", None) == f"{method} {path}":
            # No route (a 404): just the method, so raw paths never become span names.
            span.update_name(f"{method} {route}" if route else method)
        if route:
            attributes["http.route"] = route
    if budget is not None and source != "route":
        # A route's own budget is configuration, the same on every span of the
        # route: only a caller's (header) budget is news. A deadline that fires
        # records its budget on its event either way.
        attributes["tailguard.deadline.budget_ms"] = budget * 1000.0
        attributes["tailguard.deadline.source"] = source
    if attributes and into is None:
        span.set_attributes(attributes)


def record_queue_wait(
    span: Span, limiter: str, started: float, ended: float, outcome: str = "granted"
) -> None:
    """The request waited for ``limiter`` from ``started`` to ``ended`` (``time.monotonic()``).

    Adds a ``tailguard.queue_wait <limiter>`` child span covering the wait,
    created after the fact so a request admitted at once costs no span, and
    ``tailguard.queue.wait_ms`` on the server span. ``outcome`` is
    ``"granted"`` or the shed reason (then also call :func:`record_shed`).
    """
    wait_ms = (ended - started) * 1000.0
    attributes: dict[str, Any] = {"tailguard.queue.wait_ms": wait_ms, "tailguard.limiter": limiter}
    if outcome == "granted":
        attributes["tailguard.admission"] = "queued"
    span.set_attributes(attributes)
    offset = time.time_ns() - time.monotonic_ns()
    child = tracer().start_span(
        f"tailguard.queue_wait {limiter}",
        context=trace.set_span_in_context(span),
        start_time=int(started * 1e9) + offset,
        attributes={
            "tailguard.limiter": limiter,
            "tailguard.queue.outcome": outcome,
            "tailguard.queue.wait_ms": wait_ms,
        },
    )
    child.end(end_time=int(ended * 1e9) + offset)


def record_shed(span: Span, reason: str, limiter: str, retry_after: float | None = None) -> None:
    """The request was shed: ``tailguard.admission=shed`` and a ``tailguard.shed`` event."""
    span.set_attributes(
        {
            "tailguard.admission": "shed",
            "tailguard.admission.reason": reason,
            "tailguard.limiter": limiter,
        }
    )
    event: dict[str, Any] = {"tailguard.reason": reason, "tailguard.limiter": limiter}
    if retry_after is not None:
        event["tailguard.retry_after_s"] = retry_after
    span.add_event("tailguard.shed", event)


def record_deadline_exceeded(span: Span, stage: str, budget: float | None = None) -> None:
    """The request's deadline fired during ``stage`` (e.g. ``"handler"``, ``"streaming"``)."""
    event: dict[str, Any] = {"tailguard.stage": stage}
    if budget is not None:
        event["tailguard.deadline.budget_ms"] = budget * 1000.0
    span.add_event("tailguard.deadline_exceeded", event)


def record_would(span: Span, what: str, attributes: Mapping[str, Any]) -> None:
    """Shadow mode: tailguard would have acted; a ``tailguard.would_<what>`` event
    (``shed``, ``exceed_deadline``) on ``span``, which went on as if it had not."""
    span.add_event(f"tailguard.would_{what}", dict(attributes))


def record_budget(
    span: Span,
    *,
    handler: float,
    queue: float | None = None,
    dependencies: Mapping[str, float] | None = None,
    into: dict[str, Any] | None = None,
) -> None:
    """How the request's time was spent, in milliseconds, as server span attributes.

    ``tailguard.budget.queue_ms``, ``tailguard.budget.handler_ms`` and one
    ``tailguard.budget.dependency.<name>_ms`` per dependency (names are the
    operator's, so the keys stay bounded). ``into``: see :func:`annotate_request`.
    """
    attributes: dict[str, Any] = {} if into is None else into
    attributes["tailguard.budget.handler_ms"] = handler * 1000.0
    if queue is not None:
        attributes["tailguard.budget.queue_ms"] = queue * 1000.0
    for name, seconds in (dependencies or {}).items():
        attributes[f"tailguard.budget.dependency.{name}_ms"] = seconds * 1000.0
    if into is None:
        span.set_attributes(attributes)


# -- child spans ---------------------------------------------------------------------------


def start_dependency_span(name: str, request: Any = None) -> Span | None:
    """Start ``tailguard.dependency <name>`` under the current span, if that one is recording.

    ``None`` for unsampled requests (and outside requests): pass the result
    to :func:`end_dependency_span` either way. The span is not made current;
    to parent client spans under it, wrap the call in
    ``opentelemetry.trace.use_span(span, end_on_exit=False)``.

    ``request``: the httpx/httpx2 request the call sends, if it is one. The
    span is then of kind CLIENT with the HTTP client attributes of the
    semantic conventions (``http.request.method``, ``server.address``,
    ``server.port``, ``url.full`` without credentials and with signature query
    values redacted); otherwise INTERNAL.
    """
    if not trace.get_current_span().is_recording():
        return None
    attributes: dict[str, Any] = {"tailguard.dependency.name": name}
    kind = SpanKind.INTERNAL
    if request is not None:
        kind = SpanKind.CLIENT
        http_client_attributes(request, attributes)
    return tracer().start_span(f"tailguard.dependency {name}", kind=kind, attributes=attributes)


_REDACTED_QUERY: Final = frozenset({"awsaccesskeyid", "signature", "sig", "x-goog-signature"})
"""Query keys whose values the semantic conventions ask to redact from ``url.full``."""


def http_client_attributes(request: Any, into: dict[str, Any]) -> None:
    """Add an httpx/httpx2 ``request``'s HTTP client span attributes to ``into``.

    >>> import httpx
    >>> into = {}
    >>> http_client_attributes(httpx.Request("GET", "https://u:p@api.example/v1?sig=x&a=1"), into)
    >>> into["server.address"], into["server.port"], into["url.full"]
    ('api.example', 443, 'https://api.example/v1?sig=REDACTED&a=1')
    """
    url = request.url
    scheme = url.scheme
    port = url.port
    if port is None:
        port = 443 if scheme == "https" else 80
    into["http.request.method"] = request.method
    into["server.address"] = url.host
    into["server.port"] = port
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
    if url.query:
        pairs = [
            (key, "REDACTED" if key.lower() in _REDACTED_QUERY else value)
            for key, value in url.params.multi_items()
        ]
        if any(value == "REDACTED" for _, value in pairs):
            url = url.copy_with(params=pairs)
    into["url.full"] = str(url)


def end_dependency_span(
    span: Span | None,
    outcome: str,
    *,
    slot_wait: float | None = None,
    error: BaseException | None = None,
    attributes: Mapping[str, Any] | None = None,
    status: int = 0,
) -> None:
    """End a span from :func:`start_dependency_span` (a no-op for ``None``).

    ``outcome`` is the metric's (``ok``, ``error``, ``rejected``,
    ``deadline_exceeded``, ``cancelled``); ``slot_wait`` the seconds spent
    waiting for a slot. An ``error`` other than a cancellation is recorded
    and marks the span failed; so does a call cut off by the deadline (its
    error is the cancellation) and, as the HTTP semantic conventions ask of
    client spans, an answer with ``status`` 400 or more (``error.type`` is
    the status code). ``attributes`` are added as they are (chaos marks
    injected faults this way).
    """
    if span is None:
        return
    values: dict[str, Any] = {"tailguard.dependency.outcome": outcome}
    if slot_wait is not None:
        values["tailguard.dependency.slot_wait_ms"] = slot_wait * 1000.0
    if status:
        values["http.response.status_code"] = status
    if attributes:
        values.update(attributes)
    if error is not None and not isinstance(error, asyncio.CancelledError):
        span.set_attributes(values)
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    elif outcome == "deadline_exceeded":
        values["error.type"] = "tailguard.DeadlineExceeded"
        span.set_attributes(values)
        span.set_status(Status(StatusCode.ERROR, "deadline exceeded"))
    elif status >= 400:
        values["error.type"] = str(status)
        span.set_attributes(values)
        span.set_status(Status(StatusCode.ERROR))
    else:
        span.set_attributes(values)
    span.end()


def start_task_span(
    coro: object, context: contextvars.Context | None, name: object = None
) -> tuple[Span, contextvars.Context]:
    """Start ``task <coroutine>`` for a task about to be created in ``context``.

    ``name`` is the task's name, if its creator gave one (see
    :func:`~tailguard.telemetry.live.task_name`: anyio's tasks are named by
    the coroutine they wrap).

    Returns the span and a copy of the creating context (``None``: the
    current one) with the span current in it, for the task to run in: spans
    the task starts, its own tasks' included, are its children.
    """
    ctx = contextvars.copy_context() if context is None else context.run(contextvars.copy_context)
    parent = ctx.run(otel_context.get_current)
    called = task_name(coro, name)
    span = tracer().start_span(
        f"task {called}", context=parent, attributes={"tailguard.task.coroutine": called}
    )
    ctx.run(otel_context.attach, trace.set_span_in_context(span, parent))
    return span, ctx


def end_task_span(span: Span, task: asyncio.Future[Any]) -> None:
    """Done callback: end a task's span with its state (finished, cancelled, exception)."""
    if task.cancelled():
        state = "cancelled"
    else:
        # Read without task.exception(): that would mark it retrieved and
        # silence asyncio's "exception was never retrieved" report.
        error = getattr(task, "_exception", None)
        if error is None:
            state = "finished"
        else:
            state = "exception"
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute("tailguard.task.state", state)
    span.end()
