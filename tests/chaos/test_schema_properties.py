"""Generated documents: the validator, the JSON Schema and the round trip agree.

* every well-formed document is accepted, by the validator and by
  :data:`EXPERIMENT_JSON_SCHEMA` alike, and survives ``to_dict``/``from_dict``;
* a document with random damage either builds or raises ``ExperimentError``
  (nothing else), and whatever the validator accepts the schema accepts too:
  the schema is never stricter than the server, so editors that use it never
  flag a file the server would take.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tailguard.chaos import ExperimentError
from tailguard.chaos.schema import (
    EXPERIMENT_JSON_SCHEMA,
    experiment_from_dict,
    experiment_to_dict,
)

VALIDATOR = Draft202012Validator(EXPERIMENT_JSON_SCHEMA)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
seconds = st.floats(0, 5, allow_nan=False) | st.integers(0, 5)
positive = st.floats(0.001, 5) | st.integers(1, 5)
alphas = st.floats(0.1, 5) | st.integers(1, 5)
"""Pareto shapes: below about 0.05 draws overflow, and the server refuses them."""
rates = st.floats(0, 1) | st.sampled_from([0, 1])
dependencies = st.sampled_from(["db", "payments*", "inventory", "cache-?", "svc[ab]"])
routes = st.sampled_from(["GET /items/*", "/reports/*", "POST /orders", "/items/{item_id}"])


def optional(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def fault(kind: str, target: st.SearchStrategy[str], **fields: Any) -> st.SearchStrategy[Any]:
    required = {"kind": st.just(kind), "target": target}
    extra = fields.pop("_optional", {})
    return st.fixed_dictionaries(required | fields, optional={"rate": rates, **extra})


delays = (
    seconds
    | st.builds(lambda s: {"fixed": s}, seconds)
    | st.tuples(seconds, seconds).map(
        lambda pair: {"uniform": {"low": min(pair), "high": max(pair)}}
    )
    | st.tuples(positive, positive).map(
        lambda pair: {"lognormal": {"p50": min(pair), "p99": max(pair)}}
    )
    | st.builds(lambda m, a: {"pareto": {"minimum": m, "alpha": a}}, positive, alphas)
    | st.lists(seconds, min_size=1, max_size=5).map(lambda samples: {"empirical": samples})
)
faults = st.one_of(
    fault("latency", dependencies | routes, delay=delays),
    fault(
        "raise",
        dependencies | routes,
        exc=st.sampled_from(
            ["builtins.ConnectionResetError", "builtins.TimeoutError", "asyncio.TimeoutError"]
        ),
    ),
    fault(
        "respond",
        dependencies | routes,
        status=st.integers(200, 599),
        _optional={
            "body": st.text(max_size=20),
            "headers": st.dictionaries(
                st.sampled_from(["retry-after", "X-Test", "x-a"]),
                st.from_regex(r"[ -~]{0,10}", fullmatch=True),
                max_size=2,
            ),
        },
    ).filter(lambda f: not (f.get("body") and f["status"] in (204, 205, 304))),
    fault("hang", dependencies | routes),
    fault("reset", dependencies),
)
aborts = st.fixed_dictionaries(
    {},
    optional={
        "error_rate": st.floats(0, 0.99),
        "p99": positive,
        "window": st.floats(0.1, 600),
        "min_requests": st.integers(1, 1000),
    },
).filter(lambda abort: "error_rate" in abort or "p99" in abort)
headers = st.fixed_dictionaries(
    {
        "header": st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{0,10}", fullmatch=True),
        "secret": st.from_regex(r"[!-~]{16,24}", fullmatch=True),
    }
)
documents = st.builds(
    lambda base, extra, scope: base | extra | scope,
    st.fixed_dictionaries(
        {
            "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
            "ttl": st.floats(0.001, 86_400) | st.integers(1, 86_400),
            "faults": st.lists(faults, min_size=1, max_size=4),
        }
    ),
    optional(
        {
            "routes": st.lists(routes, max_size=3),
            "tenants": st.lists(
                st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=5),
                max_size=3,
            ),
            "abort": aborts,
        }
    ),
    st.just({}) | headers,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_well_formed_documents_are_accepted_everywhere_and_round_trip(
    document: dict[str, Any],
) -> None:
    assert VALIDATOR.is_valid(document), list(VALIDATOR.iter_errors(document))
    experiment = experiment_from_dict(document)
    data = experiment_to_dict(experiment)
    assert VALIDATOR.is_valid(data)
    again = experiment_from_dict(data)
    assert again == experiment
    assert again.secret == experiment.secret


def damage(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Replace, drop or add one value somewhere in ``document``."""
    damaged = copy.deepcopy(document)
    node: Any = damaged
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            node = child
            continue
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            node[key] = data.draw(json_values)
        elif action == "drop":
            del node[key]
        elif isinstance(node, dict):
            node[data.draw(st.text(max_size=8))] = data.draw(json_values)
        else:
            node.append(data.draw(json_values))
        break
    return damaged


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, data=st.data())
def test_damaged_documents_are_refused_cleanly_and_the_schema_is_never_stricter(
    document: dict[str, Any], data: st.DataObject
) -> None:
    damaged = damage(document, data)
    refused: ExperimentError | None = None
    try:
        experiment_from_dict(damaged)
    except ExperimentError as error:
        refused = error
    if refused is None:
        assert VALIDATOR.is_valid(damaged), list(VALIDATOR.iter_errors(damaged))
    else:
        assert refused.message
        assert isinstance(refused.field, str)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_arbitrary_json_never_escapes_as_another_exception(value: object) -> None:
    try:
        experiment_from_dict(value)
    except ExperimentError:
        pass


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(EXPERIMENT_JSON_SCHEMA)
