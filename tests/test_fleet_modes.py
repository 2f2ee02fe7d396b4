"""The fleet's modes record, its store round trip, and a worker that loses its store."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from tailguard import RoutePolicy, Tailguard
from tailguard.chaos import Chaos
from tailguard.chaos.store import SQLiteStore, StoreUnavailable
from tailguard.enforcement import Enforcement, Enforcements
from tailguard.fleet_modes import FleetModes, ModesRecord, merged

GOOD: dict[str, Any] = {
    "version": 3,
    "default": "shadow",
    "targets": {"route GET /a": 0.25, "dependency db": "on"},
    "who": "alice",
    "worker": "web-1:41",
    "at": 1700000000.5,
}


def test_the_record_round_trips() -> None:
    record = ModesRecord.from_dict(GOOD)
    assert record.to_dict() == GOOD
    assert ModesRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"version": 0}, "version"),
        ({"version": "3"}, "version"),
        ({"version": True}, "version"),
        ({"default": "off"}, "default"),
        ({"default": 1.5}, "default"),
        ({"targets": []}, "targets"),
        ({"targets": {"GET /a": "on"}}, "targets"),
        ({"targets": {"route GET /a": "enforce"}}, "targets['route GET /a']"),
        ({"who": 7}, "who"),
        ({"worker": None}, "worker"),
        ({"at": "now"}, "at"),
    ],
)
def test_bad_values_are_refused_naming_the_field(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=r"modes record: " + named.replace("[", r"\[")):
        ModesRecord.from_dict({**GOOD, **change})


def test_each_write_bumps_the_version_and_a_fleet_wide_switch_forgets_single_targets(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "fleet.db"))
    try:
        assert store.read_modes() is None
        switch = {"mode": 0.5, "route": "GET /a", "dependency": None, "who": "bob"}
        first = store.update_modes(lambda current, now: merged(current, switch, "w:1", now))
        assert first["version"] == 1
        assert first["targets"] == {"route GET /a": 0.5}
        everything = {"mode": "shadow", "route": None, "dependency": None, "who": "alice"}
        second = store.update_modes(lambda current, now: merged(current, everything, "w:2", now))
        assert second["version"] == 2
        assert ModesRecord.from_dict(store.read_modes()) == ModesRecord.from_dict(second)
        assert (second["default"], second["targets"], second["who"]) == ("shadow", {}, "alice")
    finally:
        store.close()


def guard_on(store: str, **options: Any) -> Tailguard:
    return Tailguard(
        routes={"GET /a": RoutePolicy(deadline=1.0)},
        chaos=Chaos(store=store),
        metrics=False,
        **options,
    )


def test_a_switch_on_one_guard_reaches_another_on_the_same_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite://{tmp_path / 'fleet.db'}"
    one, two = guard_on(url), guard_on(url)
    one_fleet, two_fleet = one.fleet_modes, two.fleet_modes
    assert one_fleet is not None
    assert two_fleet is not None
    try:
        one.dependency("db")
        with caplog.at_level(logging.WARNING, logger="tailguard.enforce"):
            one.enforce("shadow", who="alice")
            one_fleet.step()  # writes it (the thread would, within an interval)
            two_fleet.step()
        assert two.enforcements.describe()["routes"] == {"GET /a": "shadow", "default": "shadow"}
        assert f"by alice via worker {one.chaos.worker}" in caplog.text
        # A dependency made after a single-target switch takes the fleet's mode for it.
        one.enforce(0.25, dependency="db", who="bob")
        one_fleet.step()
        two_fleet.step()
        assert two.dependency("db").enforcement.mode == 0.25
        assert two.enforcements.describe()["fleet"]["version"] == 2
    finally:
        for guard in (one, two):
            assert guard.fleet_modes is not None
            guard.fleet_modes.close()
            guard.chaos.close()


def test_the_store_s_modes_win_over_the_environment_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite://{tmp_path / 'fleet.db'}"
    first = guard_on(url)
    assert first.fleet_modes is not None
    first.enforce("shadow", who="alice")
    first.fleet_modes.step()
    monkeypatch.setenv("TAILGUARD_ENFORCE", "on")
    later = guard_on(url)
    try:
        assert later.enforcements.default.mode == "shadow"  # read in the constructor
    finally:
        for guard in (first, later):
            assert guard.fleet_modes is not None
            guard.fleet_modes.close()
            guard.chaos.close()


class FlakyStore(SQLiteStore):
    """A SQLite store that can be made unreachable."""

    down = False

    def read_modes(self) -> dict[str, Any] | None:
        if self.down:
            raise StoreUnavailable("down for the test")
        return super().read_modes()

    def update_modes(self, change: Any) -> dict[str, Any]:
        if self.down:
            raise StoreUnavailable("down for the test")
        return super().update_modes(change)


def test_a_worker_that_cannot_reach_the_store_keeps_its_modes_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(str(tmp_path / "fleet.db"))
    here, there = Enforcements("on", env={}), Enforcements("on", env={})
    here.route("GET /a", None)
    there.route("GET /a", None)
    near = FleetModes(store, here, worker="w:1")
    far = FleetModes(store, there, worker="w:2")
    try:
        near.step()
        far.step()
        there.switch("shadow", who="alice")
        far.step()
        store.down = True
        with caplog.at_level(logging.WARNING, logger="tailguard.enforce"):
            for _ in range(3):
                near.step()
        assert here.describe()["default"] == "on"  # kept, not guessed
        status = here.describe()["fleet"]
        assert status["following"] is False
        assert "down for the test" in status["error"]
        assert caplog.text.count("cannot be reached") == 1  # said once, not every poll
        # A rollback received while the store is down applies here at once...
        here.switch("on", route="GET /a", who="bob")
        near.step()
        assert here.describe()["fleet"]["unwritten"] == 1
        store.down = False
        near.step()  # ...and is written once the store is back, the store's modes applied.
        assert here.describe()["routes"] == {"GET /a": "on"}
        assert here.describe()["default"] == "shadow"
        assert here.describe()["fleet"] | {"version": 0} == {
            "store": store.url,
            "worker": "w:1",
            "following": True,
            "version": 0,
            "error": None,
            "unwritten": 0,
        }
        far.step()
        assert there.describe()["routes"] == {"GET /a": "on"}
    finally:
        store.close()


class CountingLock:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.taken = 0

    def __enter__(self) -> None:
        self.taken += 1
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_requests_never_touch_the_store_or_the_lock(tmp_path: Path) -> None:
    """The request path stays one attribute read: no store call, no lock, with a fleet store."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    calls: list[str] = []

    class Counting(SQLiteStore):
        def read_modes(self) -> dict[str, Any] | None:
            calls.append("read_modes")
            return super().read_modes()

        def update_modes(self, change: Any) -> dict[str, Any]:
            calls.append("update_modes")
            return super().update_modes(change)

    store = Counting(str(tmp_path / "fleet.db"))
    guard = Tailguard(
        routes={"GET /a": RoutePolicy(deadline=1.0)}, chaos=Chaos(store=store), metrics=False
    )
    fleet = guard.fleet_modes
    assert fleet is not None
    assert fleet.thread is not None
    fleet.close()
    fleet.thread.join(10)
    assert not fleet.thread.is_alive()
    guard.enforce(0.5, who="test")
    counting = CountingLock()
    guard.enforcements.lock = counting  # type: ignore[assignment]
    calls.clear()

    async def a(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = guard.install(Starlette(routes=[Route("/a", a)]), tracing=False, instrument=False)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(20):
                assert (await client.get("/a")).status_code == 200

    import asyncio

    asyncio.run(run())
    assert calls == []
    assert counting.taken == 0
    assert Enforcement.__slots__ == ("_draw", "always", "explicit", "fraction", "mode")
    guard.chaos.close()
