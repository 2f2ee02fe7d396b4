from __future__ import annotations

import dataclasses
import math

import pytest

from tailguard import RoutePolicy


def test_defaults_to_no_deadline() -> None:
    assert RoutePolicy().deadline is None


@pytest.mark.parametrize("value", [0.001, 1, 2.5])
def test_accepts_positive_numbers(value: float) -> None:
    assert RoutePolicy(deadline=value).deadline == value


@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, math.inf, 10**400])
def test_rejects_non_positive_or_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match=r"RoutePolicy\.deadline"):
        RoutePolicy(deadline=value)


@pytest.mark.parametrize("value", ["1", True, [1]])
def test_rejects_non_numbers(value: object) -> None:
    with pytest.raises(TypeError, match=r"RoutePolicy\.deadline"):
        RoutePolicy(deadline=value)  # type: ignore[arg-type]


def test_frozen_and_keyword_only() -> None:
    policy = RoutePolicy(deadline=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.deadline = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        RoutePolicy(1.0)  # type: ignore[misc]


def test_admission_fields() -> None:
    policy = RoutePolicy(
        deadline=1.0,
        max_concurrency=4,
        max_queue=8,
        queue_timeout=0.1,
        priority=9,
        tenant_concurrency=2,
        limiter="orders",
    )
    assert policy.admission
    assert not RoutePolicy(deadline=1.0).admission
    assert RoutePolicy(limiter="shared").admission


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_concurrency", 0, ValueError),
        ("max_concurrency", 1.5, TypeError),
        ("max_concurrency", True, TypeError),
        ("max_queue", -1, ValueError),
        ("queue_timeout", 0, ValueError),
        ("priority", -1, ValueError),
        ("priority", 10, ValueError),
        ("tenant_concurrency", 0, ValueError),
        ("limiter", "", ValueError),
    ],
)
def test_bad_admission_values_name_the_field(field: str, value: object, error: type) -> None:
    kwargs: dict[str, object] = {"max_concurrency": 2, field: value}
    with pytest.raises(error, match=rf"RoutePolicy\.{field}"):
        RoutePolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["max_queue", "queue_timeout", "tenant_concurrency"])
def test_queue_settings_need_a_limit(field: str) -> None:
    value = 0.5 if field == "queue_timeout" else 3
    with pytest.raises(ValueError, match=rf"RoutePolicy\.{field} needs max_concurrency"):
        RoutePolicy(**{field: value})  # type: ignore[arg-type]
