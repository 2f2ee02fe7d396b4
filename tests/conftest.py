"""What every test shares: the asyncio backend, and tailguard's process-wide state reset.

tailguard keeps almost nothing per process: metrics belong to each guard's
registry (tests make a fresh ``CollectorRegistry``). What is left, the tracer
provider tailguard's own spans use, is put back after every test here, so no
test has to undo it by hand.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tailguard.telemetry.tracing import use_tracer_provider


@pytest.fixture
def anyio_backend() -> str:
    # tailguard is asyncio-only: it cancels through asyncio tasks and task factories.
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_process_state() -> Iterator[None]:
    yield
    use_tracer_provider(None)
