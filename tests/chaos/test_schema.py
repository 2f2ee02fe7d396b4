"""Experiment documents: strict validation with field-named errors, and a faithful round trip."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tailguard.chaos import (
    AbortWhen,
    Empirical,
    Experiment,
    ExperimentError,
    Fixed,
    Hang,
    Latency,
    LogNormal,
    Pareto,
    Raise,
    Reset,
    Respond,
    Uniform,
)
from tailguard.chaos.distributions import Distribution
from tailguard.chaos.schema import (
    MAX_TTL,
    _build,
    experiment_from_dict,
    experiment_to_dict,
    load_experiment,
    read_experiment_file,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "chaos"
SECRET = "0123456789abcdef-secret"


def doc(**overrides: Any) -> dict[str, Any]:
    """A minimal valid document, with top-level fields replaced or added."""
    base: dict[str, Any] = {
        "name": "exp",
        "ttl": 60,
        "faults": [{"kind": "hang", "target": "db"}],
    }
    return base | overrides


def fault_doc(**fields: Any) -> dict[str, Any]:
    return doc(faults=[fields])


def error_of(data: object) -> ExperimentError:
    with pytest.raises(ExperimentError) as caught:
        experiment_from_dict(data)
    return caught.value


# -- what valid documents build ------------------------------------------------------------


def test_a_full_document_builds_the_experiment_it_describes() -> None:
    data = {
        "name": "full.exp_1",
        "ttl": 300,
        "faults": [
            {"kind": "latency", "target": "inventory", "rate": 0.3, "delay": 0.05},
            {"kind": "raise", "target": "payments*", "exc": "builtins.ConnectionResetError"},
            {
                "kind": "respond",
                "target": "GET /items/*",
                "rate": 0.05,
                "status": 503,
                "body": "busy\n",
                "headers": {"Retry-After": "1"},
            },
            {"kind": "hang", "target": "db", "rate": 0},
            {"kind": "reset", "target": "payments-eu", "rate": 1},
        ],
        "routes": ["GET /items/*", "/reports/*"],
        "tenants": ["acme"],
        "header": "X-Chaos",
        "secret": SECRET,
        "abort": {"error_rate": 0.05, "p99": 0.8, "window": 60, "min_requests": 5},
    }
    built = experiment_from_dict(data)
    assert built == Experiment(
        "full.exp_1",
        ttl=300,
        faults=[
            Latency("inventory", delay=0.05, rate=0.3),
            Raise("payments*", exc=ConnectionResetError),
            Respond(
                "GET /items/*", status=503, body="busy\n", headers={"Retry-After": "1"}, rate=0.05
            ),
            Hang("db", rate=0.0),
            Reset("payments-eu"),
        ],
        routes=["GET /items/*", "/reports/*"],
        tenants=["acme"],
        header="x-chaos",
        secret=SECRET,
        abort=AbortWhen(error_rate=0.05, p99=0.8, window=60, min_requests=5),
    )
    assert built.secret == SECRET  # not part of equality: checked on its own


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0, 0.0),
        (0.25, 0.25),
        ({"fixed": 0.1}, Fixed(0.1)),
        ({"uniform": {"low": 0.01, "high": 0.02}}, Uniform(0.01, 0.02)),
        ({"uniform": {"low": 0.01, "high": 0.01}}, Uniform(0.01, 0.01)),
        ({"lognormal": {"p50": 0.05, "p99": 0.5}}, LogNormal(p50=0.05, p99=0.5)),
        ({"lognormal": {"p50": 0.05, "p99": 0.05}}, LogNormal(p50=0.05, p99=0.05)),
        ({"pareto": {"minimum": 0.01, "alpha": 1.5}}, Pareto(minimum=0.01, alpha=1.5)),
        ({"empirical": [0.01, 0.02, 0.4]}, Empirical([0.01, 0.02, 0.4])),
    ],
)
def test_each_delay_form_becomes_its_distribution(delay: object, expected: object) -> None:
    (fault,) = experiment_from_dict(fault_doc(kind="latency", target="db", delay=delay)).faults
    assert isinstance(fault, Latency)
    assert fault.delay == expected
    assert type(fault.delay) is type(expected)


def test_defaults_rate_one_and_no_scope() -> None:
    built = experiment_from_dict(doc())
    assert built.faults[0].rate == 1.0
    assert (built.routes, built.tenants, built.header, built.secret, built.abort) == (
        (),
        (),
        None,
        None,
        None,
    )


def test_abort_keeps_the_engine_defaults_for_what_it_leaves_out() -> None:
    built = experiment_from_dict(doc(abort={"p99": 0.5}))
    assert built.abort == AbortWhen(p99=0.5)


def test_raise_resolves_classes_through_the_modules_that_export_them() -> None:
    (fault,) = experiment_from_dict(
        fault_doc(kind="raise", target="db", exc="asyncio.TimeoutError")
    ).faults
    assert isinstance(fault, Raise)
    assert fault.exc is TimeoutError  # asyncio.TimeoutError is the builtin since 3.11


def test_raise_follows_nested_module_paths() -> None:
    import email.errors

    (fault,) = experiment_from_dict(
        fault_doc(kind="raise", target="db", exc="email.errors.HeaderParseError")
    ).faults
    assert isinstance(fault, Raise)
    assert fault.exc is email.errors.HeaderParseError


def test_a_module_that_is_not_imported_is_refused_and_stays_unimported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "tailguard_chaos_schema_side_effect"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    error = error_of(fault_doc(kind="raise", target="db", exc=f"{module}.Boom"))
    assert error.field == "faults[0].exc"
    assert "not imported" in error.message
    assert module not in sys.modules
    assert not marker.exists()


# -- what invalid documents say ------------------------------------------------------------


INVALID: list[tuple[object, str, str]] = [
    # (document, field, words the message contains)
    ([], "", "must be an object, got an array"),
    ("x", "", "must be an object, got a string"),
    ({1: "x"}, "", "keys must be strings"),
    (doc(colour="red"), "colour", "unknown field"),
    (doc(nmae="x"), "nmae", "unknown field"),
    ({"ttl": 60, "faults": []}, "name", "is required"),
    ({"name": "x", "faults": []}, "ttl", "is required"),
    ({"name": "x", "ttl": 60}, "faults", "is required"),
    (doc(name=""), "name", "must not be empty"),
    (doc(name="has space"), "name", "letters, digits"),
    (doc(name="-leading"), "name", "start with a letter or digit"),
    (doc(name="x" * 65), "name", "at most 64 characters"),
    (doc(name=7), "name", "must be a string, got an integer"),
    (doc(name="tab\there"), "name", "control characters"),
    (doc(ttl=0), "ttl", "greater than 0"),
    (doc(ttl=-1), "ttl", "greater than 0"),
    (doc(ttl=MAX_TTL + 1), "ttl", "at most 86400"),
    (doc(ttl="60"), "ttl", "must be a number, got a string"),
    (doc(ttl=True), "ttl", "must be a number, got a boolean"),
    (doc(ttl=None), "ttl", "must be a number, got null"),
    (doc(ttl=float("inf")), "ttl", "finite"),
    (doc(ttl=float("nan")), "ttl", "finite"),
    (doc(ttl=10**400), "ttl", "huge integer"),
    (doc(faults=[]), "faults", "1 to 32 faults"),
    (doc(faults={"kind": "hang"}), "faults", "must be an array, got an object"),
    (doc(faults=[{"kind": "hang", "target": "db"}] * 33), "faults", "1 to 32 faults"),
    (doc(faults=["hang"]), "faults[0]", "must be an object, got a string"),
    (fault_doc(target="db"), "faults[0].kind", "is required"),
    (fault_doc(kind="explode", target="db"), "faults[0].kind", "got 'explode'"),
    (fault_doc(kind=3, target="db"), "faults[0].kind", "got an integer"),
    (fault_doc(kind="hang"), "faults[0].target", "is required"),
    (fault_doc(kind="hang", target=""), "faults[0].target", "must not be empty"),
    (fault_doc(kind="hang", target="has space"), "faults[0].target", "without spaces"),
    (fault_doc(kind="hang", target="db", delay=1), "faults[0].delay", "unknown field"),
    (fault_doc(kind="reset", target="GET /items/*"), "faults[0].target", "not a route key"),
    (fault_doc(kind="hang", target="db", rate=1.5), "faults[0].rate", "between 0 and 1"),
    (fault_doc(kind="hang", target="db", rate=-0.1), "faults[0].rate", "between 0 and 1"),
    (fault_doc(kind="hang", target="db", rate=False), "faults[0].rate", "got a boolean"),
    (fault_doc(kind="latency", target="db"), "faults[0].delay", "is required"),
    (fault_doc(kind="latency", target="db", delay=-1), "faults[0].delay", "at least 0"),
    (fault_doc(kind="latency", target="db", delay="1s"), "faults[0].delay", "number of seconds"),
    (fault_doc(kind="latency", target="db", delay={}), "faults[0].delay", "exactly one"),
    (
        fault_doc(kind="latency", target="db", delay={"fixed": 1, "uniform": {}}),
        "faults[0].delay",
        "exactly one",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"gamma": 1}),
        "faults[0].delay.gamma",
        "unknown field",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"fixed": -0.1}),
        "faults[0].delay.fixed",
        "at least 0",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"uniform": {"low": 2, "high": 1}}),
        "faults[0].delay.uniform.high",
        "at least 2",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"uniform": {"low": 1}}),
        "faults[0].delay.uniform.high",
        "is required",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"uniform": [1, 2]}),
        "faults[0].delay.uniform",
        "must be an object",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"lognormal": {"p50": 0.5, "p99": 0.1}}),
        "faults[0].delay.lognormal.p99",
        "at least 0.5",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"lognormal": {"p50": 0, "p99": 0.1}}),
        "faults[0].delay.lognormal.p50",
        "greater than 0",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"pareto": {"minimum": 0.1, "alpha": 0}}),
        "faults[0].delay.pareto.alpha",
        "greater than 0",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"empirical": []}),
        "faults[0].delay.empirical",
        "1 to 10000 samples",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"empirical": 0.1}),
        "faults[0].delay.empirical",
        "array of seconds",
    ),
    (
        fault_doc(kind="latency", target="db", delay={"empirical": [0.1, "x"]}),
        "faults[0].delay.empirical[1]",
        "got a string",
    ),
    (fault_doc(kind="raise", target="db"), "faults[0].exc", "is required"),
    (fault_doc(kind="raise", target="db", exc="ConnectionResetError"), "faults[0].exc", "dotted"),
    (fault_doc(kind="raise", target="db", exc="builtins.len"), "faults[0].exc", "not a class"),
    (fault_doc(kind="raise", target="db", exc="builtins.int"), "faults[0].exc", "Exception"),
    (fault_doc(kind="raise", target="db", exc="os.path"), "faults[0].exc", "not a class"),
    (
        fault_doc(kind="raise", target="db", exc="builtins.KeyboardInterrupt"),
        "faults[0].exc",
        "not a subclass of Exception",
    ),
    (
        fault_doc(kind="raise", target="db", exc="asyncio.CancelledError"),
        "faults[0].exc",
        "not a subclass of Exception",
    ),
    (
        fault_doc(kind="raise", target="db", exc="builtins.NoSuchError"),
        "faults[0].exc",
        "does not exist",
    ),
    (
        fault_doc(kind="raise", target="db", exc="builtins.__class__"),
        "faults[0].exc",
        "dunder",
    ),
    (
        fault_doc(kind="raise", target="db", exc="builtins.Exception()"),
        "faults[0].exc",
        "dotted",
    ),
    (
        fault_doc(kind="raise", target="db", exc="no_such_module_anywhere.Error"),
        "faults[0].exc",
        "not imported",
    ),
    (
        fault_doc(kind="raise", target="db", exc="builtins.UnicodeDecodeError"),
        "faults[0].exc",
        "cannot be created from a message",
    ),
    (fault_doc(kind="respond", target="db"), "faults[0].status", "is required"),
    (fault_doc(kind="respond", target="db", status=99), "faults[0].status", "200 and 599"),
    (fault_doc(kind="respond", target="db", status=600), "faults[0].status", "200 and 599"),
    (fault_doc(kind="respond", target="db", status=503.0), "faults[0].status", "integer"),
    (fault_doc(kind="respond", target="db", status=10**30), "faults[0].status", "huge"),
    (fault_doc(kind="respond", target="db", status=503, body=3), "faults[0].body", "string"),
    (
        fault_doc(kind="respond", target="db", status=503, body="x" * 20000),
        "faults[0].body",
        "at most 16384",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers=[]),
        "faults[0].headers",
        "object of strings",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers={"bad name": "1"}),
        "faults[0].headers.bad name",
        "not a valid HTTP header name",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers={"x-a": "1\r\nx-b: 2"}),
        "faults[0].headers.x-a",
        "line breaks",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers={"x-a": "\u20ac"}),
        "faults[0].headers.x-a",
        "Latin-1",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers={"Transfer-Encoding": "x"}),
        "faults[0].headers.Transfer-Encoding",
        "framing or hop-by-hop header",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers={"proxy-x": "1", "a": "b"}),
        "faults[0].headers.proxy-x",
        "framing or hop-by-hop header",
    ),
    (
        fault_doc(kind="respond", target="db", status=503, headers={"x-a": 1}),
        "faults[0].headers.x-a",
        "must be a string",
    ),
    (
        fault_doc(
            kind="respond", target="db", status=503, headers={f"x-{i}": "1" for i in range(33)}
        ),
        "faults[0].headers",
        "at most 32 headers",
    ),
    (doc(routes="GET /items"), "routes", "array of strings"),
    (doc(routes=["items"]), "routes[0]", "a route key is"),
    (doc(routes=[""]), "routes[0]", "must not be empty"),
    (doc(routes=["/a"] * 65), "routes", "at most 64"),
    (doc(tenants=[None]), "tenants[0]", "got null"),
    (doc(header="x-chaos"), "secret", "is required with 'header'"),
    (doc(secret=SECRET), "header", "is required with 'secret'"),
    (doc(header="x chaos", secret=SECRET), "header", "not a valid HTTP header name"),
    (doc(header=None, secret=SECRET), "header", "got null"),
    (doc(header="x-chaos", secret="short"), "secret", "at least 16 characters"),
    (doc(header="x-chaos", secret="has spaces in the secret"), "secret", "printable ASCII"),
    (doc(abort={}), "abort", "needs 'error_rate' or 'p99'"),
    (doc(abort=None), "abort", "must be an object, got null"),
    (doc(abort={"p99": 0.5, "windw": 3}), "abort.windw", "did you mean 'window'"),
    (doc(abort={"error_rate": 1}), "abort.error_rate", "less than 1"),
    (doc(abort={"error_rate": -0.1}), "abort.error_rate", "at least 0"),
    (doc(abort={"p99": 0}), "abort.p99", "greater than 0"),
    (doc(abort={"p99": 1, "window": MAX_TTL * 2}), "abort.window", "at most 86400"),
    (doc(abort={"p99": 1, "min_requests": 0}), "abort.min_requests", "between 1 and"),
    (doc(abort={"p99": 1, "min_requests": 2.5}), "abort.min_requests", "integer"),
]


@pytest.mark.parametrize(("data", "field", "words"), INVALID)
def test_invalid_documents_name_the_field(data: object, field: str, words: str) -> None:
    error = error_of(data)
    assert error.field == field
    assert words in error.message
    assert str(error) == (f"{field}: {error.message}" if field else error.message)


def test_validation_does_not_touch_the_document() -> None:
    data = fault_doc(kind="respond", target="db", status=503, headers={"X-A": "1"})
    before = copy.deepcopy(data)
    experiment_from_dict(data)
    assert data == before


# -- back to data --------------------------------------------------------------------------


EXPERIMENTS = [
    Experiment("minimal", faults=[Hang("db")], ttl=1),
    Experiment(
        "everything",
        ttl=MAX_TTL,
        faults=[
            Latency("a", delay=0.5, rate=0.25),
            Latency("b", delay=Fixed(0.1)),
            Latency("c", delay=Uniform(0.0, 1.0)),
            Latency("d", delay=LogNormal(p50=0.01, p99=0.2)),
            Latency("e", delay=Pareto(minimum=0.001, alpha=0.8)),
            Latency("f", delay=Empirical([0.1, 0.2, 0.2])),
            Raise("g*", exc=ConnectionError, rate=0.5),
            Respond("GET /x/*", status=429, body="slow down", headers={"retry-after": "2"}),
            Respond("h", status=200),
            Reset("i"),
        ],
        routes=["GET /x/*"],
        tenants=["t1", "t2"],
        header="x-chaos",
        secret=SECRET,
        abort=AbortWhen(error_rate=0.0, window=5, min_requests=1),
    ),
]


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda e: e.name)
def test_experiments_round_trip_through_data(experiment: Experiment) -> None:
    data = experiment_to_dict(experiment)
    assert json.loads(json.dumps(data)) == data  # plain JSON
    back = experiment_from_dict(data)
    assert back == experiment
    assert back.secret == experiment.secret
    assert experiment_to_dict(back) == data


def test_to_dict_leaves_unset_fields_out_and_can_redact_the_secret() -> None:
    assert experiment_to_dict(EXPERIMENTS[0]) == {
        "name": "minimal",
        "ttl": 1.0,
        "faults": [{"kind": "hang", "target": "db", "rate": 1.0}],
    }
    assert experiment_to_dict(EXPERIMENTS[1], redact_secret=True)["secret"] == "<redacted>"


class _LocalError(Exception):
    pass


def test_what_has_no_data_form_is_an_error_naming_the_field() -> None:
    factory = Experiment("f", ttl=1, faults=[Hang("a"), Raise("db", exc=lambda: OSError(5, "x"))])
    with pytest.raises(ExperimentError) as caught:
        experiment_to_dict(factory)
    assert caught.value.field == "faults[1].exc"

    class Hidden(Exception):
        pass

    hidden = Experiment("h", ttl=1, faults=[Raise("db", exc=Hidden)])
    with pytest.raises(ExperimentError, match="dotted path") as caught:
        experiment_to_dict(hidden)
    assert caught.value.field == "faults[0].exc"

    class Spike(Distribution):
        __slots__ = ()

        def sample(self, rng: Any) -> float:
            return 1.0

    custom = Experiment("c", ttl=1, faults=[Latency("db", delay=Spike())])
    with pytest.raises(ExperimentError, match="Spike has no data form") as caught:
        experiment_to_dict(custom)
    assert caught.value.field == "faults[0].delay"


def test_a_fault_kind_the_schema_does_not_know_has_no_data_form() -> None:
    class Flood(Hang):
        kind: ClassVar[str] = "flood"

    experiment = Experiment("f", ttl=1, faults=[Hang("a"), Flood("db")])
    with pytest.raises(ExperimentError, match="Flood has no data form") as caught:
        experiment_to_dict(experiment)
    assert caught.value.field == "faults[1]"


@pytest.mark.parametrize(
    ("message", "field", "reason"),
    [
        ("Latency: delay must be >= 0", "faults[0].delay", "must be >= 0"),
        ("Respond: headers: 'x y' is not valid", "faults[0].headers", "'x y' is not valid"),
        ("experiment 'e': routes[2]: a route key is", "faults[0].routes[2]", "a route key is"),
        ("Thing: colour must be red", "faults[0]", "colour must be red"),
        ("no owner and no field", "faults[0]", "no owner and no field"),
    ],
)
def test_runtime_errors_are_attributed_to_the_field_they_name(
    message: str, field: str, reason: str
) -> None:
    def fail() -> None:
        raise ValueError(message)

    with pytest.raises(ExperimentError) as caught:
        _build("faults[0]", fail)
    assert (caught.value.field, caught.value.message) == (field, reason)


def test_module_level_exception_classes_of_this_test_module_round_trip() -> None:
    experiment = Experiment("m", ttl=1, faults=[Raise("db", exc=_LocalError)])
    data = experiment_to_dict(experiment)
    assert data["faults"][0]["exc"] == f"{__name__}._LocalError"
    assert experiment_from_dict(data) == experiment


# -- files ---------------------------------------------------------------------------------


def test_every_example_file_is_a_valid_experiment() -> None:
    files = sorted(EXAMPLES.glob("*"))
    assert {file.suffix for file in files} == {".json", ".yaml"}
    for file in files:
        experiment = load_experiment(file)
        assert experiment.name == file.stem
        assert experiment_from_dict(experiment_to_dict(experiment)) == experiment


def test_json_yaml_and_yml_files_load_alike(tmp_path: Path) -> None:
    data = doc(faults=[{"kind": "latency", "target": "db", "delay": {"fixed": 0.1}}])
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "b.yaml").write_text(
        "name: exp\nttl: 60\nfaults:\n  - {kind: latency, target: db, delay: {fixed: 0.1}}\n"
    )
    (tmp_path / "c.YML").write_text(json.dumps(data))  # JSON is YAML too
    loaded = [load_experiment(tmp_path / name) for name in ("a.json", "b.yaml", "c.YML")]
    assert loaded[0] == loaded[1] == loaded[2] == experiment_from_dict(data)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("x.toml", "name = 'x'", "expected a .json, .yaml or .yml file"),
        ("x.json", "{bad", "not valid JSON"),
        ("x.json", '{"ttl": NaN}', "NaN is not a number JSON allows"),
        ("x.json", '{"ttl": 1, "ttl": 2}', "duplicate key 'ttl'"),
        ("x.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("x.json", "1" * 5000, "not valid JSON"),
        ("x.json", b"\xff\xfe{", "not valid JSON"),
        ("x.yaml", "name: [unclosed", "not valid YAML"),
        ("x.yaml", "name: a\nname: b\n", "duplicate key 'name'"),
        ("x.yaml", "!!python/object/apply:os.system ['true']", "not valid YAML"),
        ("x.yaml", "[" * 1000, "not valid YAML"),
    ],
)
def test_malformed_files_are_refused(
    tmp_path: Path, name: str, content: str | bytes, words: str
) -> None:
    file = tmp_path / name
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content)
    with pytest.raises(ExperimentError) as caught:
        load_experiment(file)
    assert words in caught.value.message
    assert caught.value.field == ""


def test_yaml_values_that_are_not_json_types_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "x.yaml"
    file.write_text("name: exp\nttl: yes\nfaults: []\n")  # YAML 1.1: yes is a boolean
    with pytest.raises(ExperimentError, match="ttl: must be a number, got a boolean"):
        load_experiment(file)
    file.write_text("name: 2024-01-01\nttl: 1\nfaults: []\n")
    with pytest.raises(ExperimentError, match="name: must be a string, got a date"):
        load_experiment(file)


def test_read_experiment_file_decodes_without_validating(tmp_path: Path) -> None:
    file = tmp_path / "x.yaml"
    file.write_text("anything: [1, 2]\n")
    assert read_experiment_file(file) == {"anything": [1, 2]}
    with pytest.raises(FileNotFoundError):
        read_experiment_file(tmp_path / "missing.json")
