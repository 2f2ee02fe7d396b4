"""The OpenTelemetry tracer tailguard's own spans come from.

``guard.install(app, tracer_provider=...)`` picks the provider; without one,
OpenTelemetry's global provider is used (a no-op until the service configures
one). Spans tailguard starts (queue waits, dependency calls, spawned tasks,
hedge attempts) are children of the current span, normally the server span of
``opentelemetry-instrumentation-asgi``.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> use_tracer_provider(TracerProvider())
>>> with tracer().start_as_current_span("example") as span:
...     span.is_recording()
True
>>> use_tracer_provider(None)
"""

from __future__ import annotations

from opentelemetry import trace

from tailguard._version import __version__

__all__ = ["tracer", "use_tracer_provider"]

_NAME = "tailguard"
_provider: trace.TracerProvider | None = None
_tracer: trace.Tracer | None = None


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Take tailguard's spans from ``provider`` (``None``: the global provider)."""
    global _provider, _tracer
    _provider = provider
    _tracer = None


def tracer() -> trace.Tracer:
    """The tracer for tailguard's spans, from the chosen provider."""
    global _tracer
    found = _tracer
    if found is None:
        if _provider is None:
            # The global provider may be replaced later: let OTel's proxy follow it.
            return trace.get_tracer(_NAME, __version__)
        found = _tracer = _provider.get_tracer(_NAME, __version__)
    return found
