"""One experiment across hosts: two uvicorn processes over a real redis-server on 127.0.0.1.

The test starts its own ``redis-server`` (Debian's; ``make test`` installs
it) on a free port with its data in a temp dir, and kills and restarts it
to show the fail-safe: no worker injects for longer than a lease without
the store, and a restarted store does not bring back what was halted or
expired meanwhile. ``max_injections`` caps the processes together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tailguard.chaos import Chaos, Raise

from .fleet_support import (
    EXPERIMENT,
    WAIT,
    RedisServer,
    Traffic,
    check_fleet_cap,
    fleet,
    halt_to_last_injection,
    injected_by,
    redis_server,
)
from .runtime_support import experiment

SETTLE = 3.0
"""Seconds after a halt from which no worker may inject (the goal is 1 s)."""
LEASE = 2.0


@pytest.fixture(name="redis")
def redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
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
        yield server
    finally:
        server.kill()


def eventually(condition: object) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, "condition never became true"
        time.sleep(0.02)


def test_two_processes_follow_one_redis(redis: RedisServer, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with fleet(tmp_path, f"{redis.url}?service=shop") as running:
        first, second = running.spawn(), running.spawn()
        urls = [first.url, second.url]
        with (
            running.control(first) as via_first,
            running.control(second) as via_second,
            Traffic(urls, threads=4) as traffic,
        ):
            pids = {a.pid for a in traffic.wait_for(lambda a: len({x.pid for x in a}) >= 2, 0)}
            for _ in range(2):
                assert via_first.post("/experiments", json=EXPERIMENT).status_code == 201
                traffic.wait_for(lambda answers: injected_by(answers) >= pids, 0)
                reach = halt_to_last_injection(traffic, via_second, pids, settle=SETTLE)
                print(f"halt reached both processes {reach:.3f} s after it was sent")
                assert reach < SETTLE
            assert via_second.post("/experiments", json=EXPERIMENT).status_code == 201
            late = running.spawn()
            with Traffic([late.url], threads=2) as late_traffic:
                late_traffic.wait_for(lambda answers: any(a.injected for a in answers), 0)
            # Heartbeats every half second: the late worker shows up in a moment.
            eventually(lambda: len(via_first.get("/status").json()["workers"]) == 3)
            status = via_first.get("/status").json()
            assert {worker["pid"] for worker in status["workers"]} >= pids
            assert status["store"]["url"] == redis.url
            assert status["store"]["service"] == "shop"
            assert via_first.post("/halt").json()["halted"] == 1


def test_max_injections_caps_two_processes_together(redis: RedisServer, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    with fleet(tmp_path, redis.url) as running:
        first, second = running.spawn(max_injections=3), running.spawn(max_injections=3)
        with running.control(second) as control:  # shares of 2 and 1
            check_fleet_cap(control, [first.url, second.url], workers=2, cap=3)


def test_services_sharing_a_redis_do_not_see_each_other(redis: RedisServer) -> None:
    shop = Chaos(enabled=True, store=f"{redis.url}?service=shop")
    other = Chaos(enabled=True, store=f"{redis.url}?service=other")
    try:
        shop.start(experiment(Raise("db", exc=ConnectionError)))
        time.sleep(0.5)
        assert shop.armed
        assert not other.armed
        assert other.halt() == 0
        assert shop.armed
    finally:
        shop.halt()
        shop.close()
        other.close()


def test_killing_redis_stops_every_worker_within_the_lease_and_a_restart_brings_back_nothing(
    redis: RedisServer, tmp_path: Path
) -> None:
    pytest.importorskip("uvicorn")
    with fleet(tmp_path, redis.url) as running:
        first, second = running.spawn(), running.spawn()
        with (
            running.control(first) as via_first,
            Traffic([first.url, second.url], threads=4) as traffic,
        ):
            pids = {a.pid for a in traffic.wait_for(lambda a: len({x.pid for x in a}) >= 2, 0)}
            halted = {**EXPERIMENT, "name": "halted"}
            expiring = {**EXPERIMENT, "name": "expiring", "ttl": 4}
            assert via_first.post("/experiments", json=halted).status_code == 201
            assert via_first.post("/experiments", json=expiring).status_code == 201
            traffic.wait_for(lambda answers: injected_by(answers) >= pids, 0)

            killed_at = time.monotonic()
            redis.kill()
            quiet = killed_at + LEASE + SETTLE
            answers = traffic.wait_for(
                lambda got: {a.pid for a in got if a.sent >= quiet} >= pids, killed_at
            )
            late = [a.received - killed_at for a in answers if a.injected]
            print(f"without the store, the last injection came {max(late, default=0):.3f} s in")
            assert not [a for a in answers if a.injected and a.sent >= quiet]
            status = via_first.get("/status").json()
            assert status["store"]["following"] is False
            assert status["experiments"] == []
            # Meanwhile: one experiment halted (reaching one worker), the other's TTL runs out.
            assert via_first.post("/halt").status_code == 200
            time.sleep(max(0.0, killed_at + 4.5 - time.monotonic()))

            restarted_at = time.monotonic()
            redis.start()
            eventually(lambda: via_first.get("/status").json()["store"]["following"])
            # Past the lease each worker waits after a comeback, nothing runs again.
            after = restarted_at + 2 * LEASE + 1
            answers = traffic.wait_for(
                lambda got: {a.pid for a in got if a.sent >= after} >= pids, restarted_at
            )
            assert not [a for a in answers if a.injected]
            status = via_first.get("/status").json()
            assert status["experiments"] == []
            assert {w["pid"] for w in status["workers"] if w["following"]} >= pids
            with httpx.Client(timeout=WAIT) as client:
                second_status = client.get(
                    f"{second.url}/_tailguard/status",
                    headers={"authorization": f"Bearer {running.token}"},
                ).json()
            assert second_status["experiments"] == []
