"""The experiment document as a JSON Schema (draft 2020-12, as OpenAPI 3.1 uses).

Self-contained (no ``$ref``), so it can be embedded in an OpenAPI document or
handed to an editor as it is. It states everything a schema can: types,
required and unknown keys, ranges, lengths and patterns. What only the
validator knows — that an ``exc`` path names an exception class this process
has imported, that ``high >= low`` and ``p99 >= p50`` — is in the descriptions.

>>> EXPERIMENT_JSON_SCHEMA["required"]
['name', 'ttl', 'faults']
"""

from __future__ import annotations

from typing import Any

from tailguard.chaos import _fields as f
from tailguard.chaos.distributions import LARGEST_DRAW
from tailguard.chaos.faults import NO_BODY_STATUSES, RESERVED_HEADERS

__all__ = ["EXPERIMENT_JSON_SCHEMA"]

_Schema = dict[str, Any]


def _object(properties: _Schema, required: tuple[str, ...] = (), **extra: Any) -> _Schema:
    schema: _Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema | extra


def _seconds(description: str, *, positive: bool = False, **extra: Any) -> _Schema:
    bound = {"exclusiveMinimum": 0} if positive else {"minimum": 0}
    return {"type": "number", **bound, "description": description, **extra}


def _delay_seconds(description: str, *, positive: bool = False) -> _Schema:
    return _seconds(description, positive=positive, maximum=LARGEST_DRAW)


def _any_case(text: str) -> str:
    """A regex for ``text`` in any letter case (JSON Schema patterns take no flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


_RESERVED_HEADER = (
    "^(?:"
    + "|".join(_any_case(name) for name in sorted(RESERVED_HEADERS))
    + "|"
    + _any_case("proxy-")
    + ".*)$"
)
"""Header names a ``respond`` fault may not set: framing and hop-by-hop headers."""

_TEXT: _Schema = {"type": "string", "minLength": 1, "maxLength": f.MAX_TEXT}
_TEXTS: _Schema = {"type": "array", "items": _TEXT, "maxItems": f.MAX_SCOPES}

_DELAY: _Schema = {
    "description": "Seconds, or a distribution to draw each delay from.",
    "oneOf": [
        _delay_seconds("A fixed delay in seconds."),
        _object({"fixed": _delay_seconds("A fixed delay in seconds.")}, ("fixed",)),
        _object(
            {
                "uniform": _object(
                    {
                        "low": _delay_seconds("Seconds."),
                        "high": _delay_seconds("Seconds; at least low."),
                    },
                    ("low", "high"),
                )
            },
            ("uniform",),
        ),
        _object(
            {
                "lognormal": _object(
                    {
                        "p50": _delay_seconds("Median delay.", positive=True),
                        "p99": _delay_seconds(
                            "99th percentile; at least p50, and close enough to it that no "
                            "draw passes 1e300 seconds (the server says how close).",
                            positive=True,
                        ),
                    },
                    ("p50", "p99"),
                    description="A log-normal distribution fitted to two percentiles.",
                )
            },
            ("lognormal",),
        ),
        _object(
            {
                "pareto": _object(
                    {
                        "minimum": _delay_seconds("The smallest delay.", positive=True),
                        "alpha": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "description": "The tail's shape; smaller is heavier. Too small "
                            "an alpha for the minimum (below about 0.05) draws delays that "
                            "overflow, and is refused.",
                        },
                    },
                    ("minimum", "alpha"),
                )
            },
            ("pareto",),
        ),
        _object(
            {
                "empirical": {
                    "type": "array",
                    "items": _delay_seconds("An observed delay."),
                    "minItems": 1,
                    "maxItems": f.MAX_SAMPLES,
                    "description": "Observed delays; each injection draws one.",
                }
            },
            ("empirical",),
        ),
    ],
}

_COMMON: _Schema = {
    "target": {
        **_TEXT,
        "description": "A dependency name glob ('payments*'), or a route key for inbound faults.",
    },
    "rate": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "default": 1.0,
        "description": "The share of matching calls that get the fault.",
    },
}


def _fault(kind: str, description: str, fields: _Schema, required: tuple[str, ...] = ()) -> _Schema:
    properties = {"kind": {"const": kind}, **_COMMON, **fields}
    return _object(properties, ("kind", "target", *required), description=description)


_FAULT: _Schema = {
    "oneOf": [
        _fault("latency", "Delay the call, then make it.", {"delay": _DELAY}, ("delay",)),
        _fault(
            "raise",
            "Raise an exception instead of making the call.",
            {
                "exc": {
                    **_TEXT,
                    "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
                    "description": (
                        "Dotted path of an Exception subclass in a module the service has "
                        "already imported, e.g. 'builtins.ConnectionResetError'."
                    ),
                }
            },
            ("exc",),
        ),
        _fault(
            "respond",
            "Answer with this response instead of making the call.",
            {
                "status": {"type": "integer", "minimum": 200, "maximum": 599},
                "body": {
                    "type": "string",
                    "maxLength": f.MAX_BODY_TEXT,
                    "default": "",
                    "description": "Must be empty for 204, 205 and 304, which have no body.",
                },
                "headers": {
                    "type": "object",
                    "maxProperties": f.MAX_HEADERS,
                    "propertyNames": {
                        "pattern": f.TOKEN_PATTERN,
                        "maxLength": f.MAX_TEXT,
                        "not": {"pattern": _RESERVED_HEADER},
                    },
                    "description": (
                        "Extra response headers; framing and hop-by-hop ones (content-length, "
                        "transfer-encoding, connection, keep-alive, te, trailer, upgrade, "
                        "proxy-*) are refused."
                    ),
                    "additionalProperties": {"type": "string", "maxLength": 4096},
                },
            },
            ("status",),
        )
        | {
            # Statuses without a body (204, 205, 304) take none.
            "if": {
                "properties": {"status": {"enum": sorted(NO_BODY_STATUSES)}},
                "required": ["status"],
            },
            "then": {"properties": {"body": {"maxLength": 0}}},
        },
        _fault("hang", "Block until the deadline or cancellation.", {}),
        _fault("reset", "Raise the seam's connection-reset error.", {}),
    ]
}

EXPERIMENT_JSON_SCHEMA: _Schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tailguard chaos experiment",
    **_object(
        {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": f.MAX_NAME_LENGTH,
                "pattern": f.NAME_PATTERN,
            },
            "ttl": _seconds(
                "Seconds until the experiment stops by itself.",
                positive=True,
                maximum=f.MAX_TTL,
            ),
            "faults": {"type": "array", "items": _FAULT, "minItems": 1, "maxItems": f.MAX_FAULTS},
            "routes": {**_TEXTS, "description": "Route keys the experiment is limited to."},
            "tenants": {**_TEXTS, "description": "Tenants the experiment is limited to."},
            "header": {
                "type": "string",
                "pattern": f.TOKEN_PATTERN,
                "maxLength": f.MAX_TEXT,
                "description": "Only requests carrying this header, with the secret as its value.",
            },
            "secret": {
                "type": "string",
                "minLength": f.MIN_SECRET_LENGTH,
                "maxLength": f.MAX_TEXT,
                "pattern": "^[!-~]+$",
                "description": "The value the header must carry (compared in constant time).",
            },
            "abort": _object(
                {
                    "error_rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    "p99": _seconds("A p99 latency in seconds.", positive=True),
                    "window": _seconds(
                        "Seconds of history the conditions look at.",
                        positive=True,
                        maximum=f.MAX_TTL,
                    ),
                    "min_requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                },
                anyOf=[{"required": ["error_rate"]}, {"required": ["p99"]}],
                description=(
                    "Stop the experiment when the affected routes' error rate or p99 over "
                    "the window passes these."
                ),
            ),
            "allow_unknown": {
                "type": "boolean",
                "default": False,
                "description": (
                    "Start even if a fault's target or a route names no dependency or "
                    "route the service has declared (yet); refused otherwise."
                ),
            },
        },
        ("name", "ttl", "faults"),
    ),
    "dependentRequired": {"header": ["secret"], "secret": ["header"]},
}
