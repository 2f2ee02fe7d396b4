"""The metric table: every spec becomes a typed Catalog attribute, named by the conventions."""

from __future__ import annotations

import re
import typing

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tailguard.telemetry.catalog import BUCKETS, METRICS, SPECS, Catalog

_TYPES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
# Labels whose values come from configuration or small enums; never raw paths or ids.
_BOUNDED_LABELS = {
    "route", "method", "status_class", "outcome", "reason", "stage", "phase", "dependency",
    "tenant", "limiter", "kind", "pool", "action", "site", "helper", "event", "experiment",
    "target", "fault", "admission", "mode",
}  # fmt: skip


def test_every_spec_is_an_annotated_attribute_of_its_kind() -> None:
    hints = typing.get_type_hints(Catalog)
    catalog = Catalog(CollectorRegistry())
    for spec in METRICS:
        assert hints[spec.attr] is _TYPES[spec.kind], spec.name
        assert isinstance(getattr(catalog, spec.attr), _TYPES[spec.kind]), spec.name
    metric_hints = {name for name, hint in hints.items() if hint in _TYPES.values()}
    assert metric_hints == {spec.attr for spec in METRICS}


def test_names_follow_prometheus_conventions() -> None:
    assert len(SPECS) == len(METRICS)  # names are unique
    for spec in METRICS:
        assert re.fullmatch(r"tailguard_[a-z_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert (spec.buckets is not None) == (spec.kind == "histogram"), spec.name
        assert (spec.multiprocess_mode is not None) == (spec.kind == "gauge"), spec.name
        assert set(spec.labels) <= _BOUNDED_LABELS, spec.name
        assert spec.help.endswith(")") or spec.help.endswith("."), spec.name


def test_exposed_names_match_the_specs() -> None:
    registry = CollectorRegistry()
    Catalog(registry)
    exposed = {metric.name for metric in registry.collect()}
    # prometheus_client reports counters without their _total suffix.
    assert exposed == {spec.name.removesuffix("_total") for spec in METRICS}


def test_bucket_families_can_be_overridden_per_catalog() -> None:
    long_routes = (0.1, 1.0, 10.0, 30.0, 60.0)
    registry = CollectorRegistry()
    catalog = Catalog(registry, buckets={"latency": long_routes})
    catalog.request_duration.labels("/r", "GET", "admitted").observe(25.0)
    assert registry.get_sample_value(
        "tailguard_request_duration_seconds_bucket",
        {"route": "/r", "method": "GET", "admission": "admitted", "le": "30.0"},
    ) == pytest.approx(1.0)
    catalog.queue_wait.labels("q", "route").observe(0.0002)  # the wait family is untouched
    assert registry.get_sample_value(
        "tailguard_queue_wait_seconds_bucket",
        {"limiter": "q", "kind": "route", "le": str(BUCKETS["wait"][1])},
    ) == pytest.approx(1.0)
