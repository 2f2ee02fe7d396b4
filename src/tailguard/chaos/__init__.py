"""Chaos engineering inside the service: faults in dependencies and routes, safely.

Off unless enabled (``Chaos(enabled=True)`` or ``TAILGUARD_CHAOS=1``). Every
experiment has a TTL, concurrent injections are capped, ``halt()`` stops
everything, and each injection is counted and marked on the current span.
See ``docs/chaos.md`` (the runtime) and ``docs/chaos-control.md`` (the
control API, experiment files and the CLI).

>>> from tailguard import chaos
>>> engine = chaos.Chaos(enabled=True, seed=7)
>>> engine.start(chaos.Experiment(
...     "slow-inventory",
...     ttl=300,
...     faults=[chaos.Latency("inventory", delay=chaos.LogNormal(p50=0.05, p99=0.5), rate=0.3),
...             chaos.Respond("inventory", status=503, rate=0.05)],
...     routes=["GET /items/*"],
... ))
>>> engine.halt()
1
"""

from tailguard.chaos.control import ControlAPI, ControlMiddleware
from tailguard.chaos.distributions import (
    Distribution,
    Empirical,
    Fixed,
    LogNormal,
    Pareto,
    Uniform,
)
from tailguard.chaos.engine import (
    ENV_VAR,
    MAX_EXPERIMENTS,
    Chaos,
    ChaosDisabled,
    ExperimentStatus,
    TooManyExperiments,
    UnknownTargets,
)
from tailguard.chaos.experiment import AbortWhen, Experiment
from tailguard.chaos.faults import Fault, Hang, Latency, Raise, Reset, Respond
from tailguard.chaos.schema import (
    EXPERIMENT_JSON_SCHEMA,
    ExperimentError,
    experiment_from_dict,
    experiment_to_dict,
    load_experiment,
)

__all__ = [
    "ENV_VAR",
    "EXPERIMENT_JSON_SCHEMA",
    "MAX_EXPERIMENTS",
    "AbortWhen",
    "Chaos",
    "ChaosDisabled",
    "ControlAPI",
    "ControlMiddleware",
    "Distribution",
    "Empirical",
    "Experiment",
    "ExperimentError",
    "ExperimentStatus",
    "Fault",
    "Fixed",
    "Hang",
    "Latency",
    "LogNormal",
    "Pareto",
    "Raise",
    "Reset",
    "Respond",
    "TooManyExperiments",
    "Uniform",
    "UnknownTargets",
    "experiment_from_dict",
    "experiment_to_dict",
    "load_experiment",
]

# Public objects report the package as their home, as tailguard's own do.
for _public in (
    AbortWhen,
    Chaos,
    ChaosDisabled,
    Distribution,
    Empirical,
    Experiment,
    ExperimentStatus,
    Fault,
    Fixed,
    Hang,
    Latency,
    LogNormal,
    Pareto,
    Raise,
    Reset,
    Respond,
    TooManyExperiments,
    Uniform,
    UnknownTargets,
):
    _public.__module__ = "tailguard.chaos"
del _public
