"""What a fault or an experiment applies to: dependency name globs and route keys.

A *route key* is written as in :class:`~tailguard.Tailguard`'s ``routes``: a
route template (``/items/{item_id}``), optionally prefixed by a method
(``GET /items/{item_id}``), optionally ending in ``*`` to cover every
template with that prefix (``GET /items/*``). Anything else is a dependency
name, where ``*``, ``?`` and ``[...]`` are shell-style wildcards
(:func:`fnmatch.fnmatchcase`, case-sensitive).

>>> key = RouteKey.parse("GET /items/*")
>>> key.matches("GET", "/items/{item_id}"), key.matches("POST", "/items/{item_id}")
(True, False)
>>> dependency_matches("payments*", "payments-eu")
True
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Final, NamedTuple

__all__ = ["RouteKey", "check_dependency_glob", "dependency_matches", "is_route_key"]

_ROUTE_KEY: Final = re.compile(r"^(?:(?P<method>[A-Z]+) +)?(?P<path>/[^\s*]*)(?P<star>\*)?$")
_LOOKS_LIKE_ROUTE: Final = re.compile(r"^(?:[A-Z]+ +)?/")
_DEPENDENCY_GLOB: Final = re.compile(r"^\S+$")


def is_route_key(target: str) -> bool:
    """Whether ``target`` names routes (``/...`` or ``METHOD /...``) rather than dependencies."""
    return _LOOKS_LIKE_ROUTE.match(target) is not None


def check_dependency_glob(target: str) -> None:
    """``ValueError`` unless ``target`` is a plausible dependency name or glob."""
    if not _DEPENDENCY_GLOB.match(target):
        raise ValueError(
            f"target must be a dependency name or glob without spaces (payments*) "
            f"or a route key (GET /items/*), got {target!r}"
        )


def dependency_matches(pattern: str, name: str) -> bool:
    """Whether the dependency ``name`` matches the glob ``pattern``."""
    return fnmatchcase(name, pattern)


class RouteKey(NamedTuple):
    """A parsed route key; see the module docstring for the syntax."""

    method: str | None
    path: str
    prefix: bool

    @classmethod
    def parse(cls, text: str) -> RouteKey:
        """Parse ``text``, or raise ``ValueError`` saying what a route key looks like."""
        found = _ROUTE_KEY.match(text) if isinstance(text, str) else None
        if found is None:
            raise ValueError(
                "a route key is a route template, optionally with a method and a trailing *"
                f" (GET /items/{{item_id}}, /admin/*), got {text!r}"
            )
        return cls(found["method"], found["path"], found["star"] is not None)

    def matches(self, method: str, template: str) -> bool:
        """Whether a request with ``method`` that matched route ``template`` is covered."""
        if self.method is not None and self.method != method:
            return False
        if self.prefix:
            return template.startswith(self.path)
        return template == self.path
