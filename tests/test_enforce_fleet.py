"""End to end: one ``tailguard enforce`` reaches every worker of ``uvicorn --workers 3``.

The workers follow one SQLite store (and, below, two uvicorn processes one
redis-server). Every check polls on fresh connections, so the kernel spreads
them over the workers, until each worker (by pid) has shown the mode, with a
generous bound: nothing here times the machine.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.chaos.fleet_support import RedisServer, redis_server
from tests.processes import free_port, stop, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0
"""A generous bound for what should take well under a second, even on a loaded machine."""


@dataclass
class Fleet:
    store: str
    token: str
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, workers: int, **env: str) -> str:
        port = free_port()
        log = self.tmp / f"uvicorn-{port}.log"
        environ = {
            **os.environ,
            "TAILGUARD_CHAOS_STORE": self.store,
            "TAILGUARD_TOKEN": self.token,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            **env,
        }
        environ.pop("TAILGUARD_CHAOS", None)  # modes follow the store with chaos off
        command = [sys.executable, "-m", "uvicorn", "tests.enforce_fleet_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if workers > 1:
            command += ["--workers", str(workers)]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdout=output, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", process, log)
        return url

    def enforce(
        self, url: str, mode: str, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI: ``tailguard enforce MODE --url URL``."""
        environ = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        environ["TAILGUARD_TOKEN"] = self.token if token is None else token
        return subprocess.run(
            [sys.executable, "-m", "tailguard", "enforce", mode, "--url", url],
            env=environ,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def modes(self, url: str) -> dict[str, object]:
        """``GET /_tailguard/enforcement`` of whichever worker the connection reaches."""
        headers = {"authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            answer = client.get(f"{url}/_tailguard/enforcement", headers=headers)
        answer.raise_for_status()
        data: dict[str, object] = answer.json()
        return data


@contextmanager
def fleet(tmp: Path, store: str) -> Iterator[Fleet]:
    running = Fleet(store, secrets.token_urlsafe(24), tmp)
    try:
        yield running
    finally:
        for process in running.processes:
            stop(process)


def slow_pids(url: str, want: Callable[[int], bool], workers: int) -> set[int]:
    """Pids whose ``/slow`` answered as ``want`` (a status) says, once ``workers`` did.

    Shadowed, ``/slow`` answers 200 with its pid; enforced, 504 (no pid): the
    enforced check uses the modes each worker reports (:func:`worker_modes`).
    Requests go in concurrent batches on fresh connections: one at a time, the
    worker that answered last (idle again in its event loop) tends to win the
    next connection too, and on a loaded machine a worker could go unseen.
    """
    seen: set[int] = set()
    give_up = time.monotonic() + WAIT

    def one(client: httpx.Client) -> None:
        answer = client.get(f"{url}/slow")
        if want(answer.status_code) and answer.status_code == 200:
            seen.add(answer.json()["pid"])

    with (
        httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client,
        ThreadPoolExecutor(max_workers=3 * workers) as pool,
    ):
        while len(seen) < workers:
            assert time.monotonic() < give_up, f"only {sorted(seen)} answered as wanted"
            list(pool.map(one, [client] * (3 * workers)))
    return seen


def worker_modes(fleet: Fleet, url: str, mode: str, workers: int) -> set[str]:
    """Wait until ``workers`` distinct workers report ``mode`` for the guard and ``GET /slow``."""
    seen: set[str] = set()
    give_up = time.monotonic() + WAIT
    while len(seen) < workers:
        assert time.monotonic() < give_up, f"only {sorted(seen)} report {mode}"
        modes = fleet.modes(url)
        routes = modes["routes"]
        assert isinstance(routes, dict)
        fleet_view = modes["fleet"]
        assert isinstance(fleet_view, dict)
        if modes["default"] == mode and routes["GET /slow"] == mode:
            seen.add(str(fleet_view["worker"]))
    return seen


def check_fleet(fleet: Fleet, url: str, workers: int, late: Callable[[], str]) -> None:
    before = worker_modes(fleet, url, "on", workers)
    assert len(before) == workers
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{url}/slow").status_code == 504  # enforced: late answers cut

    done = fleet.enforce(url, "shadow")
    assert done.returncode == 0, done.stderr
    assert "guard: on -> shadow" in done.stdout

    # Every worker lets the late request through (shadowed) and says so.
    assert len(slow_pids(url, lambda status: status == 200, workers)) == workers
    assert worker_modes(fleet, url, "shadow", workers) == before

    # A worker started after the switch takes the fleet's mode, not TAILGUARD_ENFORCE's.
    late_url = late()
    assert worker_modes(fleet, late_url, "shadow", 1)
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{late_url}/slow").status_code == 200

    # A wrong or missing token changes nothing anywhere.
    for token in ("wrong-token", ""):
        refused = fleet.enforce(url, "on", token=token)
        assert refused.returncode != 0
    with httpx.Client(timeout=10) as client:
        answer = client.post(f"{url}/_tailguard/enforcement", json={"mode": "on"})
        assert answer.status_code == 401
        answer = client.post(
            f"{url}/_tailguard/enforcement",
            json={"mode": "on"},
            headers={"authorization": "Bearer nope"},
        )
        assert answer.status_code == 401
    # Several rounds over every worker: all still shadowed (a poll interval has long passed).
    time.sleep(0.5)
    assert worker_modes(fleet, url, "shadow", workers) == before
    assert len(slow_pids(url, lambda status: status == 200, workers)) == workers

    # One command rolls every worker back, the late one too.
    done = fleet.enforce(late_url, "on")
    assert done.returncode == 0, done.stderr
    assert worker_modes(fleet, url, "on", workers) == before
    assert worker_modes(fleet, late_url, "on", 1)
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        assert {client.get(f"{url}/slow").status_code for _ in range(12)} == {504}


def test_one_switch_reaches_every_uvicorn_worker_through_sqlite(tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'fleet.db'}"
    with fleet(tmp_path, store) as running:
        url = running.spawn(workers=3)
        check_fleet(running, url, 3, lambda: running.spawn(1, TAILGUARD_ENFORCE="on"))


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("redis")
    if redis_server() is None:
        if os.environ.get("TAILGUARD_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is missing: apt-get install redis-server (make test does)")
        pytest.skip("redis-server is not installed")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield f"{server.url}?service=shop"
    finally:
        server.kill()


def test_one_switch_reaches_two_uvicorn_processes_through_redis(
    tmp_path: Path, redis_url: str
) -> None:
    with fleet(tmp_path, redis_url) as running:
        first = running.spawn(workers=1)
        second = running.spawn(workers=1)
        assert worker_modes(running, second, "on", 1)
        done = running.enforce(first, "shadow")
        assert done.returncode == 0, done.stderr
        assert worker_modes(running, first, "shadow", 1)
        assert worker_modes(running, second, "shadow", 1)
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{second}/slow").status_code == 200
        late = running.spawn(workers=1, TAILGUARD_ENFORCE="on")
        assert worker_modes(running, late, "shadow", 1)
        done = running.enforce(second, "on")
        assert done.returncode == 0, done.stderr
        for url in (first, second, late):
            assert worker_modes(running, url, "on", 1)
            with httpx.Client(timeout=10) as client:
                assert client.get(f"{url}/slow").status_code == 504
