"""Reading an ASGI scope the same way everywhere: its routed path and its headers.

>>> scope = {"path": "/api/items/1", "root_path": "/api", "headers": [(b"x-tenant", b"acme")]}
>>> route_path(scope), header(scope, b"x-tenant"), header(scope, b"x-other")
('/items/1', 'acme', None)
"""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["header", "route_path"]


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` less ``root_path`` (as Starlette does).

    >>> route_path({"path": "/apix", "root_path": "/api"})  # not under the prefix
    '/apix'
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lowercase bytes, as ASGI sends names), or ``None``."""
    for key, value in scope["headers"]:
        if key == name:
            found: str = value.decode("latin-1")
            return found
    return None
