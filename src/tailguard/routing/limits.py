"""Admission at the door: limiters built from policies, and how tenants are found."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping

from starlette.types import Scope

from tailguard._scope import header as header_value
from tailguard.admission import Limiter, UnlistedTenants
from tailguard.policy import RoutePolicy
from tailguard.routing.matching import limiter_name

__all__ = ["build_limiters", "tenant_resolver"]

TenantOf = Callable[[Scope], "str | None"]


def build_limiters(
    policies: Iterable[tuple[str | None, RoutePolicy]],
    tenant_weights: Mapping[str, float] | None = None,
    *,
    unlisted_tenants: UnlistedTenants = "shared",
    tenants: bool = False,
) -> dict[str, Limiter]:
    """One :class:`Limiter` per limiter name the policies use.

    A name is defined by the policy (or policies, if they agree) that sets
    ``max_concurrency``; other keys may share it by naming it with
    ``limiter=`` and leaving the limits unset. Tenants missing from
    ``tenant_weights`` count as one (``unlisted_tenants="shared"``) or each
    apart (``"separate"``). With ``tenants`` (requests carry a tenant), a
    ``tenant_concurrency`` that could only cap every tenant together (shared,
    and nobody listed) is refused.

    >>> limiters = build_limiters([(None, RoutePolicy(max_concurrency=4))], {"gold": 3.0})
    >>> limiters["default"].try_acquire(tenant="anyone").tenant
    UNLISTED
    """
    if unlisted_tenants not in ("shared", "separate"):
        raise ValueError(
            f"unlisted_tenants must be 'shared' or 'separate', got {unlisted_tenants!r}"
        )
    defined: dict[str, tuple[str, RoutePolicy]] = {}
    named: dict[str, str] = {}
    for key, policy in policies:
        if not policy.admission:
            continue
        where = key if key is not None else "default"
        name = limiter_name(key, policy)
        named.setdefault(name, where)
        if policy.max_concurrency is None:
            continue
        if name in defined and _limits(defined[name][1]) != _limits(policy):
            raise ValueError(
                f"limiter {name!r} is defined twice with different limits: "
                f"by {defined[name][0]!r} and by {where!r}"
            )
        defined.setdefault(name, (where, policy))
        if (
            tenants
            and policy.tenant_concurrency is not None
            and unlisted_tenants == "shared"
            and not tenant_weights
        ):
            raise ValueError(
                f"routes[{where!r}] sets tenant_concurrency, but no tenant is listed in "
                "tenant_weights: every tenant is unlisted, and unlisted tenants share one cap, "
                "so it would cap all of them together. List your tenants in tenant_weights, or "
                "pass unlisted_tenants='separate' if a tenant comes from something clients "
                "cannot forge (see docs/admission.md)"
            )
    weights: dict[Hashable, float] | None = None
    if tenant_weights:
        weights = {}
        weights.update(tenant_weights)
    limiters: dict[str, Limiter] = {}
    for name, where in named.items():
        if name not in defined:
            raise ValueError(
                f"routes[{where!r}] uses limiter {name!r}, but no policy sets its max_concurrency"
            )
        policy = defined[name][1]
        assert policy.max_concurrency is not None
        limiters[name] = Limiter(
            name,
            max_concurrency=policy.max_concurrency,
            max_queue=policy.max_queue,
            queue_timeout=policy.queue_timeout,
            tenant_concurrency=policy.tenant_concurrency,
            tenant_weights=weights,
            unlisted_tenants=unlisted_tenants,
            adaptive=policy.adaptive,
        )
    return limiters


def _limits(policy: RoutePolicy) -> tuple[object, ...]:
    return (
        policy.max_concurrency,
        policy.max_queue,
        policy.queue_timeout,
        policy.tenant_concurrency,
        policy.adaptive,
    )


def tenant_resolver(header: str | None, tenant: TenantOf | None) -> TenantOf | None:
    """How to find a request's tenant: a header name or a callable, not both."""
    if header is not None and tenant is not None:
        raise ValueError("pass tenant_header= or tenant=, not both")
    if tenant is not None:
        if not callable(tenant):
            raise TypeError(f"tenant must be a callable(scope) -> str | None, got {tenant!r}")
        return tenant
    if header is None:
        return None
    if not isinstance(header, str) or not header.strip() or header != header.strip():
        raise ValueError(f"tenant_header must be a non-empty header name, got {header!r}")
    name = header.lower().encode("latin-1")

    def from_header(scope: Scope) -> str | None:
        return header_value(scope, name)

    return from_header
