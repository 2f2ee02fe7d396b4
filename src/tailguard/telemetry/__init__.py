"""Metrics, spans and task tracing."""
