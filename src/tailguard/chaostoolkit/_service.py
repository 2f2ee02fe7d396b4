"""Where the service is, and how to talk to it: the experiment's configuration and secrets.

The keys the activities read from the experiment's ``configuration`` and
``secrets`` are listed in ``tailguard.chaostoolkit``'s docstring. Every
failure is raised as Chaos Toolkit's ``ActivityFailed``, with a message that
says what was wrong and which key to check.

>>> service_url({"tailguard_url": "http://10.0.0.5:8000/"})
'http://10.0.0.5:8000'
>>> timeout({"tailguard_timeout": 2})
2.0
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from tailguard.chaos._client import ControlClient, ControlError
from tailguard.chaostoolkit import INSTALL_HINT

try:
    from chaoslib.exceptions import ActivityFailed
except ImportError as exc:  # pragma: no cover - run in a subprocess without the extra
    raise ImportError(INSTALL_HINT) from exc

__all__ = [
    "DEFAULT_URL",
    "METRICS_KEY",
    "PREFIX_KEY",
    "TIMEOUT_KEY",
    "TOKEN_ENV",
    "TOKEN_KEY",
    "URL_ENV",
    "URL_KEY",
    "ActivityFailed",
    "Settings",
    "control",
    "fetch_metrics",
    "service_url",
    "timeout",
]

URL_KEY = "tailguard_url"
PREFIX_KEY = "tailguard_prefix"
METRICS_KEY = "tailguard_metrics_path"
TIMEOUT_KEY = "tailguard_timeout"
TOKEN_KEY = "tailguard_token"
URL_ENV = "TAILGUARD_URL"
TOKEN_ENV = "TAILGUARD_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 10.0

Settings = Mapping[str, Any] | None
"""What Chaos Toolkit passes as ``configuration`` or ``secrets`` (``None`` when there are none)."""

_T = TypeVar("_T")


def _text(settings: Settings, key: str, where: str) -> str | None:
    value = (settings or {}).get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ActivityFailed(f"{where} {key} must be a non-empty string, got {value!r}")
    return value


def service_url(configuration: Settings) -> str:
    """The service's base URL: ``tailguard_url``, else ``$TAILGUARD_URL``, else the default."""
    url = _text(configuration, URL_KEY, "configuration") or os.environ.get(URL_ENV) or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise ActivityFailed(
            f"configuration {URL_KEY} must be an http:// or https:// URL, got {url!r}"
        )
    return url.rstrip("/")


def _path(configuration: Settings, key: str, default: str) -> str:
    path = _text(configuration, key, "configuration")
    if path is None:
        return default
    if not path.startswith("/") or path.endswith("/"):
        raise ActivityFailed(
            f"configuration {key} must start with '/' and not end with one, got {path!r}"
        )
    return path


def timeout(configuration: Settings) -> float:
    """Seconds each HTTP request may take: ``tailguard_timeout`` (default 10)."""
    value = (configuration or {}).get(TIMEOUT_KEY, DEFAULT_TIMEOUT)
    if isinstance(value, str):  # a configuration value from the environment is a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ActivityFailed(
            f"configuration {TIMEOUT_KEY} must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def _token(secrets: Settings) -> str:
    token = _text(secrets, TOKEN_KEY, "secret") or os.environ.get(TOKEN_ENV)
    if not token:
        raise ActivityFailed(
            f"no control token: put {TOKEN_KEY} in a secret scope of the experiment and name "
            f'that scope in the activity\'s provider ("secrets": ["tailguard"]), '
            f"or set {TOKEN_ENV}"
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ActivityFailed(f"secret {TOKEN_KEY} must be printable ASCII without spaces")
    return token


def control(
    configuration: Settings, secrets: Settings, what: str, call: Callable[[ControlClient], _T]
) -> _T:
    """Run ``call`` with a client of the service's control API; ``what`` names it in errors."""
    url = service_url(configuration)
    prefix = _path(configuration, PREFIX_KEY, "/_tailguard")
    token = _token(secrets)
    try:
        with ControlClient(url, token, prefix=prefix, timeout=timeout(configuration)) as client:
            return call(client)
    except ControlError as exc:
        if exc.status is None:
            hint = f"is configuration {URL_KEY} right? it is {url}"
        elif exc.status == 401:
            hint = f"the control API refused the token: check the secret {TOKEN_KEY} or {TOKEN_ENV}"
        elif exc.detail.startswith("unexpected answer"):
            hint = (
                f"no tailguard control API there: is {URL_KEY} right, {PREFIX_KEY} "
                f"({prefix}) the service's control_path, and the service installed with "
                "control_token=?"
            )
        else:
            hint = ""
        raise ActivityFailed(f"{what}: {exc}" + (f" ({hint})" if hint else "")) from None


def fetch_metrics(configuration: Settings) -> tuple[str, str]:
    """The text of the service's ``/metrics`` and the URL it came from."""
    url = service_url(configuration) + _path(configuration, METRICS_KEY, "/metrics")
    try:
        response = httpx.get(url, headers={"accept": "text/plain"}, timeout=timeout(configuration))
    except httpx.HTTPError as exc:
        raise ActivityFailed(
            f"cannot reach {url}: {exc or type(exc).__name__} (is configuration {URL_KEY} right?)"
        ) from None
    if response.status_code != 200:
        raise ActivityFailed(
            f"{url} answered {response.status_code}, not tailguard's metrics "
            f"(check configuration {URL_KEY} and {METRICS_KEY})"
        )
    return response.text, url
