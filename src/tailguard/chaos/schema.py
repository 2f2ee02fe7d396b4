"""Experiments as data: the JSON/YAML form shared by experiment files and the control API.

>>> from tailguard.chaos.schema import experiment_from_dict, experiment_to_dict
>>> experiment = experiment_from_dict({
...     "name": "slow-inventory",
...     "ttl": 300,
...     "faults": [{"kind": "latency", "target": "inventory", "rate": 0.3,
...                 "delay": {"lognormal": {"p50": 0.05, "p99": 0.5}}}],
...     "routes": ["GET /items/*"],
... })
>>> experiment.name, experiment.ttl
('slow-inventory', 300.0)
>>> experiment_to_dict(experiment)["faults"][0]["delay"]
{'lognormal': {'p50': 0.05, 'p99': 0.5}}

Validation is strict and complete before anything is built: unknown keys,
wrong types, non-finite numbers and out-of-range values raise
:class:`ExperimentError` naming the field (``faults[0].rate``), and nothing is
half-applied. The full form is in ``docs/chaos-control.md`` and, as a JSON
Schema, in :data:`EXPERIMENT_JSON_SCHEMA`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from tailguard.chaos import _fields as f
from tailguard.chaos._fields import ExperimentError, parse_json
from tailguard.chaos._jsonschema import EXPERIMENT_JSON_SCHEMA
from tailguard.chaos.distributions import (
    LARGEST_DRAW,
    Empirical,
    Fixed,
    LogNormal,
    Pareto,
    Uniform,
)
from tailguard.chaos.experiment import AbortWhen, Experiment
from tailguard.chaos.faults import Fault, Hang, Latency, Raise, Reset, Respond, reserved_header

__all__ = [
    "EXPERIMENT_JSON_SCHEMA",
    "MAX_TTL",
    "ExperimentError",
    "experiment_from_dict",
    "experiment_to_dict",
    "load_experiment",
    "read_experiment_file",
]

MAX_TTL = f.MAX_TTL

_T = TypeVar("_T")
_TOP_REQUIRED = ("name", "ttl", "faults")
_TOP_OPTIONAL = ("routes", "tenants", "header", "secret", "abort", "allow_unknown")
_FAULT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required besides kind and target, optional besides rate)
    "latency": (("delay",), ()),
    "raise": (("exc",), ()),
    "respond": (("status",), ("body", "headers")),
    "hang": ((), ()),
    "reset": ((), ()),
}
_DELAY_KINDS = ("fixed", "uniform", "lognormal", "pareto", "empirical")


# The runtime classes word their errors "Owner: field must ..." or "experiment 'x': routes[0]: ...".
_OWNER = re.compile(r"^(?:experiment '[^']*'|[A-Za-z]+): ")
_FIELD = re.compile(r"^([a-z_0-9]+)(\[\d+\])?(?::\s*|\s+)")
_RUNTIME_FIELDS = frozenset(
    {
        *("ttl", "routes", "tenants", "header", "secret", "abort", "faults", "allow_unknown"),
        *("target", "rate", "delay", "exc", "status", "body", "headers"),
        *("seconds", "low", "high", "p50", "p99", "minimum", "alpha", "samples"),
        *("error_rate", "window", "min_requests"),
    }
)


def _build(path: str, make: Callable[[], _T]) -> _T:
    """Construct a runtime object; its ``ValueError`` becomes one naming the field it names."""
    try:
        return make()
    except (ValueError, TypeError) as exc:
        message = str(exc)
        owner = _OWNER.match(message)
        if owner is not None:
            message = message[owner.end() :]
        field = _FIELD.match(message)
        if field is not None and field[1] in _RUNTIME_FIELDS:
            path = f.join(path, field[1] + (field[2] or ""))
            message = message[field.end() :]
        raise ExperimentError(path, message) from exc


def experiment_from_dict(data: object) -> Experiment:
    """Validate a decoded JSON/YAML document and build the :class:`Experiment` it describes.

    Raises :class:`ExperimentError` (a ``ValueError``) naming the first bad field.

    >>> try:
    ...     experiment_from_dict({"name": "x", "ttl": 60, "faults": [], "colour": "red"})
    ... except ExperimentError as error:
    ...     print(error.field, "-", error.message)
    ... # doctest: +NORMALIZE_WHITESPACE
    colour - unknown field; expected: name, ttl, faults, routes, tenants, header, secret, abort,
    allow_unknown
    """
    doc = f.fields(data, "", required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
    name = f.name(doc["name"], "name")
    ttl = f.number(doc["ttl"], "ttl", above=0, maximum=MAX_TTL, unit=" seconds (24 h)")
    faults_doc = doc["faults"]
    if not isinstance(faults_doc, list | tuple):
        raise ExperimentError("faults", f"must be an array, got {f.kind_of(faults_doc)}")
    if not 1 <= len(faults_doc) <= f.MAX_FAULTS:
        raise ExperimentError(
            "faults", f"must hold 1 to {f.MAX_FAULTS} faults, got {len(faults_doc)}"
        )
    faults = [_fault(fault, f"faults[{index}]") for index, fault in enumerate(faults_doc)]
    routes = f.texts(doc.get("routes", ()), "routes")
    tenants = f.texts(doc.get("tenants", ()), "tenants")
    header = f.header_name(doc["header"], "header") if "header" in doc else None
    secret = f.secret(doc["secret"], "secret") if "secret" in doc else None
    if header is not None and secret is None:
        raise ExperimentError(
            "secret",
            "is required with 'header': the header's value must match it, "
            "so clients cannot trigger the experiment by themselves",
        )
    if secret is not None and header is None:
        raise ExperimentError("header", "is required with 'secret'")
    abort = _abort(doc["abort"], "abort") if "abort" in doc else None
    allow_unknown = doc.get("allow_unknown", False)
    if not isinstance(allow_unknown, bool):
        raise ExperimentError(
            "allow_unknown", f"must be true or false, got {f.kind_of(allow_unknown)}"
        )
    return _build(
        "",
        lambda: Experiment(
            name,
            faults=faults,
            ttl=ttl,
            routes=routes,
            tenants=tenants,
            header=header,
            secret=secret,
            abort=abort,
            allow_unknown=allow_unknown,
        ),
    )


def _fault(value: object, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise ExperimentError(path, f"must be an object, got {f.kind_of(value)}")
    if "kind" not in value:
        raise ExperimentError(
            f.join(path, "kind"), f"is required: one of {', '.join(_FAULT_FIELDS)}"
        )
    kind = value["kind"]
    if not isinstance(kind, str) or kind not in _FAULT_FIELDS:
        shown = repr(kind) if isinstance(kind, str) else f.kind_of(kind)
        raise ExperimentError(
            f.join(path, "kind"), f"must be one of {', '.join(_FAULT_FIELDS)}, got {shown}"
        )
    required, optional = _FAULT_FIELDS[kind]
    doc = f.fields(
        value, path, required=("kind", "target", *required), optional=("rate", *optional)
    )
    target = f.text(doc["target"], f"{path}.target")
    rate = f.number(doc.get("rate", 1.0), f"{path}.rate", minimum=0.0, maximum=1.0)
    if kind == "latency":
        delay = _delay(doc["delay"], f"{path}.delay")
        return _build(path, lambda: Latency(target, delay=delay, rate=rate))
    if kind == "raise":
        exc = f.exception_class(doc["exc"], f"{path}.exc")
        return _build(path, lambda: Raise(target, exc=exc, rate=rate))
    if kind == "respond":
        status = f.integer(doc["status"], f"{path}.status", minimum=200, maximum=599)
        body = f.text(
            doc.get("body", ""),
            f"{path}.body",
            max_length=f.MAX_BODY_TEXT,
            empty=True,
            control=True,
        )
        headers = _headers(doc.get("headers", {}), f"{path}.headers")
        return _build(
            path, lambda: Respond(target, status=status, body=body, headers=headers, rate=rate)
        )
    if kind == "hang":
        return _build(path, lambda: Hang(target, rate=rate))
    return _build(path, lambda: Reset(target, rate=rate))


def _headers(value: object, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ExperimentError(path, f"must be an object of strings, got {f.kind_of(value)}")
    if len(value) > f.MAX_HEADERS:
        raise ExperimentError(path, f"must have at most {f.MAX_HEADERS} headers, got {len(value)}")
    headers: dict[str, str] = {}
    for key, item in value.items():
        header = f.header_name(key, f"{path}.{key}" if isinstance(key, str) else path)
        if reserved_header(header):
            raise ExperimentError(
                f"{path}.{key}", "is a framing or hop-by-hop header, which the server sets"
            )
        headers[header] = f.header_value(item, f"{path}.{key}")
    return headers


def _delay(value: object, path: str) -> Any:
    if not isinstance(value, Mapping):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _delay_seconds(value, path)
        raise ExperimentError(
            path,
            f"must be a number of seconds or an object like {{'lognormal': ...}}, "
            f"got {f.kind_of(value)}",
        )
    f.fields(value, path, optional=_DELAY_KINDS)
    if len(value) != 1:
        raise ExperimentError(
            path, f"must have exactly one of {', '.join(_DELAY_KINDS)}, got {len(value)}"
        )
    ((kind, spec),) = value.items()
    at = f"{path}.{kind}"
    if kind == "fixed":
        seconds = _delay_seconds(spec, at)
        return _build(at, lambda: Fixed(seconds))
    if kind == "empirical":
        if not isinstance(spec, list | tuple):
            raise ExperimentError(at, f"must be an array of seconds, got {f.kind_of(spec)}")
        if not 1 <= len(spec) <= f.MAX_SAMPLES:
            raise ExperimentError(at, f"must hold 1 to {f.MAX_SAMPLES} samples, got {len(spec)}")
        samples = [_delay_seconds(s, f"{at}[{i}]", unit="") for i, s in enumerate(spec)]
        return _build(at, lambda: Empirical(samples))
    if kind == "uniform":
        doc = f.fields(spec, at, required=("low", "high"))
        low = _delay_seconds(doc["low"], f"{at}.low", unit="")
        high = _delay_seconds(doc["high"], f"{at}.high", least=low, unit="")
        return _build(at, lambda: Uniform(low, high))
    if kind == "lognormal":
        doc = f.fields(spec, at, required=("p50", "p99"))
        p50 = f.number(doc["p50"], f"{at}.p50", above=0.0)
        p99 = f.number(doc["p99"], f"{at}.p99", minimum=p50)
        return _build(at, lambda: LogNormal(p50=p50, p99=p99))
    doc = f.fields(spec, at, required=("minimum", "alpha"))
    minimum = f.number(doc["minimum"], f"{at}.minimum", above=0.0)
    alpha = f.number(doc["alpha"], f"{at}.alpha", above=0.0)
    return _build(at, lambda: Pareto(minimum=minimum, alpha=alpha))


def _delay_seconds(
    value: object, path: str, *, least: float = 0.0, unit: str = " seconds"
) -> float:
    """A delay in seconds, at least ``least`` and at most :data:`LARGEST_DRAW`."""
    seconds = f.number(value, path, minimum=least, unit=unit)
    if seconds > LARGEST_DRAW:
        raise ExperimentError(path, f"must be at most {LARGEST_DRAW:g} seconds, got {value}")
    return seconds


def _abort(value: object, path: str) -> AbortWhen:
    doc = f.fields(value, path, optional=("error_rate", "p99", "window", "min_requests"))
    settings: dict[str, Any] = {}
    if "error_rate" in doc:
        settings["error_rate"] = f.number(
            doc["error_rate"], f"{path}.error_rate", minimum=0.0, below=1.0
        )
    if "p99" in doc:
        settings["p99"] = f.number(doc["p99"], f"{path}.p99", above=0.0, unit=" seconds")
    if not settings:
        raise ExperimentError(path, "needs 'error_rate' or 'p99' (or both)")
    if "window" in doc:
        settings["window"] = f.number(
            doc["window"], f"{path}.window", above=0.0, maximum=MAX_TTL, unit=" seconds"
        )
    if "min_requests" in doc:
        settings["min_requests"] = f.integer(
            doc["min_requests"], f"{path}.min_requests", minimum=1, maximum=1_000_000
        )
    return _build(path, lambda: AbortWhen(**settings))


def experiment_to_dict(experiment: Experiment, *, redact_secret: bool = False) -> dict[str, Any]:
    """The JSON form of ``experiment``; :func:`experiment_from_dict` reads it back.

    Optional fields are left out when unset. ``redact_secret=True`` replaces
    the header secret with ``"<redacted>"`` for status output. Raises
    :class:`ExperimentError` for what has no data form: a ``Raise`` fault
    built with a factory function, or a custom delay distribution.
    """
    out: dict[str, Any] = {
        "name": experiment.name,
        "ttl": experiment.ttl,
        "faults": [
            _fault_to_dict(fault, f"faults[{index}]")
            for index, fault in enumerate(experiment.faults)
        ],
    }
    if experiment.routes:
        out["routes"] = list(experiment.routes)
    if experiment.tenants:
        out["tenants"] = list(experiment.tenants)
    if experiment.header is not None:
        out["header"] = experiment.header
    if experiment.secret is not None:
        out["secret"] = "<redacted>" if redact_secret else experiment.secret
    abort = experiment.abort
    if abort is not None:
        out["abort"] = {
            key: value
            for key, value in (
                ("error_rate", abort.error_rate),
                ("p99", abort.p99),
                ("window", abort.window),
                ("min_requests", abort.min_requests),
            )
            if value is not None
        }
    if experiment.allow_unknown:
        out["allow_unknown"] = True
    return out


def _fault_to_dict(fault: Fault, path: str) -> dict[str, Any]:
    if fault.kind not in _FAULT_FIELDS:
        raise ExperimentError(path, f"{type(fault).__name__} has no data form")
    out: dict[str, Any] = {"kind": fault.kind, "target": fault.target, "rate": fault.rate}
    if isinstance(fault, Latency):
        out["delay"] = _delay_to_dict(fault.delay, f"{path}.delay")
    elif isinstance(fault, Raise):
        exc = fault.exc
        dotted = f.dotted_path(exc) if isinstance(exc, type) else None
        if dotted is None:
            raise ExperimentError(
                f"{path}.exc",
                f"{exc!r} cannot be named by a dotted path: use an exception class "
                "defined at module level",
            )
        out["exc"] = dotted
    elif isinstance(fault, Respond):
        out["status"] = fault.status
        if fault.body:
            out["body"] = fault.body
        if fault.headers:
            out["headers"] = dict(fault.headers)
    return out


def _delay_to_dict(delay: object, path: str) -> Any:
    if isinstance(delay, int | float) and not isinstance(delay, bool):
        return delay
    if isinstance(delay, Fixed):
        return {"fixed": delay.seconds}
    if isinstance(delay, Uniform):
        return {"uniform": {"low": delay.low, "high": delay.high}}
    if isinstance(delay, LogNormal):
        return {"lognormal": {"p50": delay.p50, "p99": delay.p99}}
    if isinstance(delay, Pareto):
        return {"pareto": {"minimum": delay.minimum, "alpha": delay.alpha}}
    if isinstance(delay, Empirical):
        return {"empirical": list(delay.samples)}
    raise ExperimentError(path, f"{type(delay).__name__} has no data form")


def read_experiment_file(path: str | PathLike[str]) -> object:
    """The document in a ``.json``, ``.yaml`` or ``.yml`` file, decoded but not validated.

    The CLI sends this to a server, which validates it against the
    exceptions *it* has imported. Raises :class:`ExperimentError` for a
    malformed or unknown kind of file, ``OSError`` when it cannot be read and
    ``ImportError`` (with the install hint) for YAML without PyYAML.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ExperimentError("", f"{file.name}: expected a .json, .yaml or .yml file")
    content = file.read_bytes()
    if suffix == ".json":
        return parse_json(content)
    from tailguard.chaos._yaml import parse_yaml

    return parse_yaml(content)


def load_experiment(path: str | PathLike[str]) -> Experiment:
    """Read and validate the experiment in a JSON or YAML file.

    >>> import json, tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "reset.json"
    >>> _ = file.write_text(json.dumps(
    ...     {"name": "reset", "ttl": 60, "faults": [{"kind": "reset", "target": "db"}]}))
    >>> load_experiment(file).name
    'reset'
    """
    return experiment_from_dict(read_experiment_file(path))
