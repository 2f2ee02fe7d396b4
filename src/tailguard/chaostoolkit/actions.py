"""Chaos Toolkit actions: tailguard experiments and enforcement modes, through the control API.

Name this module in an action's provider, with the secret scope that holds
``tailguard_token``::

    {"type": "action", "name": "start-slow-inventory",
     "provider": {"type": "python", "module": "tailguard.chaostoolkit.actions",
                  "func": "start_experiment",
                  "arguments": {"path": "examples/chaostoolkit/faults/slow-inventory.json"},
                  "secrets": ["tailguard"]},
     "pauses": {"after": 10}}

Each action returns the control API's answer, which Chaos Toolkit keeps in
the journal, and raises (the activity fails, with the message) when the
service refuses: a wrong token, an invalid experiment (the field is named),
chaos disabled in the service, a name already running. Where the service is
and the token come from the experiment's ``configuration`` and ``secrets``
(see ``tailguard.chaostoolkit``).

:func:`set_enforcement` switches deadlines, admission and bulkheads between
enforcing, shadow and a fraction (docs/rollout.md): run the same faults with
the protections off and on in one experiment, and roll back to ``"on"``.
"""

import os
from collections.abc import Mapping
from typing import Any

from tailguard.chaos.schema import ExperimentError, read_experiment_file
from tailguard.chaostoolkit._service import ActivityFailed, Settings, control

__all__ = ["halt", "set_enforcement", "start_experiment", "stop_experiment"]


def start_experiment(
    path: str = "",
    experiment: Mapping[str, Any] | None = None,
    configuration: Settings = None,
    secrets: Settings = None,
) -> dict[str, Any]:
    """Start a tailguard experiment: from a file (``path``) or inline (``experiment``).

    ``path`` is a tailguard experiment file (``.json``, or ``.yaml`` with
    ``tailguard[yaml]``), relative to the directory ``chaos run`` runs in;
    ``experiment`` is the same document written into the Chaos Toolkit
    experiment. Give exactly one. The service validates it (against the
    exceptions *it* imports) and answers with the running experiment:
    ``{"experiment", "started_at", "expires_at", "injections", "skipped"}``.
    The experiment still ends by its own ``ttl`` if nothing stops it.

    Example::

        {"type": "action", "name": "inventory-hangs",
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.actions",
                      "func": "start_experiment", "secrets": ["tailguard"],
                      "arguments": {"experiment": {
                          "name": "inventory-outage", "ttl": 60,
                          "faults": [{"kind": "hang", "target": "inventory"}]}}}}
    """
    who = "start_experiment"
    if not isinstance(path, str):
        raise ActivityFailed(f"{who}: path must be a string, got {path!r}")
    if bool(path) == (experiment is not None):
        raise ActivityFailed(
            f"{who}: give exactly one of path (a tailguard experiment file) "
            "or experiment (the experiment inline)"
        )
    document: object = experiment
    if path:
        try:
            document = read_experiment_file(path)
        except (ExperimentError, OSError, ImportError) as exc:
            where = os.path.abspath(path)
            raise ActivityFailed(f"{who}: path {path!r} ({where}): {exc}") from None
    elif not isinstance(experiment, Mapping):
        raise ActivityFailed(
            f"{who}: experiment must be a mapping (a tailguard experiment), got {experiment!r}"
        )
    else:
        document = dict(experiment)
    return control(configuration, secrets, who, lambda client: client.start(document))


def stop_experiment(
    name: str, configuration: Settings = None, secrets: Settings = None
) -> dict[str, Any]:
    """Stop the running experiment ``name``; answers ``{"stopped": name}``.

    Fails if no experiment of that name is running (it may have ended by its
    TTL or its safeguard): use :func:`halt` in rollbacks, which never fails
    for that.

    Example::

        {"type": "action", "name": "stop-slow-inventory",
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.actions",
                      "func": "stop_experiment", "arguments": {"name": "slow-inventory"},
                      "secrets": ["tailguard"]}}
    """
    if not isinstance(name, str) or not name:
        raise ActivityFailed(f"stop_experiment: name must be a non-empty string, got {name!r}")
    return control(configuration, secrets, "stop_experiment", lambda client: client.stop(name))


def halt(configuration: Settings = None, secrets: Settings = None) -> int:
    """The kill switch: stop every experiment now; how many were running.

    The rollback every experiment should have: it works however the method
    ended, and while chaos is disabled too (answering 0).

    Example::

        "rollbacks": [{"type": "action", "name": "halt-chaos",
                       "provider": {"type": "python", "module": "tailguard.chaostoolkit.actions",
                                    "func": "halt", "secrets": ["tailguard"]}}]
    """
    return control(configuration, secrets, "halt", lambda client: client.halt())


def set_enforcement(
    mode: str | float,
    route: str | None = None,
    dependency: str | None = None,
    configuration: Settings = None,
    secrets: Settings = None,
) -> dict[str, Any]:
    """Switch enforcement to ``mode`` (``"on"``, ``"shadow"`` or a fraction such as ``0.25``).

    Without ``route`` or ``dependency`` every route and dependency switches (so
    ``"on"`` in a rollback undoes any switch); with one, only that route key or
    dependency does. Answers the control API's account of what changed; fails
    with the service's message for a mode, route or dependency it refuses.

    Example::

        {"type": "action", "name": "protections-off",
         "provider": {"type": "python", "module": "tailguard.chaostoolkit.actions",
                      "func": "set_enforcement", "arguments": {"mode": "shadow"},
                      "secrets": ["tailguard"]}}
    """
    if isinstance(mode, bool) or not isinstance(mode, str | int | float):
        raise ActivityFailed(
            f"set_enforcement: mode must be 'on', 'shadow' or a fraction, got {mode!r}"
        )
    for field, value in (("route", route), ("dependency", dependency)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ActivityFailed(
                f"set_enforcement: {field} must be a non-empty string, got {value!r}"
            )
    return control(
        configuration,
        secrets,
        "set_enforcement",
        lambda client: client.enforce(mode, route=route, dependency=dependency, by="chaostoolkit"),
    )
