"""A running experiment as ``Chaos.experiments()`` reports it: :class:`ExperimentStatus`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tailguard.chaos.experiment import Experiment

__all__ = ["ExperimentStatus"]


@dataclass(frozen=True, slots=True)
class ExperimentStatus:
    """A running experiment, as :meth:`Chaos.experiments` reports it."""

    experiment: Experiment
    started_at: float
    """Wall-clock start (``time.time()``)."""
    expires_at: float
    """Wall-clock time at which the TTL runs out."""
    injections: int
    """Faults injected so far (a call hit by two faults counts two)."""
    skipped: int
    """Faults that would have been injected but for ``max_injections``."""
    injection_errors: int = 0
    """Faults that could not be planned or applied; those calls went on without chaos."""
    last_injection_error: str | None = None
    """The latest of those errors (fault, target, exception), or ``None``."""
    unknown: tuple[dict[str, str], ...] = ()
    """What the experiment names that the service does not have (``{field, detail}``):
    only an experiment started with ``allow_unknown`` can; empty once all is declared."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; the header secret is redacted."""
        from tailguard.chaos.schema import experiment_to_dict

        try:
            experiment = experiment_to_dict(self.experiment, redact_secret=True)
        except ValueError:  # a fault with no data form: a Raise factory, a custom distribution
            experiment = _plain(self.experiment)
        return {
            "experiment": experiment,
            "started_at": self.started_at,
            "expires_at": self.expires_at,
            "injections": self.injections,
            "skipped": self.skipped,
            "injection_errors": self.injection_errors,
            "last_injection_error": self.last_injection_error,
            "unknown": list(self.unknown),
        }


def _plain(experiment: Experiment) -> dict[str, Any]:
    """A status form for experiments the schema cannot express: faults by their repr."""
    out: dict[str, Any] = {
        "name": experiment.name,
        "ttl": experiment.ttl,
        "faults": [
            {"kind": fault.kind, "target": fault.target, "rate": fault.rate, "repr": repr(fault)}
            for fault in experiment.faults
        ],
        "routes": list(experiment.routes),
        "tenants": list(experiment.tenants),
    }
    if experiment.header is not None:
        out["header"] = experiment.header
        out["secret"] = "<redacted>"
    return out
