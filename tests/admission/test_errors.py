from __future__ import annotations

import pickle

import pytest

from tailguard.admission import REASONS, Rejected


def test_reasons_are_a_small_fixed_set() -> None:
    assert REASONS == ("queue_full", "queue_timeout", "deadline", "tenant_limit", "priority")


@pytest.mark.parametrize("reason", REASONS)
def test_message_names_limiter_reason_and_retry_after(reason: str) -> None:
    exc = Rejected(reason, "orders", 1.5)  # type: ignore[arg-type]
    text = str(exc)
    assert "'orders'" in text
    assert reason in text
    assert "retry after 1.500s" in text
    assert (exc.reason, exc.limiter, exc.retry_after) == (reason, "orders", 1.5)


def test_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Rejected\.reason must be one of"):
        Rejected("busy", "orders", 0.0)  # type: ignore[arg-type]


def test_pickles_round_trip() -> None:
    exc = pickle.loads(pickle.dumps(Rejected("deadline", "db", 0.25)))
    assert (exc.reason, exc.limiter, exc.retry_after) == ("deadline", "db", 0.25)
