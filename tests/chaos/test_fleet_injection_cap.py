"""``max_injections`` across a fleet: each worker injects its share of the cap.

The split itself is checked as arithmetic; engines sharing a real SQLite
file (in one process, each with its own follower thread, as workers would)
check that the follower takes the shares from the heartbeats, that calls
already under injection drain when a share is lowered, and that a worker
whose share is 0 injects nothing and says so. Heartbeat ages move with a
fake store clock, never with waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tailguard.chaos import Chaos, Hang, Raise
from tailguard.chaos._client import render_status
from tailguard.chaos.fleet import Share, fleet_injections, injection_share, share_of
from tailguard.chaos.store import SQLiteStore, Store
from tailguard.dependency import Dependency
from tailguard.telemetry.catalog import Catalog

from .runtime_support import WAIT, FakeClock, Reached, experiment, sample, wait_until

Fleet = Callable[..., Chaos]


def eventually(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        time.sleep(0.01)


@pytest.fixture(name="path")
def path_fixture(tmp_path: Path) -> str:
    return str(tmp_path / "chaos.db")


@pytest.fixture(name="fleet")
def fleet_fixture(path: str) -> Iterator[Fleet]:
    """Make engines following the SQLite store at ``path``; halted and closed after the test."""
    made: list[Chaos] = []

    def make(store: Store | None = None, **settings: Any) -> Chaos:
        settings.setdefault("enabled", True)
        settings.setdefault("seed", 7)
        engine = Chaos(store=store or f"sqlite://{path}", **settings)
        engine.bind(Catalog(CollectorRegistry()))
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.halt(actor="test-teardown")
        engine.close()


def share(engine: Chaos) -> int:
    value: int = engine.status()["injection_share"]
    return value


def shares(engines: list[Chaos]) -> list[int]:
    return [share(engine) for engine in engines]


def expected(cap: int, engines: list[Chaos]) -> list[int]:
    names = [engine.worker for engine in engines]
    return [injection_share(cap, name, names) for name in names]


# -- the split ----------------------------------------------------------------------------


def test_shares_add_up_to_the_cap_and_differ_by_at_most_one() -> None:
    rng = random.Random(17)
    for cap in range(1, 13):
        for n in range(1, 10):
            names = [f"host-{rng.randrange(10**6)}:{rng.randrange(10**5)}" for _ in range(n)]
            names = list(dict.fromkeys(names))
            got = [injection_share(cap, name, names) for name in names]
            assert sum(got) == cap, (cap, names, got)
            assert set(got) <= {cap // len(names), cap // len(names) + 1}
            assert got.count(0) == max(0, len(names) - cap)


def test_joining_never_grows_a_share_and_leaving_never_shrinks_one() -> None:
    rng = random.Random(3)
    for _ in range(300):
        cap = rng.randrange(1, 20)
        names = [f"w{rng.randrange(1000)}" for _ in range(rng.randrange(1, 8))]
        newcomer = f"w{rng.randrange(1000)}"
        for name in names:
            before = injection_share(cap, name, names)
            assert injection_share(cap, name, [*names, newcomer]) <= before
        # So while some workers have seen a newcomer and some not, the old ones
        # together stay within the cap: only the newcomer's share can be extra.
        assert sum(injection_share(cap, name, names) for name in set(names)) == cap


def test_a_worker_not_listed_yet_counts_itself_in() -> None:
    assert injection_share(4, "new", []) == 4
    assert injection_share(4, "new", ["old"]) + injection_share(4, "old", ["old", "new"]) == 4


def test_the_share_counts_recent_heartbeats_following_or_not_and_the_smallest_cap() -> None:
    beats: list[dict[str, Any]] = [
        {"worker": "a", "age": 0.1, "following": True, "max_injections": 9},
        {"worker": "b", "age": 3.9, "following": False, "max_injections": 6},  # about to follow
        {"worker": "dead", "age": 4.1, "following": True, "max_injections": 1},  # 2 leases old
        {"worker": "old-version", "age": 0.1, "following": True},  # no cap said: counted
        {"worker": "odd", "age": 0.1, "max_injections": True},  # not a cap
    ]
    assert share_of(10, "a", beats, lease=2.0) == Share(cap=6, workers=4, places=2)
    assert share_of(10, "odd", beats, lease=2.0) == Share(cap=6, workers=4, places=1)
    assert share_of(3, "z", beats, lease=2.0) == Share(cap=3, workers=5, places=0)
    assert fleet_injections(beats, lease=2.0)["max_injections"] == 6
    assert fleet_injections([], lease=2.0) == {
        "max_injections": None,
        "workers": 0,
        "in_flight": 0,
        "skipped": 0,
    }


# -- engines sharing a store ----------------------------------------------------------------


def test_without_a_store_the_whole_cap_is_the_worker_s() -> None:
    status = Chaos(enabled=True, max_injections=5).status()
    assert (status["max_injections"], status["injection_share"]) == (5, 5)
    assert "fleet_injections" not in status


def test_workers_following_one_store_split_the_cap(fleet: Fleet) -> None:
    engines = [fleet(max_injections=5) for _ in range(3)]
    eventually(lambda: shares(engines) == expected(5, engines))
    assert sum(shares(engines)) == 5
    status = engines[0].status()
    assert status["max_injections"] == 5
    assert status["fleet_injections"]["max_injections"] == 5
    assert status["fleet_injections"]["workers"] == 3
    # The heartbeats say each worker's share: any worker's status shows them all.
    names = [engine.worker for engine in engines]
    heartbeats = dict(zip(names, expected(5, engines), strict=True))

    def listed() -> dict[str, int]:
        return {item["worker"]: item["injection_share"] for item in engines[0].status()["workers"]}

    eventually(lambda: listed() == heartbeats)


def test_a_worker_whose_share_is_zero_injects_nothing_counts_the_skips_and_says_so(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tailguard.chaos"):
        engines = [fleet(max_injections=2) for _ in range(3)]
        eventually(lambda: sorted(shares(engines)) == [0, 1, 1])
    [idle] = [engine for engine in engines if share(engine) == 0]
    busy = [engine for engine in engines if engine is not idle]
    catalog = Catalog(CollectorRegistry())
    idle.bind(catalog)
    busy[0].start(experiment(Raise("db", exc=ConnectionError), name="db-down"))
    eventually(lambda: all(engine.armed for engine in engines))
    assert idle.plan("db") is None  # the fault hit; no place: skipped
    status = idle.status()
    assert status["injections_skipped"] == 1
    assert status["experiments"][0]["skipped"] == 1
    assert status["experiments"][0]["injections"] == 0
    skipped = "tailguard_chaos_injections_skipped_total"
    assert sample(catalog, skipped, experiment="db-down", fault="raise") == 1
    for engine in busy:  # the others inject their one place each
        injection = engine.plan("db")
        assert injection is not None
        assert engine.plan("db") is None
        injection.finish()
    first_line = render_status(status, url="http://svc").splitlines()[0]
    assert "injections in flight 0/0: injects nothing" in first_line
    assert "max_injections 2 is shared by 3 workers" in first_line
    said = [r for r in caplog.records if getattr(r, "event", None) == "share"]
    assert any(r.levelno == logging.WARNING and r.injection_share == 0 for r in said)  # type: ignore[attr-defined]


def test_shares_follow_workers_joining_and_leaving(fleet: Fleet, path: str) -> None:
    clock = FakeClock(time.time())

    def join() -> Chaos:
        return fleet(SQLiteStore(path, clock=clock), max_injections=3)

    engines = [join(), join()]
    eventually(lambda: shares(engines) == expected(3, engines))
    engines.append(join())
    eventually(lambda: shares(engines) == [1, 1, 1])
    gone = engines.pop()
    gone.close()  # no more heartbeats from it
    assert shares(engines) == [1, 1]  # its share stays unused until its heartbeat is old
    clock.advance(2 * gone.lease + 1)
    eventually(lambda: shares(engines) == expected(3, engines))
    assert sum(shares(engines)) == 3


@pytest.mark.anyio
async def test_lowering_a_share_lets_the_calls_under_injection_drain(
    fleet: Fleet, path: str
) -> None:
    first = fleet(max_injections=3)
    dep = Dependency("db", max_concurrency=16, chaos=first)
    try:
        await wait_until(lambda: share(first) == 3)
        first.start(experiment(Hang("db"), name="hold"))
        held = [asyncio.create_task(dep.call(asyncio.sleep, 0)) for _ in range(3)]
        await wait_until(lambda: first.status()["injections_in_flight"] == 3)

        second = await asyncio.to_thread(fleet, max_injections=3)  # its share comes off ours
        lowered = expected(3, [first, second])[0]
        await wait_until(lambda: share(first) == lowered)
        assert first.status()["injections_in_flight"] == 3  # nothing cut short
        reached = Reached()
        await dep.call(reached)  # over the lowered share: left alone, counted
        assert reached.count == 1
        assert first.status()["injections_skipped"] == 1

        # A held call cancelled now is cancelled (never swallowed) and gives its place back.
        held[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await held[0]
        assert first.status()["injections_in_flight"] == 2
        assert not any(task.done() for task in held[1:])

        # Once drained below the share, calls are injected again, up to it.
        await asyncio.to_thread(first.halt)
        await asyncio.wait_for(asyncio.gather(*held[1:]), WAIT)
        assert first.status()["injections_in_flight"] == 0
        first.start(experiment(Hang("db"), name="again"))
        again = [asyncio.create_task(dep.call(asyncio.sleep, 0)) for _ in range(lowered)]
        await wait_until(lambda: first.status()["injections_in_flight"] == lowered)
        skipped = first.status()["injections_skipped"]
        await dep.call(reached)
        assert first.status()["injections_skipped"] == skipped + 1
        await asyncio.to_thread(first.halt)
        await asyncio.wait_for(asyncio.gather(*again), WAIT)
        assert first.status()["injections_in_flight"] == 0
    finally:
        dep.close()


def test_the_command_line_shows_the_share_and_the_fleet_s_injections() -> None:
    status = {
        "enabled": True,
        "seed": 7,
        "experiments": [],
        "stopped": [],
        "injections_in_flight": 1,
        "injections_skipped": 4,
        "max_injections": 3,
        "injection_share": 1,
        "store": {"url": "sqlite:///x.db", "service": "shop", "following": True},
        "workers": [
            {"worker": "h:1", "pid": 1, "age": 0.2, "following": True, "injection_share": 2,
             "injections_in_flight": 2},
            {"worker": "h:2", "pid": 2, "age": 0.3, "following": True, "injection_share": 1,
             "injections_in_flight": 1},
            {"worker": "h:3", "pid": 3, "age": 0.1, "following": True},  # an older version
        ],
        "not_following": [],
        "fleet_injections": {"max_injections": 3, "workers": 3, "in_flight": 3, "skipped": 9},
    }  # fmt: skip
    assert render_status(status, url="http://svc", now=0).splitlines() == [
        "chaos enabled at http://svc (seed 7; injections in flight 1/1, its share of "
        "max_injections 3 over 3 workers, skipped 4)",
        "running: none",
        "store sqlite:///x.db service shop (following)",
        "workers: 3",
        "injections across the fleet: 3 in flight (max_injections 3), skipped 9",
        "  h:1  pid 1  following, seen 0.2 s ago, injections in flight 2/2",
        "  h:2  pid 2  following, seen 0.3 s ago, injections in flight 1/1",
        "  h:3  pid 3  following, seen 0.1 s ago",
    ]
