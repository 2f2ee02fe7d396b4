"""A game-day's side of the chaos control API and of ``/metrics``, over aiohttp.

:class:`Control` starts, stops and halts experiments and reads the status
(``docs/chaos-control.md``); :func:`read_service` sums what the service's
own ``/metrics`` says about a game-day (injections made, requests shed or
late, orphaned tasks) and which route templates it has seen.

>>> text = '''tailguard_chaos_injections_total{experiment="x",target="db",fault="latency"} 3.0
... tailguard_requests_total{route="/items/{item_id}",method="GET",outcome="ok"} 9.0
... '''
>>> found = read_service(text)
>>> found.counts["injections"], sorted(found.routes)
(3.0, [('GET', '/items/{item_id}')])
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from tailguard.gameday.load import import_aiohttp

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "CONTROL_TIMEOUT",
    "SERVICE_COUNTS",
    "Control",
    "ControlError",
    "Service",
    "read_service",
    "scrape",
]

CONTROL_TIMEOUT: Final = 5.0
"""Seconds a control or metrics request may take: the API answers ahead of any queue."""

SERVICE_COUNTS: Final[Mapping[str, tuple[str, Mapping[str, str]]]] = {
    "injections": ("tailguard_chaos_injections", {}),
    "shed": ("tailguard_requests", {"outcome": "shed"}),
    "deadline_exceeded": ("tailguard_requests", {"outcome": "deadline_exceeded"}),
    "orphaned_tasks": ("tailguard_tasks_orphaned", {}),
    "dependency_calls": ("tailguard_dependency_calls", {}),
}
"""What the report takes from ``/metrics``: a counter (family name) and the labels to match."""


class ControlError(Exception):
    """The control API refused or could not be reached; the message says which and why."""


@dataclass(slots=True)
class Service:
    """Counters summed from one scrape of ``/metrics``, and the route templates seen."""

    counts: dict[str, float] = field(default_factory=dict)
    routes: set[tuple[str, str]] = field(default_factory=set)
    """``(method, template)`` of every route ``tailguard_requests_total`` has a series for."""


_SAMPLE = re.compile(r"^(?P<name>[a-z_:][a-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_WANTED = tuple(f"{family}_total" for family, _ in SERVICE_COUNTS.values())


def read_service(text: str) -> Service:
    """Sum :data:`SERVICE_COUNTS` and collect route templates from Prometheus text.

    Only the few families it needs are parsed, line by line: a full parse of
    a busy service's exposition would hold the event loop, and with it the
    load's send times, for milliseconds.
    """
    found = Service(dict.fromkeys(SERVICE_COUNTS, 0.0))
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        sample = _SAMPLE.match(line)
        if sample is None:
            continue
        try:
            value = float(sample["value"])
        except ValueError:
            continue
        labels = {
            m["key"]: m["value"].replace('\\"', '"').replace("\\\\", "\\")
            for m in _LABEL.finditer(sample["labels"] or "")
        }
        for name, (wanted, required) in SERVICE_COUNTS.items():
            if sample["name"] == wanted + "_total" and all(
                labels.get(k) == v for k, v in required.items()
            ):
                found.counts[name] += value
        if sample["name"] == "tailguard_requests_total":
            route, method = labels.get("route"), labels.get("method")
            if route and method and route.startswith("/"):
                found.routes.add((method, route))
    return found


class Control:
    """The control API of one service, with its bearer token, through ``session``."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, prefix: str, token: str | None
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + prefix
        self.token = token

    async def _call(self, method: str, path: str, body: object = None) -> Any:
        aiohttp = import_aiohttp()
        if self.token is None:
            raise ControlError("no control token for this service")
        headers = {"authorization": f"Bearer {self.token}"}
        try:
            async with self.session.request(
                method,
                self.base + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT),
            ) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise ControlError(f"{method} {self.base}{path}: {type(exc).__name__}: {exc}") from None
        if status >= 300:
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            where = answer.get("field") if isinstance(answer, dict) else None
            raise ControlError(
                f"{method} {self.base}{path} -> {status}: {f'{where}: ' if where else ''}{detail}"
            )
        return answer

    async def start(self, experiment: Mapping[str, Any]) -> Any:
        """Start ``experiment``; the running experiment as the API describes it."""
        return await self._call("POST", "/experiments", dict(experiment))

    async def stop(self, name: str) -> None:
        """Stop the running experiment ``name``."""
        await self._call("DELETE", f"/experiments/{name}")

    async def halt(self) -> int:
        """The kill switch: how many experiments it stopped."""
        answer = await self._call("POST", "/halt")
        return int(answer.get("halted", 0)) if isinstance(answer, dict) else 0

    async def running(self) -> list[str]:
        """The names of the experiments running now."""
        answer = await self._call("GET", "/status")
        return [str(item["experiment"]["name"]) for item in answer.get("experiments", [])]


async def scrape(session: aiohttp.ClientSession, url: str) -> Service | None:
    """Read ``/metrics`` at ``url``; ``None`` when it cannot be read."""
    aiohttp = import_aiohttp()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT)) as found:
            if found.status != 200:
                return None
            text = await found.text()
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    return read_service(text)
