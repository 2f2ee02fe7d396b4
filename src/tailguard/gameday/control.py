"""A game-day's side of the chaos control API, over HTTP: start and halt, watch a bulkhead.

Both functions take an ``httpx.AsyncClient`` that already carries the
control token, and never raise for HTTP: a game-day reports what the API
answered and goes on (the ``ttl`` of an experiment ends it should the
game-day not get to halt it). See ``docs/chaos-control.md`` for the API.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from typing import TYPE_CHECKING

from tailguard.gameday.load import import_httpx

if TYPE_CHECKING:
    import httpx

__all__ = ["LIMITER_FIELDS", "WATCH_INTERVAL", "post", "watch_limiter"]

LIMITER_FIELDS = ("in_use", "queued", "max_concurrency", "max_queue")
"""The fields of a dependency's limiter in ``GET {prefix}/snapshot`` that are watched."""

WATCH_INTERVAL = 0.02
"""Seconds between two snapshots."""


async def post(client: httpx.AsyncClient, url: str, body: object) -> tuple[bool, str]:
    """``POST`` ``body`` as JSON to ``url``: whether the answer was 2xx, and one line about it.

    The line reads ``POST {url} -> {status} {answer}``, the answer left out
    when it is long; for a refusal it gives the answer's ``detail``, for a
    failure the exception.
    """
    httpx_module = import_httpx()
    line = f"POST {url} ->"
    try:
        response = await client.post(url, json=body)
        answer = response.json()
    except (httpx_module.HTTPError, ValueError) as exc:
        return False, f"{line} failed: {type(exc).__name__}: {exc}"
    if not response.is_success:
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        return False, f"{line} {response.status_code}: {detail}"
    text = json.dumps(answer)
    return True, f"{line} {response.status_code} {text if len(text) < 40 else ''}".rstrip()


async def watch_limiter(
    client: httpx.AsyncClient,
    control: str,
    dependency: str,
    peak: dict[str, int],
    stop: asyncio.Event,
) -> None:
    """Read ``dependency``'s limiter from ``GET {control}/snapshot`` until ``stop`` is set.

    Keeps the highest value of each of :data:`LIMITER_FIELDS` in ``peak``.
    Returns early, quietly, when a snapshot cannot be read.
    """
    httpx_module = import_httpx()
    while not stop.is_set():
        try:
            response = await client.get(control + "/snapshot")
            limiter = response.json()["dependencies"][dependency]["limiter"]
        except (httpx_module.HTTPError, ValueError, LookupError, TypeError):
            return
        for key in LIMITER_FIELDS:
            peak[key] = max(peak.get(key, 0), int(limiter[key]))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
