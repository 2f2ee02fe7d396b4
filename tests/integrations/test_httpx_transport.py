"""DeadlineTransport for httpx and httpx2: header, timeouts, fail-fast, conversion, lifecycle.

Timing rule: no test asserts how long anything took. Budgets are tiny (0.1 s)
against work that would take 30 s or forever, or generous (30 s) against work
that is instant, so a slow machine cannot flip a result.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import tailguard
from tailguard import DeadlineExceeded
from tailguard.dependency import Dependency
from tailguard.integrations import httpx as tg_httpx
from tailguard.integrations import httpx2 as tg_httpx2
from tailguard.server import serve_in_thread

T = TypeVar("T")
HEADER = "x-request-timeout-ms"
URL = "http://downstream.test/items"
BUDGET = 0.1
BODY_BUDGET = 0.5
"""The body-timeout tests' budget: it must outlast sending the request on a loaded machine
(the body then waits it out), or the transport refuses to send and there is no read to time
out (CI once saw the whole 0.1 s gone before the request)."""
"""A budget the work under test is sure to outlast (it hangs or waits the budget out)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Lib:
    """One httpx-compatible library and tailguard's transport for it."""

    mod: ModuleType
    DeadlineTransport: Any


LIBS = [
    pytest.param(Lib(httpx, tg_httpx.DeadlineTransport), id="httpx"),
    pytest.param(Lib(httpx2, tg_httpx2.DeadlineTransport), id="httpx2"),
]


@pytest.fixture(params=LIBS)
def lib(request: pytest.FixtureRequest) -> Lib:
    param: Lib = request.param
    return param


class Recorder:
    """A MockTransport handler that records requests and echoes the deadline header."""

    def __init__(self, lib: Lib, *, header: str = HEADER) -> None:
        self.lib = lib
        self.header = header
        self.requests: list[Any] = []

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        return self.lib.mod.Response(200, text=request.headers.get(self.header, "-"))

    def transport(self, **kwargs: Any) -> Any:
        return self.lib.DeadlineTransport(self.lib.mod.MockTransport(self), **kwargs)

    @property
    def timeouts(self) -> dict[str, float | None]:
        (request,) = self.requests
        timeouts: dict[str, float | None] = request.extensions["timeout"]
        return timeouts


def with_unarmed_deadline(seconds: float, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` under a deadline that only the transport enforces.

    Entered outside any event loop, ``tailguard.deadline`` arms no cancel timer;
    ``asyncio.run`` copies the context, so the coroutine sees the budget. This is
    how an async client behaves when nothing but the transport guards the call.
    Build clients before calling this: their setup must not eat the budget.
    """
    with tailguard.deadline(seconds):
        return asyncio.run(main)


def wait_out_budget() -> None:
    while tailguard.remaining() > 0:
        time.sleep(0.002)


async def await_out_budget() -> None:
    while tailguard.remaining() > 0:
        await asyncio.sleep(0.002)


# -- header and timeouts ------------------------------------------------------------


@pytest.mark.anyio
async def test_header_carries_remaining_budget_in_whole_ms(lib: Lib) -> None:
    recorder = Recorder(lib)
    async with lib.mod.AsyncClient(transport=recorder.transport()) as client:
        with tailguard.deadline(30):
            response = await client.get(URL)
    assert 0 < int(response.text) <= 30_000
    assert recorder.requests[0].headers[HEADER] == response.text


@pytest.mark.anyio
async def test_timeouts_clipped_to_budget_and_tighter_ones_kept(lib: Lib) -> None:
    recorder = Recorder(lib)
    timeout = lib.mod.Timeout(60.0, connect=0.01, pool=None)
    async with lib.mod.AsyncClient(transport=recorder.transport(), timeout=timeout) as client:
        with tailguard.deadline(30):
            await client.get(URL)
    timeouts = recorder.timeouts
    assert timeouts["connect"] == 0.01
    for key in ("read", "write", "pool"):
        value = timeouts[key]
        assert value is not None
        assert 0 < value <= 30


@pytest.mark.anyio
async def test_missing_timeouts_become_the_budget(lib: Lib) -> None:
    recorder = Recorder(lib)
    async with lib.mod.AsyncClient(transport=recorder.transport(), timeout=None) as client:
        with tailguard.deadline(30):
            await client.get(URL)
    assert all(v is not None and 0 < v <= 30 for v in recorder.timeouts.values())


@pytest.mark.anyio
async def test_request_without_timeout_extension_gets_one(lib: Lib) -> None:
    recorder = Recorder(lib)
    transport = recorder.transport()
    request = lib.mod.Request("GET", URL)
    assert "timeout" not in request.extensions
    with tailguard.deadline(30):
        await transport.handle_async_request(request)
    assert set(recorder.timeouts) == {"connect", "read", "write", "pool"}
    assert all(v is not None and 0 < v <= 30 for v in recorder.timeouts.values())


@pytest.mark.anyio
async def test_no_deadline_passes_through_unchanged(lib: Lib) -> None:
    recorder = Recorder(lib)
    timeout = lib.mod.Timeout(5.0, connect=1.0)
    async with lib.mod.AsyncClient(transport=recorder.transport(), timeout=timeout) as client:
        response = await client.get(URL)
    assert response.text == "-"
    assert HEADER not in recorder.requests[0].headers
    assert recorder.timeouts == timeout.as_dict()


@pytest.mark.anyio
async def test_infinite_deadline_is_no_deadline(lib: Lib) -> None:
    recorder = Recorder(lib)
    async with lib.mod.AsyncClient(transport=recorder.transport(), timeout=None) as client:
        with tailguard.deadline(math.inf):
            response = await client.get(URL)
    assert response.text == "-"
    assert all(v is None for v in recorder.timeouts.values())


@pytest.mark.parametrize(
    ("existing", "kept"),
    [
        ("5", True),
        ("1", True),
        ("999999999", False),
        ("0", False),
        ("soon", False),
        ("9" * 40, False),
    ],
)
def test_callers_own_budget_header_only_tightens(lib: Lib, existing: str, kept: bool) -> None:
    recorder = Recorder(lib)
    with lib.mod.Client(transport=recorder.transport()) as client, tailguard.deadline(30):
        response = client.get(URL, headers={HEADER: existing})
    if kept:
        assert response.text == existing
    else:
        assert 0 < int(response.text) <= 30_000


def test_custom_header_name(lib: Lib) -> None:
    recorder = Recorder(lib, header="x-budget-ms")
    with (
        lib.mod.Client(transport=recorder.transport(header="X-Budget-Ms")) as client,
        tailguard.deadline(30),
    ):
        response = client.get(URL)
    assert 0 < int(response.text) <= 30_000
    assert HEADER not in recorder.requests[0].headers


@pytest.mark.parametrize("bad", ["", "x budget", "x:ms", "x-ms\r\n"])
def test_invalid_header_name_rejected(lib: Lib, bad: str) -> None:
    with pytest.raises(ValueError, match="header must be a valid HTTP header name"):
        lib.DeadlineTransport(header=bad)


def test_non_string_header_rejected(lib: Lib) -> None:
    with pytest.raises(TypeError, match="header must be a str"):
        lib.DeadlineTransport(header=b"x-ms")


# -- fail fast ------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, 0.0005])
def test_fails_fast_without_touching_the_network_sync(lib: Lib, seconds: float) -> None:
    recorder = Recorder(lib)
    with lib.mod.Client(transport=recorder.transport()) as client:
        with pytest.raises(DeadlineExceeded) as info, tailguard.deadline(seconds) as d:
            client.get(URL)
    assert info.value.deadline is d
    assert info.value.__cause__ is None
    assert recorder.requests == []


def test_fails_fast_without_touching_the_network_async(lib: Lib) -> None:
    recorder = Recorder(lib)
    client = lib.mod.AsyncClient(transport=recorder.transport())

    async def main() -> None:
        async with client:
            await client.get(URL)

    with pytest.raises(DeadlineExceeded) as info:
        with_unarmed_deadline(0, main())
    assert info.value.__cause__ is None
    assert recorder.requests == []


@pytest.mark.anyio
async def test_fails_fast_under_an_armed_scope(lib: Lib) -> None:
    recorder = Recorder(lib)
    async with lib.mod.AsyncClient(transport=recorder.transport()) as client:
        with pytest.raises(DeadlineExceeded), tailguard.deadline(0):
            await client.get(URL)
    assert recorder.requests == []


# -- timeout conversion ---------------------------------------------------------------


def test_timeout_after_budget_spent_becomes_deadline_exceeded_sync(lib: Lib) -> None:
    raised: list[Exception] = []

    def handler(request: Any) -> Any:
        wait_out_budget()
        raised.append(lib.mod.ReadTimeout("slow", request=request))
        raise raised[0]

    transport = lib.DeadlineTransport(lib.mod.MockTransport(handler))
    with lib.mod.Client(transport=transport) as client:
        with pytest.raises(DeadlineExceeded) as info, tailguard.deadline(BUDGET) as d:
            client.get(URL)
    assert info.value.deadline is d
    assert info.value.__cause__ is raised[0]


def test_timeout_after_budget_spent_becomes_deadline_exceeded_async(lib: Lib) -> None:
    async def handler(request: Any) -> Any:
        await await_out_budget()
        raise lib.mod.ConnectTimeout("slow", request=request)

    client = lib.mod.AsyncClient(transport=lib.DeadlineTransport(lib.mod.MockTransport(handler)))

    async def main() -> None:
        async with client:
            await client.get(URL)

    with pytest.raises(DeadlineExceeded) as info:
        with_unarmed_deadline(BUDGET, main())
    assert isinstance(info.value.__cause__, lib.mod.ConnectTimeout)


@pytest.mark.anyio
async def test_own_shorter_timeout_stays_an_httpx_timeout(lib: Lib) -> None:
    def handler(request: Any) -> Any:
        raise lib.mod.ReadTimeout("the caller's own timeout", request=request)

    transport = lib.DeadlineTransport(lib.mod.MockTransport(handler))
    async with lib.mod.AsyncClient(transport=transport) as client:
        with tailguard.deadline(30), pytest.raises(lib.mod.ReadTimeout):
            await client.get(URL)


@pytest.mark.anyio
async def test_other_errors_pass_through(lib: Lib) -> None:
    def handler(request: Any) -> Any:
        raise lib.mod.ConnectError("refused", request=request)

    transport = lib.DeadlineTransport(lib.mod.MockTransport(handler))
    async with lib.mod.AsyncClient(transport=transport) as client:
        with tailguard.deadline(30), pytest.raises(lib.mod.ConnectError):
            await client.get(URL)


def slow_body_streams(lib: Lib) -> tuple[Any, Any]:
    """A sync and an async body: one chunk, then a read timeout once the budget is gone."""

    class SyncBody(lib.mod.SyncByteStream):  # type: ignore[name-defined,misc]
        closed = False

        def __iter__(self) -> Iterator[bytes]:
            yield b"first"
            wait_out_budget()
            raise lib.mod.ReadTimeout("body stalled")

        def close(self) -> None:
            SyncBody.closed = True

    class AsyncBody(lib.mod.AsyncByteStream):  # type: ignore[name-defined,misc]
        closed = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"first"
            await await_out_budget()
            raise lib.mod.ReadTimeout("body stalled")

        async def aclose(self) -> None:
            AsyncBody.closed = True

    return SyncBody, AsyncBody


def test_body_timeout_after_budget_spent_becomes_deadline_exceeded_sync(lib: Lib) -> None:
    body, _ = slow_body_streams(lib)
    transport = lib.DeadlineTransport(
        lib.mod.MockTransport(lambda request: lib.mod.Response(200, stream=body()))
    )
    with lib.mod.Client(transport=transport) as client:
        with pytest.raises(DeadlineExceeded) as info, tailguard.deadline(BODY_BUDGET):
            client.get(URL)
    assert isinstance(info.value.__cause__, lib.mod.ReadTimeout)


def test_body_timeout_after_budget_spent_becomes_deadline_exceeded_async(lib: Lib) -> None:
    _, body = slow_body_streams(lib)

    transport = lib.DeadlineTransport(
        lib.mod.MockTransport(lambda request: lib.mod.Response(200, stream=body()))
    )
    client = lib.mod.AsyncClient(transport=transport)

    async def main() -> None:
        async with client:
            await client.get(URL)

    with pytest.raises(DeadlineExceeded) as info:
        with_unarmed_deadline(BODY_BUDGET, main())
    assert isinstance(info.value.__cause__, lib.mod.ReadTimeout)


def test_wrapped_body_reads_and_closes_like_the_original(lib: Lib) -> None:
    sync_body, async_body = slow_body_streams(lib)

    class Complete(sync_body):  # type: ignore[misc,valid-type]
        def __iter__(self) -> Iterator[bytes]:
            yield b"whole"

    class AsyncComplete(async_body):  # type: ignore[misc,valid-type]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"whole"

    with tailguard.deadline(30):
        with lib.mod.Client(
            transport=lib.DeadlineTransport(
                lib.mod.MockTransport(lambda request: lib.mod.Response(200, stream=Complete()))
            )
        ) as client:
            assert client.get(URL).content == b"whole"

        async def main() -> bytes:
            transport = lib.DeadlineTransport(
                lib.mod.MockTransport(lambda request: lib.mod.Response(200, stream=AsyncComplete()))
            )
            async with lib.mod.AsyncClient(transport=transport) as client:
                response = await client.get(URL)
            content: bytes = response.content
            return content

        assert asyncio.run(main()) == b"whole"
    assert Complete.closed
    assert AsyncComplete.closed


@pytest.mark.anyio
async def test_body_of_the_other_kind_is_left_alone(lib: Lib) -> None:
    sync_only = lib.mod.Response(200, content=iter([b"x"])).stream
    async_only = lib.mod.Response(200, content=aiter_bytes()).stream
    assert not isinstance(sync_only, lib.mod.AsyncByteStream)
    assert not isinstance(async_only, lib.mod.SyncByteStream)

    def respond(stream: Any) -> Any:
        return lib.mod.MockTransport(lambda request: lib.mod.Response(200, stream=stream))

    with tailguard.deadline(30):
        request = lib.mod.Request("GET", URL)
        response = await lib.DeadlineTransport(respond(sync_only)).handle_async_request(request)
        assert response.stream is sync_only
        response = lib.DeadlineTransport(respond(async_only)).handle_request(request)
        assert response.stream is async_only


async def aiter_bytes() -> AsyncIterator[bytes]:
    yield b"x"


# -- sync clients and threads -----------------------------------------------------------


@pytest.mark.anyio
async def test_sync_client_in_asyncio_to_thread_sees_the_deadline(lib: Lib) -> None:
    recorder = Recorder(lib)
    with lib.mod.Client(transport=recorder.transport()) as client:
        with tailguard.deadline(30):
            response = await asyncio.to_thread(client.get, URL)
    assert 0 < int(response.text) <= 30_000


@pytest.mark.anyio
async def test_sync_client_in_anyio_worker_thread_sees_the_deadline(lib: Lib) -> None:
    recorder = Recorder(lib)
    with lib.mod.Client(transport=recorder.transport()) as client:
        with tailguard.deadline(30):
            response = await anyio.to_thread.run_sync(client.get, URL)
    assert 0 < int(response.text) <= 30_000


def test_thread_sees_the_deadline_only_with_a_copied_context(lib: Lib) -> None:
    recorder = Recorder(lib)
    seen: dict[str, str] = {}

    def fetch(name: str) -> None:
        seen[name] = client.get(URL).text

    with lib.mod.Client(transport=recorder.transport()) as client, tailguard.deadline(30):
        context = contextvars.copy_context()
        threads = [
            threading.Thread(target=context.run, args=(fetch, "copied")),
            threading.Thread(target=fetch, args=("plain",)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert 0 < int(seen["copied"]) <= 30_000
    assert seen["plain"] == "-"


# -- inner transports and lifecycle --------------------------------------------------------


def recording_mock(lib: Lib) -> Any:
    class Recording(lib.mod.MockTransport):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__(lambda request: lib.mod.Response(200))
            self.calls: list[str] = []

        def close(self) -> None:
            self.calls.append("close")

        async def aclose(self) -> None:
            self.calls.append("aclose")

        def __enter__(self) -> Any:
            self.calls.append("enter")
            return self

        async def __aenter__(self) -> Any:
            self.calls.append("aenter")
            return self

    return Recording()


def test_sync_lifecycle_delegates_to_inner(lib: Lib) -> None:
    inner = recording_mock(lib)
    with lib.mod.Client(transport=lib.DeadlineTransport(inner)) as client:
        client.get(URL)
    assert inner.calls == ["enter", "close"]


@pytest.mark.anyio
async def test_async_lifecycle_delegates_to_inner(lib: Lib) -> None:
    inner = recording_mock(lib)
    async with lib.mod.AsyncClient(transport=lib.DeadlineTransport(inner)) as client:
        await client.get(URL)
    assert inner.calls == ["aenter", "aclose"]


def test_direct_close_calls(lib: Lib) -> None:
    inner = recording_mock(lib)
    transport = lib.DeadlineTransport(inner)
    transport.close()
    asyncio.run(transport.aclose())
    assert inner.calls == ["close", "aclose"]


def test_default_inner_transports_are_the_librarys_own(lib: Lib) -> None:
    transport = lib.DeadlineTransport()
    assert isinstance(transport._async_inner, lib.mod.AsyncHTTPTransport)
    assert isinstance(transport._sync_inner, lib.mod.HTTPTransport)
    with transport:
        pass

    async def main() -> None:
        async with transport:
            pass

    asyncio.run(main())


def test_sync_only_inner_refuses_async_clients(lib: Lib) -> None:
    transport = lib.DeadlineTransport(lib.mod.HTTPTransport())

    async def main() -> None:
        async with lib.mod.AsyncClient(transport=transport) as client:
            await client.get(URL)

    with pytest.raises(TypeError, match="sync-only"):
        asyncio.run(main())
    asyncio.run(transport.aclose())  # no async side: nothing to close
    transport.close()


def test_async_only_inner_refuses_sync_clients(lib: Lib) -> None:
    transport = lib.DeadlineTransport(lib.mod.AsyncHTTPTransport())
    with pytest.raises(TypeError, match="async-only"):
        transport.handle_request(lib.mod.Request("GET", URL))
    transport.close()  # no sync side: nothing to close
    asyncio.run(transport.aclose())


def test_transport_from_the_other_library_rejected() -> None:
    # mypy rejects these too; the runtime check is for untyped callers.
    from_httpx2 = httpx2.MockTransport(lambda request: httpx2.Response(200))
    from_httpx = httpx.MockTransport(lambda request: httpx.Response(200))
    with pytest.raises(TypeError, match=r"inner must be a httpx\.AsyncBaseTransport"):
        tg_httpx.DeadlineTransport(from_httpx2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"inner must be a httpx2\.AsyncBaseTransport"):
        tg_httpx2.DeadlineTransport(from_httpx)  # type: ignore[arg-type]


def test_transports_are_the_libraries_own() -> None:
    assert issubclass(tg_httpx.DeadlineTransport, httpx.AsyncBaseTransport)
    assert issubclass(tg_httpx.DeadlineTransport, httpx.BaseTransport)
    assert issubclass(tg_httpx2.DeadlineTransport, httpx2.AsyncBaseTransport)
    assert issubclass(tg_httpx2.DeadlineTransport, httpx2.BaseTransport)
    assert not issubclass(tg_httpx2.DeadlineTransport, httpx.BaseTransport)


# -- missing library ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["httpx", "httpx2"])
def test_import_without_the_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    module = f"tailguard.integrations.{name}"
    monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=rf"pip install 'tailguard\[{name}\]'"):
        importlib.import_module(module)
    monkeypatch.undo()
    assert (
        sys.modules[module].DeadlineTransport
        is {"httpx": tg_httpx, "httpx2": tg_httpx2}[name].DeadlineTransport
    )


# -- against a real server --------------------------------------------------------------------


async def echo(request: Request) -> Response:
    return PlainTextResponse(request.headers.get(HEADER, "-"))


async def hang(request: Request) -> Response:
    # Never answers; returns once the client has gone, so the server can shut down.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    return Response(status_code=499)  # pragma: no cover - nobody is listening any more


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", echo), Route("/hang", hang)])
    with serve_in_thread(app, timeout_graceful_shutdown=5) as url:
        yield url


@pytest.mark.e2e
@pytest.mark.anyio
async def test_server_receives_the_budget(lib: Lib, server: str) -> None:
    async with lib.mod.AsyncClient(transport=lib.DeadlineTransport(), base_url=server) as client:
        with tailguard.deadline(30):
            inside = await client.get("/echo")
        outside = await client.get("/echo")
    assert 0 < int(inside.text) <= 30_000
    assert outside.text == "-"


@pytest.mark.e2e
@pytest.mark.anyio
async def test_hanging_server_under_a_scope_ends_with_deadline_exceeded(
    lib: Lib, server: str
) -> None:
    async with lib.mod.AsyncClient(transport=lib.DeadlineTransport(), base_url=server) as client:
        with pytest.raises(DeadlineExceeded), tailguard.deadline(BUDGET):
            await client.get("/hang")


@pytest.mark.e2e
def test_hanging_server_async_client_timeout_converted(lib: Lib, server: str) -> None:
    client = lib.mod.AsyncClient(transport=lib.DeadlineTransport(), base_url=server)

    async def main() -> None:
        async with client:
            await client.get("/hang")

    with pytest.raises(DeadlineExceeded) as info:
        with_unarmed_deadline(BODY_BUDGET, main())
    assert isinstance(info.value.__cause__, lib.mod.ReadTimeout)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_hanging_server_sync_client_in_worker_thread_is_bounded(
    lib: Lib, server: str
) -> None:
    in_thread: list[BaseException] = []
    done = threading.Event()

    def fetch() -> None:
        try:
            client.get("/hang")
        except BaseException as exc:
            in_thread.append(exc)
        finally:
            done.set()

    with lib.mod.Client(transport=lib.DeadlineTransport(), base_url=server) as client:
        # The scope cancels the awaiting task, but not the thread: only the
        # transport's clipped timeouts end the thread's request.
        with pytest.raises(DeadlineExceeded), tailguard.deadline(BUDGET):
            await anyio.to_thread.run_sync(fetch)
        assert await anyio.to_thread.run_sync(done.wait, 30)
    (exc,) = in_thread
    assert isinstance(exc, DeadlineExceeded)
    assert isinstance(exc.__cause__, lib.mod.ReadTimeout)


@pytest.mark.e2e
def test_hanging_server_sync_client_timeout_converted(lib: Lib, server: str) -> None:
    with lib.mod.Client(transport=lib.DeadlineTransport(), base_url=server) as client:
        with pytest.raises(DeadlineExceeded) as info, tailguard.deadline(BUDGET) as d:
            client.get("/hang")
    assert info.value.deadline is d
    assert isinstance(info.value.__cause__, lib.mod.ReadTimeout)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_own_short_timeout_against_a_hanging_server_stays_httpx(
    lib: Lib, server: str
) -> None:
    async with lib.mod.AsyncClient(
        transport=lib.DeadlineTransport(), base_url=server, timeout=0.05
    ) as client:
        with tailguard.deadline(30), pytest.raises(lib.mod.ReadTimeout):
            await client.get("/hang")


# -- propagate_to: the budget header only for listed hosts -------------------------------


def _echo_budget(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text=request.headers.get("x-request-timeout-ms", "-"))


@pytest.mark.anyio
async def test_the_budget_header_goes_only_to_listed_hosts() -> None:
    transport = tg_httpx.DeadlineTransport(
        httpx.MockTransport(_echo_budget), propagate_to=["inventory", "*.svc.cluster.local"]
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with tailguard.deadline(30):
            inside = await client.get("http://inventory/")
            nested = await client.get("http://db.ns.svc.cluster.local/")
            third = await client.get("https://api.openai.com/v1/models", timeout=None)
    assert inside.text != "-"
    assert nested.text != "-"
    assert third.text == "-"
    # The deadline is still enforced on the unlisted host: its timeouts were clipped.
    assert third.request.extensions["timeout"]["read"] <= 30


@pytest.mark.anyio
async def test_a_dependency_transport_takes_the_allow_list() -> None:
    api = Dependency("api", max_concurrency=1, registry=None)
    transport = api.transport(httpx.MockTransport(_echo_budget), propagate_to=[])
    async with httpx.AsyncClient(transport=transport) as client:
        with tailguard.deadline(30):
            assert (await client.get("http://api/")).text == "-"


@pytest.mark.parametrize(
    ("hosts", "error"),
    [("inventory", TypeError), ([""], ValueError), (["a*b"], ValueError), ([3], ValueError)],
)
def test_a_bad_allow_list_names_the_field(hosts: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="propagate_to"):
        tg_httpx.DeadlineTransport(propagate_to=hosts)  # type: ignore[arg-type]
