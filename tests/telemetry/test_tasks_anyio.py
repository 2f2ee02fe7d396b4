"""Tasks of anyio task groups are named by their coroutine, under the newest and the oldest anyio.

anyio 4.14 started running every task-group task in a wrapper coroutine
(``TaskHandle._run_coro``), so task spans, snapshots and the orphan log named
all of them ``TaskHandle._run_coro``. tailguard allows ``anyio>=4.4``: the same
scenario (``tests/telemetry/anyio_names.py``) runs here with the installed
anyio, and in a subprocess with the oldest anyio pyproject.toml allows,
downloaded from the package index. Without the index the second test skips,
saying so, unless ``TAILGUARD_REQUIRE_OLDEST_ANYIO=1`` (set by ``make test``)
makes that a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from tailguard.telemetry import tasks
from tailguard.telemetry.live import coroutine_name, task_name
from tests.telemetry import anyio_names

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(anyio_names.__file__)
DOWNLOAD_TIMEOUT = 180.0
RUN_TIMEOUT = 90.0


@pytest.fixture
def fresh_log_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # The orphan log is once per name per process: this test wants to see its one line.
    monkeypatch.setattr(tasks, "_logged", set())


def reported(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key != "anyio"}


async def test_task_group_tasks_are_named_by_their_coroutine(fresh_log_names: None) -> None:
    result = await anyio_names.scenario()
    assert reported(result) == anyio_names.EXPECTED
    assert "TaskHandle._run_coro" not in json.dumps(result)


def oldest_allowed_anyio() -> str:
    """The lower bound of ``anyio`` in pyproject.toml's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"anyio\s*>=\s*([0-9][0-9.]*)", requirement.strip())
        if found:
            return found.group(1)
    raise AssertionError("pyproject.toml has no 'anyio>=' dependency")  # pragma: no cover


@pytest.fixture(scope="session")
def oldest_anyio(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The oldest anyio allowed, and its dependencies, unpacked where PYTHONPATH can use them."""
    wanted = oldest_allowed_anyio()
    wheels = tmp_path_factory.mktemp("oldest-anyio-wheels")
    command = [
        sys.executable,
        *("-m", "pip", "download", f"anyio=={wanted}", "--only-binary=:all:"),
        *("--dest", str(wheels), "--quiet", "--disable-pip-version-check"),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
        failure = done.stderr.strip()[-500:] if done.returncode else None
    except subprocess.TimeoutExpired:  # pragma: no cover - only without a reachable index
        failure = f"timed out after {DOWNLOAD_TIMEOUT:.0f} s"
    if failure is not None:  # pragma: no cover - only without a reachable index
        reason = f"could not download anyio=={wanted} from the package index: {failure}"
        if os.environ.get("TAILGUARD_REQUIRE_OLDEST_ANYIO") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    unpacked = tmp_path_factory.mktemp("oldest-anyio")
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
    return wanted, unpacked


def release(version: str) -> tuple[int, ...]:
    numbers = [int(part) for part in version.split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def test_the_same_names_under_the_oldest_anyio_allowed(oldest_anyio: tuple[str, Path]) -> None:
    wanted, unpacked = oldest_anyio
    env = dict(os.environ)
    # The old anyio first, then tailguard's sources; the venv's site-packages come after both.
    env["PYTHONPATH"] = os.pathsep.join([str(unpacked), str(ROOT / "src")])
    done = subprocess.run(
        [sys.executable, str(SCENARIO)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert release(result["anyio"]) == release(wanted)  # the old anyio did run it
    assert reported(result) == anyio_names.EXPECTED


async def test_an_anyio_coroutine_without_a_handle_is_named_by_its_task() -> None:
    # Not a task-group wrapper (no handle with a coroutine): the name anyio gave the task,
    # or, with none, the coroutine's own name.
    coro = anyio.sleep(1)
    try:
        assert task_name(coro, "AnyIO sleeper") == "AnyIO sleeper"
        assert task_name(coro, "") == "sleep"
        assert task_name(coro) == "sleep"
    finally:
        coro.close()
    assert task_name(coro, "AnyIO sleeper") == "sleep"  # finished: no frame to look into


async def refresh_cache() -> None:
    await asyncio.sleep(0)


async def test_plain_asyncio_tasks_keep_their_coroutine_name_whatever_the_task_name() -> None:
    task = asyncio.create_task(refresh_cache(), name="cache-refresher-17")
    assert coroutine_name(task) == "refresh_cache"
    await task
    assert coroutine_name(asyncio.get_running_loop().create_future()) == "Future"
