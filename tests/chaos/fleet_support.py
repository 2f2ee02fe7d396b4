"""Real uvicorn fleets on 127.0.0.1 for the fleet tests and the chaos benchmark.

A :class:`Fleet` serves ``tests/chaos/fleet_app.py`` with ``uvicorn
--workers N`` (or as one more process), all following one chaos store;
:class:`Traffic` calls ``/call`` from a few threads on fresh connections
(so every worker gets some) and records who answered and whether a fault
was injected; :func:`check_fleet_cap` shows ``max_injections`` holding
across the fleet with :class:`Holders`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tailguard.chaos.fleet import injection_share

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0
"""A generous bound for what should take well under a second, even on a loaded machine."""
EXPERIMENT: dict[str, Any] = {
    "name": "db-down",
    "ttl": 300,
    "faults": [{"kind": "raise", "target": "db", "exc": "builtins.ConnectionError", "rate": 1.0}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    """Processes serving the test app over one store, and the token of their control API."""

    store: str
    token: str
    tmp: Path
    servers: list[Server] = field(default_factory=list)

    def spawn(self, workers: int = 1, max_injections: int | None = None) -> Server:
        port = free_port()
        log = self.tmp / f"uvicorn-{port}.log"
        env = {
            **os.environ,
            **({"FLEET_MAX_INJECTIONS": str(max_injections)} if max_injections else {}),
            "TAILGUARD_CHAOS": "1",
            "TAILGUARD_CHAOS_STORE": self.store,
            "TAILGUARD_TOKEN": self.token,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }
        command = [sys.executable, "-m", "uvicorn", "tests.chaos.fleet_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if workers > 1:
            command += ["--workers", str(workers)]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        server = Server(f"http://127.0.0.1:{port}", process, log)
        self.servers.append(server)
        wait_until_up(server)
        return server

    def control(self, server: Server) -> httpx.Client:
        return httpx.Client(
            base_url=f"{server.url}/_tailguard",
            headers={"authorization": f"Bearer {self.token}"},
            timeout=WAIT,
        )

    def close(self) -> None:
        for server in self.servers:
            stop(server.process)


def wait_until_up(server: Server) -> None:
    give_up = time.monotonic() + WAIT
    while time.monotonic() < give_up:
        if server.process.poll() is not None:
            raise AssertionError(f"uvicorn exited:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/call", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{server.url} did not answer:\n{server.log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextmanager
def fleet(tmp: Path, store: str) -> Iterator[Fleet]:
    running = Fleet(store, secrets.token_urlsafe(24), tmp)
    try:
        yield running
    finally:
        running.close()


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    pid: int
    injected: bool
    url: str


class Traffic:
    """Calls ``/call`` on ``urls`` from ``threads`` threads, one fresh connection per call."""

    def __init__(self, urls: list[str], threads: int = 6) -> None:
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(urls[n % len(urls)],), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(WAIT)

    def _run(self, url: str) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5, limits=limits) as client:
            while not self._done.is_set():
                sent = time.monotonic()
                try:
                    body = client.get(f"{url}/call").json()
                except httpx.HTTPError:
                    continue
                answer = Answer(sent, time.monotonic(), body["pid"], body["injected"], url)
                with self._lock:
                    self.answers.append(answer)

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [answer for answer in self.answers if answer.sent >= moment]

    def wait_for(self, predicate: Any, moment: float) -> list[Answer]:
        """Wait until the answers sent after ``moment`` satisfy ``predicate``; returns them."""
        give_up = time.monotonic() + WAIT
        while True:
            answers = self.since(moment)
            if predicate(answers):
                return answers
            if time.monotonic() > give_up:
                raise AssertionError(f"never satisfied; {len(answers)} answers")
            time.sleep(0.02)


def injected_by(answers: list[Answer]) -> set[int]:
    return {answer.pid for answer in answers if answer.injected}


def halt_to_last_injection(
    traffic: Traffic, control: httpx.Client, pids: set[int], settle: float = 1.0
) -> float:
    """Halt through ``control`` while ``traffic`` runs; seconds from the halt to the last injection.

    The last injection is the latest *received* injected answer (an upper
    bound on when it happened); the traffic runs on until every worker in
    ``pids`` answered uninjected calls sent ``settle`` seconds after the halt.
    """
    halted_at = time.monotonic()
    assert control.post("/halt").status_code == 200
    quiet = halted_at + settle

    def settled(answers: list[Answer]) -> bool:
        return {answer.pid for answer in answers if answer.sent >= quiet} >= pids

    answers = traffic.wait_for(settled, halted_at)
    late = [answer.received - halted_at for answer in answers if answer.injected]
    assert not [answer for answer in answers if answer.injected and answer.sent >= quiet], (
        "workers still injected calls sent a while after the halt"
    )
    return max(late, default=0.0)


HOLD: dict[str, Any] = {
    "name": "hold-db",
    "ttl": 300,
    "faults": [{"kind": "hang", "target": "db", "rate": 1.0}],
}
"""Every call to ``db`` hangs until the experiment ends, unless no place is free."""


class Holders:
    """Threads calling ``/places`` on fresh connections until :meth:`stop`.

    Under :data:`HOLD`, a call injected into keeps its thread (its request
    outstanding) until the experiment ends, and a call left alone comes back
    at once: once those have come back, :attr:`outstanding` is how many calls
    the fleet has under injection, counted by the client.
    """

    def __init__(self, urls: list[str], threads: int) -> None:
        self.answers: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.outstanding = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(urls[n % len(urls)],), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Holders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for thread in self._threads:
            thread.join(WAIT)

    def stop(self) -> None:
        """No new calls; the calls under way finish (held ones when the experiment ends)."""
        self._stop.set()

    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def seen(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.answers)

    def _run(self, url: str) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=2 * WAIT, limits=limits) as client:
            while not self._stop.is_set():
                with self._lock:
                    self.outstanding += 1
                try:
                    body = client.get(f"{url}/places").json()
                except httpx.HTTPError as error:
                    with self._lock:
                        self.errors.append(repr(error))
                    continue
                finally:
                    with self._lock:
                        self.outstanding -= 1
                with self._lock:
                    self.answers.append(body)


def check_fleet_cap(control: httpx.Client, urls: list[str], workers: int, cap: int) -> None:
    """Show that the ``workers`` processes behind ``urls`` never inject more than ``cap`` at once.

    They must have been started with ``max_injections=cap`` (and ``cap >=
    workers``). Calls that hang until the experiment ends pile up on every
    worker until each is full; then the calls still held, counted by the
    client, must be the cap, and agree with the workers' own counts (their
    heartbeats). Every worker skipped calls, and said so.
    """
    split = _split(control, workers, cap)
    assert control.post("/experiments", json=HOLD).status_code == 201
    with Holders(urls, threads=4 * cap) as holders:
        try:
            _fill(holders, set(split))
            body, counted = _held(control, holders)
            assert counted["client"] == cap, counted
            assert all(
                item["injections_in_flight"] == item["injection_share"] for item in body["workers"]
            ), body["workers"]
            over = [a for a in holders.seen() if a["injections_in_flight"] > split[a["pid"]]]
            assert over == [], over[:3]
            assert body["experiments"][0]["fleet"]["skipped"] >= workers
        finally:  # the held calls end with the experiment, even if the check failed
            halted = control.post("/halt").json()["halted"]
    assert halted == 1
    assert holders.alive() == 0
    assert holders.errors == []
    assert holders.outstanding == 0


def _status(control: httpx.Client) -> dict[str, Any]:
    answer = control.get("/status")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _split(control: httpx.Client, workers: int, cap: int) -> dict[int, int]:
    """Each worker's share by pid, once every worker has seen every other."""
    give_up = time.monotonic() + WAIT
    while True:
        fleet = _status(control)["workers"]
        names = [item["worker"] for item in fleet]
        if len(names) == workers and all(
            item["injection_share"] == injection_share(cap, item["worker"], names) for item in fleet
        ):
            split = {item["pid"]: item["injection_share"] for item in fleet}
            assert sum(split.values()) == cap
            return split
        assert time.monotonic() < give_up, fleet
        time.sleep(0.05)


def _fill(holders: Holders, pids: set[int]) -> None:
    """Call until each worker answered a call it left alone because its places were all held."""

    def full() -> set[int]:
        return {
            answer["pid"]
            for answer in holders.seen()
            if answer["injections_in_flight"] >= answer["injection_share"]
        }

    give_up = time.monotonic() + WAIT
    while full() != pids:
        assert time.monotonic() < give_up, (full(), pids)
        time.sleep(0.02)
    holders.stop()


def _held(control: httpx.Client, holders: Holders) -> tuple[dict[str, Any], dict[str, int]]:
    """Once the calls left alone came back: status, and the held calls as each side counts them.

    The client counts at least the held calls, the heartbeats at most them
    (they are half a second behind): wait until they agree, and until every
    worker's skips reached its heartbeat.
    """
    give_up = time.monotonic() + WAIT
    while True:
        body = _status(control)
        [experiment] = body["experiments"]
        counted = {
            "client": holders.outstanding,
            "heartbeats": body["fleet_injections"]["in_flight"],
            "injections": experiment["fleet"]["injections"],
        }
        skipped = [item["injections_skipped"] for item in body["workers"]]
        if len(set(counted.values())) == 1 and min(skipped) >= 1:
            return body, counted
        assert time.monotonic() < give_up, counted
        time.sleep(0.05)


def redis_server() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """A redis-server of the test's own: a free port on 127.0.0.1, its data in ``directory``.

    It persists every write (append-only file, fsync always), so a restart
    comes back with what it held: what a restarted production Redis does.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "yes"]
        command += ["--appendfsync", "always", "--daemonize", "no", "--protected-mode", "no"]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        give_up = time.monotonic() + WAIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < give_up, "redis-server did not start"
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
