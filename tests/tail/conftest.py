"""Fixtures for the tail helpers: a fresh metrics catalog, an in-memory span exporter, sites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tailguard.tail import sites
from tailguard.telemetry.catalog import Catalog, activate
from tailguard.telemetry.tracing import use_tracer_provider
from tests.tail.support import Metrics


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    catalog = Catalog(CollectorRegistry())
    activate(catalog)
    yield Metrics(catalog.registry)
    activate(None)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    yield exporter
    use_tracer_provider(None)
    provider.shutdown()


@pytest.fixture(autouse=True)
def fresh_sites() -> Iterator[None]:
    """Each test starts with no named call sites, and leaves none behind."""
    saved = dict(sites._sites), dict(sites._legs)
    sites._sites.clear()
    sites._legs.clear()
    yield
    for registry, before in zip((sites._sites, sites._legs), saved, strict=True):
        registry.clear()
        registry.update(before)
