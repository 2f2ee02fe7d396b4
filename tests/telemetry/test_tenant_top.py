"""Per-tenant series name the heaviest tenants without ``tenant_weights``, and stay bounded."""

from __future__ import annotations

import random

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tailguard import Tailguard
from tailguard.telemetry.catalog import Catalog, TenantLabels

pytestmark = pytest.mark.anyio


async def hello(request: Request) -> Response:
    return PlainTextResponse("hi")


def tenants(registry: CollectorRegistry) -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "tailguard_tenant_requests_total":
                tenant = sample.labels["tenant"]
                found[tenant] = found.get(tenant, 0.0) + sample.value
    return found


async def test_the_heaviest_tenant_is_named_and_rotating_ids_are_not() -> None:
    registry = CollectorRegistry()
    guard = Tailguard(tenant_header="x-tenant-id", registry=registry)
    app = guard.install(Starlette(routes=[Route("/", hello)]), tracing=False)
    rng = random.Random(13)
    plan = ["acme"] * 60 + [f"rotating-{rng.getrandbits(64):x}" for _ in range(240)]
    plan += ["quiet"] * 3
    rng.shuffle(plan)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        for tenant in plan:
            await http.get("/", headers={"x-tenant-id": tenant})
        await http.get("/")  # no tenant
    seen = tenants(registry)
    assert set(seen) == {"acme", "other", "none"}
    # acme is named from its 20th request on (then its count is certain).
    assert seen["acme"] == 60 - 19
    assert seen["other"] == 240 + 3 + 19
    assert guard.tenant_labels.heaviest == ["acme"]


def test_a_heavier_newcomer_takes_the_lightest_place_and_its_series_goes() -> None:
    registry = CollectorRegistry()
    catalog = Catalog(registry)
    labels = TenantLabels({}, top=1, min_requests=2, catalog=catalog)

    def request(tenant: str) -> str:
        label = labels(tenant)
        catalog.tenant_requests.labels(label, "ok").inc()
        return label

    assert [request("a") for _ in range(3)] == ["other", "a", "a"]
    assert [request("b") for _ in range(4)] == ["other", "other", "other", "b"]
    assert labels.heaviest == ["b"]
    assert set(tenants(registry)) == {"other", "b"}  # a's series was removed


def test_without_a_catalog_a_place_still_changes_hands() -> None:
    labels = TenantLabels({}, top=1, min_requests=1)
    assert labels("a") == "a"
    assert [labels("b") for _ in range(2)] == ["other", "b"]
    assert labels.heaviest == ["b"]


def test_weighted_tenants_keep_their_labels_and_odd_names_are_never_labels() -> None:
    labels = TenantLabels({"gold": 2.0}, top=2, min_requests=1)
    assert labels("gold") == "gold"
    long_name = "x" * 65
    assert [labels(long_name) for _ in range(3)] == ["other"] * 3
    assert [labels("none") for _ in range(3)] == ["other"] * 3
    assert labels("ok-tenant") == "ok-tenant"
    assert TenantLabels({}, top=0)("anyone") == "other"


@pytest.mark.parametrize("field", ["cap", "top", "min_requests"])
def test_bad_sizes_name_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TenantLabels({}, **{field: -1})  # type: ignore[arg-type]


def test_multiprocess_mode_keeps_the_first_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    labels = TenantLabels({}, top=1, min_requests=1, catalog=None)
    assert labels("a") == "a"
    assert [labels("b") for _ in range(5)] == ["other"] * 5  # series cannot be removed there
