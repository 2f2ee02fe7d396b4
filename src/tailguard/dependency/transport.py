"""The httpx/httpx2 transport of a :class:`~tailguard.Dependency`: a slot per request.

:meth:`Dependency.transport() <tailguard.Dependency.transport>` builds it. Each
request takes a slot of the dependency's bulkhead, meets chaos (which may
delay it, fail it with the library's own errors or answer it with a
synthesized response, all inside the slot), then goes through the
:class:`DeadlineTransport` to the real transport. The slot is held until the
response is closed.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import AsyncIterator, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from tailguard.admission import Permit
    from tailguard.dependency.seam import Seam
    from tailguard.integrations._transport import Library

__all__ = ["bulkhead_transport"]


def bulkhead_transport(
    name: str, seam: Seam, inner: Any, header: str, propagate_to: Iterable[str] | None = None
) -> Any:
    """Dependency ``name``'s transport over ``inner`` (httpx's or httpx2's; ``None``: default)."""
    integration = _integration_for(inner)
    deadline = integration.DeadlineTransport(inner, header=header, propagate_to=propagate_to)
    return _transport_class(integration)(name, seam, deadline)


class _BulkheadTransport:
    """Takes a slot of the dependency per request and holds it until the response closes."""

    _stream: ClassVar[type[_SlotStream]]
    _async_stream: ClassVar[type[Any]]
    _library: ClassVar[Library]

    def __init__(self, name: str, seam: Seam, inner: Any) -> None:
        self.name = name
        self._seam = seam
        self._inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        seam = self._seam
        permit = await seam.acquire(request)
        injection = seam.plan(permit, respond=True)
        try:
            if injection is not None:
                synthesized = await injection.apply_http(request, self._library)
                if synthesized is not None:
                    seam.release(permit, None, synthesized.status_code)
                    return synthesized
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            seam.release(permit, exc)
            raise
        # A body read already (a mock's), or one an async client cannot read (it
        # will say so), is done with the dependency: only open streams hold the slot.
        status: int = response.status_code
        if response.is_closed or not isinstance(response.stream, self._async_stream):
            seam.release(permit, None, status)
        else:
            response.stream = self._stream(response.stream, seam, permit, status)
        return response

    def handle_request(self, *request: Any) -> Any:
        raise TypeError(
            f"the transport of dependency {self.name!r} is async-only: use an "
            "AsyncClient, or a sync client inside dependency.run_sync()"
        )

    __enter__ = handle_request  # a sync client opens its transport first

    async def aclose(self) -> None:
        await self._inner.aclose()


class _SlotStream:
    """A response body that gives the slot back when it is closed, or fails."""

    def __init__(self, stream: Any, seam: Seam, permit: Permit, status: int) -> None:
        self._stream = stream
        self._seam = seam
        self._permit: Permit | None = permit
        self._status = status

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except GeneratorExit:  # the reader stopped early; closing the response releases
            raise
        except BaseException as exc:
            self._release(exc)
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release(None)

    def _release(self, error: BaseException | None) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            self._seam.release(permit, error, self._status)


def _integration_for(inner: object) -> ModuleType:
    """``tailguard.integrations.httpx`` or ``.httpx2``, whichever ``inner`` belongs to."""
    if inner is None:
        try:
            return importlib.import_module("tailguard.integrations.httpx")
        except ImportError:
            return importlib.import_module("tailguard.integrations.httpx2")
    for library in ("httpx", "httpx2"):
        module = sys.modules.get(library)
        if module is not None and isinstance(inner, module.AsyncBaseTransport):
            return importlib.import_module(f"tailguard.integrations.{library}")
    raise TypeError(
        "inner must be an httpx or httpx2 AsyncBaseTransport (or None),"
        f" not {type(inner).__module__}.{type(inner).__qualname__}"
    )


@functools.cache
def _transport_class(integration: ModuleType) -> type[_BulkheadTransport]:
    # Subclass the library's own base classes: clients and Response.aread() check them.
    library = integration.DeadlineTransport._library
    stream = type("DependencyStream", (_SlotStream, library.async_stream), {"__module__": __name__})
    attrs = {
        "__module__": __name__,
        "_stream": stream,
        "_async_stream": library.async_stream,
        "_library": library,
    }
    return type("DependencyTransport", (_BulkheadTransport, library.async_transport), attrs)
