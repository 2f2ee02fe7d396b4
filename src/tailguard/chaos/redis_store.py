"""The Redis chaos store, for workers on several hosts: ``Chaos(store="redis://host:6379/0")``.

Needs the ``redis`` package (``pip install 'tailguard[redis]'``); its asyncio
client runs on one private event loop thread per store, so the engine's
follower (and control actions) call it like any other :class:`Store`, and
the app's event loop never waits on Redis.

Keys are ``tailguard:chaos:<service>:...``: ``experiments`` (a hash of the
records by id), ``version`` (bumped on every change), ``workers`` (a hash of
heartbeats); changes are announced on the channel ``...:events`` so
followers wake at once, and polled for in case a message is lost. Times
come from Redis's ``TIME``: the store's clock, whatever the hosts' clocks say.

Status and logs show its URL without the password:

>>> redacted("redis://:hunter2@localhost:6379/0")
'redis://localhost:6379/0'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tailguard.chaos.store import (
    RECENT_ENDED,
    WORKER_TTL,
    Snapshot,
    Store,
    StoreUnavailable,
    check_start,
    stamp,
    versioned,
)

__all__ = ["RedisStore", "redacted"]

_T = TypeVar("_T")


def redacted(url: str) -> str:
    """``url`` without its password or query (for status and logs).

    >>> redacted("redis://user:pw@cache:6379/2?service=shop")
    'redis://user@cache:6379/2'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedisStore(Store):
    """A Redis server shared by a fleet; see the module's description."""

    interval = 0.25
    """Polls are a fallback: pub/sub wakes followers at once."""

    def __init__(self, url: str, *, service: str, timeout: float = 0.5) -> None:
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as missing:  # pragma: no cover - the extra is part of dev
            raise ValueError(
                f"store URL {redacted(url)!r} needs the redis package: "
                "pip install 'tailguard[redis]'"
            ) from missing
        self.url = redacted(url)
        self.service = service
        self._timeout = timeout
        prefix = f"tailguard:chaos:{service}:"
        self._experiments = prefix + "experiments"
        self._version_key = prefix + "version"
        self._workers = prefix + "workers"
        self._channel = prefix + "events"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tailguard-chaos-redis", daemon=True
        )
        self._thread.start()
        query_free = urlunsplit((*urlsplit(url)[:3], "", ""))
        self._client = Redis.from_url(
            query_free,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._pubsub: Any = None

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, service={self.service!r})"

    def _call(self, make: Callable[[], Awaitable[_T]], budget: float | None = None) -> _T:
        async def run() -> _T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(budget if budget is not None else 4 * self._timeout)
        except FutureTimeout:
            future.cancel()
            raise StoreUnavailable(f"{self.url}: no answer in time") from None
        except StoreUnavailable:
            raise
        except Exception as error:  # redis errors, OSError: the store is not usable now
            raise StoreUnavailable(f"{self.url}: {type(error).__name__}: {error}") from error

    async def _now(self) -> float:
        seconds, micros = await self._client.time()
        return float(seconds) + float(micros) / 1e6

    def poll(self) -> tuple[int, float]:
        async def work() -> tuple[int, float]:
            version = await self._client.get(self._version_key)
            return int(version or 0), await self._now()

        return self._call(work)

    def read(self) -> Snapshot:
        async def work() -> Snapshot:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self._version_key)
                pipe.time()
                pipe.hvals(self._experiments)
                version, (seconds, micros), bodies = await pipe.execute()
            now = float(seconds) + float(micros) / 1e6
            entries = [json.loads(body) for body in bodies]
            running = sorted(
                (e for e in entries if e["ended"] is None and e["ends_at"] > now),
                key=lambda e: e["started_at"],
            )
            ended = sorted(
                (e for e in entries if e["ended"] is not None),
                key=lambda e: -e["ended"]["at"],
            )[:RECENT_ENDED]
            return Snapshot(int(version or 0), now, running, ended)

        return self._call(work)

    async def _change(self, change: Callable[[Any, float, list[dict[str, Any]]], Any]) -> Any:
        """Run ``change(pipe, now, entries)`` atomically (WATCH, retried on a conflict)."""
        from redis.exceptions import WatchError

        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self._experiments)
                    now = await self._now()
                    bodies = await pipe.hvals(self._experiments)
                    entries = [json.loads(body) for body in bodies]
                    pipe.multi()  # type: ignore[no-untyped-call]
                    result = change(pipe, now, entries)
                    pipe.incr(self._version_key)
                    pipe.publish(self._channel, "changed")
                    await pipe.execute()
                    return result
                except WatchError:
                    continue

    def start(self, entry: dict[str, Any], max_experiments: int) -> None:
        def change(pipe: Any, now: float, entries: list[dict[str, Any]]) -> None:
            running = [e["name"] for e in entries if e["ended"] is None and e["ends_at"] > now]
            check_start(entry["name"], running, max_experiments)
            pipe.hset(self._experiments, entry["id"], json.dumps(stamp(entry, now)))

        self._call(lambda: self._change(change))

    def _ending(
        self,
        pick: Callable[[dict[str, Any], float], bool],
        reason: str,
        actor: str,
        detail: str | None,
    ) -> list[str]:
        def change(pipe: Any, now: float, entries: list[dict[str, Any]]) -> list[str]:
            names = []
            for entry in entries:
                if entry["ended"] is None and pick(entry, now):
                    ending = {"reason": reason, "actor": actor, "detail": detail, "at": now}
                    pipe.hset(
                        self._experiments, entry["id"], json.dumps({**entry, "ended": ending})
                    )
                    names.append(entry["name"])
            return names

        names: list[str] = self._call(lambda: self._change(change))
        return names

    def end(self, ids: Sequence[str], reason: str, actor: str, detail: str | None) -> list[str]:
        wanted = set(ids)
        return self._ending(lambda entry, now: entry["id"] in wanted, reason, actor, detail)

    def end_name(self, name: str, reason: str, actor: str) -> bool:
        return bool(
            self._ending(
                lambda entry, now: entry["name"] == name and entry["ends_at"] > now,
                reason,
                actor,
                None,
            )
        )

    def halt(self, actor: str) -> list[str]:
        return self._ending(lambda entry, now: entry["ends_at"] > now, "halt", actor, None)

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        async def work() -> None:
            now = await self._now()
            body = json.dumps({**info, "worker": worker, "seen_at": now})
            await self._client.hset(self._workers, worker, body)

        self._call(work)

    def workers(self) -> list[dict[str, Any]]:
        async def work() -> list[dict[str, Any]]:
            now = await self._now()
            seen = await self._client.hgetall(self._workers)
            fresh, stale = [], []
            for worker, body in sorted(seen.items()):
                item = json.loads(body)
                age = now - float(item.get("seen_at", 0))
                if age > WORKER_TTL:
                    stale.append(worker)
                else:
                    fresh.append({**item, "age": max(0.0, age)})
            if stale:
                await self._client.hdel(self._workers, *stale)
            return fresh

        return self._call(work)

    def wait(self, timeout: float) -> None:
        """Wait for an announced change on the channel, or ``timeout`` seconds."""

        async def work() -> None:
            if self._pubsub is None:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                self._pubsub = pubsub
            try:
                await self._pubsub.get_message(timeout=timeout)
            except BaseException:
                pubsub, self._pubsub = self._pubsub, None
                await pubsub.aclose()
                raise

        self._call(work, budget=timeout + 4 * self._timeout)

    def read_modes(self) -> dict[str, Any] | None:
        async def work() -> dict[str, Any] | None:
            body = await self._client.get(self._modes_key())
            return json.loads(body) if body else None

        return self._call(work)

    def update_modes(
        self, change: Callable[[dict[str, Any] | None, float], dict[str, Any]]
    ) -> dict[str, Any]:
        from redis.exceptions import WatchError

        key = self._modes_key()

        async def work() -> dict[str, Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        now = await self._now()
                        body = await pipe.get(key)
                        current = json.loads(body) if body else None
                        updated = versioned(current, change(current, now))
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, json.dumps(updated))
                        await pipe.execute()
                        return updated
                    except WatchError:
                        continue

        return self._call(work)

    def _modes_key(self) -> str:
        return self._channel.removesuffix("events") + "modes"

    def close(self) -> None:
        async def work() -> None:
            if self._pubsub is not None:
                await self._pubsub.aclose()
            await self._client.aclose()

        with contextlib.suppress(StoreUnavailable):
            self._call(work)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
