"""``Tailguard.install``: the middleware, ``/metrics`` and OpenTelemetry, in the right order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.types import ASGIApp

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from tailguard.guard import Tailguard

__all__ = ["install"]

_App = TypeVar("_App")


def install(
    guard: Tailguard,
    app: _App,
    *,
    metrics_path: str | None,
    tracing: bool,
    tracer_provider: TracerProvider | None,
    exclude_spans: Sequence[str] | None,
) -> _App:
    from tailguard.middleware.asgi import TailguardMiddleware

    add_middleware = getattr(app, "add_middleware", None)
    if add_middleware is None:
        raise TypeError(
            f"install() needs a Starlette or FastAPI application, got {type(app).__name__}; "
            "for another ASGI app use TailguardMiddleware(app, guard=guard)"
        )
    endpoints: list[tuple[str, ASGIApp]] = []
    if metrics_path is not None:
        endpoints.append((_checked_path("metrics_path", metrics_path), _metrics_app(guard)))
    guard.endpoints = tuple(endpoints)
    add_middleware(TailguardMiddleware, guard=guard)
    if tracing:
        from tailguard.telemetry.tracing import use_tracer_provider

        use_tracer_provider(tracer_provider)
        _instrument(app, tracer_provider, exclude_spans)
    return app


def _checked_path(field: str, path: str) -> str:
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path != path.rstrip("/")
        or " " in path
    ):
        raise ValueError(f"{field} must be an absolute path like '/metrics', got {path!r}")
    return path


def _metrics_app(guard: Tailguard) -> ASGIApp:
    from tailguard.telemetry.exposition import metrics_app

    recorder = guard.recorder
    registry = recorder.catalog.registry if recorder is not None else None
    return metrics_app(registry, before_scrape=guard.refresher)


def _instrument(app: Any, provider: TracerProvider | None, exclude: Sequence[str] | None) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    already = any(m.cls is OpenTelemetryMiddleware for m in getattr(app, "user_middleware", ()))
    if already or getattr(app, "_is_instrumented_by_opentelemetry", False):
        return
    # Added last, so outermost: the server span is current inside tailguard.
    app.add_middleware(
        OpenTelemetryMiddleware,
        tracer_provider=provider,
        exclude_spans=list(exclude) if exclude is not None else None,
    )
