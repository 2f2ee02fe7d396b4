"""Fixtures for the tail helpers: a request with its own catalog, a span exporter, sites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tailguard import _context
from tailguard.tail import sites
from tailguard.telemetry.catalog import Catalog
from tailguard.telemetry.tracing import use_tracer_provider
from tests.tail.support import Metrics, Request


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """The test runs inside a request whose guard records into a fresh catalog; read it here.

    The helpers record into the catalog of the request they run in, so the
    test's own task (and every task it starts) is that request's.
    """
    catalog = Catalog(CollectorRegistry())
    token = _context.current.set(_context.Frame(None, Request(catalog)))
    yield Metrics(catalog.registry)
    _context.current.reset(token)


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
