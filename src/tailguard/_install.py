"""``Tailguard.install``: the middleware, ``/metrics`` and OpenTelemetry, in the right order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from starlette.types import ASGIApp

from tailguard.telemetry import otel

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
    instrument: bool,
    tracer_provider: TracerProvider | None,
    exclude_spans: Sequence[str] | None,
    control_token: str | None,
    control_path: str,
) -> _App:
    from tailguard.middleware.asgi import TailguardMiddleware

    add_middleware = getattr(app, "add_middleware", None)
    if add_middleware is None:
        raise TypeError(
            f"install() needs a Starlette or FastAPI application, got {type(app).__name__}; "
            "for another ASGI app use TailguardMiddleware(app, guard=guard)"
        )
    if tracing:
        otel.check_options(exclude_spans)  # before anything changes
    endpoints: list[tuple[str, ASGIApp]] = []
    if metrics_path is not None:
        endpoints.append((_checked_path("metrics_path", metrics_path), _metrics_app(guard)))
    if control_token is not None:
        # Built before the app is touched: a bad token raises and changes nothing.
        from tailguard.chaos.control import ControlAPI

        path = _checked_path("control_path", control_path)
        control = ControlAPI(guard.chaos, token=control_token, snapshot=guard.snapshot, prefix=path)
        endpoints.append((path, control))
    guard.endpoints = tuple(endpoints)
    if endpoints:
        alternatives = "|".join(re.escape(path) for path, _ in endpoints)
        guard.endpoint_pattern = re.compile(f"(?:{alternatives})(?:/|$)")
    guard.tracing = tracing
    add_middleware(TailguardMiddleware, guard=guard)
    if tracing and instrument:
        # Added last, so outermost: the server span is current inside tailguard.
        otel.instrument(app, tracer_provider, exclude_spans=exclude_spans)
    elif tracing:
        from tailguard.telemetry.tracing import use_tracer_provider

        use_tracer_provider(tracer_provider)
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
