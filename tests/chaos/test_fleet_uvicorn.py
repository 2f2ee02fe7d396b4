"""One experiment, every worker: real ``uvicorn --workers 3`` on 127.0.0.1 over a SQLite store.

An experiment started through the control API (reaching one worker) is
applied by all three; ``halt`` (again reaching one) stops injections in
every one; a worker started after the experiment began applies it; status
shows the three; ``max_injections`` caps the three together. The halt's
reach is measured over a few trials here and over 20 in
``benchmarks/chaos.py`` (the test only bounds it generously: no wall-clock
goal in a test).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .fleet_support import (
    EXPERIMENT,
    WAIT,
    Traffic,
    check_fleet_cap,
    fleet,
    halt_to_last_injection,
    injected_by,
)

TRIALS = 2
SETTLE = 3.0
"""Seconds after a halt from which no worker may inject any more (the goal is 1 s)."""


def test_three_uvicorn_workers_follow_one_sqlite_store(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with fleet(tmp_path, f"sqlite://{tmp_path / 'chaos.db'}") as running:
        server = running.spawn(workers=3)
        with running.control(server) as control, Traffic([server.url]) as traffic:
            # Three workers answer (the fresh connections spread over them).
            pids = {a.pid for a in traffic.wait_for(lambda a: len({x.pid for x in a}) >= 3, 0)}
            assert len(pids) == 3
            for _ in range(TRIALS):
                started = control.post("/experiments", json=EXPERIMENT)
                assert started.status_code == 201, started.text
                traffic.wait_for(lambda answers: injected_by(answers) >= pids, 0)
                reach = halt_to_last_injection(traffic, control, pids, settle=SETTLE)
                print(f"halt reached every worker {reach:.3f} s after it was sent")
                assert reach < SETTLE

            # A worker started after the experiment began applies it.
            assert control.post("/experiments", json=EXPERIMENT).status_code == 201
            late = running.spawn()
            with Traffic([late.url], threads=2) as late_traffic:
                [late_pid] = {
                    answer.pid
                    for answer in late_traffic.wait_for(
                        lambda answers: any(answer.injected for answer in answers), 0
                    )
                    if answer.injected
                }
            assert late_pid not in pids

            def listed() -> set[int]:
                return {worker["pid"] for worker in control.get("/status").json()["workers"]}

            # Heartbeats every half second: the late worker shows up in a moment.
            give_up = time.monotonic() + WAIT
            while not listed() >= pids | {late_pid}:
                assert time.monotonic() < give_up, listed()
                time.sleep(0.05)
            status = control.get("/status").json()
            assert status["not_following"] == []
            [experiment] = status["experiments"]
            fleet_counts = experiment["fleet"]
            assert fleet_counts["injections"] >= len(fleet_counts["workers"]) >= 1
            assert control.post("/halt").json()["halted"] == 1


def test_max_injections_caps_three_uvicorn_workers_together(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with fleet(tmp_path, f"sqlite://{tmp_path / 'chaos.db'}") as running:
        server = running.spawn(workers=3, max_injections=3)
        with running.control(server) as control:
            check_fleet_cap(control, [server.url], workers=3, cap=3)
