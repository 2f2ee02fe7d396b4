from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.routing.inbound import (
    InboundDeadlines,
    parse_grpc_timeout,
    parse_milliseconds,
)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(b"250", 0.25), (b" 1000 ", 1.0), (b"1", 0.001), (b"999999999999", 999999999.999)],
)
def test_milliseconds(raw: bytes, seconds: float) -> None:
    assert parse_milliseconds(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw", [b"", b"0", b"-5", b"1.5", b"soon", b"1e3", b"1000000000000", b"\xff", b"+5"]
)
def test_unusable_milliseconds(raw: bytes) -> None:
    assert parse_milliseconds(raw) is None


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (b"100m", 0.1),
        (b"2S", 2.0),
        (b"1M", 60.0),
        (b"1H", 3600.0),
        (b"500u", 0.0005),
        (b"1000000n", 0.001),
        (b"99999999m", 99999.999),
    ],
)
def test_grpc_timeout(raw: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw", [b"", b"m", b"100", b"100x", b"0S", b"-1S", b"1.5S", b"123456789S", b"10 m"]
)
def test_unusable_grpc_timeout(raw: bytes) -> None:
    assert parse_grpc_timeout(raw) is None


@given(st.binary(max_size=24))
def test_parsers_never_raise(raw: bytes) -> None:
    for parse in (parse_milliseconds, parse_grpc_timeout):
        value = parse(raw)
        assert value is None or value > 0


def test_tightest_valid_header_wins() -> None:
    inbound = InboundDeadlines()
    headers = [
        (b"x-request-timeout-ms", b"80"),
        (b"grpc-timeout", b"50m"),
        (b"x-envoy-expected-rq-timeout-ms", b"garbage"),
        (b"other", b"1"),
    ]
    assert inbound.budget(headers) == (0.05, "grpc-timeout")
    assert inbound.budget([(b"x-envoy-expected-rq-timeout-ms", b"30")]) == (
        0.03,
        "x-envoy-expected-rq-timeout-ms",
    )
    assert inbound.budget([]) is None


def test_custom_header_and_disabled_formats() -> None:
    inbound = InboundDeadlines("X-Budget-Ms", grpc=False, envoy=False)
    assert inbound.budget([(b"x-budget-ms", b"20")]) == (0.02, "x-budget-ms")
    assert inbound.budget([(b"grpc-timeout", b"1m"), (b"x-request-timeout-ms", b"1")]) is None


@pytest.mark.parametrize("bad", ["", " x", "x "])
def test_bad_header_name(bad: str) -> None:
    with pytest.raises(ValueError, match="deadline_header"):
        InboundDeadlines(bad)
