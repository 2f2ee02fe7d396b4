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


@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, math.inf])
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
