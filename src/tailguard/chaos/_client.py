"""A small HTTP client for the control API, and the text ``tailguard chaos`` prints.

>>> print(describe_fault({"kind": "latency", "target": "db", "rate": 0.3,
...                       "delay": {"lognormal": {"p50": 0.05, "p99": 0.5}}}))
latency db rate=0.3 delay=lognormal(p50=0.05, p99=0.5)
>>> duration(299.6)
'5m 0s'
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

__all__ = [
    "ControlClient",
    "ControlError",
    "describe_fault",
    "duration",
    "render_status",
    "render_validation",
]


class ControlError(Exception):
    """The control API refused a request (``status`` is ``None`` if it was never reached)."""

    def __init__(self, status: int | None, detail: str, field: str | None = None) -> None:
        where = f"{field}: " if field else ""
        prefix = f"{status} " if status is not None else ""
        super().__init__(f"{prefix}{where}{detail}")
        self.status, self.detail, self.field = status, detail, field


class ControlClient:
    """Calls a service's control API at ``url`` + ``prefix`` with a bearer ``token``.

    Needs httpx (``pip install 'tailguard[httpx]'``). ``transport`` is for
    tests that serve the API in-process.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        prefix: str = "/_tailguard",
        timeout: float = 10.0,
        transport: Any = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "tailguard chaos needs httpx: pip install 'tailguard[httpx]'"
            ) from exc
        self._httpx = httpx
        self.base = url.rstrip("/") + prefix
        self._client = httpx.Client(
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.close()

    def _call(
        self, method: str, path: str, body: object = None, params: dict[str, str] | None = None
    ) -> Any:
        url = self.base + path
        try:
            if body is None:
                response = self._client.request(method, url)
            else:
                response = self._client.request(method, url, json=body, params=params)
        except self._httpx.HTTPError as exc:
            raise ControlError(None, f"cannot reach {url}: {exc or type(exc).__name__}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success and payload is not None:
            return payload
        if isinstance(payload, Mapping) and isinstance(payload.get("detail"), str):
            field = payload.get("field")
            raise ControlError(
                response.status_code, payload["detail"], field if isinstance(field, str) else None
            )
        text = response.text.strip()[:200] or response.reason_phrase
        raise ControlError(response.status_code, f"unexpected answer from {url}: {text}")

    def status(self) -> dict[str, Any]:
        """The engine's state (``GET status``)."""
        result: dict[str, Any] = self._call("GET", "/status")
        return result

    def start(self, document: object, *, allow_unknown: bool = False) -> dict[str, Any]:
        """Start the experiment ``document`` (decoded JSON/YAML); the running experiment.

        ``allow_unknown``: start it even if it names a dependency or route the
        service does not have (the server refuses it otherwise).
        """
        params = {"allow_unknown": "true"} if allow_unknown else None
        result: dict[str, Any] = self._call("POST", "/experiments", document, params)
        return result

    def validate(self, document: object, *, allow_unknown: bool = False) -> dict[str, Any]:
        """Check ``document`` against the service without starting it (``POST validate``)."""
        params = {"allow_unknown": "true"} if allow_unknown else None
        result: dict[str, Any] = self._call("POST", "/validate", document, params)
        return result

    def stop(self, name: str) -> dict[str, Any]:
        """Stop the running experiment ``name``."""
        result: dict[str, Any] = self._call("DELETE", f"/experiments/{quote(name, safe='')}")
        return result

    def enforcement(self) -> dict[str, Any]:
        """Every enforcement mode of the service (``GET enforcement``)."""
        result: dict[str, Any] = self._call("GET", "/enforcement")
        return result

    def enforce(
        self,
        mode: object,
        *,
        route: str | None = None,
        dependency: str | None = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Switch enforcement to ``mode`` (``"on"``, ``"shadow"``, a fraction); what changed."""
        body: dict[str, Any] = {"mode": mode}
        for field, value in (("route", route), ("dependency", dependency), ("by", by)):
            if value is not None:
                body[field] = value
        result: dict[str, Any] = self._call("POST", "/enforcement", body)
        return result

    def halt(self) -> int:
        """Stop every experiment; how many were running."""
        halted: int = self._call("POST", "/halt")["halted"]
        return halted


def duration(seconds: float) -> str:
    """A short human duration: ``42s``, ``5m 0s``, ``2h 3m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    return f"{whole // 3600}h {whole % 3600 // 60}m"


def _delay(delay: object) -> str:
    if isinstance(delay, Mapping) and len(delay) == 1:
        ((kind, spec),) = delay.items()
        if isinstance(spec, Mapping):
            return f"{kind}({', '.join(f'{k}={v}' for k, v in spec.items())})"
        if isinstance(spec, list):
            return f"{kind}({len(spec)} samples)"
        return f"{kind}({spec})"
    return f"{delay}s"


def describe_fault(fault: Mapping[str, Any]) -> str:
    """One line for a fault in its JSON form."""
    words = [str(fault.get("kind")), str(fault.get("target")), f"rate={fault.get('rate')}"]
    if "delay" in fault:
        words.append(f"delay={_delay(fault['delay'])}")
    for key in ("exc", "status"):
        if key in fault:
            words.append(f"{key}={fault[key]}")
    return " ".join(words)


def _running(entry: Mapping[str, Any], now: float) -> list[str]:
    experiment = entry.get("experiment", {})
    left = duration(float(entry.get("expires_at", now)) - now)
    fleet = entry.get("fleet")
    # With a fleet, the count beside the name is the answering worker's own.
    here = " on this worker" if fleet else ""
    lines = [
        f"  {experiment.get('name')}  expires in {left}  "
        f"injections{here} {entry.get('injections', 0)}"
    ]
    if fleet:
        by_worker = fleet.get("workers", {})
        lines.append(
            f"    fleet: {fleet.get('injections', 0)} injections over {len(by_worker)} "
            f"worker{'s' if len(by_worker) != 1 else ''}"
            + "".join(f"; {name} {count}" for name, count in sorted(by_worker.items()))
        )
    lines.extend(f"    {describe_fault(fault)}" for fault in experiment.get("faults", []))
    scope = [
        f"{key} {', '.join(experiment[key])}"
        for key in ("routes", "tenants")
        if experiment.get(key)
    ]
    if experiment.get("header"):
        scope.append(f"header {experiment['header']}")
    if scope:
        lines.append(f"    only: {'; '.join(scope)}")
    return lines


def render_status(status: Mapping[str, Any], *, url: str, now: float | None = None) -> str:
    """``tailguard chaos status`` as people read it."""
    now = time.time() if now is None else now
    state = "enabled" if status.get("enabled") else "disabled"
    seed = status.get("seed")
    lines = (
        [
            f"chaos {state} at {url} (seed {'random' if seed is None else seed}; "
            f"{_places(status)}, skipped {status.get('injections_skipped', 0)})"
        ]
        if "enabled" in status
        else [f"chaos experiments in the store {url}"]  # straight from the store: no worker
    )
    running = status.get("experiments", [])
    lines.append(f"running: {len(running)}" if running else "running: none")
    for entry in running:
        lines.extend(_running(entry, now))
    store = status.get("store")
    if store:
        lines.extend(_fleet(status, store))
    stopped = status.get("stopped", [])
    if stopped:
        lines.append("recently stopped:")
    for record in stopped:
        ago = duration(now - float(record.get("at", now)))
        why = record.get("reason")
        detail = f": {record['detail']}" if record.get("detail") else ""
        lines.append(
            f"  {record.get('experiment')}  {why} by {record.get('actor')} {ago} ago{detail}"
        )
    return "\n".join(lines)


def _places(status: Mapping[str, Any]) -> str:
    """This worker's injections in flight against its places (its share, in a fleet)."""
    cap = status.get("max_injections", "?")
    share = status.get("injection_share", cap)
    said = f"injections in flight {status.get('injections_in_flight', 0)}/{share}"
    fleet = status.get("fleet_injections")
    if not fleet:
        return said
    cap, workers = fleet.get("max_injections", cap), fleet.get("workers", "?")
    if share == 0:
        return f"{said}: injects nothing, max_injections {cap} is shared by {workers} workers"
    return f"{said}, its share of max_injections {cap} over {workers} workers"


def _fleet(status: Mapping[str, Any], store: Mapping[str, Any]) -> list[str]:
    """The fleet part of a status: the store, its workers, those not following."""
    following = store.get("following")
    said = "" if following is None else (" (following)" if following else " (NOT following)")
    lines = [f"store {store.get('url')} service {store.get('service')}{said}"]
    workers = status.get("workers", [])
    lines.append(f"workers: {len(workers)}")
    fleet = status.get("fleet_injections")
    if fleet:
        lines.append(
            f"injections across the fleet: {fleet.get('in_flight', 0)} in flight "
            f"(max_injections {fleet.get('max_injections') or '?'}), "
            f"skipped {fleet.get('skipped', 0)}"
        )
    for worker in workers:
        age = worker.get("age")
        seen = f"{float(age):.1f} s ago" if isinstance(age, int | float) else "?"
        state = "following" if worker.get("following") else "NOT following"
        share = worker.get("injection_share")
        places = (
            ""
            if share is None
            else f", injections in flight {worker.get('injections_in_flight', 0)}/{share}"
        )
        lines.append(
            f"  {worker.get('worker')}  pid {worker.get('pid')}  {state}, seen {seen}{places}"
        )
    lagging = status.get("not_following", [])
    if lagging:
        lines.append(f"not following: {', '.join(str(name) for name in lagging)}")
    return lines


def render_validation(answer: Mapping[str, Any], *, file: str, url: str) -> str:
    """``tailguard chaos validate`` as people read it."""
    experiment = answer.get("experiment", {})
    faults = experiment.get("faults", [])
    count = f"{len(faults)} fault{'s' if len(faults) != 1 else ''}"
    lines = [f"{file}: {experiment.get('name')} is valid ({count}) for {url}"]
    lines.extend(f"  {describe_fault(fault)}" for fault in faults)
    unknown = answer.get("unknown", [])
    if unknown:
        lines.append("names what the service does not have:")
        lines.extend(f"  {item.get('field')}: {item.get('detail')}" for item in unknown)
    else:
        lines.append("every dependency and route it names exists")
    if answer.get("would_start"):
        lines.append("it would start")
    elif not answer.get("enabled"):
        lines.append("it would not start: chaos is disabled in this service")
    elif answer.get("running"):
        lines.append("it would not start: an experiment of that name is running")
    else:
        lines.append("it would not start: fix the names, or start it with --allow-unknown")
    return "\n".join(lines)
