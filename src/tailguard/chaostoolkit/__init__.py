"""The Chaos Toolkit driver: tailguard experiments, halts and SLO probes from ``chaos run``.

Install with ``pip install 'tailguard[chaostoolkit]'`` and name the modules
in an experiment's providers: ``tailguard.chaostoolkit.actions``
(``start_experiment``, ``stop_experiment``, ``halt``) and
``tailguard.chaostoolkit.probes`` (``status``, ``experiment_running``,
``route_latency``, ``error_ratio``, ``shed_ratio``, ``orphaned_tasks``).
Guide: ``docs/chaostoolkit.md``; examples: ``examples/chaostoolkit/``.

The activities find the service in the experiment's ``configuration`` and
the control token in its ``secrets``:

=========================  ==============  ==========================================
key                        in              default
=========================  ==============  ==========================================
``tailguard_url``          configuration   ``$TAILGUARD_URL``, else ``http://127.0.0.1:8000``
``tailguard_prefix``       configuration   ``/_tailguard`` (the service's ``control_path``)
``tailguard_metrics_path`` configuration   ``/metrics``
``tailguard_timeout``      configuration   10 (seconds, per HTTP request)
``tailguard_token``        secrets         ``$TAILGUARD_TOKEN``
=========================  ==============  ==========================================

:func:`discover` describes every activity with its arguments, as
``chaos discover`` expects of an extension; ``python -m
tailguard.chaostoolkit`` prints it as JSON.

>>> names = sorted(activity["name"] for activity in discover()["activities"])
>>> names[:3]
['error_ratio', 'experiment_running', 'halt']
"""

from typing import Any

from tailguard import __version__

__all__ = ["INSTALL_HINT", "discover"]

INSTALL_HINT = "tailguard.chaostoolkit needs Chaos Toolkit: pip install 'tailguard[chaostoolkit]'"

MODULES = {"action": "tailguard.chaostoolkit.actions", "probe": "tailguard.chaostoolkit.probes"}
"""The modules whose ``__all__`` functions are this extension's activities, by activity type."""


def discover(discover_system: bool = True) -> dict[str, Any]:
    """What this extension offers: every action and probe, with its arguments and their types.

    ``discover_system`` is accepted as Chaos Toolkit passes it; there is no
    system to describe without a service URL and token, so ``"system"`` is
    ``None``.

    >>> found = discover()
    >>> found["extension"]["name"], found["target"]
    ('tailguard', 'tailguard')
    >>> [a["name"] for a in found["activities"] if a["type"] == "action"]
    ['halt', 'set_enforcement', 'start_experiment', 'stop_experiment']
    """
    try:
        from chaoslib.discovery.discover import discover_activities, initialize_discovery_result
    except ImportError as exc:  # pragma: no cover - run in a subprocess without the extra
        raise ImportError(INSTALL_HINT) from exc

    discovery: dict[str, Any] = initialize_discovery_result("tailguard", __version__, "tailguard")
    for kind, module in MODULES.items():
        discovery["activities"].extend(discover_activities(module, kind))
    return discovery
