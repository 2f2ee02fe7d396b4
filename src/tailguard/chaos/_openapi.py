"""The OpenAPI 3.1 description of the control API, with the experiment schema inside.

>>> document = openapi_document("/_tailguard", version="0.1.0")
>>> document["openapi"], sorted(document["paths"])[:2]
('3.1.0', ['/_tailguard/enforcement', '/_tailguard/experiments'])
"""

from __future__ import annotations

from typing import Any

from tailguard.chaos._jsonschema import EXPERIMENT_JSON_SCHEMA

__all__ = ["openapi_document"]

_Schema = dict[str, Any]

_ERROR: _Schema = {
    "type": "object",
    "properties": {
        "detail": {"type": "string", "description": "What was wrong, for people."},
        "field": {
            "type": ["string", "null"],
            "description": "Dotted path of the offending field ('faults[0].rate'); "
            "'' for the body as a whole; null when no field is at fault.",
        },
    },
    "required": ["detail", "field"],
}

_STATUS: _Schema = {
    "type": "object",
    "description": "The engine's state: enabled, seed, running experiments, recent stops, "
    "injections in flight and their cap.",
    "properties": {
        "enabled": {"type": "boolean"},
        "experiments": {"type": "array", "items": {"$ref": "#/components/schemas/Running"}},
        "stopped": {"type": "array", "items": {"type": "object"}},
        "max_injections": {
            "type": "integer",
            "description": "The cap on calls under injection at once (the fleet's, with a store).",
        },
        "injection_share": {
            "type": "integer",
            "description": "This worker's places under max_injections: its share with a "
            "fleet store (0: it injects nothing), else max_injections.",
        },
        "store": {
            "type": "object",
            "description": "With a fleet store only: its url and service, this worker's "
            "name, whether it follows the store, and the lease.",
        },
        "fleet_injections": {
            "type": "object",
            "description": "With a fleet store only: the cap the shares split, how many "
            "workers split it, and injections in flight and skipped summed over their "
            "heartbeats (max_injections, workers, in_flight, skipped).",
        },
        "workers": {
            "type": "array",
            "items": {"type": "object"},
            "description": "With a fleet store only: every worker seen in the last minute "
            "(worker, pid, host, last_heartbeat, age, following, max_injections, "
            "injection_share, injections_in_flight, injections_skipped).",
        },
        "not_following": {
            "type": "array",
            "items": {"type": "string"},
            "description": "With a fleet store only: workers whose heartbeat is late or "
            "that lost the store.",
        },
    },
    "required": ["enabled", "experiments"],
}

_RUNNING: _Schema = {
    "type": "object",
    "description": "A running experiment (its secret redacted), when it started and expires "
    "(Unix time) and how many faults it injected.",
    "properties": {
        "experiment": {"$ref": "#/components/schemas/Experiment"},
        "fleet": {
            "type": ["object", "null"],
            "description": "In status, with a fleet store: injections summed over the "
            "workers' latest heartbeats, and per worker.",
        },
    },
}


_UNKNOWN: _Schema = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
        "required": ["field", "detail"],
    },
    "description": "What the experiment names that the service does not have (yet).",
}

_VALIDATION: _Schema = {
    "type": "object",
    "properties": {
        "experiment": {"$ref": "#/components/schemas/Experiment"},
        "unknown": _UNKNOWN,
        "enabled": {"type": "boolean"},
        "running": {"type": "boolean", "description": "One of that name runs already."},
        "would_start": {"type": "boolean"},
    },
    "required": ["experiment", "unknown", "enabled", "running", "would_start"],
}

_ALLOW_UNKNOWN: _Schema = {
    "name": "allow_unknown",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "Start even if the experiment names a dependency or route the service "
    "does not have (yet); the experiment's own allow_unknown field does the same.",
}


_MODE: _Schema = {
    "oneOf": [
        {"type": "string", "enum": ["on", "shadow"]},
        {"type": "number", "minimum": 0, "maximum": 1},
    ],
    "description": "'on' (enforce), 'shadow' (decide and record, act on nothing) or the "
    "fraction of requests enforced; a string like '0.25' is accepted too.",
}

_MODES: _Schema = {
    "type": "object",
    "description": "The guard's default mode and each route key's ('default': the default "
    "policy) and dependency's.",
    "properties": {
        "default": _MODE,
        "routes": {"type": "object", "additionalProperties": _MODE},
        "dependencies": {"type": "object", "additionalProperties": _MODE},
    },
    "required": ["default", "routes", "dependencies"],
}

_SWITCH: _Schema = {
    "type": "object",
    "properties": {
        "mode": _MODE,
        "route": {"type": "string", "description": "A route key (or 'default'); only it."},
        "dependency": {"type": "string", "description": "A dependency's name; only it."},
        "by": {"type": "string", "description": "Who switches, for the log."},
    },
    "required": ["mode"],
    "additionalProperties": False,
    "description": "Without route or dependency: the guard's default and every route and "
    "dependency switch.",
}

_SWITCHED: _Schema = {
    "type": "object",
    "properties": {
        "changed": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"target": {"type": "string"}, "from": _MODE, "to": _MODE},
            },
        },
        "modes": {"$ref": "#/components/schemas/Enforcement"},
    },
    "required": ["changed", "modes"],
}


def _json(schema: _Schema) -> _Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> _Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> _Schema:
    return {"description": description, **_json(_ref("Error"))}


_UNAUTHORIZED = _error("No bearer token, or the wrong one. Nothing changed.")


_STORE_DOWN = _error(
    "With a fleet store: the store cannot be reached (a halt still answers 200: it stops "
    "this worker at once and is written to the store once it is back)."
)


def _operation(summary: str, responses: dict[str, _Schema], **extra: Any) -> _Schema:
    return {
        "summary": summary,
        "responses": {**responses, "401": _UNAUTHORIZED, "503": _STORE_DOWN},
        **extra,
    }


def openapi_document(prefix: str, *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a control API mounted at ``prefix``."""
    experiment = {k: v for k, v in EXPERIMENT_JSON_SCHEMA.items() if k != "$schema"}
    name_parameter = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tailguard chaos control",
            "version": version,
            "description": "Start, list and stop chaos experiments, halt them all, read "
            "a snapshot, and switch enforcement modes. Every call needs 'Authorization: Bearer "
            "<token>'. Without a fleet store, chaos state is per process (with several workers, "
            "each has its own); with one (Chaos(store=...)), every chaos action reaches every "
            "worker that follows it. Enforcement modes are per process.",
        },
        "security": [{"bearer": []}],
        "paths": {
            f"{prefix}/status": {
                "get": _operation(
                    "The chaos engine's state",
                    {"200": {"description": "OK", **_json(_ref("Status"))}},
                )
            },
            f"{prefix}/experiments": {
                "get": _operation(
                    "Running experiments",
                    {
                        "200": {
                            "description": "OK",
                            **_json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "experiments": {"type": "array", "items": _ref("Running")}
                                    },
                                }
                            ),
                        }
                    },
                ),
                "post": _operation(
                    "Start an experiment",
                    {
                        "201": {
                            "description": "Started; Location names it.",
                            **_json(_ref("Running")),
                        },
                        "400": _error("The body is not JSON."),
                        "409": _error(
                            "Chaos is disabled in this process, an experiment with this "
                            "name is running, or max_experiments are running."
                        ),
                        "413": _error("The body is larger than the limit (64 KiB by default)."),
                        "415": _error("The body is not application/json."),
                        "422": _error(
                            "The experiment is invalid, or names a dependency or route the "
                            "service does not have (and allow_unknown is not set); 'field' "
                            "names the culprit."
                        ),
                    },
                    parameters=[_ALLOW_UNKNOWN],
                    requestBody={"required": True, **_json(_ref("Experiment"))},
                ),
            },
            f"{prefix}/validate": {
                "post": _operation(
                    "Check an experiment against this service without starting it",
                    {
                        "200": {
                            "description": "Valid. 'unknown' lists what it names that the "
                            "service does not have; 'would_start' says whether POST "
                            "experiments would start it now.",
                            **_json(_ref("Validation")),
                        },
                        "400": _error("The body is not JSON."),
                        "413": _error("The body is larger than the limit (64 KiB by default)."),
                        "415": _error("The body is not application/json."),
                        "422": _error("The experiment is invalid; 'field' names the culprit."),
                    },
                    parameters=[_ALLOW_UNKNOWN],
                    requestBody={"required": True, **_json(_ref("Experiment"))},
                ),
            },
            f"{prefix}/experiments/{{name}}": {
                "delete": _operation(
                    "Stop a running experiment",
                    {
                        "200": {"description": "Stopped."},
                        "404": _error("No running experiment has this name."),
                    },
                    parameters=[name_parameter],
                )
            },
            f"{prefix}/halt": {
                "post": _operation(
                    "Kill switch: stop every experiment now",
                    {"200": {"description": "How many experiments were stopped."}},
                )
            },
            f"{prefix}/snapshot": {
                "get": _operation(
                    "The service's live state, as the application defines it",
                    {
                        "200": {"description": "OK", **_json({"type": "object"})},
                        "404": _error("No snapshot source is configured."),
                    },
                )
            },
            f"{prefix}/enforcement": {
                "get": _operation(
                    "Enforcement modes (shadow mode, gradual enforcement)",
                    {
                        "200": {"description": "OK", **_json(_ref("Enforcement"))},
                        "404": _error("Not mounted by a guard: no modes to show."),
                    },
                ),
                "post": _operation(
                    "Switch enforcement: on, shadow or a fraction; the next request sees it",
                    {
                        "200": {
                            "description": "Switched (logged and counted); what changed.",
                            **_json(_SWITCHED),
                        },
                        "400": _error("The body is not JSON."),
                        "404": _error("Not mounted by a guard: no modes to switch."),
                        "413": _error("The body is larger than the limit (64 KiB by default)."),
                        "415": _error("The body is not application/json."),
                        "422": _error(
                            "A bad mode, an unknown field, or a route key or dependency the "
                            "guard does not have; 'field' names it. Nothing changed."
                        ),
                    },
                    requestBody={"required": True, **_json(_ref("EnforcementSwitch"))},
                ),
            },
            f"{prefix}/openapi.json": {
                "get": _operation("This document", {"200": {"description": "OK"}})
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Experiment": experiment,
                "Running": _RUNNING,
                "Status": _STATUS,
                "Validation": _VALIDATION,
                "Enforcement": _MODES,
                "EnforcementSwitch": _SWITCH,
                "Error": _ERROR,
            },
        },
    }
