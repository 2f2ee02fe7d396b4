from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # tailguard is asyncio-only: it cancels through asyncio tasks and task factories.
    return "asyncio"
