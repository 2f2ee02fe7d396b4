"""``tailguard chaos --store URL ...``: straight to the fleet's store, reaching every follower."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tailguard import cli
from tailguard.chaos import Chaos

from .fleet_support import WAIT

EXPERIMENT = {
    "name": "db-down",
    "ttl": 60,
    "faults": [{"kind": "raise", "target": "db", "exc": "builtins.ConnectionError"}],
    "header": "x-chaos",
    "secret": "s3cret-s3cret-s3cret",
}


def eventually(condition: object) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, "condition never became true"
        time.sleep(0.02)


def test_start_status_stop_and_halt_through_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path / 'chaos.db'}?service=shop"
    worker = Chaos(enabled=True, store=url)
    try:
        file = tmp_path / "exp.json"
        file.write_text(json.dumps(EXPERIMENT))
        assert cli.main(["chaos", "start", str(file), "--store", url]) == 0
        assert "started db-down" in capsys.readouterr().out
        eventually(lambda: worker.armed)
        eventually(lambda: worker.status()["workers"])
        assert cli.main(["chaos", "status", "--store", url]) == 0
        shown = capsys.readouterr().out
        assert "db-down" in shown
        assert worker.worker in shown
        assert cli.main(["chaos", "status", "--store", url, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["experiments"][0]["experiment"]["secret"] == "<redacted>"
        assert status["store"]["service"] == "shop"
        assert cli.main(["chaos", "start", str(file), "--store", url]) == 1
        assert "already running" in capsys.readouterr().err
        assert cli.main(["chaos", "stop", "db-down", "--store", url]) == 0
        eventually(lambda: not worker.armed)
        assert cli.main(["chaos", "stop", "db-down", "--store", url]) == 1
        assert "no running experiment" in capsys.readouterr().err
        assert cli.main(["chaos", "start", str(file), "--store", url]) == 0
        eventually(lambda: worker.armed)
        assert cli.main(["chaos", "--store", url, "halt"]) == 0  # either place
        assert "halted: 1 experiment stopped" in capsys.readouterr().out
        eventually(lambda: not worker.armed)
        assert worker.status()["stopped"][0]["reason"] == "halt"
    finally:
        worker.halt()
        worker.close()


def test_store_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chaos", "halt", "--store", "mysql://db/x"]) == 2
    assert "expected memory, sqlite" in capsys.readouterr().err
    file = tmp_path / "exp.json"
    file.write_text(json.dumps(EXPERIMENT))
    url = f"sqlite://{tmp_path / 'chaos.db'}"
    assert cli.main(["chaos", "validate", str(file), "--store", url]) == 2
    assert "use --url" in capsys.readouterr().err
    file.write_text("{}")
    assert cli.main(["chaos", "start", str(file), "--store", url]) == 2
    assert "name" in capsys.readouterr().err


def test_a_store_no_worker_opened_is_refused_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A typo in a kill switch's path must not "halt 0 experiments" in a new, empty store.
    typo = tmp_path / "chaso.db"
    assert cli.main(["chaos", "--store", f"sqlite://{typo}", "halt"]) == 2
    assert f"no chaos store at {typo}" in capsys.readouterr().err
    assert not typo.exists()
    # A path that exists but cannot be opened: one line, no traceback.
    assert cli.main(["chaos", "--store", f"sqlite://{tmp_path}", "status"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(tmp_path) in err


def test_a_start_no_worker_follows_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tailguard.chaos.store import SQLiteStore

    path = tmp_path / "chaos.db"
    SQLiteStore(str(path)).close()  # a store a worker opened once, no worker following now
    file = tmp_path / "exp.json"
    file.write_text(json.dumps(EXPERIMENT))
    url = f"sqlite://{path}"
    assert cli.main(["chaos", "start", str(file), "--store", url]) == 0
    assert "no worker follows this store" in capsys.readouterr().out
    assert cli.main(["chaos", "--store", url, "halt"]) == 0
