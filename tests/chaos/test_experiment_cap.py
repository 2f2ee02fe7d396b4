"""The cap on running experiments, and the one TTL thread that serves them all."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import pytest

from tailguard.chaos import MAX_EXPERIMENTS, Chaos, Hang, Latency, TooManyExperiments
from tailguard.chaos._ticker import Ticker
from tests.chaos.runtime_support import (  # noqa: F401 (fixtures)
    WAIT,
    catalog_fixture,
    engines_fixture,
    experiment,
    wait_until,
)

Engines = Callable[..., Chaos]


def names(engine: Chaos) -> list[str]:
    return [status.experiment.name for status in engine.experiments()]


def test_the_default_cap() -> None:
    assert Chaos(enabled=False).max_experiments == MAX_EXPERIMENTS == 32


def test_starting_beyond_the_cap_is_refused_and_changes_nothing(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailguard.chaos")
    engine = engines(max_experiments=2)
    engine.start(experiment(Hang("db"), name="a"))
    engine.start(experiment(Hang("cache"), name="b"))
    before = (names(engine), engine.status()["stopped"], engine._ticker._due[:])
    with pytest.raises(
        TooManyExperiments, match=r"\(max_experiments=2\) are running; stop one first"
    ):
        engine.start(experiment(Latency("db", delay=0.1), name="c"), actor="mallory")
    assert (names(engine), engine.status()["stopped"], engine._ticker._due) == before
    assert issubclass(TooManyExperiments, ValueError)
    refused = [json.loads(r.getMessage()) for r in caplog.records if r.event == "refused"]  # type: ignore[attr-defined]
    assert [(r["experiment"], r["actor"], r["reason"]) for r in refused] == [
        ("c", "mallory", "too many experiments")
    ]
    engine.stop("a")
    engine.start(experiment(Latency("db", delay=0.1), name="c"))  # room again
    assert names(engine) == ["b", "c"]


def test_a_duplicate_name_is_reported_as_such_even_at_the_cap(engines: Engines) -> None:
    engine = engines(max_experiments=1)
    engine.start(experiment(Hang("db"), name="a"))
    with pytest.raises(ValueError, match="experiment 'a' is already running") as caught:
        engine.start(experiment(Hang("db"), name="a"))
    assert not isinstance(caught.value, TooManyExperiments)


def test_expired_experiments_make_room(engines: Engines) -> None:
    now = [1000.0]
    engine = engines(max_experiments=1, clock=lambda: now[0])
    engine.start(experiment(Hang("db"), name="brief", ttl=5))
    now[0] += 5
    engine.start(experiment(Hang("db"), name="next"))  # start() expires "brief" first
    assert names(engine) == ["next"]


# -- one thread for every TTL --------------------------------------------------------------


@pytest.mark.anyio
async def test_one_thread_serves_every_running_experiment(engines: Engines) -> None:
    engine = engines()
    before = set(threading.enumerate())
    engine.start(experiment(Hang("db"), name="long", ttl=60))
    thread = engine._ticker.thread
    for i in range(10):
        engine.start(experiment(Hang("db"), name=f"other-{i}", ttl=60))
    # Compared as sets: a thread of an earlier test may still be exiting.
    assert set(threading.enumerate()) - before == {thread}
    assert engine._ticker.thread is thread
    # A shorter TTL scheduled after a longer one still ends first, on time.
    engine.start(experiment(Hang("db"), name="short", ttl=0.05))
    await wait_until(lambda: "short" not in names(engine))
    assert engine.status()["stopped"][0]["reason"] == "expired"
    assert len(names(engine)) == 11
    assert engine._ticker.thread is thread
    assert engine.halt() == 11
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()


def test_the_ticker_wakes_in_order_and_forgets_cancelled_times() -> None:
    fired: list[str] = []
    done = threading.Event()

    def wake() -> None:
        fired.append("wake")
        if len(fired) == 2:
            done.set()

    ticker = Ticker(wake, "test-ticker")
    later = ticker.schedule(WAIT * 10)
    ticker.schedule(0.01)
    ticker.schedule(0.02)
    assert done.wait(WAIT)
    thread = ticker.thread
    assert thread is not None
    assert thread.name == "test-ticker"
    ticker.cancel(later)  # the last one: the thread has nothing left and ends
    thread.join(WAIT)
    assert not thread.is_alive()
    assert ticker.thread is None
    assert fired == ["wake", "wake"]
    ticker.cancel(later)  # twice: nothing to do
    ticker.schedule(0.0)  # a fresh thread for the next time
    assert ticker.thread is not None
    ticker.thread.join(WAIT)
    assert fired == ["wake"] * 3


def test_a_wake_that_raises_leaves_the_ticker_ready_for_a_fresh_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))

    def wake() -> None:
        raise RuntimeError("boom")

    ticker = Ticker(wake, "test-ticker")
    ticker.schedule(0.0)
    thread = ticker.thread
    assert thread is not None
    thread.join(WAIT)
    assert ticker.thread is None  # the next schedule() starts a fresh thread
    assert [str(error) for error in seen] == ["boom"]
