"""The chaos engine: :class:`Chaos` starts, stops and applies experiments.

A :class:`Chaos` belongs to a :class:`~tailguard.Tailguard` (``guard.chaos``)
and is consulted by every dependency seam and, for route faults, by the
middleware. It is off unless enabled in code or with ``TAILGUARD_CHAOS=1``;
while no experiment runs, a seam pays for one attribute check.

>>> from tailguard.chaos import Chaos, Experiment, Raise
>>> chaos = Chaos(enabled=True, seed=7)
>>> chaos.start(Experiment("db-down", faults=[Raise("db", exc=ConnectionError)], ttl=60))
>>> [status.experiment.name for status in chaos.experiments()]
['db-down']
>>> chaos.halt()
1
>>> try:
...     Chaos(enabled=False).start(Experiment("x", faults=[Raise("db", exc=OSError)], ttl=1))
... except ChaosDisabled as refused:
...     print(refused)
chaos is disabled: enable it with Chaos(enabled=True) or TAILGUARD_CHAOS=1
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

from starlette.types import Send

from tailguard._context import RequestView, current_request
from tailguard.chaos._follow import Follower
from tailguard.chaos._inject import Entry, Injection, InjectionSlots, Injector
from tailguard.chaos._log import log_event
from tailguard.chaos._match import RouteKey
from tailguard.chaos._run import Run
from tailguard.chaos._status import ExperimentStatus
from tailguard.chaos._ticker import Ticker
from tailguard.chaos.experiment import Experiment
from tailguard.chaos.fleet import (
    Share,
    fleet_counts,
    fleet_injections,
    following,
    open_store,
    share_of,
    worker_entry,
)
from tailguard.chaos.schema import ExperimentError, experiment_from_dict, experiment_to_dict
from tailguard.chaos.store import (
    STORE_ENV_VAR,
    Snapshot,
    Store,
    StoreConflict,
    StoreUnavailable,
    record,
    worker_id,
)
from tailguard.telemetry.catalog import Catalog

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = [
    "ENV_VAR",
    "LEASE",
    "MAX_EXPERIMENTS",
    "Chaos",
    "ChaosDisabled",
    "ExperimentStatus",
    "TooManyExperiments",
    "UnknownTargets",
]

ENV_VAR: Final = "TAILGUARD_CHAOS"
"""The environment variable that enables chaos in an engine made with ``enabled=None``."""
MAX_EXPERIMENTS: Final = 32
"""The default cap on experiments running at once in one engine."""
LEASE: Final = 2.0
"""Seconds a worker keeps injecting without reading its store; then it stops (fail safe)."""
_COUNTED: Final = 64
_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"", "0", "false", "no", "off"})
_RECENT_STOPS: Final = 20
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_OTHER_METHOD: Final = ""
"""The route-fault cache's key for every method no fault names: clients choose methods."""


class ChaosDisabled(RuntimeError):
    """An experiment was started while chaos is disabled (the default)."""


class TooManyExperiments(ValueError):
    """An experiment was started while ``max_experiments`` were running already."""


class UnknownTargets(ValueError):
    """An experiment names a dependency or route the service does not have, and may not.

    ``unknown`` lists them as ``{"field": ..., "detail": ...}`` (the first is
    also ``field``). Start it with ``allow_unknown`` to inject anyway.
    """

    def __init__(self, experiment: str, unknown: list[dict[str, str]]) -> None:
        listed = "; ".join(f"{item['field']}: {item['detail']}" for item in unknown)
        super().__init__(
            f"experiment {experiment!r} names what this service does not have ({listed}): "
            "it would inject nothing; fix the names, or set allow_unknown to start it anyway"
        )
        self.unknown = unknown
        self.field = unknown[0]["field"]


DependencyNames = Callable[[], Collection[str]]
"""Names of the dependencies the service has declared so far."""
RouteTemplates = Callable[[], Sequence[tuple[str, frozenset[str] | None]] | None]
"""The app's route templates and the methods each allows; ``None`` until they are known."""


def _enabled_from_env() -> bool:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{ENV_VAR} must be one of 1, true, yes, on, 0, false, no, off; got {value!r}")


class Chaos:
    """Runs chaos experiments for one service (one worker process).

    * ``enabled``: ``None`` (default) reads ``TAILGUARD_CHAOS`` (``1``,
      ``true``, ``yes``, ``on``: enabled; unset, ``0``, ``false``, ``no``,
      ``off``: disabled; anything else is an error). Disabled, nothing can be
      started and seams never look further than one attribute.
    * ``seed``: seeds the random draws (rates and delays), for replayable runs.
    * ``max_injections``: at most this many calls under injection at once
      (a cap on concurrency, not a total); more are left alone and counted
      as skipped. With a store, the cap is the fleet's: each worker injects
      at most its share, the cap split over the workers heartbeating in the
      store (:func:`~tailguard.chaos.fleet.injection_share`; 0 when there are
      more workers than places), updated by the follower thread.
    * ``max_experiments``: at most this many experiments running at once
      (:data:`MAX_EXPERIMENTS` by default); :meth:`start` refuses more.
    * ``clock``: the monotonic clock TTLs and the safeguard's window run on.
    * ``store``: where experiments live. ``None`` (default) reads
      ``TAILGUARD_CHAOS_STORE``; ``"memory"`` (or unset) keeps them in this
      process; ``"sqlite:///path"`` shares them between the workers of one
      host, ``"redis://host:port/db"`` across hosts (``?service=name``
      namespaces them); or a :class:`~tailguard.chaos.store.Store`. With a
      store, a start, stop or halt on any worker reaches every worker, the
      caps (``max_experiments`` and ``max_injections``) and safeguards act
      fleet-wide, and a worker that cannot read the store for ``lease``
      seconds stops injecting (docs/chaos-fleet.md).

    Without a store, experiments are per process: with several workers,
    start them in each (the control API answers for the worker that served it).
    """

    def __init__(
        self,
        *,
        enabled: bool | None = None,
        seed: int | None = None,
        max_injections: int = 100,
        max_experiments: int = MAX_EXPERIMENTS,
        clock: Callable[[], float] = time.monotonic,
        store: str | Store | None = None,
        lease: float = LEASE,
    ) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"enabled must be True, False or None, got {enabled!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        for field, value in (
            ("max_injections", max_injections),
            ("max_experiments", max_experiments),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an int >= 1, got {value!r}")
        if (
            isinstance(lease, bool)
            or not isinstance(lease, int | float)
            or not math.isfinite(lease)
            or lease <= 0
        ):
            raise ValueError(f"lease must be a number of seconds > 0, got {lease!r}")
        if store is None:
            store = os.environ.get(STORE_ENV_VAR, "").strip() or "memory"
        if not isinstance(store, str | Store):
            raise ValueError(f"store must be a URL, 'memory' or a Store, got {store!r}")
        self._enabled = _enabled_from_env() if enabled is None else enabled
        self.seed: Final = seed
        self.rng: Final = random.Random(seed)
        self.max_injections: Final = max_injections
        self.max_experiments: Final = max_experiments
        self.clock: Final = clock
        self.armed = False
        """True while an experiment runs: the one thing a seam checks before anything else."""
        self.watching = False
        """True while an experiment with a safeguard runs: :meth:`observe_request` has work."""
        self._runs: tuple[Run, ...] = ()
        self._by_name: dict[str, tuple[Entry, ...]] = {}
        self._by_route: dict[tuple[str, str], tuple[Entry, ...]] = {}
        self._route_methods: frozenset[str] = _METHODS
        self._inbound = False
        self._watchers: tuple[Run, ...] = ()
        self._next_expiry = math.inf
        self._lock = threading.RLock()
        self._ticker = Ticker(self.expire, "tailguard-chaos-ttl")
        self._slots = InjectionSlots(max_injections)
        self._share = Share(max_injections, 1, max_injections)
        """This worker's part of ``max_injections`` (all of it, until it sees a fleet)."""
        # Injections get what they need from here; they never call back into the engine.
        # It also holds the catalog the engine records into (see bind()).
        self._injector = Injector(self.rng, clock, self.expire, self._slots)
        self._stopped: deque[dict[str, Any]] = deque(maxlen=_RECENT_STOPS)
        self._dependency_names: DependencyNames | None = None
        self._route_templates: RouteTemplates | None = None
        self.lease: Final = float(lease)
        self.worker: Final = worker_id()
        """This process's name in the fleet (``host:pid``)."""
        self._lease_until = -math.inf
        self._following = False
        self._store_version = -1
        self._resume_at = -math.inf
        """After losing the store: when experiments may be taken up again (``-inf``: now)."""
        self._ended_keys: deque[str] = deque(maxlen=1024)
        self._counted: dict[str, Run] = {}
        self.store: Store | None = None
        """The fleet's store, or ``None`` (experiments are this process's own)."""
        self._follower: Follower | None = None
        if store != "memory":
            self.store = open_store(store) if isinstance(store, str) else store
            self._follower = Follower(
                self.store,
                self.worker,
                interval=self.store.interval,
                clock=clock,
                apply=self._follow,
                renew=self._renew,
                lost=self._store_failed,
                info=self._heartbeat,
                seen=self._take_share,
            )
            if self._enabled:  # a disabled engine injects nothing: nothing to follow
                self._follower.start()

    def __repr__(self) -> str:
        state = "enabled" if self._enabled else "disabled"
        return f"<Chaos {state} experiments={[run.name for run in self._runs]}>"

    @property
    def enabled(self) -> bool:
        """Whether experiments may be started (fixed when the engine is created)."""
        return self._enabled

    def bind(self, catalog: Catalog | None) -> None:
        """Record this engine's metrics into ``catalog`` (``None``: record nothing).

        The :class:`~tailguard.Tailguard` given this engine binds its own
        catalog when it is created; an engine never bound records nothing.
        An engine records into one catalog at a time, so binding again
        replaces it: guards that keep their metrics apart each need their
        own engine.

        >>> from prometheus_client import CollectorRegistry
        >>> from tailguard.chaos import Raise
        >>> from tailguard.telemetry.catalog import Catalog
        >>> catalog = Catalog(CollectorRegistry())
        >>> chaos = Chaos(enabled=True)
        >>> chaos.bind(catalog)
        >>> chaos.start(Experiment("db-down", faults=[Raise("db", exc=OSError)], ttl=60))
        >>> catalog.registry.get_sample_value("tailguard_chaos_experiments_active")
        1.0
        >>> chaos.halt()
        1
        """
        if catalog is not None and not isinstance(catalog, Catalog):
            raise TypeError(f"bind() takes a Catalog or None, got {type(catalog).__name__}")
        with self._lock:
            self._injector.catalog = catalog
            if catalog is not None:
                # The gauges say what is true now, even if it became true before binding
                # (the follower thread starts with the engine, before any guard binds it).
                catalog.chaos_experiments_active.set(len(self._runs))
                if self.store is not None:
                    catalog.chaos_store_following.set(1 if self._following else 0)

    def describe_service(
        self,
        *,
        dependencies: DependencyNames | None = None,
        routes: RouteTemplates | None = None,
    ) -> None:
        """Tell the engine what the service has, so :meth:`start` can refuse what it has not.

        ``dependencies`` returns the names declared so far; ``routes`` the
        app's route templates with their methods, or ``None`` while they are
        not known. Both are asked when an experiment is checked, so what is
        declared later counts from then on. A :class:`~tailguard.Tailguard`
        describes its own dependencies, and its app's routes once installed;
        an engine told nothing checks nothing.

        >>> chaos = Chaos(enabled=True)
        >>> chaos.describe_service(dependencies=lambda: ["inventory"])
        >>> from tailguard.chaos import Raise
        >>> [unknown] = chaos.unknown(
        ...     Experiment("x", faults=[Raise("invntory", exc=OSError)], ttl=60))
        >>> unknown["field"], unknown["detail"]
        ('faults[0].target', "no dependency matches 'invntory' (declared: inventory)")
        """
        self._dependency_names = dependencies
        self._route_templates = routes

    def unknown(self, experiment: Experiment) -> list[dict[str, str]]:
        """What ``experiment`` names that the service does not have, as ``{field, detail}``.

        A dependency fault's target must match a declared dependency; a
        route fault's target and every key in ``routes`` must match a route
        template of the app (checked once the routes are known). Empty when
        everything is known, or when the engine was told nothing.
        """
        found: list[dict[str, str]] = []
        names = self._dependency_names
        declared = sorted(names()) if names is not None else None
        templates = self._route_templates() if self._route_templates is not None else None
        for index, fault in enumerate(experiment.faults):
            key = fault.route
            if key is None:
                if declared is not None and not any(
                    fnmatchcase(name, fault.target) for name in declared
                ):
                    shown = ", ".join(declared[:20]) + (", ..." if len(declared) > 20 else "")
                    found.append(
                        {
                            "field": f"faults[{index}].target",
                            "detail": f"no dependency matches {fault.target!r} "
                            f"(declared: {shown or 'none'})",
                        }
                    )
            elif templates is not None and not _route_exists(key, templates):
                found.append(
                    {
                        "field": f"faults[{index}].target",
                        "detail": f"no route of the app matches {fault.target!r}",
                    }
                )
        if templates is not None:
            for index, (text, key) in enumerate(
                zip(experiment.routes, experiment.route_keys, strict=True)
            ):
                if not _route_exists(key, templates):
                    found.append(
                        {
                            "field": f"routes[{index}]",
                            "detail": f"no route of the app matches {text!r}",
                        }
                    )
        return found

    # -- control ------------------------------------------------------------------------

    def start(
        self, experiment: Experiment, *, actor: str = "code", allow_unknown: bool = False
    ) -> None:
        """Start ``experiment`` now; it stops by itself after its TTL.

        Raises :class:`ChaosDisabled` when chaos is disabled, ``ValueError``
        when an experiment of that name is running,
        :class:`TooManyExperiments` (a ``ValueError``) when ``max_experiments``
        are, and :class:`UnknownTargets` (a ``ValueError``) when it names a
        dependency or route the service does not have (see :meth:`unknown`)
        unless ``allow_unknown`` (here or in the experiment); either way
        nothing changes. Works with or without a running event loop.
        """
        if not isinstance(experiment, Experiment):
            raise TypeError(f"start() takes an Experiment, got {type(experiment).__name__}")
        name = experiment.name
        if not self._enabled:
            log_event("refused", actor=actor, experiment=name, reason="disabled")
            raise ChaosDisabled(
                f"chaos is disabled: enable it with Chaos(enabled=True) or {ENV_VAR}=1"
            )
        unknown = self.unknown(experiment)
        if unknown and not (allow_unknown or experiment.allow_unknown):
            log_event("refused", actor=actor, experiment=name, reason="unknown targets")
            raise UnknownTargets(name, unknown)
        if self.store is not None:
            self._start_in_store(experiment, actor)
        else:
            self._start_here(experiment, actor)
        log_event(
            "start",
            actor=actor,
            experiment=name,
            ttl=experiment.ttl,
            faults=[
                f"{fault.kind} {fault.target} rate={fault.rate:g}" for fault in experiment.faults
            ],
            unknown=[f"{item['field']}: {item['detail']}" for item in unknown] or None,
            store=self.store.url if self.store is not None else None,
        )

    def _start_here(self, experiment: Experiment, actor: str) -> None:
        name = experiment.name
        with self._lock:
            self.expire()
            if any(run.name == name for run in self._runs):
                log_event("refused", actor=actor, experiment=name, reason="already running")
                raise ValueError(f"experiment {name!r} is already running; stop it first")
            cap = self.max_experiments
            if len(self._runs) >= cap:
                log_event("refused", actor=actor, experiment=name, reason="too many experiments")
                raise TooManyExperiments(
                    f"the most experiments this engine runs at once (max_experiments={cap}) "
                    "are running; stop one first"
                )
            expires_at = self.clock() + experiment.ttl
            # Scheduled after the expiry is fixed, so the wake-up never comes before it.
            token = self._ticker.schedule(experiment.ttl)
            run = Run(experiment, time.time(), expires_at, token)
            self._publish((*self._runs, run))

    def _start_in_store(self, experiment: Experiment, actor: str) -> None:
        """Add ``experiment`` to the fleet's store, then follow it here at once."""
        store, follower = self.store, self._follower
        assert store is not None
        assert follower is not None
        name = experiment.name
        try:
            data = experiment_to_dict(experiment)
        except ExperimentError as error:
            log_event("refused", actor=actor, experiment=name, reason="not shareable")
            raise ValueError(
                f"experiment {name!r} cannot be shared through the store: {error}"
            ) from None
        try:
            store.start(record(name, data, experiment.ttl, actor), self.max_experiments)
        except StoreConflict as refused:
            reason = "already running" if refused.field == "name" else "too many experiments"
            log_event("refused", actor=actor, experiment=name, reason=reason)
            if refused.field is None:
                raise TooManyExperiments(str(refused)) from None
            raise ValueError(str(refused)) from None
        except StoreUnavailable:
            log_event("refused", actor=actor, experiment=name, reason="store unavailable")
            raise
        # Started; if the read fails, the follower picks it up when it can read again.
        with contextlib.suppress(StoreUnavailable):
            follower.refresh()

    def stop(self, name: str, *, actor: str = "code") -> bool:
        """Stop the experiment ``name``; False if no experiment of that name is running."""
        found = False
        if self.store is not None:
            try:
                found = self.store.end_name(name, "stopped", actor)
            except StoreUnavailable:
                if not any(run.name == name for run in self._runs):
                    raise
        with self._lock:
            run = next((run for run in self._runs if run.name == name), None)
            if run is None:
                return found
            self._end(run, "stopped", actor)
        return True

    def halt(self, *, actor: str = "code") -> int:
        """The kill switch: stop every experiment now and end injections in progress.

        Returns how many experiments were running.
        """
        with self._lock:
            runs = self._runs
            for run in runs:
                self._end(run, "halt", actor)
        names = {run.name for run in runs}
        synced: bool | None = None
        if self.store is not None:
            # Stopped here first: a store that cannot be reached never delays the kill switch.
            try:
                names.update(self.store.halt(actor))
                synced = True
            except StoreUnavailable:  # written first thing once it is back
                synced = False
                if self._follower is not None:
                    self._follower.queue_halt(actor)
        log_event("halt", actor=actor, level=logging.WARNING, stopped=len(names), fleet=synced)
        return len(names)

    def expire(self) -> None:
        """Stop the experiments whose TTL has run out (seams and a timer call this)."""
        if self.clock() < self._next_expiry:
            return
        with self._lock:
            now = self.clock()
            if self.store is not None and now >= self._lease_until:
                self._lose()
            for run in self._runs:
                if run.expires_at <= now:
                    self._end(run, "expired", "ttl")

    def experiments(self) -> list[ExperimentStatus]:
        """The running experiments, in start order."""
        self.expire()
        runs = self._runs
        return [
            ExperimentStatus(
                run.experiment,
                run.started_at,
                run.started_at + run.experiment.ttl,
                run.injections,
                run.skipped,
                run.errors,
                run.last_error,
                tuple(self.unknown(run.experiment)),
            )
            for run in runs
        ]

    def status(self) -> dict[str, Any]:
        """Everything an operator needs at a glance, JSON-able.

        >>> Chaos(enabled=False, seed=3).status()["experiments"]
        []
        """
        out: dict[str, Any] = {
            "enabled": self._enabled,
            "seed": self.seed,
            "experiments": [status.to_dict() for status in self.experiments()],
            "stopped": list(self._stopped),
            "injections_in_flight": self._slots.in_flight,
            "injections_skipped": self._slots.skipped,
            "max_injections": self.max_injections,
            "injection_share": self._slots.limit,
            "max_experiments": self.max_experiments,
        }
        if self.store is not None and self._follower is not None:
            self._fleet_status(out, self._follower.workers)
        return out

    def _fleet_status(self, out: dict[str, Any], workers: list[dict[str, Any]]) -> None:
        """Add the fleet's view to ``out``: the store, its workers, counts summed over them."""
        store = self.store
        assert store is not None
        out["store"] = {
            "url": store.url,
            "service": store.service,
            "worker": self.worker,
            "following": self._following,
            "lease": self.lease,
        }
        out["workers"] = [worker_entry(item) for item in workers]
        out["not_following"] = [
            item["worker"] for item in out["workers"] if not following(item, self.lease)
        ]
        share = self._share
        out["fleet_injections"] = {
            **fleet_injections(workers, self.lease),
            "max_injections": share.cap,
            "workers": share.workers,
        }
        keys = {run.name: run.key for run in self._runs}
        for experiment in out["experiments"]:
            key = keys.get(experiment["experiment"]["name"])
            experiment["fleet"] = fleet_counts(key, workers) if key is not None else None

    # -- the fleet ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following the store and close it (a no-op without one); for shutdown and tests."""
        follower = self._follower
        if follower is not None:
            follower.close()
            if follower.thread is not None:
                follower.thread.join(10)
        if self.store is not None:
            self.store.close()

    def _follow(self, snapshot: Snapshot, read_at: float) -> None:
        """Apply the store's ``snapshot`` (read from ``read_at`` on our clock) to this worker."""
        with self._lock:
            if read_at + self.lease <= self.clock() or snapshot.version < self._store_version:
                return  # stale: never start (or keep) injecting on it
            self._store_version = snapshot.version
            self._lease_until = read_at + self.lease
            if self._resume_at == math.inf:  # back: give the others a lease to write their ends
                self._resume_at = read_at + self.lease
            resuming = read_at >= self._resume_at
            if not self._following:
                self._following = True
                self._set_following(1)
            ended_keys = set(self._ended_keys)
            running = {
                entry["id"]: entry for entry in snapshot.running if entry["id"] not in ended_keys
            }
            ended = {entry["id"]: entry["ended"] for entry in snapshot.ended}
            for run in self._runs:
                entry = running.get(run.key or "")
                if entry is None:
                    how = ended.get(run.key) or {"reason": "expired", "actor": "ttl"}
                    self._end(run, how["reason"], how["actor"], how.get("detail"), from_store=True)
                else:
                    run.expires_at = read_at + (entry["ends_at"] - snapshot.now)
            have = {run.key for run in self._runs}
            made = (
                self._run_of(entry, snapshot.now, read_at)
                for key, entry in running.items()
                if key not in have and resuming
            )
            if resuming:
                self._resume_at = -math.inf
            added = [run for run in made if run is not None]
            self._publish((*self._runs, *added))

    def _run_of(self, entry: dict[str, Any], now: float, read_at: float) -> Run | None:
        """A :class:`Run` for the store's ``entry`` (None, logged, if it is not valid here)."""
        key = entry["id"]
        try:
            experiment = experiment_from_dict(entry["experiment"])
        except ExperimentError as error:
            self._ended_keys.append(key)  # said once
            log_event(
                "refused",
                actor="follower",
                experiment=entry.get("name"),
                reason=f"the store's experiment is not valid here: {error}",
                level=logging.WARNING,
            )
            return None
        remaining = entry["ends_at"] - now
        token = self._ticker.schedule(remaining)
        run = Run(experiment, entry["started_at"], read_at + remaining, token)
        run.key = key
        before = self._counted.get(key)
        if before is not None:  # back after the store was lost: keep counting
            run.injections, run.skipped = before.injections, before.skipped
            run.errors = before.errors
        self._counted[key] = run
        while len(self._counted) > _COUNTED:
            del self._counted[next(iter(self._counted))]
        log_event(
            "follow",
            actor=str(entry.get("actor")),
            experiment=run.name,
            remaining=round(remaining, 3),
            store=self.store.url if self.store is not None else None,
        )
        return run

    def _renew(self, read_at: float) -> bool:
        """The store answered and nothing changed: keep injecting (False: read it all first)."""
        with self._lock:
            if (
                self._store_version < 0
                or self._resume_at > -math.inf
                or read_at + self.lease <= self.clock()
            ):
                return False
            self._lease_until = read_at + self.lease
            expiries = (run.expires_at for run in self._runs)
            lease = self._lease_until if self._runs else math.inf
            self._next_expiry = min(min(expiries, default=math.inf), lease)
            return True

    def _store_failed(self) -> None:
        """A poll failed: once the lease has run out, stop injecting."""
        if self.clock() >= self._lease_until:
            with self._lock:
                if self.clock() >= self._lease_until:
                    self._lose()

    def _lose(self) -> None:
        """The store has not been read for a lease (the lock is held): stop injecting here.

        The experiments are not ended in the store: this worker takes them
        up again, from a fresh read, once the store answers.
        """
        self._store_version = -1
        self._resume_at = math.inf
        runs = self._runs
        if self._following or runs:
            self._following = False
            self._set_following(0)
            log_event(
                "store_lost",
                actor="follower",
                reason=f"the store was not read for {self.lease:g} s: injections stopped here",
                level=logging.WARNING,
                store=self.store.url if self.store is not None else None,
                suspended=[run.name for run in runs],
            )
        if not runs:
            return
        for run in runs:
            run.stopped = True
            self._ticker.cancel(run.ttl_token)
            self._stopped.appendleft(
                {
                    "experiment": run.name,
                    "reason": "store-lost",
                    "detail": "the store could not be read: stopped here until it is back",
                    "actor": "follower",
                    "at": time.time(),
                    "injections": run.injections,
                    "injection_errors": run.errors,
                }
            )
        self._publish(())
        for run in runs:
            run.wake_all()

    def _set_following(self, value: int) -> None:
        catalog = self._injector.catalog
        if catalog is not None:
            catalog.chaos_store_following.set(value)

    def _take_share(self, workers: list[dict[str, Any]]) -> None:
        """Take this worker's share of ``max_injections`` from the fleet's heartbeats.

        Called by the follower thread with every read of them, and before it
        applies its first snapshot. Calls under injection beyond a lowered
        share finish as they would have; new ones wait for places.
        """
        share = share_of(self.max_injections, self.worker, workers, self.lease)
        with self._lock:
            before, self._share = self._share, share
            self._slots.resize(share.places)
        if share != before:
            log_event(
                "share",
                actor="follower",
                reason=f"{share.places} of max_injections={share.cap} "
                f"over {share.workers} worker{'s' if share.workers != 1 else ''}",
                level=logging.WARNING if share.places == 0 else logging.INFO,
                injection_share=share.places,
                max_injections=share.cap,
                workers=share.workers,
            )

    def _heartbeat(self) -> dict[str, Any]:
        """What this worker tells the fleet: who it is, whether it follows, what it injected."""
        with self._lock:
            counted = list(self._counted.items())
        slots = self._slots
        return {
            "pid": os.getpid(),
            "host": self.worker.rpartition(":")[0],
            "worker": self.worker,
            "following": self._following,
            "max_injections": self.max_injections,
            "injection_share": slots.limit,
            "injections_in_flight": slots.in_flight,
            "injections_skipped": slots.skipped,
            "counts": {
                key: {
                    "experiment": run.name,
                    "injections": run.injections,
                    "skipped": run.skipped,
                    "injection_errors": run.errors,
                }
                for key, run in counted
            },
        }

    def _end(
        self,
        run: Run,
        reason: str,
        actor: str,
        detail: str | None = None,
        *,
        from_store: bool = False,
    ) -> None:
        """Stop ``run`` (the lock is held): publish, wake its sleepers, count, log.

        An experiment of the fleet's store that ended here is written there
        too (by the follower: never on the caller's thread), unless the
        store is where the end came from.
        """
        if run.stopped:
            return
        run.stopped = True
        key = run.key
        if key is not None:
            self._ended_keys.append(key)
            if not from_store and self._follower is not None:
                self._follower.queue_end(key, reason, actor, detail)
        # Recorded before anyone is woken: a call whose injected wait this ends
        # (maybe on another thread) may read status() at once.
        self._stopped.appendleft(
            {
                "experiment": run.name,
                "reason": reason,
                "detail": detail,
                "actor": actor,
                "at": time.time(),
                "injections": run.injections,
                "injection_errors": run.errors,
            }
        )
        catalog = self._injector.catalog
        if catalog is not None:
            catalog.chaos_experiments_ended.labels(run.name, reason).inc()
        self._publish(tuple(other for other in self._runs if other is not run))
        self._ticker.cancel(run.ttl_token)
        run.wake_all()
        level = logging.WARNING if reason in ("safeguard", "halt") else logging.INFO
        log_event(
            "stop",
            actor=actor,
            experiment=run.name,
            reason=reason,
            level=level,
            detail=detail,
            injections=run.injections,
        )

    def _publish(self, runs: tuple[Run, ...]) -> None:
        # Readers take the caches first and the runs (and methods) second, so a
        # lookup racing with this can only fill a cache that is being thrown away.
        routes = [fault.route for run in runs for fault in run.experiment.faults if fault.route]
        self._runs = runs
        self._route_methods = _METHODS.union(key.method for key in routes if key.method)
        self._by_name = {}
        self._by_route = {}
        self._inbound = bool(routes)
        self._watchers = tuple(run for run in runs if run.watcher is not None)
        self.watching = bool(self._watchers)
        lease = self._lease_until if self.store is not None and runs else math.inf
        self._next_expiry = min(min((run.expires_at for run in runs), default=math.inf), lease)
        self.armed = bool(runs)
        catalog = self._injector.catalog
        if catalog is not None:
            catalog.chaos_experiments_active.set(len(runs))

    # -- the seams --------------------------------------------------------------------

    def plan(
        self, dependency: str, *, respond: bool = False, span: Span | None = None
    ) -> Injection | None:
        """The faults that hit this call to ``dependency``, or ``None`` (the usual answer).

        Seams call it only while :attr:`armed`. ``respond``: whether the seam
        can synthesize a response (the httpx transport). ``span``: the call's
        own span, marked with what hit it (``tailguard.chaos.injected`` and
        the experiments and fault kinds).
        """
        cache = self._by_name
        entries = cache.get(dependency)
        if entries is None:
            entries = cache[dependency] = tuple(
                (run, fault)
                for run in self._runs
                for fault in run.experiment.faults
                if fault.route is None and fnmatchcase(dependency, fault.target)
            )
        if not entries:
            return None
        # Only calls a fault targets need the TTL checked (decide skips ended runs).
        if self.clock() >= self._next_expiry:
            self.expire()
        return self._injector.decide(
            entries, dependency, current_request(), respond=respond, span=span
        )

    async def inbound(self, request: RequestView, send: Send) -> bool:
        """Apply route faults to ``request`` before the app; True if it was answered here.

        The middleware calls it, while :attr:`armed`, before the route's
        admission limiter: injected delays and answers never take a slot or
        skew the limiter's latency samples. ``send`` gets the synthesized
        response of a :class:`~tailguard.chaos.Respond`.
        """
        if not self._inbound:
            return False
        cache = self._by_route
        method, route = request.method, request.route
        # Keyed by the methods faults name, so client-invented ones share one entry.
        key = (method if method in self._route_methods else _OTHER_METHOD, route)
        entries = cache.get(key)
        if entries is None:
            entries = cache[key] = tuple(
                (run, fault)
                for run in self._runs
                for fault in run.experiment.faults
                if fault.route is not None and fault.route.matches(method, route)
            )
        if not entries:
            return False
        if self.clock() >= self._next_expiry:
            self.expire()
        # Labelled by each fault's own route key: the operator's words, not the client's.
        injection = self._injector.decide(entries, None, request, respond=True)
        if injection is None:
            return False
        return await injection.apply_inbound(send)

    def observe_request(
        self, method: str, route: str, status: int, duration: float, *, failed: bool = False
    ) -> None:
        """Feed the safeguards one finished request; the middleware calls it while :attr:`watching`.

        ``route`` is the template (``""`` if none matched: not counted),
        ``status`` the response status (0 if none was sent; 404: not
        counted, so cheap requests for nothing cannot dilute a safeguard),
        ``duration`` in seconds. A 5xx is an error, and so is any request
        with ``failed``: a response aborted after it started, or a client
        that gave up before an answer (its ``duration`` is how long it
        waited).
        """
        watchers = self._watchers
        if not watchers or status == 404 or not route:
            return
        now = self.clock()
        for run in watchers:
            watcher = run.watcher
            if run.stopped or watcher is None or not run.watches(method, route):
                continue
            reason = watcher.observe(now, status, duration, failed)
            if reason is not None:
                with self._lock:
                    self._end(run, "safeguard", "safeguard", reason)


def _route_exists(key: RouteKey, templates: Sequence[tuple[str, frozenset[str] | None]]) -> bool:
    """Whether some route of the app is covered by ``key`` (a method it allows, its template)."""
    for template, methods in templates:
        if key.method is not None and methods is not None and key.method not in methods:
            continue
        if key.matches(key.method or "", template):
            return True
    return False
