"""One request as the middleware sees it: its deadline, its response, its tasks."""

from __future__ import annotations

import asyncio
import logging
from asyncio import CancelledError
from collections.abc import Awaitable
from time import monotonic
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailguard import _context
from tailguard._context import Deadline
from tailguard._scope import header as header_value
from tailguard.admission import Limiter, Permit, Rejected
from tailguard.deadlines import CancelScope, DeadlineExceeded
from tailguard.middleware.disconnect import Inbox
from tailguard.middleware.runtime import Runtime
from tailguard.middleware.sweeper import Sweeper
from tailguard.routing.matching import ResolvedRoute
from tailguard.telemetry import otel
from tailguard.telemetry.requests import UNMATCHED, RouteMetrics
from tailguard.telemetry.tasks import RequestTasks

if TYPE_CHECKING:
    from tailguard.telemetry.catalog import Catalog
    from tailguard.telemetry.server_span import ServerSpan

__all__ = ["CHAIN_LIMIT", "DISCONNECT_GRACE", "Exchange", "chained_tailguard_error"]

logger = logging.getLogger("tailguard.middleware")

DISCONNECT_GRACE = 0.02
"""Seconds before a request starts watching for client disconnects.

Requests that finish sooner never pay for the watcher task; ones that run
longer are cancelled within about this long of their client leaving.
"""


CHAIN_LIMIT = 32
"""How many links of an exception's ``__cause__``/``__context__`` chain are searched."""


def chained_tailguard_error(error: BaseException) -> DeadlineExceeded | Rejected | None:
    """The :class:`Rejected` or :class:`DeadlineExceeded` that ``error`` wraps, if any.

    SDKs that own their httpx client (OpenAI's, for one) catch what a
    transport raises and raise their own connection error ``from`` it, often
    after retrying. The walk follows ``__cause__`` first, then
    ``__context__`` (even a suppressed one: ``raise ... from None`` hides it
    from tracebacks, not from what happened), for at most :data:`CHAIN_LIMIT`
    links, and stops at a cycle; the first match (the latest) wins.

    >>> try:
    ...     try:
    ...         raise Rejected("queue_full", "llm", 0.1)
    ...     except Rejected as shed:
    ...         raise ConnectionError("Connection error.") from shed
    ... except ConnectionError as wrapped:
    ...     chained_tailguard_error(wrapped).reason
    'queue_full'
    >>> chained_tailguard_error(ValueError("no")) is None
    True
    """
    seen: set[int] = set()
    link: BaseException | None = error
    for _ in range(CHAIN_LIMIT):
        if link is None or id(link) in seen:
            return None
        if isinstance(link, (DeadlineExceeded, Rejected)):
            return link
        seen.add(id(link))
        link = link.__cause__ if link.__cause__ is not None else link.__context__
    return None


class Exchange(CancelScope, RequestTasks):
    """One request as the middleware sees it: its deadline, its response, its tasks.

    Created per request and never shared; :meth:`run` is the request's whole
    life, from the budget to the last metric. It owns the tasks the request
    spawns (the task factory adds them here), and it is the request's
    :class:`~tailguard.deadlines.CancelScope`. A request that outlives the
    loop's grace period is *promoted* by the :class:`Sweeper`: only then does
    it get a deadline timer and a disconnect watcher, so fast requests pay
    for neither.
    """

    # Slots: everything a request of any configuration reads on its way
    # through (slot reads are specialized by the interpreter, class-level
    # defaults on an instance are not). The class-level defaults below are
    # for the machinery of slow, traced or cancelled requests, written only
    # by the requests that need it.
    __slots__ = (
        "_receive",
        "_runtime",
        "_send",
        "admitted_at",
        "arrived",
        "complete",
        "deadline",
        "ended",
        "enforced",
        "finished",
        "outcome",
        "promoted",
        "queue_wait",
        "resolved",
        "scope",
        "span",
        "spawned",
        "spent",
        "status",
    )

    inbox: Inbox | None = None  # made only for requests that outlive the grace
    reading = False
    body_complete = False
    watch_requested = False
    disconnect: Message | None = None
    budget_annotated = False
    span_attributes: dict[str, Any] | None = None  # pending, for the server span
    span_routed = False  # the server span started with its route (and shadow mark)
    _tenant: str | bool | None = False  # False: not looked up yet
    shadow: Deadline | None = None  # shadow mode: the deadline decided but not in force
    would_shed: str | None = None  # shadow mode: why admission would have shed it

    def __init__(
        self,
        task: asyncio.Task[Any],
        send: Send,
        receive: Receive,
        scope: Scope,
        resolved: ResolvedRoute,
        runtime: Runtime,
        enforced: bool | None = None,
    ) -> None:
        now = monotonic()
        budget = resolved.policy.deadline
        source = "route"
        inbound = runtime.inbound
        if inbound is not None:
            found = inbound.budget(scope["headers"])
            if found is not None and (budget is None or found[0] < budget):
                budget, source = found
        if budget is None:
            deadline = None
        else:
            # tuple.__new__ skips NamedTuple's Python-level __new__: this runs per request.
            deadline = tuple.__new__(Deadline, (now + budget, budget, source))
        if enforced is None:  # else decided by the caller (see middleware.asgi._traced)
            enforcement = resolved.enforcement
            # No call in "on" or "shadow" mode: they draw nothing.
            enforced = enforcement.always or (enforcement.fraction > 0.0 and enforcement.enforce())
        self.enforced = enforced
        if not enforced:  # shadow: decide everything, act on nothing (docs/rollout.md)
            self.shadow = deadline  # kept aside (no timer, none in force) and judged at the end
            if deadline is not None and deadline.source != "route":
                try:
                    _shed_if_too_late(deadline.budget, resolved)
                except Rejected as would:
                    self.would_shed = would.reason
            deadline = None
        # CancelScope's fields, set here rather than through CancelScope.__init__:
        # this runs for every request, and the call costs ~900 instructions (callgrind).
        self.at = None if deadline is None else deadline.at
        self.fired = False
        self._task = task
        self._cancelling = task.cancelling()  # cancel requests that are not ours
        self._handle = None
        self._withdrawn = False
        self._send = send
        self._receive = receive
        self.deadline = deadline
        self.arrived = now
        self.admitted_at = now
        self.scope = scope
        self.resolved = resolved
        self._runtime = runtime
        self.status = 0  # 0 until the response starts
        self.complete = False
        self.finished = False
        self.promoted = False  # has a deadline timer or a disconnect watcher
        self.ended = 0.0
        self.outcome: str | None = None  # None: decided by the status when reported
        self.queue_wait: float | None = None
        self.spent: dict[str, float] | None = None
        self.span = None
        self.spawned = 0

    async def run(
        self, app: ASGIApp, sweeper: Sweeper, server_span: ServerSpan | None = None
    ) -> None:
        """Handle the request: admit it, run ``app`` within its budget, settle and report it.

        ``server_span``: the request's span when tailguard made it (the lean path);
        otherwise the current span, if recording, is the request's.
        """
        runtime = self._runtime
        resolved = self.resolved
        scope = self.scope
        deadline = self.deadline
        if deadline is not None and deadline.budget < DISCONNECT_GRACE:
            self.arm()  # would be over before the first sweep could arm it
        else:
            sweeper.add(self, self.arrived)
        token = _context.current.set(self)  # it carries .deadline and .owner
        live = runtime.live
        live[self] = self.arrived
        metrics = None
        if runtime.tracing or runtime.recorder is not None:
            metrics = self._observe(server_span)
        limiter = resolved.limiter
        permit: Permit | None = None
        error: DeadlineExceeded | Rejected | None = None
        settled = False  # False while an exception of the app's (or a server's cancel) propagates
        answered = False  # by a chaos Respond fault, for the app
        chaos = runtime.chaos
        try:
            if deadline is not None and deadline.source != "route":
                _shed_if_too_late(deadline.budget, resolved)
            if chaos.armed:
                # Route faults come before admission: an injected delay or answer
                # never holds a slot or enters the limiters' latency samples.
                answered = await chaos.inbound(self, self.send)
                self.admitted_at = monotonic()
            if not answered:
                if limiter is not None:
                    tenant = self.tenant if runtime.tenant is not None else None
                    permit = limiter.try_acquire(resolved.policy.priority, tenant)
                    if permit is None and not self.enforced:
                        permit = self.shadow_admit(limiter, resolved, tenant)
                    if permit is None:
                        permit = await self.queue_for(limiter, resolved)
                await app(scope, self.receive, self.send)
            settled = True
        except (DeadlineExceeded, Rejected) as exc:  # ran out, or shed here or downstream
            error = exc
            settled = True
        except Exception as exc:
            # An SDK that owns its httpx client wraps a transport's Rejected (or
            # DeadlineExceeded) in its own connection error: still a shed, or a
            # timeout, not a failure of the app. Only on an exception: free otherwise.
            error = chained_tailguard_error(exc)
            if error is None:
                raise
            settled = True
        except CancelledError:
            # Absorb only the cancellation this request asked for; one from
            # outside (server shutdown) also counts and keeps propagating.
            if not self.withdraw():
                raise
            settled = True
        finally:
            self.finished = True
            sweeper.young.pop(self, None)
            del live[self]
            if self.promoted:
                self.disarm()
                if self.inbox is not None:
                    self.inbox.close()
            _context.current.reset(token)
            ok = self.complete and self.status < 500 and not self.fired
            if ok and not answered:
                # Until the last body message: background tasks after it are not service.
                resolved.service_time.observe(self.ended - self.admitted_at)
            if permit is not None:
                permit.release(ok=ok)
            if not settled:
                # The app raised: outer layers answer 500, unless the response started.
                self.outcome = "error"
                self.status = self.status or 500
                self.close(metrics)
        if self.fired or error is not None:
            try:
                await self.settle(scope, error, metrics)
            finally:
                error = None  # no exception -> traceback -> this frame -> exception cycle
                self.close(metrics)
        elif metrics is not None or self.spawned or self.span is not None:
            self.close(metrics)
        elif chaos.watching:
            self.close(None)

    def _observe(self, server_span: ServerSpan | None) -> RouteMetrics | None:
        """Start the request's metrics and, when sampled, annotate its server span."""
        runtime = self._runtime
        scope = self.scope
        routed = False
        if server_span is not None:
            span = server_span.span if server_span.recording else None
            routed = self.span_routed = server_span.routed
        else:
            span = otel.recording_span() if runtime.tracing else None
        if span is not None:  # sampled: annotate the server span; spawned tasks get spans
            deadline = self.deadline
            self.span = span
            self.span_attributes = {}  # set in one call when the response completes
            otel.annotate_request(
                span,
                scope["method"],
                scope["path"],
                self.resolved.template,
                None if deadline is None else deadline.budget,
                "route" if deadline is None else deadline.source,
                self.span_attributes,
                routed=routed,
            )
        recorder = runtime.recorder
        if recorder is None:
            return None
        metrics = recorder.route(self.resolved.template, scope["method"])
        metrics.begin()
        return metrics

    # -- the request, as other features see it (tailguard._context.RequestView) ----------

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def route(self) -> str:
        return self.resolved.template or ""

    @property
    def catalog(self) -> Catalog | None:
        return self._runtime.catalog

    @property
    def owner(self) -> Exchange:
        """The request owns the tasks it spawns (this object is also the context entry)."""
        return self

    @property
    def started(self) -> bool:
        """Whether the response has started (``http.response.start`` went out)."""
        return self.status != 0

    @property
    def tenant(self) -> str | None:
        tenant = self._tenant
        if tenant is False:
            resolve = self._runtime.tenant
            tenant = self._tenant = resolve(self.scope) if resolve is not None else None
        assert tenant is not True
        return tenant

    def header(self, name: str) -> str | None:
        return header_value(self.scope, name.lower().encode("latin-1"))

    def promote(self) -> None:
        """Still running after the grace period: arm the deadline, watch the client."""
        if not self.finished:
            self.arm()
            if self.reading:
                self.watch_requested = True  # never two readers: start when the app's read returns
            else:
                self._watch()

    def _watch(self) -> None:
        if self.inbox is None and self.disconnect is None and not self.finished:
            self.promoted = True
            self.inbox = Inbox(self._receive, self.cancel, body_complete=self.body_complete)
            self.inbox.start_watching()

    async def receive(self) -> Message:
        """The ``receive`` the app gets: the server's own until a watcher takes over."""
        inbox = self.inbox
        if inbox is not None:
            return await inbox.receive()
        self.reading = True
        try:
            message = await self._receive()
        finally:
            self.reading = False
        if message["type"] == "http.disconnect":
            self.disconnect = message
        elif not message.get("more_body", False):
            self.body_complete = True
        if self.watch_requested:
            self._watch()
        return message

    def arm(self) -> None:
        """Schedule the cancellation at the deadline, if there is one."""
        if self.at is not None:
            self.promoted = True
            CancelScope.arm(self)

    def cancel(self) -> None:
        """Cancel the request's task: its deadline passed or its client left."""
        if not self.finished:
            CancelScope.cancel(self)

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function returning the server's awaitable: no extra coroutine
        # frame per message, the app awaits the server's send directly.
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif not message.get("more_body", False):
            self.complete = True
            # The deadline bounds the response. Work after it (Starlette's
            # background tasks) is not cut off by a budget the client no
            # longer waits on.
            self.finished = True
            self.ended = monotonic()
            if self.span is not None:
                self._annotate_budget()
            if self.promoted:
                self.disarm()
            _context.current.set(None)
        return self._send(message)

    async def queue_for(self, limiter: Limiter, resolved: ResolvedRoute) -> Permit:
        """Wait for a slot of ``limiter`` (none was free), within the deadline."""
        deadline = self.deadline
        outcome = "granted"
        try:
            return await limiter.acquire(
                priority=resolved.policy.priority,
                tenant=self.tenant,
                deadline_at=None if deadline is None else deadline.at,
                service_estimate=resolved.service_time.estimate(),
            )
        except Rejected as exc:
            outcome = exc.reason
            raise
        finally:
            self.admitted_at = monotonic()
            self.queue_wait = waited = self.admitted_at - self.arrived
            catalog = self._runtime.catalog
            if catalog is not None:
                catalog.queue_wait.labels(limiter.name, "route").observe(waited)
            if self.span is not None:
                otel.record_queue_wait(
                    self.span, limiter.name, self.arrived, self.admitted_at, outcome
                )

    def shadow_admit(self, limiter: Limiter, resolved: ResolvedRoute, tenant: str | None) -> Permit:
        """Shadow mode, no free slot: note whether it would be shed, and admit it anyway."""
        shadow = self.shadow
        reason = limiter.would_shed(
            resolved.policy.priority,
            tenant,
            deadline_at=None if shadow is None else shadow.at,
            service_estimate=resolved.service_time.estimate(),
        )
        if reason is not None:
            self.would_shed = self.would_shed or reason
            if self.span is not None:
                event = {"tailguard.reason": reason, "tailguard.limiter": limiter.name}
                otel.record_would(self.span, "shed", event)
        return limiter.force_acquire(tenant)

    def _would_exceed_deadline(self) -> bool:
        shadow = self.shadow
        return shadow is not None and (self.ended or monotonic()) > shadow.at

    def charge(self, dependency: str, seconds: float) -> None:
        """Account ``seconds`` of this request's time to a call of ``dependency``."""
        spent = self.spent
        if spent is None:
            spent = self.spent = {}
        spent[dependency] = spent.get(dependency, 0.0) + seconds

    def close(self, metrics: RouteMetrics | None) -> None:
        """The request is over: count it, account for its time, and report its orphans."""
        if metrics is not None:
            status = self.status
            outcome = self.outcome
            if outcome is None:
                outcome = "ok" if status < 500 else "error"
            duration = (self.ended or monotonic()) - self.arrived
            metrics.end(
                status,
                outcome,
                duration=duration,
                queue_wait=self._queue_share(),
                dependencies=self.spent,
            )
            runtime = self._runtime
            if runtime.tenant is not None and runtime.tenant_labels is not None:
                metrics.tenant(runtime.tenant_labels(self.tenant), outcome)
            if not self.enforced:
                shadow = self.shadow
                late = shadow is not None and (self.ended or monotonic()) > shadow.at
                metrics.shadowed(self.would_shed, late)
        if self.span is not None:
            self._annotate_budget()
        runtime = self._runtime
        if runtime.chaos.watching:  # an experiment's safeguard watches the routes it affects
            runtime.chaos.observe_request(
                self.method,
                self.route,
                self.status,
                (self.ended or monotonic()) - self.arrived,
                # A client that gave up waited this long for nothing: an error.
                failed=self.outcome in ("error", "deadline_exceeded", "disconnected"),
            )
        if self.spawned:  # no tasks, no orphans: most requests stop here
            self.finish(
                self.resolved.template or UNMATCHED,
                cancel=runtime.cancel_orphans,
                catalog=runtime.catalog,
            )

    def _queue_share(self) -> float | None:
        """Seconds queued for admission; 0 when admitted at once, ``None`` with no limiter."""
        if self.queue_wait is None and self.resolved.limiter is not None:
            return 0.0
        return self.queue_wait

    def _annotate_budget(self) -> None:
        """Put the budget split on the server span, once, before the span can end.

        OpenTelemetry's middleware ends the server span with the last body
        message, so this runs just before that message goes out.
        """
        span = self.span
        if span is None or self.budget_annotated:
            return
        self.budget_annotated = True
        attributes = self.span_attributes if self.span_attributes is not None else {}
        if not self.enforced:
            if not self.span_routed:
                attributes["tailguard.enforce"] = "shadow"
            if self._would_exceed_deadline() and self.shadow is not None:
                otel.record_would(
                    span,
                    "exceed_deadline",
                    {"tailguard.deadline.budget_ms": self.shadow.budget * 1000.0},
                )
        queue = self.queue_wait
        spent = self.spent
        if queue or spent:
            # A split only when there is one: otherwise the handler had it all,
            # which the span's own duration says (attributes are not free).
            duration = (self.ended or monotonic()) - self.arrived
            handler = duration - (queue or 0.0) - (sum(spent.values()) if spent else 0.0)
            otel.record_budget(
                span, handler=max(handler, 0.0), queue=queue, dependencies=spent, into=attributes
            )
        if attributes:
            span.set_attributes(attributes)

    async def settle(
        self,
        scope: Scope,
        error: DeadlineExceeded | Rejected | None,
        route: RouteMetrics | None,
    ) -> None:
        """Finish a request that was cancelled, ran out of time, or was shed."""
        inbox = self.inbox
        if self.fired:
            self.withdraw()  # a no-op unless the app swallowed our cancellation
            if inbox is not None and inbox.disconnected and not self.complete:
                self.outcome = "disconnected"
                self.cancel_pending()
                logger.debug("client disconnected; cancelled %s %s", scope["method"], scope["path"])
                return
            error = DeadlineExceeded(self.deadline)
        if error is None or self.complete:
            return
        self.cancel_pending()
        span = self.span
        if isinstance(error, Rejected):
            self.outcome = "shed" if not self.started else "error"
            if not self.started:
                if route is not None:
                    route.shed(error.reason)
                if span is not None:
                    otel.record_shed(span, error.reason, error.limiter, error.retry_after)
        else:
            self.outcome = "deadline_exceeded"
            stage = "during_response" if self.started else "before_response"
            if route is not None:
                route.deadline_exceeded(stage)
            if span is not None:
                budget = self.deadline.budget if self.deadline is not None else None
                otel.record_deadline_exceeded(span, stage, budget)
        self._annotate_budget()
        if self.started:
            # Never a second http.response.start: abort, so the server drops the
            # connection and the client sees a truncated response, not a short one.
            if isinstance(error, Rejected):
                raise error
            raise DeadlineExceeded(error.deadline, f"response aborted: {error}") from error
        self.status = 503 if isinstance(error, Rejected) else 504
        self.ended = monotonic()
        # Through the app's CORS middleware (install()), so a browser can read it.
        responses = self._runtime.responses
        if isinstance(error, Rejected):
            await responses.shed(scope, self._receive, self._send, error)
        else:
            await responses.deadline(scope, self._receive, self._send)


def _shed_if_too_late(budget: float, resolved: ResolvedRoute) -> None:
    """Deadline-aware admission for budgets an inbound header cut short.

    A route's own budget is never judged against its usual service time (that
    would shed every request of a route that is slow on average); a caller's
    tighter budget is: if the route usually needs more, running it is wasted.
    The reason is ``"budget"``, not overload: the service has capacity, the
    caller's budget is too short, and retrying with the same budget cannot help.
    """
    usual = resolved.service_time.estimate()
    if usual is not None and budget < usual:
        name = resolved.limiter.name if resolved.limiter is not None else resolved.key or "default"
        raise Rejected("budget", name, 0.0)
