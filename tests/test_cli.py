"""The ``tailguard`` command line: parsing, dispatch, and loading an app by ``module:attr``."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tailguard
from tailguard import cli

ModuleWriter = Callable[[str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleWriter]:
    """Write a uniquely named module into ``tmp_path``; return its name.

    ``sys.path`` is restored afterwards and the modules are forgotten, so
    nothing leaks into other tests.
    """
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"tailguard_cli_app_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


STARLETTE_APP = """
    from starlette.applications import Starlette

    app = Starlette()

    class Holder:
        app = app
"""


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: tailguard" in out
    assert "demo" in out


def test_demo_help_describes_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--app", "--app-dir", "--out", cli.DEFAULT_APP):
        assert option in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tailguard {tailguard.__version__}"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: tailguard" in err
    assert "required: COMMAND" in err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explode"]) == 2
    assert "invalid choice: 'explode'" in capsys.readouterr().err


def test_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--fast"]) == 2
    assert "unrecognized arguments: --fast" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["examples.shop", ":app", "examples.shop:", ""])
def test_app_must_be_module_colon_attribute(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--app", spec]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"tailguard demo: error: --app must look like 'module:attribute', got {spec!r}\n"
    )


def test_missing_module_exits_2_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = cli.main(["demo", "--app", "no_such_module_here:app", "--app-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("tailguard demo: error: cannot import 'no_such_module_here'")
    assert str(tmp_path) in err
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in err
    assert err.endswith(
        "; run the command from the directory that contains it, or pass --app-dir\n"
    )
    assert err.count("\n") == 1  # one line, no traceback


def test_missing_dependency_of_the_app_is_named(
    tmp_path: Path, write_module: ModuleWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("import no_such_dependency_here\n")
    assert cli.main(["demo", "--app", f"{name}:app", "--app-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot import {name!r}" in err
    assert "No module named 'no_such_dependency_here'" in err
    assert "--app-dir" not in err  # the module was found; what it imports was not


def test_module_that_fails_to_import_exits_2(
    tmp_path: Path, write_module: ModuleWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("raise RuntimeError('database URL not set')\n")
    assert cli.main(["demo", "--app", f"{name}:app", "--app-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot import {name!r}" in err
    assert "RuntimeError: database URL not set" in err


def test_missing_attribute_exits_2(
    tmp_path: Path, write_module: ModuleWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module(STARLETTE_APP)
    assert cli.main(["demo", "--app", f"{name}:application", "--app-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"tailguard demo: error: module {name!r} has no attribute 'application'\n"


def test_attribute_that_is_not_an_app_exits_2(
    tmp_path: Path, write_module: ModuleWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("app = 42\n")
    assert cli.main(["demo", "--app", f"{name}:app", "--app-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"'{name}:app' is not an ASGI application: got int" in err


def test_import_app_follows_dotted_attributes_and_puts_app_dir_first(
    tmp_path: Path, write_module: ModuleWriter
) -> None:
    name = write_module(STARLETTE_APP)
    module_app = cli.import_app(f"{name}:app", str(tmp_path))
    assert cli.import_app(f"{name}:Holder.app", str(tmp_path)) is module_app
    # The directory goes first, once, however often apps are imported from it.
    assert sys.path[0] == str(tmp_path)
    assert sys.path.count(str(tmp_path)) == 1


def test_import_app_resolves_a_relative_app_dir(
    tmp_path: Path, write_module: ModuleWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_module(STARLETTE_APP)
    monkeypatch.chdir(tmp_path.parent)
    cli.import_app(f"{name}:app", tmp_path.name)
    assert sys.path[0] == str(tmp_path)


def test_demo_without_its_extras_says_what_to_install(
    tmp_path: Path,
    write_module: ModuleWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = write_module(STARLETTE_APP)
    # As if aiohttp, hdrhistogram or uvicorn were not installed: importing it fails. The
    # demo says so before importing the app.
    for missing in ("aiohttp", "hdrh", "uvicorn"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, missing, None)
            assert cli.main(["demo", "--app", f"{name}:app", "--app-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "the demo needs the game-day extras: pip install 'tailguard[gameday]'" in err
        assert missing in err
        assert name not in sys.modules


def test_the_example_shop_is_the_bundled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a checkout, examples.shop:app (what docs and older commands name) is the
    # app the demo serves by default, which an installed wheel has too.
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = Path(__file__).resolve().parent.parent
    assert cli.import_app("examples.shop:app", str(root)) is cli.import_app(cli.DEFAULT_APP)


def test_console_script_entry_point() -> None:
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="tailguard")
    assert script.load() is cli.main


def test_python_dash_m_runs_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["tailguard", "--version"]
    try:
        with pytest.raises(SystemExit) as info:
            runpy.run_module("tailguard", run_name="__main__")
    finally:
        sys.argv = argv
    assert info.value.code == 0
    assert "tailguard" in capsys.readouterr().out


def test_a_token_that_starts_with_a_dash_is_taken_as_the_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # secrets.token_urlsafe(), which the docs suggest, starts one token in 64 with "-".
    status = cli.main(["chaos", "status", "--url", "http://127.0.0.1:9", "--token", "-" + "x" * 31])
    assert "expected one argument" not in capsys.readouterr().err
    assert status != 2  # not a usage error: the connection to port 9 fails instead
