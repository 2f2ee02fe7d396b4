"""The game-day file: what to serve or target, the load, the steady state and the phases.

A game-day file is YAML or JSON (docs/gameday.md). :func:`load_plan` reads
and checks it completely before anything starts; a bad file raises
:class:`PlanError` naming the field and, where the file says, the line.

>>> plan = plan_from_dict({
...     "title": "slow inventory",
...     "target": {"url": "http://127.0.0.1:8000"},
...     "load": {"rate": 50, "requests": [{"path": "/items/1"}]},
...     "hypothesis": [{"route": "GET /items/{item_id}", "p99": 0.1}],
...     "phases": [{"name": "baseline", "duration": 5}],
... })
>>> plan.load.requests[0].label, plan.phases[0].duration
('GET /items/1', 5.0)
>>> plan_from_dict({"title": "x"})
Traceback (most recent call last):
...
tailguard.gameday.plan.PlanError: target: is required
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Final, Literal

from tailguard.chaos._fields import (
    ExperimentError,
    fields,
    header_name,
    header_value,
    integer,
    kind_of,
    name,
    number,
    parse_json,
    text,
)
from tailguard.chaos.schema import (
    EXPERIMENT_JSON_SCHEMA,
    experiment_from_dict,
    read_experiment_file,
)

__all__ = [
    "ALL_ROUTES",
    "MAX_DURATION",
    "MAX_RATE",
    "MAX_TIMEOUT",
    "PLAN_JSON_SCHEMA",
    "SLO_KEYS",
    "Check",
    "ExperimentRef",
    "LoadSpec",
    "Phase",
    "Plan",
    "PlanError",
    "RequestSpec",
    "TargetSpec",
    "load_plan",
    "plan_from_dict",
    "template_matches",
]

MAX_RATE: Final = 20_000.0
"""Requests per second a file may ask for (far above what one runner sustains: see
benchmarks/RESULTS.md; a run that cannot keep up is marked unreliable)."""
MAX_DURATION: Final = 86_400.0
MAX_TIMEOUT: Final = 60.0
"""The client's timeout is at most a minute: latencies are kept in histograms up to there."""
ALL_ROUTES: Final = "*"
SLO_KEYS: Final = ("p50", "p99", "p999", "max", "error_rate", "goodput")
"""What a hypothesis entry can bound: latencies in seconds (at most), error rate
(at most) and goodput (at least), both shares from 0 to 1."""
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ROUTE = re.compile(r"^(?:(?P<method>[A-Z]+) )?(?P<path>/\S*)$")


def template_matches(template: str, path: str) -> bool:
    """Whether the concrete ``path`` (query string ignored) fits the route ``template``.

    >>> template_matches("/items/{item_id}", "/items/7?full=1")
    True
    >>> template_matches("/items", "/items/7")
    False
    >>> template_matches("/files/{rest:path}", "/files/a/b")
    True
    """
    pattern = ""
    for literal, param in re.findall(r"([^{]*)(\{[^}]*\})?", template):
        pattern += re.escape(literal)
        if param:
            pattern += ".+" if param.endswith(":path}") else "[^/]+"
    return re.fullmatch(pattern, path.partition("?")[0]) is not None


class PlanError(ValueError):
    """A game-day file is unusable; ``field`` is the dotted path of the culprit, ``line`` its line.

    >>> str(PlanError("load.rate", "must be a number, got a string", line=7))
    'load.rate (line 7): must be a number, got a string'
    """

    def __init__(self, field: str, message: str, *, line: int | None = None) -> None:
        where = field + (f" (line {line})" if line is not None else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.field = field
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What the runner drives: an app it serves with uvicorn, or a service already running."""

    app: str | None = None
    """An import string, ``module:attribute``, served on 127.0.0.1."""
    app_dir: str = "."
    workers: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    token_env: str = "TAILGUARD_TOKEN"
    """For ``url``: the environment variable holding the control token."""
    control_path: str = "/_tailguard"
    metrics_path: str = "/metrics"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One kind of request in the mix, sent ``weight`` times as often as a weight of 1."""

    path: str
    method: str = "GET"
    weight: float = 1.0
    json: object = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """``METHOD /path``."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """The open-loop load: a rate, how arrivals are spaced, the mix and the client's timeout."""

    rate: float
    requests: tuple[RequestSpec, ...]
    arrivals: Literal["poisson", "constant"] = "poisson"
    timeout: float = 2.0
    seed: int = 0
    send_lag_p99: float = 0.005
    """A run whose generator sent its requests later than this (p99, seconds) is unreliable."""
    min_sent: float = 0.95
    """A run that sent fewer than this share of the offered requests is unreliable."""


@dataclass(frozen=True, slots=True)
class Check:
    """One entry of the hypothesis: bounds on one route (or ``*``: all of them together).

    >>> Check("GET /items/{item_id}", {"p99": 0.1}).matches("GET", "/items/{item_id}")
    True
    """

    route: str
    slos: Mapping[str, float]
    within: float | None = None
    """For goodput: an answer counts when it is 2xx within this many seconds (default: timeout)."""

    def matches(self, method: str, template: str) -> bool:
        """Whether this entry covers the route ``method template``."""
        if self.route == ALL_ROUTES:
            return True
        found = _ROUTE.fullmatch(self.route)
        if found is None:  # pragma: no cover - refused when the plan is read
            return False
        return found["path"] == template and found["method"] in (None, method)


@dataclass(frozen=True, slots=True)
class ExperimentRef:
    """A chaos experiment a phase starts: the document sent to the control API, and its name."""

    name: str
    document: Mapping[str, Any]
    source: str
    """``inline`` or the file it was read from."""


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the run: its experiments run for its whole ``duration``."""

    name: str
    duration: float
    experiments: tuple[ExperimentRef, ...] = ()
    hypothesis: tuple[Check, ...] | None = None
    """The phase's own steady state; ``None``: the plan's; ``()``: nothing checked."""
    rate: float | None = None

    def checks(self, plan: Plan) -> tuple[Check, ...]:
        """What is checked in this phase."""
        return plan.hypothesis if self.hypothesis is None else self.hypothesis


@dataclass(frozen=True, slots=True)
class Plan:
    """A whole game-day file, checked."""

    title: str
    target: TargetSpec
    load: LoadSpec
    hypothesis: tuple[Check, ...]
    phases: tuple[Phase, ...]
    source: str | None = None

    @property
    def duration(self) -> float:
        """Seconds of load, all phases together."""
        return sum(phase.duration for phase in self.phases)


# --- reading ------------------------------------------------------------------------------


def load_plan(path: str | PathLike[str]) -> Plan:
    """Read and check the game-day file at ``path`` (``.yaml``, ``.yml`` or ``.json``).

    Experiment files named by a phase are read relative to the game-day file.
    Raises :class:`PlanError` for a file that cannot be read or used.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise PlanError("", f"{file.name}: expected a .json, .yaml or .yml file")
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise PlanError("", f"cannot read {file}: {exc.strerror or exc}") from None
    lines = _line_numbers(content)
    try:
        data = parse_json(content) if suffix == ".json" else _parse_yaml(content)
    except ExperimentError as exc:
        raise PlanError("", exc.message) from None
    return plan_from_dict(data, base=file.parent, lines=lines, source=str(file))


def _parse_yaml(content: bytes) -> object:
    from tailguard.chaos._yaml import parse_yaml

    return parse_yaml(content)


def _line_numbers(content: bytes) -> dict[str, int]:
    """The line of every field of a YAML (or JSON) document, by dotted path; empty if unknown."""
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]

        root = yaml.compose(content)
    except Exception:  # no PyYAML, or not a document PyYAML reads: errors without lines
        return {}
    found: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        found.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = f"{path}.{key.value}" if path else str(key.value)
                found[child] = key.start_mark.line + 1
                walk(value, child)
                found[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{path}[{index}]")

    if root is not None:
        walk(root, "")
    return found


def _line(lines: Mapping[str, int], path: str) -> int | None:
    """The line of ``path``, or of its nearest ancestor the file shows."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""


def plan_from_dict(
    data: object,
    *,
    base: str | PathLike[str] = ".",
    lines: Mapping[str, int] | None = None,
    source: str | None = None,
) -> Plan:
    """Check a decoded game-day document; experiment files are read relative to ``base``."""
    where = lines or {}
    try:
        return _plan(data, Path(base))
    except ExperimentError as exc:
        raise PlanError(exc.field, exc.message, line=_line(where, exc.field)) from None


def _plan(data: object, base: Path) -> Plan:
    top = fields(
        data,
        "",
        required=("title", "target", "load", "phases"),
        optional=("hypothesis",),
    )
    title = text(top["title"], "title")
    target = _target(top["target"])
    load = _load(top["load"])
    hypothesis = _hypothesis(top.get("hypothesis", []), "hypothesis")
    raw = top["phases"]
    if not isinstance(raw, list) or not raw:
        raise ExperimentError("phases", f"must be a non-empty array, got {kind_of(raw)}")
    phases = tuple(_phase(item, f"phases[{n}]", base) for n, item in enumerate(raw))
    for n, check in enumerate(hypothesis):
        _covers(check, load, f"hypothesis[{n}].route")
    for n, phase in enumerate(phases):
        for m, check in enumerate(phase.hypothesis or ()):
            _covers(check, load, f"phases[{n}].hypothesis[{m}].route")
    seen: set[str] = set()
    for n, phase in enumerate(phases):
        if phase.name in seen:
            raise ExperimentError(f"phases[{n}].name", f"{phase.name!r} is used twice")
        seen.add(phase.name)
    return Plan(title, target, load, hypothesis, phases)


def _covers(check: Check, load: LoadSpec, where: str) -> None:
    """A check must be about requests the load sends, or it would hold on no data."""
    if check.route == ALL_ROUTES:
        return
    found = _ROUTE.fullmatch(check.route)
    assert found is not None
    if not any(
        found["method"] in (None, spec.method) and template_matches(found["path"], spec.path)
        for spec in load.requests
    ):
        raise ExperimentError(where, f"{check.route!r} matches no request of load.requests")


def _path(value: object, where: str) -> str:
    result = text(value, where)
    if not result.startswith("/") or " " in result:
        raise ExperimentError(where, f"must be a path starting with '/', got {result!r}")
    return result


def _target(value: object) -> TargetSpec:
    items = fields(
        value,
        "target",
        optional=(
            "app",
            "app_dir",
            "workers",
            "env",
            "url",
            "token_env",
            "control_path",
            "metrics_path",
        ),
    )
    app = text(items["app"], "target.app") if "app" in items else None
    url = text(items["url"], "target.url") if "url" in items else None
    if (app is None) == (url is None):
        raise ExperimentError("target", "needs exactly one of 'app' (to serve) or 'url'")
    if app is not None and not re.fullmatch(r"[\w.]+:[\w.]+", app):
        raise ExperimentError("target.app", f"must look like 'module:attribute', got {app!r}")
    if url is not None and not re.fullmatch(r"https?://[^/\s]+", url.rstrip("/")):
        raise ExperimentError("target.url", f"must be http(s)://host[:port], got {url!r}")
    env_value = items.get("env", {})
    if not isinstance(env_value, Mapping):
        raise ExperimentError("target.env", f"must be an object, got {kind_of(env_value)}")
    env = {}
    for key, setting in env_value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ExperimentError("target.env", f"not an environment variable name: {key!r}")
        if isinstance(setting, bool) or not isinstance(setting, str | int | float):
            raise ExperimentError(f"target.env.{key}", f"must be a string, got {kind_of(setting)}")
        env[key] = str(setting)
    if url is not None:
        for key in ("app_dir", "workers", "env"):
            if key in items:
                raise ExperimentError(f"target.{key}", "applies only to a served 'app'")
    return TargetSpec(
        app=app,
        app_dir=text(items.get("app_dir", "."), "target.app_dir"),
        workers=integer(items.get("workers", 1), "target.workers", minimum=1, maximum=64),
        env=env,
        url=url.rstrip("/") if url is not None else None,
        token_env=text(items.get("token_env", "TAILGUARD_TOKEN"), "target.token_env"),
        control_path=_path(items.get("control_path", "/_tailguard"), "target.control_path"),
        metrics_path=_path(items.get("metrics_path", "/metrics"), "target.metrics_path"),
    )


def _load(value: object) -> LoadSpec:
    items = fields(
        value,
        "load",
        required=("rate", "requests"),
        optional=("arrivals", "timeout", "seed", "send_lag_p99", "min_sent"),
    )
    arrivals = items.get("arrivals", "poisson")
    if arrivals not in ("poisson", "constant"):
        raise ExperimentError("load.arrivals", f"must be 'poisson' or 'constant', got {arrivals!r}")
    raw = items["requests"]
    if not isinstance(raw, list) or not raw:
        raise ExperimentError("load.requests", f"must be a non-empty array, got {kind_of(raw)}")
    if len(raw) > 256:
        raise ExperimentError("load.requests", f"must have at most 256 entries, got {len(raw)}")
    return LoadSpec(
        rate=_rate(items["rate"], "load.rate"),
        requests=tuple(_request(item, f"load.requests[{n}]") for n, item in enumerate(raw)),
        arrivals=arrivals,
        timeout=number(
            items.get("timeout", 2.0), "load.timeout", above=0, maximum=MAX_TIMEOUT, unit="s"
        ),
        seed=integer(items.get("seed", 0), "load.seed", minimum=0, maximum=2**32 - 1),
        send_lag_p99=number(
            items.get("send_lag_p99", 0.005), "load.send_lag_p99", above=0, maximum=60
        ),
        min_sent=number(items.get("min_sent", 0.95), "load.min_sent", minimum=0, maximum=1),
    )


def _rate(value: object, where: str) -> float:
    return number(value, where, above=0, maximum=MAX_RATE)


def _request(value: object, where: str) -> RequestSpec:
    items = fields(
        value, where, required=("path",), optional=("method", "weight", "json", "headers")
    )
    method = items.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ExperimentError(f"{where}.method", f"must be one of {', '.join(METHODS)}")
    headers = items.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ExperimentError(f"{where}.headers", f"must be an object, got {kind_of(headers)}")
    body = items.get("json")
    try:
        json.dumps(body, allow_nan=False)
    except ValueError:
        raise ExperimentError(f"{where}.json", "must be plain JSON (no NaN or infinity)") from None
    return RequestSpec(
        path=_path(items["path"], f"{where}.path"),
        method=method.upper(),
        weight=number(items.get("weight", 1), f"{where}.weight", above=0, maximum=1e6),
        json=body,
        headers=tuple(
            (
                header_name(key, f"{where}.headers"),
                header_value(setting, f"{where}.headers.{key}"),
            )
            for key, setting in headers.items()
        ),
    )


def _hypothesis(value: object, where: str) -> tuple[Check, ...]:
    if not isinstance(value, list):
        raise ExperimentError(where, f"must be an array, got {kind_of(value)}")
    return tuple(_check(item, f"{where}[{n}]") for n, item in enumerate(value))


def _check(value: object, where: str) -> Check:
    items = fields(value, where, required=("route",), optional=(*SLO_KEYS, "within"))
    route = text(items["route"], f"{where}.route")
    if route != ALL_ROUTES and not _ROUTE.fullmatch(route):
        raise ExperimentError(
            f"{where}.route",
            f"must be '*' or a route template such as 'GET /items/{{item_id}}', got {route!r}",
        )
    slos: dict[str, float] = {}
    for key in SLO_KEYS:
        if key in items:
            if key in ("error_rate", "goodput"):
                slos[key] = number(items[key], f"{where}.{key}", minimum=0, maximum=1)
            else:
                slos[key] = number(items[key], f"{where}.{key}", above=0, maximum=MAX_TIMEOUT)
    if not slos:
        raise ExperimentError(where, f"names no objective: give one of {', '.join(SLO_KEYS)}")
    within = None
    if "within" in items:
        within = number(items["within"], f"{where}.within", above=0, maximum=MAX_TIMEOUT)
        if "goodput" not in slos:
            raise ExperimentError(f"{where}.within", "applies only to goodput")
    return Check(route, slos, within)


def _phase(value: object, where: str, base: Path) -> Phase:
    items = fields(
        value,
        where,
        required=("name", "duration"),
        optional=("experiments", "hypothesis", "rate"),
    )
    raw = items.get("experiments", [])
    if not isinstance(raw, list):
        raise ExperimentError(f"{where}.experiments", f"must be an array, got {kind_of(raw)}")
    experiments = tuple(
        _experiment(item, f"{where}.experiments[{n}]", base) for n, item in enumerate(raw)
    )
    names = [experiment.name for experiment in experiments]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{where}.experiments", "names one experiment twice")
    hypothesis = None
    if "hypothesis" in items:
        chosen = items["hypothesis"]
        hypothesis = () if chosen is False else _hypothesis(chosen, f"{where}.hypothesis")
    duration = number(items["duration"], f"{where}.duration", above=0, maximum=MAX_DURATION)
    return Phase(
        name=name(items["name"], f"{where}.name"),
        duration=duration,
        experiments=experiments,
        hypothesis=hypothesis,
        rate=_rate(items["rate"], f"{where}.rate") if "rate" in items else None,
    )


def _experiment(value: object, where: str, base: Path) -> ExperimentRef:
    source = "inline"
    if isinstance(value, str):
        file = base / value
        source = str(file)
        try:
            value = read_experiment_file(file)
        except OSError as exc:
            raise ExperimentError(where, f"cannot read {file}: {exc.strerror or exc}") from None
        except ExperimentError as exc:
            raise ExperimentError(where, f"{value}: {exc}") from None
    if not isinstance(value, Mapping):
        raise ExperimentError(where, f"must be a file name or an experiment, got {kind_of(value)}")
    try:
        experiment_from_dict(value)
    except ExperimentError as exc:
        # Exception classes are resolved by the service, among the modules it imported.
        if not exc.field.endswith(".exc"):
            inside = f"{source}: {exc}" if source != "inline" else None
            if inside is not None:
                raise ExperimentError(where, inside) from None
            raise ExperimentError(
                f"{where}.{exc.field}" if exc.field else where, exc.message
            ) from None
    document = dict(value)
    return ExperimentRef(str(document["name"]), document, source)


# --- the published schema -----------------------------------------------------------------


def _seconds(description: str, *, maximum: float = MAX_DURATION) -> dict[str, Any]:
    return {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": maximum,
        "description": description,
    }


def _share(description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1, "description": description}


_CHECK: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["route"],
    "anyOf": [{"required": [key]} for key in SLO_KEYS],
    "dependentRequired": {"within": ["goodput"]},
    "properties": {
        "route": {
            "type": "string",
            "pattern": r"^(\*|([A-Z]+ )?/\S*)$",
            "description": "A route template ('GET /items/{item_id}', '/items/{item_id}') or "
            "'*' for every route together.",
        },
        "p50": _seconds("Median latency at most this (seconds).", maximum=MAX_TIMEOUT),
        "p99": _seconds("99th percentile latency at most this (seconds).", maximum=MAX_TIMEOUT),
        "p999": _seconds("99.9th percentile at most this (seconds).", maximum=MAX_TIMEOUT),
        "max": _seconds("Slowest request at most this (seconds).", maximum=MAX_TIMEOUT),
        "error_rate": _share("Share of sent requests answered 5xx, timed out or failed."),
        "goodput": _share("Share of offered requests answered 2xx in time, at least."),
        "within": _seconds("For goodput: 'in time' (default: load.timeout).", maximum=MAX_TIMEOUT),
    },
}

_EXPERIMENT = {key: value for key, value in EXPERIMENT_JSON_SCHEMA.items() if key != "$schema"}

PLAN_JSON_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tailguard game-day",
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "target", "load", "phases"],
    "$defs": {"check": _CHECK, "experiment": _EXPERIMENT},
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "target": {
            "type": "object",
            "additionalProperties": False,
            "oneOf": [
                {"required": ["app"], "not": {"required": ["url"]}},
                {
                    "required": ["url"],
                    "not": {
                        "anyOf": [{"required": [k]} for k in ("app", "app_dir", "workers", "env")]
                    },
                },
            ],
            "properties": {
                "app": {"type": "string", "pattern": r"^[\w.]+:[\w.]+$"},
                "app_dir": {"type": "string", "minLength": 1},
                "workers": {"type": "integer", "minimum": 1, "maximum": 64},
                "env": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {"type": ["string", "number"]},
                },
                "url": {"type": "string", "pattern": r"^https?://[^/\s]+/?$"},
                "token_env": {"type": "string", "minLength": 1},
                "control_path": {"type": "string", "pattern": r"^/\S*$"},
                "metrics_path": {"type": "string", "pattern": r"^/\S*$"},
            },
        },
        "load": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rate", "requests"],
            "properties": {
                "rate": _seconds("Requests per second, open loop.", maximum=MAX_RATE),
                "arrivals": {"enum": ["poisson", "constant"]},
                "timeout": _seconds("The client gives up after this.", maximum=MAX_TIMEOUT),
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
                "send_lag_p99": _seconds("Unreliable beyond this send lag p99.", maximum=60),
                "min_sent": _share("Unreliable below this share of offered requests sent."),
                "requests": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 256,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["path"],
                        "properties": {
                            "path": {"type": "string", "pattern": r"^/\S*$"},
                            "method": {"enum": list(METHODS)},
                            "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6},
                            "json": {},
                            "headers": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
        "hypothesis": {"type": "array", "items": {"$ref": "#/$defs/check"}},
        "phases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "duration"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                    "duration": _seconds("Seconds of load in this phase."),
                    "rate": _seconds("This phase's rate, instead of load.rate.", maximum=MAX_RATE),
                    "experiments": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {"type": "string", "description": "A file, relative to this one."},
                                {"$ref": "#/$defs/experiment"},
                            ]
                        },
                    },
                    "hypothesis": {
                        "oneOf": [
                            {"const": False},
                            {"type": "array", "items": {"$ref": "#/$defs/check"}},
                        ],
                        "description": "This phase's own steady state; false: none.",
                    },
                },
            },
        },
    },
}
"""The game-day file as a JSON Schema (draft 2020-12), published as docs/gameday.schema.json."""
