"""The live control API: start, list and stop experiments over HTTP during a game-day.

A small pure-ASGI app. Mount it in front of everything else, so that an
overloaded service still answers its operator and chaos never hits the
control path:

>>> from starlette.applications import Starlette
>>> from tailguard.chaos import Chaos
>>> from tailguard.chaos.control import ControlAPI, ControlMiddleware
>>> app = Starlette()
>>> control = ControlAPI(Chaos(enabled=True), token="s3cret-t0ken-0123456789")
>>> app.add_middleware(ControlMiddleware, control=control)  # add it last: outermost

Every request under the prefix needs ``Authorization: Bearer <token>``; the
token is compared in constant time, and a wrong or missing one gets 401 and
changes nothing. Bodies are validated by :mod:`tailguard.chaos.schema`. Each
action goes to the engine with ``actor="api:<client address>"``, so the
engine's log says who did what. See ``docs/chaos-control.md``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from tailguard._scope import route_path
from tailguard._version import __version__
from tailguard.chaos._fields import ExperimentError, parse_json
from tailguard.chaos._log import log_event, logger
from tailguard.chaos._openapi import openapi_document
from tailguard.chaos.engine import (
    Chaos,
    ChaosDisabled,
    ExperimentStatus,
    TooManyExperiments,
    UnknownTargets,
)
from tailguard.chaos.experiment import Experiment
from tailguard.chaos.schema import experiment_from_dict
from tailguard.chaos.store import StoreUnavailable
from tailguard.enforcement import Enforcements, Mode, UnknownTarget, check_mode, parse_mode

__all__ = ["DEFAULT_PREFIX", "MAX_BODY_SIZE", "MIN_TOKEN_LENGTH", "ControlAPI", "ControlMiddleware"]

DEFAULT_PREFIX = "/_tailguard"
MAX_BODY_SIZE = 64 * 1024
"""The largest request body accepted (413 beyond it): experiments are small."""
MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused: a control token must not be guessable."""

_TOKEN = re.compile(r"[\x21-\x7e]+")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")
_JSON_TYPES = (b"application/json",)
_T = TypeVar("_T")
_Snapshot = Callable[[], Mapping[str, Any]]
_Headers = tuple[tuple[bytes, bytes], ...]
_Answer = tuple[int, Any, _Headers]
_Endpoint = Callable[[Scope, Receive, str], Awaitable[_Answer]]


class _Refusal(Exception):
    """An answer other than success; raised anywhere in a handler, sent by ``__call__``."""

    def __init__(
        self,
        status: int,
        detail: str,
        field: str | None = None,
        headers: _Headers = (),
        *,
        logged: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers
        self.logged = logged


class ControlAPI:
    """The control API for ``chaos``, answering under ``prefix``; an ASGI app.

    ``token`` is required: at least :data:`MIN_TOKEN_LENGTH` printable ASCII
    characters without spaces (``python -c "import secrets;
    print(secrets.token_urlsafe(32))"`` makes a good one). ``snapshot``, if
    given, is called for ``GET {prefix}/snapshot``. ``prefix`` may be ``""``
    when the app is mounted by a router that strips its own path.

    >>> ControlAPI(Chaos(enabled=True), token="")
    Traceback (most recent call last):
    ...
    ValueError: the control token must not be empty: the control API refuses to run without one
    """

    def __init__(
        self,
        chaos: Chaos,
        *,
        token: str,
        snapshot: _Snapshot | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_body_size: int = MAX_BODY_SIZE,
        enforcement: Enforcements | None = None,
    ) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError(
                "the control token must not be empty: the control API refuses to run without one"
            )
        if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
            raise ValueError(
                f"the control token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                'without spaces; make one with: python -c "import secrets; '
                'print(secrets.token_urlsafe(32))"'
            )
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ValueError(
                f"prefix must be '' or a path like '/_tailguard' without a trailing slash, "
                f"got {prefix!r}"
            )
        if (
            isinstance(max_body_size, bool)
            or not isinstance(max_body_size, int)
            or max_body_size < 1
        ):
            raise ValueError(f"max_body_size must be a positive int, got {max_body_size!r}")
        self.chaos = chaos
        self.prefix = prefix
        self.max_body_size = max_body_size
        self._token = token.encode("ascii")
        self._snapshot = snapshot
        self._enforcement = enforcement
        self._routes: dict[str, dict[str, _Endpoint]] = {
            "/status": {"GET": self._status},
            "/experiments": {"GET": self._list, "POST": self._start},
            "/validate": {"POST": self._validate},
            "/halt": {"POST": self._halt},
            "/snapshot": {"GET": self._read_snapshot},
            "/enforcement": {"GET": self._enforcement_modes, "POST": self._enforce},
            "/openapi.json": {"GET": self._openapi},
        }

    def __repr__(self) -> str:
        return f"ControlAPI(prefix={self.prefix!r})"  # never the token

    def handles(self, scope: Scope) -> bool:
        """Whether ``scope`` is an HTTP request under this API's prefix."""
        if scope["type"] != "http":
            return False
        path = route_path(scope)
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document this API serves at ``{prefix}/openapi.json``."""
        return openapi_document(self.prefix, version=__version__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # a websocket: refuse it (the server answers 403)
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        client = scope.get("client")
        actor = f"api:{client[0] if client else 'unknown'}"
        try:
            status, payload, headers = await self._dispatch(scope, receive, actor)
        except _Refusal as refusal:
            status, headers = refusal.status, refusal.headers
            payload = {"detail": refusal.detail, "field": refusal.field}
            if not refusal.logged:
                log_event(
                    "refused",
                    actor=actor,
                    reason=refusal.detail,
                    level=logging.WARNING if status == 401 else logging.INFO,
                    request=f"{scope['method']} {scope['path']}",
                    status=status,
                )
        await _send_json(send, status, payload, headers)

    async def _dispatch(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        if not self.handles(scope):
            raise _Refusal(404, "not found")
        self._authenticate(scope)
        endpoint = route_path(scope)[len(self.prefix) :]
        name = endpoint.removeprefix("/experiments/")
        if name and name != endpoint:
            if scope["method"] != "DELETE":
                raise _Refusal(405, "use DELETE", headers=((b"allow", b"DELETE"),))
            return await self._stop(name, actor)
        methods = self._routes.get(endpoint)
        if methods is None:
            raise _Refusal(404, f"no such endpoint: {endpoint or '/'}")
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(methods)
            raise _Refusal(405, f"use {allow}", headers=((b"allow", allow.encode()),))
        return await handler(scope, receive, actor)

    def _authenticate(self, scope: Scope) -> None:
        values = [v for k, v in scope["headers"] if k.lower() == b"authorization"]
        presented = b""
        if len(values) == 1:
            scheme, _, credentials = values[0].strip().partition(b" ")
            if scheme.lower() == b"bearer":
                presented = credentials.strip()
        if not presented:
            raise _Refusal(
                401,
                "send 'Authorization: Bearer <token>'",
                headers=((b"www-authenticate", b'Bearer realm="tailguard"'),),
            )
        if not hmac.compare_digest(presented, self._token):
            raise _Refusal(
                401,
                "the bearer token is not valid",
                headers=(
                    (b"www-authenticate", b'Bearer realm="tailguard", error="invalid_token"'),
                ),
            )

    async def _engine(self, action: Callable[[], _T]) -> _T:
        """Run an engine action: on a thread when it talks to the fleet's store (never the loop)."""
        if self.chaos.store is None:
            return action()
        try:
            return await asyncio.to_thread(action)
        except StoreUnavailable as error:
            raise _Refusal(503, f"the chaos store cannot be reached: {error}") from None

    async def _status(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        return 200, await self._engine(self.chaos.status), ()

    async def _list(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        return 200, {"experiments": [status.to_dict() for status in self.chaos.experiments()]}, ()

    async def _experiment(self, scope: Scope, receive: Receive) -> Experiment:
        """The experiment in the request's body, validated (400 or 422 naming the field)."""
        _require_json(scope)
        body = await _read_body(scope, receive, self.max_body_size)
        try:
            data = parse_json(body)
        except ExperimentError as error:
            raise _Refusal(400, error.message, error.field) from None
        try:
            return experiment_from_dict(data)
        except ExperimentError as error:
            raise _Refusal(422, error.message, error.field) from None

    async def _start(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        allow_unknown = _allow_unknown(scope)
        experiment = await self._experiment(scope, receive)
        name = experiment.name
        try:
            await self._engine(
                lambda: self.chaos.start(experiment, actor=actor, allow_unknown=allow_unknown)
            )
        except ChaosDisabled as refused:  # the engine has logged the refusal
            raise _Refusal(409, str(refused), logged=True) from None
        except TooManyExperiments as refused:  # the engine's cap, not the body: no field
            raise _Refusal(409, str(refused), logged=True) from None
        except UnknownTargets as refused:  # names the service lacks: the body's fault
            raise _Refusal(422, str(refused), refused.field, logged=True) from None
        except ValueError as refused:  # one of that name is running; logged too
            raise _Refusal(409, str(refused), "name", logged=True) from None
        running = next((s for s in self.chaos.experiments() if s.experiment.name == name), None)
        if running is None:  # its TTL has run out already
            now = time.time()
            answer = ExperimentStatus(experiment, now, now, 0, 0).to_dict()
        else:
            answer = running.to_dict()
        location = f"{self.prefix}/experiments/{quote(name, safe='')}".encode()
        return 201, answer, ((b"location", location),)

    async def _validate(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        """Check an experiment as ``POST experiments`` would, without starting it."""
        allow_unknown = _allow_unknown(scope)
        experiment = await self._experiment(scope, receive)
        unknown = self.chaos.unknown(experiment)
        running = any(s.experiment.name == experiment.name for s in self.chaos.experiments())
        enabled = self.chaos.enabled
        allowed = allow_unknown or experiment.allow_unknown
        answer = {
            "experiment": _experiment_dict(experiment),
            "unknown": unknown,
            "enabled": enabled,
            "running": running,
            "would_start": enabled and not running and (allowed or not unknown),
        }
        return 200, answer, ()

    async def _stop(self, name: str, actor: str) -> _Answer:
        if not await self._engine(lambda: self.chaos.stop(name, actor=actor)):
            raise _Refusal(404, f"no running experiment named {name!r}")
        return 200, {"stopped": name}, ()

    async def _halt(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        return 200, {"halted": await self._engine(lambda: self.chaos.halt(actor=actor))}, ()

    async def _read_snapshot(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        if self._snapshot is None:
            raise _Refusal(404, "no snapshot source is configured")
        try:
            return 200, dict(self._snapshot()), ()
        except Exception as exc:
            logger.exception("chaos control: the snapshot failed")
            raise _Refusal(500, f"the snapshot failed: {type(exc).__name__}") from None

    def _modes(self) -> Enforcements:
        if self._enforcement is None:
            raise _Refusal(404, "no enforcement modes are configured (mount through a guard)")
        return self._enforcement

    async def _enforcement_modes(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        return 200, self._modes().describe(), ()

    async def _enforce(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        """Switch enforcement modes (shadow, on, a fraction); logged and counted."""
        modes = self._modes()
        _require_json(scope)
        body = await _read_body(scope, receive, self.max_body_size)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Refusal(400, "the body is not JSON", "") from None
        if not isinstance(data, dict):
            raise _Refusal(422, "the body must be a JSON object", "")
        unknown = sorted(set(data) - {"mode", "route", "dependency", "by"})
        if unknown:
            raise _Refusal(422, f"unknown field {unknown[0]!r}", unknown[0])
        if "mode" not in data:
            raise _Refusal(422, "mode is required: 'on', 'shadow' or a fraction", "mode")
        mode = _mode(data["mode"])
        for field in ("route", "dependency", "by"):
            value = data.get(field)
            if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
                raise _Refusal(422, f"{field} must be a non-empty string", field)
        who = f"{data['by']} ({actor})" if data.get("by") else actor
        try:
            changed = modes.switch(
                mode, route=data.get("route"), dependency=data.get("dependency"), who=who
            )
        except UnknownTarget as missing:
            raise _Refusal(422, str(missing), missing.field) from None
        return 200, {"changed": changed, "modes": modes.describe()}, ()

    async def _openapi(self, scope: Scope, receive: Receive, actor: str) -> _Answer:
        return 200, self.openapi(), ()


class ControlMiddleware:
    """Serve ``control`` under its prefix and everything else with ``app``.

    Add it after :class:`~tailguard.TailguardMiddleware` (Starlette's last
    ``add_middleware`` is the outermost), so control requests skip deadlines,
    admission and inbound chaos.
    """

    def __init__(self, app: ASGIApp, *, control: ControlAPI) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.control.handles(scope):
            await self.control(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _allow_unknown(scope: Scope) -> bool:
    """The ``allow_unknown`` flag of the query string (``true``, ``1``, ``yes`` or no value)."""
    for pair in scope.get("query_string", b"").split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == b"allow_unknown":
            if value.lower() in (b"", b"1", b"true", b"yes"):
                return True
            if value.lower() in (b"0", b"false", b"no"):
                return False
            raise _Refusal(400, "allow_unknown must be true or false", "allow_unknown")
    return False


def _mode(value: object) -> Mode:
    try:
        if isinstance(value, str):
            return parse_mode("mode", value)
        return check_mode("mode", value)
    except ValueError as error:
        raise _Refusal(422, str(error), "mode") from None


def _experiment_dict(experiment: Experiment) -> dict[str, Any]:
    answer: dict[str, Any] = ExperimentStatus(experiment, 0.0, 0.0, 0, 0).to_dict()["experiment"]
    return answer


def _require_json(scope: Scope) -> None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-type":
            media, _, parameters = value.partition(b";")
            charset = parameters.strip().lower()
            if media.strip().lower() in _JSON_TYPES and charset in (b"", b"charset=utf-8"):
                return
            break
    raise _Refusal(415, "send the experiment as 'Content-Type: application/json'")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    too_large = _Refusal(413, f"the body must be at most {limit} bytes")
    for key, value in scope["headers"]:
        if key.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refusal(400, "the client went away before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _clean(value: Any) -> Any:
    """JSON-safe: string ``secret`` values redacted, non-finite numbers as null."""
    if isinstance(value, Mapping):
        return {
            str(k): "<redacted>" if k == "secret" and isinstance(v, str) else _clean(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


async def _send_json(send: Send, status: int, payload: Any, headers: _Headers = ()) -> None:
    body = json.dumps(_clean(payload), default=str, allow_nan=False).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:  # lifespan.shutdown, the only other message
            await send({"type": "lifespan.shutdown.complete"})
            return
