"""From a request to what governs it: its route template, policy, limiter and budget.

Below the middleware and above the primitives: :mod:`~tailguard.routing.matching`
resolves a scope to its route template and policy, :mod:`~tailguard.routing.limits`
builds the per-route limiters and finds tenants, :mod:`~tailguard.routing.inbound`
reads the budgets callers send, and :mod:`~tailguard.routing.service_time` keeps
each route's usual service time.
"""
