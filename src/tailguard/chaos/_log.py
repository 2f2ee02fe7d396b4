"""One structured log line per control action and automatic stop.

Lines go to the ``tailguard.chaos`` logger. The message is a JSON object,
and the same fields are attached to the record (``extra=``), so both plain
text handlers and structured ones (JSON formatters, OpenTelemetry log
bridges) get ``event``, ``experiment``, ``actor``, ``reason`` and ``at``.

>>> import logging
>>> records = []
>>> handler = logging.Handler()
>>> handler.emit = records.append
>>> logger.addHandler(handler)
>>> log_event("halt", actor="ops", level=logging.WARNING, stopped=2)
>>> logger.removeHandler(handler)
>>> records[0].event, records[0].actor, records[0].stopped
('halt', 'ops', 2)
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final

__all__ = ["log_event", "logger"]

logger: Final = logging.getLogger("tailguard.chaos")


def log_event(
    event: str,
    *,
    actor: str,
    experiment: str | None = None,
    reason: str | None = None,
    level: int = logging.INFO,
    **details: object,
) -> None:
    """Log ``event`` (start, stop, halt, refused) with who did it, to what, and why."""
    fields: dict[str, object] = {
        "event": event,
        "experiment": experiment,
        "actor": actor,
        "reason": reason,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        **details,
    }
    logger.log(level, json.dumps(fields, default=str), extra=fields)
