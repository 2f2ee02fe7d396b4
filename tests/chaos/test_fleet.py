"""Engines that share a store act as one fleet (in one process, over a real SQLite file).

Each engine follows the store on its own thread, as a worker process
would; the tests wait for what the followers do with a generous bound
(``WAIT``), and move the lease with a fake clock instead of waiting for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tailguard.chaos import AbortWhen, Chaos, Raise, TooManyExperiments
from tailguard.chaos.fleet import open_store
from tailguard.chaos.store import Snapshot, SQLiteStore, Store, StoreUnavailable
from tailguard.telemetry.catalog import Catalog

from .runtime_support import WAIT, FakeClock, FakeRequest, experiment, in_request


def eventually(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never became true"
        time.sleep(0.01)


class Switchable(Store):
    """A real store that can be made unreachable (every call raises) and brought back."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.service = inner.service
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable(f"{self.url}: down for the test")

    def poll(self) -> tuple[int, float]:
        self._check()
        return self.inner.poll()

    def read(self) -> Snapshot:
        self._check()
        return self.inner.read()

    def start(self, entry: dict[str, Any], max_experiments: int) -> None:
        self._check()
        self.inner.start(entry, max_experiments)

    def end(self, ids: Sequence[str], reason: str, actor: str, detail: str | None) -> list[str]:
        self._check()
        return self.inner.end(ids, reason, actor, detail)

    def end_name(self, name: str, reason: str, actor: str) -> bool:
        self._check()
        return self.inner.end_name(name, reason, actor)

    def halt(self, actor: str) -> list[str]:
        self._check()
        return self.inner.halt(actor)

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        self._check()
        self.inner.heartbeat(worker, info)

    def workers(self) -> list[dict[str, Any]]:
        self._check()
        return self.inner.workers()


@pytest.fixture(name="path")
def path_fixture(tmp_path: Path) -> str:
    return str(tmp_path / "chaos.db")


@pytest.fixture(name="fleet")
def fleet_fixture(path: str) -> Iterator[Callable[..., Chaos]]:
    made: list[Chaos] = []

    def make(store: str | Store | None = None, **settings: Any) -> Chaos:
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


def hit(engine: Chaos, dependency: str = "db") -> bool:
    """Whether a call to ``dependency`` would meet a fault now (as a seam asks)."""
    return engine.armed and engine.plan(dependency) is not None


def test_a_start_on_one_worker_reaches_the_other_and_a_halt_on_either_stops_both(
    fleet: Callable[..., Chaos],
) -> None:
    first, second = fleet(), fleet()
    first.start(experiment(Raise("db", exc=ConnectionError)), actor="ops")
    assert first.armed  # the starting worker follows at once
    eventually(lambda: second.armed)
    assert hit(second)
    assert second.halt(actor="ops") == 1
    assert not second.armed
    eventually(lambda: not first.armed)
    assert first.status()["stopped"][0]["reason"] == "halt"
    # A halted experiment never comes back: a fresh worker starts with nothing.
    third = fleet()
    time.sleep(0.2)
    assert not third.armed


def test_a_worker_that_starts_later_applies_what_runs(fleet: Callable[..., Chaos]) -> None:
    fleet().start(experiment(Raise("db", exc=ConnectionError), name="early"))
    late = fleet()
    eventually(lambda: late.armed)
    assert [status.experiment.name for status in late.experiments()] == ["early"]


def test_stop_reaches_every_worker(fleet: Callable[..., Chaos]) -> None:
    first, second = fleet(), fleet()
    first.start(experiment(Raise("db", exc=ConnectionError), name="a"))
    eventually(lambda: second.armed)
    assert second.stop("a", actor="ops")
    eventually(lambda: not first.armed)
    assert not second.stop("a")


def test_the_experiment_cap_and_names_are_fleet_wide(fleet: Callable[..., Chaos]) -> None:
    first, second = fleet(max_experiments=1), fleet(max_experiments=1)
    first.start(experiment(Raise("db", exc=ConnectionError), name="a"))
    with pytest.raises(ValueError, match="already running"):
        second.start(experiment(Raise("db", exc=ConnectionError), name="a"))
    with pytest.raises(TooManyExperiments, match="max_experiments=1"):
        second.start(experiment(Raise("db", exc=ConnectionError), name="b"))


def test_a_safeguard_tripped_on_one_worker_stops_the_experiment_everywhere(
    fleet: Callable[..., Chaos],
) -> None:
    first, second = fleet(), fleet()
    guarded = experiment(
        Raise("db", exc=ConnectionError),
        routes=["GET /items/*"],
        abort=AbortWhen(error_rate=0.5, min_requests=2),
    )
    first.start(guarded)
    eventually(lambda: second.watching)
    for _ in range(3):
        second.observe_request("GET", "/items/{id}", 503, 0.01)
    assert not second.armed
    eventually(lambda: not first.armed)
    assert first.status()["stopped"][0]["reason"] == "safeguard"


def test_status_shows_the_fleet_with_injections_summed_over_workers(
    fleet: Callable[..., Chaos],
) -> None:
    first, second = fleet(), fleet()
    first.start(experiment(Raise("db", exc=ConnectionError)))
    eventually(lambda: second.armed)
    with in_request(FakeRequest()):
        assert hit(first)
        assert hit(second)
        assert hit(second)

    def summed() -> bool:
        [running] = first.status()["experiments"]
        return running["fleet"]["injections"] == 3

    eventually(summed)
    status = first.status()
    assert {worker["worker"] for worker in status["workers"]} >= {first.worker, second.worker}
    [running] = status["experiments"]
    assert running["fleet"]["workers"] == {first.worker: 1, second.worker: 2}
    assert status["store"]["following"] is True
    assert status["not_following"] == []


def test_a_worker_that_cannot_read_the_store_for_a_lease_stops_injecting(
    fleet: Callable[..., Chaos], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store = Switchable(SQLiteStore(path))
    worker = fleet(store, clock=clock)
    catalog = Catalog(CollectorRegistry())
    worker.bind(catalog)
    worker.start(experiment(Raise("db", exc=ConnectionError)))
    assert hit(worker)
    store.down = True
    clock.advance(worker.lease / 2)
    assert hit(worker)  # within the lease it goes on
    with caplog.at_level(logging.WARNING, logger="tailguard.chaos"):
        clock.advance(worker.lease)
        assert not hit(worker)  # the seam's own TTL check ends it: no thread needed
    assert not worker.armed
    assert any(getattr(r, "event", None) == "store_lost" for r in caplog.records)
    status = worker.status()
    assert status["store"]["following"] is False
    assert status["stopped"][0]["reason"] == "store-lost"
    assert catalog.registry.get_sample_value("tailguard_chaos_store_following") == 0.0
    # Back: the experiment is still running in the store, so the worker takes it up again,
    # once the others have had a lease to write what they ended meanwhile.
    store.down = False
    eventually(lambda: worker.status()["store"]["following"])
    time.sleep(0.2)
    assert not worker.armed
    clock.advance(worker.lease)
    eventually(lambda: worker.armed)
    assert worker.experiments()[0].injections == 2  # it counts on from before
    assert catalog.registry.get_sample_value("tailguard_chaos_store_following") == 1.0


def test_a_halt_while_the_store_was_away_is_not_undone_when_it_comes_back(
    fleet: Callable[..., Chaos], path: str
) -> None:
    clock = FakeClock()
    store = Switchable(SQLiteStore(path))
    other = fleet()
    worker = fleet(store, clock=clock)
    worker.start(experiment(Raise("db", exc=ConnectionError), name="a"))
    eventually(lambda: other.armed)
    store.down = True
    clock.advance(2 * worker.lease)
    assert not hit(worker)
    other.halt(actor="ops")  # the store records the halt while this worker cannot see it
    store.down = False
    eventually(lambda: worker.status()["store"]["following"])
    time.sleep(0.2)
    assert not worker.armed


def test_a_halt_the_store_missed_is_written_once_it_is_back(
    fleet: Callable[..., Chaos], path: str
) -> None:
    store = Switchable(SQLiteStore(path))
    worker = fleet(store)
    other = fleet()
    worker.start(experiment(Raise("db", exc=ConnectionError), name="a"))
    eventually(lambda: other.armed)
    store.down = True
    assert worker.halt(actor="ops") == 1  # here at once, whatever the store does
    assert not worker.armed
    assert other.armed
    store.down = False
    eventually(lambda: not other.armed)  # the queued end reached the store
    assert other.status()["stopped"][0]["reason"] == "halt"


def test_an_experiment_that_expired_while_the_store_was_away_stays_stopped(
    fleet: Callable[..., Chaos], path: str
) -> None:
    now = [1_000_000.0]
    inner = SQLiteStore(path, clock=lambda: now[0])
    store = Switchable(inner)
    clock = FakeClock()
    worker = fleet(store, clock=clock)
    worker.start(experiment(Raise("db", exc=ConnectionError), ttl=60))
    store.down = True
    clock.advance(2 * worker.lease)
    assert not hit(worker)
    now[0] += 61  # the store's clock: the TTL ran out meanwhile
    store.down = False
    eventually(lambda: worker.status()["store"]["following"])
    time.sleep(0.2)
    assert not worker.armed


def test_a_worker_never_starts_injecting_on_a_stale_read(path: str) -> None:
    clock = FakeClock()
    store = SQLiteStore(path)
    engine = Chaos(enabled=False, store=store, clock=clock)  # no follower thread: driven here
    try:
        Chaos(enabled=True, store=SQLiteStore(path)).start(
            experiment(Raise("db", exc=ConnectionError))
        )
        snapshot = store.read()
        read_at = clock()
        clock.advance(engine.lease)  # the read is a lease old by the time it is applied
        engine._follow(snapshot, read_at)
        assert not engine.armed
        engine._follow(snapshot, clock())
        assert engine.armed
    finally:
        engine.halt()
        engine.close()


def test_store_settings_are_checked(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="lease must be"):
        Chaos(store=f"sqlite://{path}", lease=0)
    with pytest.raises(ValueError, match="store must be"):
        Chaos(store=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="three slashes"):
        open_store("sqlite://host/x.db")
    with pytest.raises(ValueError, match="service must be"):
        open_store(f"sqlite://{path}?service=a/b")
    monkeypatch.setenv("TAILGUARD_CHAOS_STORE", f"sqlite://{path}?service=shop")
    engine = Chaos(enabled=False)
    assert engine.store is not None
    assert engine.store.service == "shop"
    engine.close()
    monkeypatch.setenv("TAILGUARD_CHAOS_STORE", "memory")
    assert Chaos().store is None


def test_experiments_the_schema_cannot_express_cannot_be_shared(
    fleet: Callable[..., Chaos],
) -> None:
    def factory() -> Exception:
        return ConnectionError("x")

    with pytest.raises(ValueError, match="cannot be shared through the store"):
        fleet().start(experiment(Raise("db", exc=factory)))


def test_a_halt_sent_while_this_worker_had_lost_the_store_still_reaches_it(
    fleet: Callable[..., Chaos], path: str
) -> None:
    clock = FakeClock()
    store = Switchable(SQLiteStore(path))
    worker = fleet(store, clock=clock)
    other = fleet()
    worker.start(experiment(Raise("db", exc=ConnectionError), name="a"))
    eventually(lambda: other.armed)
    store.down = True
    clock.advance(2 * worker.lease)
    assert not hit(worker)  # suspended here: nothing of its own left to stop
    assert worker.halt(actor="ops") == 0
    store.down = False
    eventually(lambda: not other.armed)  # the halt was written once the store was back
    assert other.status()["stopped"][0]["reason"] == "halt"


def test_the_follower_says_when_the_store_fails_and_when_it_is_back(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tailguard.chaos._follow import Follower

    store = Switchable(SQLiteStore(path))
    seen: list[str] = []
    follower = Follower(
        store,
        "w",
        interval=0.01,
        clock=time.monotonic,
        apply=lambda snapshot, read_at: seen.append("apply"),
        renew=lambda read_at: seen.append("renew") is None,
        lost=lambda: seen.append("lost"),
        info=lambda: {"pid": 1, "following": True, "counts": {}},
        seen=lambda workers: seen.append("seen"),
    )
    follower.queue_end("nothing", "halt", "ops", None)
    follower.queue_halt("ops")
    with caplog.at_level(logging.INFO, logger="tailguard.chaos"):
        store.down = True
        follower.step()
        follower.step()  # said once
        store.down = False
        follower.step()
        follower.step()
    events = [getattr(record, "event", None) for record in caplog.records]
    assert events.count("store_error") == 1
    assert events.count("store_back") == 1
    # The fleet is read before the first snapshot is applied, and with every heartbeat.
    assert seen == ["lost", "lost", "seen", "apply", "seen", "renew"]
    assert [worker["worker"] for worker in follower.workers] == ["w"]
    follower.start()
    follower.close()
    assert follower.thread is not None
    follower.thread.join(WAIT)
    assert not follower.thread.is_alive()


def test_a_sqlite_store_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="unable to open"):
        SQLiteStore(str(tmp_path / "missing" / "chaos.db"))
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 512)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SQLiteStore(str(broken))


@pytest.mark.anyio
async def test_the_control_api_answers_503_when_the_store_cannot_be_reached(
    fleet: Callable[..., Chaos], path: str
) -> None:
    import httpx

    from tailguard.chaos import ControlAPI

    store = Switchable(SQLiteStore(path))
    engine = fleet(store)
    token = "s3cret-t0ken-0123456789"
    api = ControlAPI(engine, token=token)
    body = {
        "name": "db-down",
        "ttl": 60,
        "faults": [{"kind": "raise", "target": "db", "exc": "builtins.ConnectionError"}],
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api),
        base_url="http://control",
        headers={"authorization": f"Bearer {token}"},
    ) as client:
        assert (await client.post("/_tailguard/experiments", json=body)).status_code == 201
        store.down = True
        refused = await client.post("/_tailguard/experiments", json={**body, "name": "other"})
        assert refused.status_code == 503
        assert "cannot be reached" in refused.json()["detail"]
        assert (await client.delete("/_tailguard/experiments/other")).status_code == 503
        # The worker that got the halt stops at once; the store hears of it later.
        halted = await client.post("/_tailguard/halt")
        assert halted.status_code == 200
        assert halted.json() == {"halted": 1}
        assert not engine.armed
        status = (await client.get("/_tailguard/status")).json()
        assert status["store"]["url"] == store.url


def test_a_worker_bound_after_it_began_following_says_so_on_its_gauge(path: str) -> None:
    # The follower thread starts with the engine; a guard binds its catalog later.
    engine = Chaos(enabled=True, store=f"sqlite://{path}")
    try:
        eventually(lambda: engine.status()["store"]["following"])
        catalog = Catalog(CollectorRegistry())
        engine.bind(catalog)
        assert catalog.registry.get_sample_value("tailguard_chaos_store_following") == 1.0
    finally:
        engine.close()
