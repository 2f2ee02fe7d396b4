"""The lean server span: tailguard makes the request's SERVER span itself, through the SDK.

``opentelemetry-instrumentation-asgi`` costs about 250 µs a request with one
span on a small VM; most of it goes to building attributes the slow way
(URLs parsed twice, every header decoded once per lookup), to OTel HTTP
metrics that a service without a ``MeterProvider`` never sees, and to
wrapping every ASGI message. tailguard already knows the route, the status,
the timing and the outcome of every request, so :class:`ServerSpans` starts
the same span for less:

* the parent context comes from the globally configured propagator, reading
  the ASGI headers as the ASGI middleware does (names decoded and lowercased,
  values decoded as UTF-8), but with the headers indexed once per request;
* one SERVER span (INTERNAL when a span is already current, as the ASGI
  middleware does) from the configured tracer provider, with the name,
  attributes, status and error rules of the ASGI middleware under the same
  ``OTEL_SEMCONV_STABILITY_OPT_IN`` setting, excluded URLs
  (``OTEL_PYTHON_ASGI_EXCLUDED_URLS`` / ``OTEL_PYTHON_EXCLUDED_URLS``) and
  captured, sanitised headers
  (``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`` /
  ``..._RESPONSE`` / ``..._SANITIZE_FIELDS``);
* an unsampled request does no attribute work at all when the sampler is
  one of the SDK's own (they never read attributes); and when the SDK's
  ratio sampler (or ``ALWAYS_OFF``) decides a root request, tailguard draws
  the trace id from the provider's id generator and applies the sampler's
  bound itself, so a dropped request never enters ``start_span`` (a third of
  the cost of a 1 %-sampled service) and a kept one starts with the same id
  (see :class:`RootSampling`).

No per-message ``receive``/``send`` spans (the ASGI middleware's are off by
default in ``install()`` too), no hooks, no OTel HTTP metrics: tailguard's own
Prometheus metrics record the same durations. ``install(server_spans="otel")``
keeps OpenTelemetry's middleware for those. docs/tracing.md lists the
differences.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> exporter = InMemorySpanExporter()
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(exporter))
>>> spans = ServerSpans(provider)
>>> scope = {"type": "http", "method": "GET", "path": "/items/7", "scheme": "http",
...          "server": ("127.0.0.1", 8000), "headers": [(b"host", b"example.com")]}
>>> async def server_send(message): ...
>>> request = spans.start(scope, server_send)
>>> import asyncio
>>> asyncio.run(request.send({"type": "http.response.start", "status": 200}))
>>> request.finish()
>>> (span,) = exporter.get_finished_spans()
>>> span.name, span.kind.name, span.attributes["http.status_code"]
('GET /items/7', 'SERVER', 200)
"""

from __future__ import annotations

import contextlib
import random
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation._semconv import (
    _get_schema_url,
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
    _report_new,
    _report_old,
    _StabilityMode,
)
from opentelemetry.instrumentation.asgi import asgi_setter, collect_custom_headers_attributes
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.instrumentation.utils import http_status_to_status_code
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    ExcludeList,
    SanitizeValue,
    detect_synthetic_user_agent,
    get_custom_headers,
    normalise_request_header_name,
    normalise_response_header_name,
    parse_excluded_urls,
    redact_url,
    sanitize_method,
)
from starlette.types import Message, Send

from tailguard._version import __version__
from tailguard.telemetry.otel import excluded_urls_from_env

__all__ = ["RootSampling", "ServerSpan", "ServerSpans", "request_attributes"]

_response_propagator: Callable[[], Any] = get_global_response_propagator
_initialize: Callable[[], None] = _OpenTelemetrySemanticConventionStability._initialize

_NAME: Final = "tailguard"
_EMPTY: Final[list[bytes]] = []
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
"""The methods ``sanitize_method`` keeps as they are (it reads an env variable for the others)."""
_UNKNOWN: Final = object()
_SUPPRESS_PLAIN: Final = "suppress_instrumentation"  # what OTel's utils also check, for old code
_KNOWN_PROPAGATORS: Final = frozenset({TraceContextTextMapPropagator, W3CBaggagePropagator})
_AGENTS: dict[str, str | None] = {}
_AGENTS_KEPT: Final = 1024

# The sampler types whose decisions never read the span's attributes (exact types:
# a subclass may override should_sample). With one of these, an unsampled request
# builds no attributes.
_BLIND_SAMPLERS: Final = frozenset({StaticSampler, TraceIdRatioBased})
_PARENT_BASED: Final = frozenset({ParentBased, ParentBasedTraceIdRatio})
_DELEGATES: Final = (
    "_root",
    "_remote_parent_sampled",
    "_remote_parent_not_sampled",
    "_local_parent_sampled",
    "_local_parent_not_sampled",
)


def _decode(value: bytes) -> str:
    """An ASGI header item as the ASGI middleware decodes it."""
    try:
        return value.decode("utf-8")
    except ValueError:
        return value.decode("unicode_escape")


class _Headers:
    """A scope's request headers by lowercased name: indexed once, on first use.

    ``ASGIGetter`` decodes every header name (UTF-8) and lowercases it on each
    lookup; for ASCII names (every real HTTP header) ``bytes.lower()`` is the
    same thing, done once. Other names take the decoding path. An unsampled
    request with no trace headers never builds the index.
    """

    __slots__ = ("_by_name", "raw")

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.raw = scope.get("headers") or ()
        self._by_name: dict[bytes, list[bytes]] | None = None

    @property
    def by_name(self) -> dict[bytes, list[bytes]]:
        """Each header's raw values, by lowercased name."""
        by_name = self._by_name
        if by_name is None:
            by_name = self._by_name = {}
            for key, value in self.raw:
                name = key.lower() if key.isascii() else _decode(key).lower().encode("utf-8")
                found = by_name.get(name)
                if found is None:
                    by_name[name] = [value]
                else:
                    found.append(value)
        return by_name

    def has_any(self, names: frozenset[bytes]) -> bool:
        """Whether a header is one of ``names`` (lowercase ASCII), without the index.

        ASCII lowercasing is enough: the only non-ASCII letter whose lowercase
        is ASCII is the Kelvin sign (to ``k``), which no trace header name has.
        """
        for key, _ in self.raw:
            if key in names or (not key.islower() and key.lower() in names):
                return True
        return False

    def get(self, name: bytes) -> list[str] | None:
        """The decoded values of header ``name`` (lowercase), or ``None``, as ``ASGIGetter``."""
        values = self.by_name.get(name, _EMPTY)
        return [_decode(value) for value in values] if values else None


class _Getter(Getter[_Headers]):
    """The propagator's view of :class:`_Headers` (what ``ASGIGetter`` answers, indexed)."""

    def get(self, carrier: _Headers, key: str) -> list[str] | None:
        return carrier.get(key.lower().encode("utf-8"))

    def keys(self, carrier: _Headers) -> list[str]:
        return [_decode(key) for key, _ in carrier.raw]


_GETTER: Final = _Getter()


def _host_port_url(scope: Mapping[str, Any], headers: _Headers) -> tuple[str, Any, str]:
    """``(server host, port, url)`` exactly as the ASGI middleware's ``get_host_port_url_tuple``."""
    server = scope.get("server") or ["0.0.0.0", 80]
    port = server[1]
    suffix = ":" + str(port) if str(port) != "80" else ""
    host_header = headers.get(b"host")
    url_host = host_header[0] if host_header else server[0] + suffix
    url = scope.get("scheme", "http") + "://" + url_host + scope.get("path", "")
    return server[0] + suffix, port, url


def _set_int(result: dict[str, Any], key: str, value: Any) -> None:
    if type(value) is int:
        if value:
            result[key] = value
    elif value:
        with contextlib.suppress(ValueError, TypeError):
            result[key] = int(value)


def request_attributes(
    scope: Mapping[str, Any], mode: _StabilityMode = _StabilityMode.DEFAULT
) -> dict[str, Any]:
    """The request attributes the ASGI middleware puts on a server span, for ``mode``.

    The same keys and values as ``collect_request_attributes`` of
    ``opentelemetry-instrumentation-asgi`` (the differential tests compare
    them), with the headers read once.

    >>> request_attributes({"method": "GET", "path": "/a", "scheme": "http",
    ...                     "server": ("h", 80), "headers": []})["http.url"]
    'http://h/a'
    """
    return _request_attributes(scope, _Headers(scope), _report_old(mode), _report_new(mode))


def _request_attributes(  # one branch per attribute, in the ASGI middleware's order
    scope: Mapping[str, Any], headers: _Headers, old: bool, new: bool
) -> dict[str, Any]:
    server_host, port, url = _host_port_url(scope, headers)
    query = scope.get("query_string")
    if query and url:
        if isinstance(query, bytes):
            query = query.decode("utf8")
        url += "?" + urllib.parse.unquote(query)
    result: dict[str, Any] = {}
    scheme = scope.get("scheme")
    if scheme:
        if old:
            result["http.scheme"] = scheme
        if new:
            result["url.scheme"] = scheme
    if server_host:
        if old:
            result["http.host"] = server_host
        if new and not result.get("server.address"):
            result["server.address"] = server_host
    if port:
        if old:
            _set_int(result, "net.host.port", port)
        if new:
            _set_int(result, "server.port", port)
    flavor = scope.get("http_version")
    if flavor:
        if old:
            result["http.flavor"] = flavor
        if new:
            result["network.protocol.version"] = flavor
    path = scope.get("path")
    if path:
        if old:
            result["http.target"] = path
        if new:
            result["url.path"] = path
            if query:
                result["url.query"] = query
    if url and old:
        # Credentials need an "@" and redacted query values a "?": without
        # either, redact_url() parses the URL twice to return it unchanged.
        redacted = redact_url(url) if "@" in url or "?" in url else url
        if redacted:
            result["http.url"] = redacted
    method = scope.get("method", "")
    if method:
        if method in _METHODS:  # what sanitize_method() returns for them, whatever the env says
            original = normalized = method
        else:
            original = method.strip()
            normalized = sanitize_method(method).strip()
        if original != normalized and new and original:
            result["http.request.method_original"] = original
        if normalized:
            if old:
                result["http.method"] = normalized
            if new:
                result["http.request.method"] = normalized
    hosts = headers.get(b"host")
    if hosts and old:
        result["http.server_name"] = ",".join(hosts)
    agents = headers.get(b"user-agent")
    if agents:
        agent = agents[0]  # a str already: normalize_user_agent() would return it as it is
        if agent:
            if old:
                result["http.user_agent"] = agent
            if new:
                result["user_agent.original"] = agent
        synthetic = _synthetic(agent)
        if synthetic:
            result["user_agent.synthetic.type"] = synthetic
    client = scope.get("client")
    if client is not None:
        ip, client_port = client[0], client[1]
        if ip:
            if old:
                result["net.peer.ip"] = ip
            if new and not result.get("client.address"):
                result["client.address"] = ip
        if old:
            _set_int(result, "net.peer.port", client_port)
        if new:
            _set_int(result, "client.port", client_port)
    return result


def _synthetic(agent: str) -> str | None:
    """``detect_synthetic_user_agent``, remembered for the first agents seen (they repeat)."""
    found = _AGENTS.get(agent, _UNKNOWN)
    if found is _UNKNOWN:
        found = detect_synthetic_user_agent(agent)
        if len(_AGENTS) < _AGENTS_KEPT:
            _AGENTS[agent] = found
    return found  # type: ignore[return-value]


def _span_name(scope: Mapping[str, Any]) -> str:
    """The ASGI middleware's default span name: ``"{method} {path}"``."""
    path = scope.get("path", "").strip()
    method = scope.get("method", "")
    if method not in _METHODS:
        method = sanitize_method(method.strip())
    if method == "_OTHER":
        method = "HTTP"
    if method and path:
        return f"{method} {path}"
    name: str = path or method
    return name


def _routed_name(scope: Mapping[str, Any], name: str, route: str | None) -> str:
    """The name that ``annotate_request`` gives a span named ``name``.

    A span named ``"{method} {path}"`` (OTel's default) is renamed after the route
    template, or to the method alone with no route; other names stay.
    """
    method = scope["method"]
    if name == f"{method} {scope['path']}":
        return f"{method} {route}" if route else method
    return name


def _add_routed(attributes: dict[str, Any], route: str | None, shadow: bool) -> None:
    """What tailguard's annotation would set later, set at the start instead."""
    if route:
        attributes["http.route"] = route
    if shadow:
        attributes["tailguard.enforce"] = "shadow"


def _always_on(sampler: object) -> tuple[bool, ...]:
    """For each of :func:`_situation`'s parent situations, whether ``sampler`` leaves the
    decision to ``ALWAYS_ON`` (an SDK ``ParentBased`` sampler's delegates, or the sampler)."""
    if type(sampler) in _PARENT_BASED:
        return tuple(getattr(sampler, name, None) is ALWAYS_ON for name in _DELEGATES)
    return (sampler is ALWAYS_ON,) * len(_DELEGATES)


def _situation(parent: otel_context.Context) -> int:
    """Which delegate of ``ParentBased`` decides under ``parent`` (the order of _DELEGATES)."""
    found = trace.get_current_span(parent).get_span_context()
    if not found.is_valid:
        return 0
    sampled = found.trace_flags.sampled
    if found.is_remote:
        return 1 if sampled else 2
    return 3 if sampled else 4


class _NextTraceId(IdGenerator):
    """A tracer's id generator that can hand the SDK a trace id drawn just before.

    :class:`RootSampling` draws a root request's trace id itself; when the
    request is sampled, the SDK's ``start_span`` must start the span with that
    id, and asks its tracer's generator for one: this answers it, once, in the
    thread that drew it. Every other call goes to the provider's generator.
    """

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self.drawn = threading.local()

    def generate_trace_id(self) -> int:
        drawn = self.drawn
        trace_id: int | None = getattr(drawn, "trace_id", None)
        if trace_id is None:
            return self.inner.generate_trace_id()
        drawn.trace_id = None
        return trace_id

    def generate_span_id(self) -> int:
        return self.inner.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return self.inner.is_trace_id_random()


_TRACE_ID_LIMIT: Final = TraceIdRatioBased.TRACE_ID_LIMIT
_getrandbits: Final = random.getrandbits
_RANDOM_FLAG: Final[int] = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)  # SDK >= 1.39


class RootSampling:
    """The sampling decision of a root request, made before the SDK is asked.

    For a span with no parent, the SDK draws a trace id from its provider's
    generator and asks the sampler; the SDK's ``TraceIdRatioBased`` (alone or
    as a ``ParentBased`` root) keeps the span when the id's low 64 bits are
    under its ``bound``, and ``ALWAYS_OFF`` never does. :meth:`start` does the
    same draw and test: a dropped request gets the ``NonRecordingSpan`` the
    SDK would have made (same ids, flags and empty trace state) without
    ``start_span``; a kept one goes through ``start_span``, handed the drawn
    trace id, so the sampler decides the same and span processors see it as
    usual. Only for a tracer whose SDK self-metrics are off (they count dropped
    spans too); :meth:`for_tracer` says ``None`` otherwise.

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    >>> sampling = RootSampling.for_tracer(provider.get_tracer("doc"))
    >>> sampling.drop().is_recording()
    False
    """

    __slots__ = ("bound", "enabled", "flags", "ids", "plain", "tracer")

    def __init__(self, tracer: SdkTracer, ids: _NextTraceId, bound: int) -> None:
        self.tracer = tracer
        self.ids = ids
        self.bound = bound
        # The SDK's default generator: random.getrandbits, drawn again on a zero (invalid) id.
        self.plain = type(ids.inner) is RandomIdGenerator
        # A tracer a configurator disables makes invalid spans without drawing ids.
        self.enabled: Callable[[], bool] | None = getattr(tracer, "_is_enabled", None)
        random_ids = ids.is_trace_id_random() if _RANDOM_FLAG else False
        self.flags = TraceFlags(TraceFlags.DEFAULT | (_RANDOM_FLAG if random_ids else 0))

    @classmethod
    def for_tracer(cls, tracer: object) -> RootSampling | None:
        """The root decision for an SDK ``tracer`` whose root sampler is the SDK's ratio
        sampler or ``ALWAYS_OFF``; ``None`` for any other tracer or sampler."""
        if type(tracer) is not SdkTracer:
            return None
        sampler = tracer.sampler
        root = getattr(sampler, "_root", None) if type(sampler) in _PARENT_BASED else sampler
        if type(root) is TraceIdRatioBased:
            bound = root.bound
        elif root is ALWAYS_OFF:
            bound = 0
        else:
            return None
        metrics = getattr(tracer, "_tracer_metrics", None)
        if metrics is not None and type(metrics).__name__ != "NoOpTracerMetrics":
            return None
        ids = tracer.id_generator
        if not isinstance(ids, _NextTraceId):
            # The tracer is the provider's, shared by every get_tracer("tailguard"):
            # wrapped once, and the wrapper passes every other call through.
            ids = tracer.id_generator = _NextTraceId(ids)
        return cls(tracer, ids, bound)

    def drop(self) -> NonRecordingSpan | None:
        """The span of a root request the sampler drops, or ``None``: ask ``start_span``.

        ``None`` when the request is kept (the SDK's next trace id is then the
        one drawn here) or when the tracer is disabled.
        """
        enabled = self.enabled
        if enabled is not None and not enabled():
            return None
        ids = self.ids
        if self.plain:  # RandomIdGenerator's draws, without its two calls
            trace_id = _getrandbits(128) or ids.inner.generate_trace_id()
        else:
            trace_id = ids.inner.generate_trace_id()
        if trace_id & _TRACE_ID_LIMIT < self.bound:
            ids.drawn.trace_id = trace_id
            return None
        span_id = (_getrandbits(64) if self.plain else 0) or ids.inner.generate_span_id()
        return NonRecordingSpan(SpanContext(trace_id, span_id, False, self.flags))


def _known_fields(textmap: object) -> frozenset[bytes] | None:
    """The header names of a propagator made of W3C trace context and baggage only, else None.

    For those, a request with none of the headers extracts to the context given.
    """
    parts: list[Any] | None = (
        getattr(textmap, "_propagators", None)
        if type(textmap) is CompositePropagator
        else [textmap]
    )
    if parts is None or any(type(part) not in _KNOWN_PROPAGATORS for part in parts):
        return None
    return frozenset(field.lower().encode("utf-8") for part in parts for field in part.fields)


def _blind(sampler: object) -> bool:
    """Whether ``sampler`` decides without reading attributes (an SDK sampler, all the way down)."""
    kind = type(sampler)
    if kind in _BLIND_SAMPLERS:
        return True
    if kind in _PARENT_BASED:
        delegates = [getattr(sampler, name, None) for name in _DELEGATES]
        return all(delegate is not None and _blind(delegate) for delegate in delegates)
    return False


class ServerSpans:
    """Makes each request's server span: configured once per app by ``install()``.

    ``tracer_provider``: where spans go (``None``: the global provider).
    ``excluded_urls``: comma-separated regular expressions matched against
    ``scheme://host/path`` (``None``: from the environment, see
    :func:`excluded_urls_from_env`). The semantic conventions follow
    ``OTEL_SEMCONV_STABILITY_OPT_IN`` as OpenTelemetry's instrumentations
    read it (once per process); captured headers follow the
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` variables.

    >>> ServerSpans().mode.value in ("default", "http", "http/dup")
    True
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        excluded_urls: str | None = None,
    ) -> None:
        _initialize()
        mode = _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
            _OpenTelemetryStabilitySignalType.HTTP
        )
        self.mode = mode
        self.old = _report_old(mode)
        self.new = _report_new(mode)
        self.tracer = trace.get_tracer(
            _NAME, __version__, tracer_provider, schema_url=_get_schema_url(mode)
        )
        # SDK tracers carry their provider's sampler; a proxy (global provider not
        # set yet) does not, and gets its attributes up front, as OTel gives them.
        sampler = getattr(self.tracer, "sampler", None)
        self.lazy = _blind(sampler)
        # Per parent situation (see _situation), whether the sampler that decides is
        # ALWAYS_ON; None when none is.
        sure = _always_on(sampler) if self.lazy else None
        self.sure = sure if sure is not None and any(sure) else None
        self.roots = RootSampling.for_tracer(self.tracer) if self.lazy else None
        self._textmap: object = None
        self._fields: frozenset[bytes] | None = None
        urls = excluded_urls_from_env() if excluded_urls is None else excluded_urls
        self.excluded: ExcludeList | None = parse_excluded_urls(urls) if urls else None
        self.capture_request = (
            get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST) or None
        )
        self.capture_response = (
            get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE) or None
        )
        self.sanitize = SanitizeValue(
            get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS) or []
        )

    def attributes_for(self, scope: Mapping[str, Any], headers: _Headers) -> dict[str, Any]:
        """The request attributes of ``scope`` (see :func:`request_attributes`)."""
        return _request_attributes(scope, headers, self.old, self.new)

    def start(
        self,
        scope: Mapping[str, Any],
        send: Send,
        *,
        routed: bool = False,
        route: str | None = None,
        shadow: bool = False,
    ) -> ServerSpan | None:
        """Start the span of an http ``scope`` and make it current; ``None``: not traced.

        Not traced: instrumentation is suppressed in the current context, the
        URL is excluded, or FastAPI's native telemetry made the server span.
        Otherwise the caller sends the response through
        :meth:`ServerSpan.send` (``send`` is the server's) when
        :attr:`ServerSpan.watches_messages`, and calls :meth:`ServerSpan.finish`
        once the request is over, in the same context.

        ``routed``: the request's route template is known (``route``, ``None``
        for no route). When the sampler reads no attributes, the span then
        starts with the name and ``http.route`` that tailguard's annotation
        would give it later (:func:`tailguard.telemetry.otel.annotate_request`),
        one rename and one attribute call fewer, and :attr:`ServerSpan.routed` says so;
        ``shadow`` (a request in shadow mode) then adds ``tailguard.enforce="shadow"``
        in the same call.
        """
        current = otel_context.get_current()
        # is_http_instrumentation_enabled(), reading the current context once.
        if (
            current.get(_SUPPRESS_INSTRUMENTATION_KEY)
            or current.get(_SUPPRESS_PLAIN)
            or current.get(_SUPPRESS_HTTP_INSTRUMENTATION_KEY)
        ):
            return None
        native = scope.get("fastapi.telemetry")
        if native is not None and getattr(native, "span", None) is not None:
            # FastAPI's own telemetry (FastAPI >= 0.16x) made the request's server span
            # and made it current: annotated, as the span of an instrumented app is.
            return None
        headers = _Headers(scope)
        excluded = self.excluded
        if excluded is not None and excluded.url_disabled(_host_port_url(scope, headers)[2]):
            return None
        root = False  # known to have no parent span
        # get_current_span(), without its call when no span is set at all (most requests).
        if current.get(_SPAN_KEY) is None or trace.get_current_span(current) is INVALID_SPAN:
            kind = SpanKind.SERVER
            textmap = propagate.get_global_textmap()
            if textmap is not self._textmap:
                self._textmap, self._fields = textmap, _known_fields(textmap)
            fields = self._fields
            if fields is not None and not headers.has_any(fields):
                # W3C trace context and baggage with none of their headers: the
                # propagator would hand back the context it was given.
                parent, root = current, True
            else:
                parent = textmap.extract(headers, current, getter=_GETTER)
        else:
            parent = current
            kind = SpanKind.INTERNAL
        sure = self.sure
        situation = 0 if root or (sure is None and self.roots is None) else _situation(parent)
        routed = routed and self.lazy  # a sampler that reads them sees OTel's name and attributes
        if sure is not None and sure[situation]:
            # The sampler that decides is ALWAYS_ON: the attributes go in at the start,
            # as the ASGI middleware passes them, in one step.
            attributes = self.attributes_for(scope, headers)
            name = _span_name(scope)
            if routed:
                name = _routed_name(scope, name, route)
                _add_routed(attributes, route, shadow)
            span = self.tracer.start_span(name, parent, kind, attributes)
            recording = span.is_recording()
            extra = self._captured(scope) if kind is SpanKind.SERVER else None
            if extra:
                span.set_attributes(extra)
        elif self.lazy:
            roots = self.roots
            dropped = roots.drop() if roots is not None and situation == 0 else None
            if dropped is not None:
                span, recording = dropped, False
            else:
                name = _span_name(scope)
                if routed:
                    name = _routed_name(scope, name, route)
                span = self.tracer.start_span(name, parent, kind)
                recording = span.is_recording()
                if recording:  # unsampled requests build no attributes at all
                    attributes = self.attributes_for(scope, headers)
                    if routed:
                        _add_routed(attributes, route, shadow)
                    if kind is SpanKind.SERVER:
                        attributes.update(self._captured(scope) or {})
                    span.set_attributes(attributes)
        else:
            # A sampler that may read attributes gets them, as from the ASGI middleware,
            # which then sets them again on the span (the sampler may have changed them).
            attributes = self.attributes_for(scope, headers)
            span = self.tracer.start_span(_span_name(scope), parent, kind, attributes)
            recording = span.is_recording()
            if kind is SpanKind.SERVER:
                attributes.update(self._captured(scope) or {})
            span.set_attributes(attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return ServerSpan(self, span, kind, token, send, routed, recording)

    def _captured(self, scope: Mapping[str, Any]) -> dict[str, list[str]] | None:
        """The request headers to capture (``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_...``)."""
        if not self.capture_request:
            return None
        return collect_custom_headers_attributes(
            cast("dict[str, Any]", scope),
            self.sanitize,
            self.capture_request,
            normalise_request_header_name,
        )


class ServerSpan:
    """One request's server span, from :meth:`ServerSpans.start` to :meth:`finish`."""

    __slots__ = ("_send", "ended", "kind", "recording", "routed", "span", "spans", "token")

    def __init__(
        self,
        spans: ServerSpans,
        span: Span,
        kind: SpanKind,
        token: Token[otel_context.Context],
        send: Send,
        routed: bool = False,
        recording: bool | None = None,
    ) -> None:
        self.spans = spans
        self.span = span
        self.kind = kind
        self.token = token
        self._send = send
        self.ended = False
        self.routed = routed
        """Whether the span started with its route's name and ``http.route`` (see ``start``)."""
        self.recording = span.is_recording() if recording is None else recording
        """Whether the span recorded when it started (the request is sampled)."""

    @property
    def watches_messages(self) -> bool:
        """Whether the response's messages must pass through :meth:`send`.

        A recording span takes the status from them; any span injects a
        response propagator's headers (``traceresponse``) if one is set.
        """
        return self.recording or _response_propagator() is not None

    def send(self, message: Message) -> Awaitable[None]:
        """Send ``message`` to the server, as the ASGI middleware's wrapped ``send`` does.

        The response's start sets the status attributes and the span status
        (5xx is an error, 4xx is not, as for server spans), and captures the
        configured response headers; the last body message ends the span,
        once the server has taken it. A plain function returning the server's
        awaitable (no coroutine per message) but for the last message.
        """
        span = self.span
        kind = message["type"]
        if kind == "http.response.start" and span.is_recording():
            self._response_started(span, message)
        propagator = _response_propagator()
        if propagator is not None:
            propagator.inject(
                message,
                context=trace.set_span_in_context(span, otel_context.Context()),
                setter=asgi_setter,
            )
        if kind == "http.response.body" and not message.get("more_body", False):
            return self._send_last(message)
        return self._send(message)

    async def _send_last(self, message: Message) -> None:
        await self._send(message)
        self.end()

    def _response_started(self, span: Span, message: Message) -> None:
        spans = self.spans
        attributes: dict[str, Any] = {}
        if self.kind is SpanKind.SERVER and spans.capture_response and "headers" in message:
            attributes.update(
                collect_custom_headers_attributes(
                    cast("dict[str, Any]", message),
                    spans.sanitize,
                    spans.capture_response,
                    normalise_response_header_name,
                )
            )
        code = message["status"]
        if not code:
            if attributes:
                span.set_attributes(attributes)
            return
        try:
            status = int(code)
        except ValueError:
            status = -1
        if status < 0:
            if spans.new:
                attributes["error.type"] = str(code)
            span.set_attributes(attributes)
            span.set_status(Status(StatusCode.ERROR, "Non-integer HTTP status: " + str(code)))
            return
        outcome = http_status_to_status_code(status, server_span=True)
        if spans.old:
            attributes["http.status_code"] = status
        if spans.new:
            attributes["http.response.status_code"] = status
            if outcome is StatusCode.ERROR:
                attributes["error.type"] = str(code)
        span.set_attributes(attributes)
        if outcome is StatusCode.ERROR:
            # An UNSET status is ignored by every span (the API says so): not set at all.
            span.set_status(Status(outcome))

    def fail(self, error: BaseException) -> None:
        """An exception left the request: record it and mark the span failed.

        As ``trace.use_span`` does around the ASGI middleware's app: only
        ``Exception`` subclasses (a cancellation is not an error).
        """
        span = self.span
        if isinstance(error, Exception) and span.is_recording():
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def end(self) -> None:
        """End the span (once)."""
        if not self.ended:
            self.ended = True
            self.span.end()

    def finish(self) -> None:
        """The request is over: end the span if the response did not, and restore the context."""
        if self.recording and not self.ended:  # a span that never recorded has nothing to end
            self.end()
        otel_context.detach(self.token)
