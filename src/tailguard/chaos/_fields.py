"""Checks for the plain values an experiment document is made of, with field-named errors.

Every check takes the value and its dotted path (``faults[0].rate``) and either
returns the value in its Python form or raises :class:`ExperimentError` naming
that path. The limits live here so the JSON Schema and the docs can quote them.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Collection, Mapping
from typing import Any

from tailguard.chaos.experiment import MAX_TTL
from tailguard.chaos.experiment import MIN_SECRET as MIN_SECRET_LENGTH

__all__ = [
    "MAX_BODY_TEXT",
    "MAX_FAULTS",
    "MAX_HEADERS",
    "MAX_NAME_LENGTH",
    "MAX_SAMPLES",
    "MAX_SCOPES",
    "MAX_TEXT",
    "MAX_TTL",
    "MIN_SECRET_LENGTH",
    "NAME_PATTERN",
    "TOKEN_PATTERN",
    "ExperimentError",
]

MAX_NAME_LENGTH = 64
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""Names go into URLs, metric labels and log lines, so they are kept plain."""
MAX_TEXT = 256
"""Longest target, route, tenant or header name."""
MAX_FAULTS = 32
MAX_SCOPES = 64
"""Most entries in ``routes`` or ``tenants``."""
MAX_SAMPLES = 10_000
"""Most samples an empirical delay may carry."""
MAX_HEADERS = 32
MAX_BODY_TEXT = 16 * 1024
TOKEN_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
"""An HTTP header name (RFC 9110 ``token``)."""

_NAME = re.compile(NAME_PATTERN)
_TOKEN = re.compile(TOKEN_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
_SECRET = re.compile(r"^[\x21-\x7e]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExperimentError(ValueError):
    """An experiment document is invalid; ``field`` is the dotted path of the culprit.

    ``field`` is ``""`` when the document as a whole is wrong (not an object,
    not valid JSON). ``message`` is the reason without the path.

    >>> error = ExperimentError("faults[0].rate", "must be between 0 and 1, got 2")
    >>> error.field, str(error)
    ('faults[0].rate', 'faults[0].rate: must be between 0 and 1, got 2')
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


ExperimentError.__module__ = "tailguard.chaos"  # where users import it from, as for the rest


def join(parent: str, key: str) -> str:
    """The path of ``key`` inside ``parent`` (``""`` is the document itself)."""
    return f"{parent}.{key}" if parent else key


def kind_of(value: object) -> str:
    """What ``value`` is, in JSON's words where it has one."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def fields(
    value: object, path: str, *, required: Collection[str] = (), optional: Collection[str] = ()
) -> Mapping[str, object]:
    """``value`` as an object with exactly the ``required`` keys and some ``optional`` ones."""
    if not isinstance(value, Mapping):
        raise ExperimentError(path, f"must be an object, got {kind_of(value)}")
    allowed = [*required, *optional]
    for key in value:
        if not isinstance(key, str):
            raise ExperimentError(path, f"keys must be strings, got {key!r}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            expected = ", ".join(allowed)
            raise ExperimentError(join(path, key), f"unknown field; {hint}expected: {expected}")
    for key in required:
        if key not in value:
            raise ExperimentError(join(path, key), "is required")
    return value


def number(
    value: object,
    path: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    unit: str = "",
) -> float:
    """A finite number (booleans are not numbers) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExperimentError(path, f"must be a number, got {kind_of(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise ExperimentError(path, "must be a finite number, got a huge integer") from None
    if not math.isfinite(result):
        raise ExperimentError(path, f"must be a finite number, got {result}")
    if minimum is not None and maximum is not None and not minimum <= result <= maximum:
        raise ExperimentError(path, f"must be between {minimum:g} and {maximum:g}, got {value}")
    if minimum is not None and result < minimum:
        raise ExperimentError(path, f"must be at least {minimum:g}{unit}, got {value}")
    if above is not None and result <= above:
        raise ExperimentError(path, f"must be greater than {above:g}{unit}, got {value}")
    if maximum is not None and result > maximum:
        raise ExperimentError(path, f"must be at most {maximum:g}{unit}, got {value}")
    if below is not None and result >= below:
        raise ExperimentError(path, f"must be less than {below:g}{unit}, got {value}")
    return result


def integer(value: object, path: str, *, minimum: int, maximum: int) -> int:
    """A whole number in ``[minimum, maximum]`` (``503``, not ``503.0`` or ``true``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExperimentError(path, f"must be an integer, got {kind_of(value)}")
    if not minimum <= value <= maximum:
        shown = value if abs(value) < 10**12 else "a huge integer"
        raise ExperimentError(path, f"must be between {minimum} and {maximum}, got {shown}")
    return value


def text(
    value: object,
    path: str,
    *,
    max_length: int = MAX_TEXT,
    empty: bool = False,
    control: bool = False,
) -> str:
    """A string of at most ``max_length`` characters; no control characters unless allowed."""
    if not isinstance(value, str):
        raise ExperimentError(path, f"must be a string, got {kind_of(value)}")
    if not value and not empty:
        raise ExperimentError(path, "must not be empty")
    if len(value) > max_length:
        raise ExperimentError(path, f"must be at most {max_length} characters, got {len(value)}")
    if not control and _CONTROL.search(value):
        raise ExperimentError(path, "must not contain control characters")
    return value


def texts(value: object, path: str, *, max_items: int = MAX_SCOPES) -> tuple[str, ...]:
    """An array of at most ``max_items`` non-empty strings."""
    if not isinstance(value, list | tuple):
        raise ExperimentError(path, f"must be an array of strings, got {kind_of(value)}")
    if len(value) > max_items:
        raise ExperimentError(path, f"must have at most {max_items} entries, got {len(value)}")
    return tuple(text(item, f"{path}[{index}]") for index, item in enumerate(value))


def name(value: object, path: str) -> str:
    """An experiment name: letters, digits, ``.``, ``_``, ``-``; first a letter or digit."""
    result = text(value, path, max_length=MAX_NAME_LENGTH)
    if not _NAME.fullmatch(result):
        raise ExperimentError(
            path,
            f"must start with a letter or digit and hold only letters, digits, '.', '_' "
            f"and '-', got {result!r}",
        )
    return result


def header_name(value: object, path: str) -> str:
    """An HTTP header name (RFC 9110 token characters only)."""
    result = text(value, path)
    if not _TOKEN.fullmatch(result):
        raise ExperimentError(path, f"is not a valid HTTP header name: {result!r}")
    return result


def header_value(value: object, path: str) -> str:
    """An HTTP header value: Latin-1 without control characters (so no CR/LF injection)."""
    result = text(value, path, max_length=4096, empty=True, control=True)
    if not _HEADER_VALUE.fullmatch(result):
        raise ExperimentError(
            path, "must be Latin-1 text without line breaks or control characters"
        )
    return result


def secret(value: object, path: str) -> str:
    """A header secret: at least ``MIN_SECRET_LENGTH`` printable ASCII characters, no spaces."""
    result = text(value, path)
    if len(result) < MIN_SECRET_LENGTH:
        raise ExperimentError(
            path, f"must be at least {MIN_SECRET_LENGTH} characters, got {len(result)}"
        )
    if not _SECRET.fullmatch(result):
        raise ExperimentError(path, "must be printable ASCII without spaces")
    return result


def exception_class(value: object, path: str) -> type[Exception]:
    """The exception class a dotted path names, in a module this process already imported.

    Nothing is imported on the way: an experiment names the exception a
    dependency already raises, so its module is loaded; refusing to import
    keeps a document from running any module's import-time code. Only
    subclasses of :class:`Exception` qualify: ``SystemExit``,
    ``KeyboardInterrupt``, ``GeneratorExit`` and ``CancelledError`` would stop
    a worker or break cancellation (inject :class:`Hang` to wait for the
    deadline instead).
    """
    dotted = text(value, path)
    parts = dotted.split(".")
    if len(parts) < 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ExperimentError(
            path,
            f"must be a dotted path like 'builtins.ConnectionResetError', got {dotted!r}",
        )
    if any(part.startswith("__") for part in parts):
        raise ExperimentError(path, f"must not name dunder attributes, got {dotted!r}")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is not None:
            break
    else:
        raise ExperimentError(
            path,
            f"module {parts[0]!r} is not imported in this process; "
            "name an exception from a module the service has already imported",
        )
    found: object = module
    for attribute in parts[split:]:
        try:
            found = getattr(found, attribute)
        except AttributeError:
            raise ExperimentError(path, f"{dotted!r} does not exist") from None
    if not isinstance(found, type):
        raise ExperimentError(path, f"{dotted!r} is not a class, got {kind_of(found)}")
    if not issubclass(found, Exception):
        raise ExperimentError(path, f"{dotted!r} is not a subclass of Exception")
    return found


def dotted_path(exc: type[BaseException]) -> str | None:
    """The path :func:`exception_class` resolves back to ``exc``, or ``None`` if there is none."""
    path = f"{exc.__module__}.{exc.__qualname__}"
    try:
        return path if exception_class(path, "") is exc else None
    except ExperimentError:
        return None


def _no_constants(constant: str) -> float:
    raise ValueError(f"{constant} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(document: str | bytes) -> object:
    """Parse strict JSON: no ``NaN``/``Infinity``, no duplicate keys, no runaway nesting."""
    try:
        return json.loads(document, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ExperimentError("", "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, the hooks, too many digits
        raise ExperimentError("", f"not valid JSON: {exc}") from None
