"""Per-client token buckets: in this process's memory, or shared by all processes in Redis.

A bucket holds one minute's allowance and refills continuously. It is kept
as one number, the time at which it will be full again (the "theoretical
arrival time" of GCRA, which is the same bucket written differently): a take
moves it one refill interval later, and is refused when that would put it
more than a minute ahead of now.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis
import redis.asyncio

from server.observability.metrics import REDIS_ERRORS, REDIS_SKIPPED

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds: a bucket holds one minute's allowance
EPSILON = 1e-9  # float slack, so that exactly a full bucket is not refused
MAX_REDIS_CONNECTIONS = 16  # per process
REDIS_TIMEOUT = 0.25  # seconds; past it the call passes unlimited
SKIP_AFTER_FAILURE = 5.0  # seconds Redis is not asked after it failed a call
MAX_BUCKETS = 10_000  # per process: ~2 MB; beyond it the least recently used go first


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int  # whole tokens left after this take
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until the next take would pass (0 when allowed)

    def headers(self) -> tuple[tuple[str, str], ...]:
        """RateLimit-* headers (IETF draft), plus Retry-After when refused."""
        fields: tuple[tuple[str, str], ...] = (
            ("ratelimit-limit", str(self.limit)),
            ("ratelimit-remaining", str(self.remaining)),
            ("ratelimit-reset", str(math.ceil(self.reset))),
        )
        if not self.allowed:
            fields += (("retry-after", str(max(1, math.ceil(self.retry_after)))),)
        return fields


def judge(limit: int, ahead: float) -> Verdict:
    """The verdict for a take that would put the bucket `ahead` seconds from full."""
    interval = WINDOW / limit
    if ahead > WINDOW + EPSILON:
        current = ahead - interval
        return Verdict(False, limit, 0, current, ahead - WINDOW)
    remaining = math.floor((WINDOW - ahead) / interval + EPSILON)
    return Verdict(True, limit, remaining, ahead, 0.0)


class Buckets(Protocol):
    async def take(self, key: str, limit: int) -> Verdict: ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """Buckets of this process, exact under any number of threads."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS
    ) -> None:
        self._clock = clock
        self._max = max_buckets
        self._full_at: dict[str, float] = {}  # insertion order = least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._full_at)

    async def close(self) -> None:
        pass

    async def take(self, key: str, limit: int) -> Verdict:
        with self._lock:
            now = self._clock()
            full_at = max(self._full_at.pop(key, now), now)
            verdict = judge(limit, full_at + WINDOW / limit - now)
            self._full_at[key] = now + verdict.reset if verdict.allowed else full_at
            self._evict(now)
            return verdict

    def _evict(self, now: float) -> None:
        # A full bucket is the same as no bucket, so idle ones go for free;
        # past the cap the least recently used go too (a flood of new
        # clients cannot grow memory).
        entries = self._full_at
        while entries:
            oldest = next(iter(entries))
            if entries[oldest] > now and len(entries) <= self._max:
                return
            del entries[oldest]


# One atomic script per take; Redis's clock is the one clock all processes share.
_TAKE = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local full_at = tonumber(redis.call('GET', KEYS[1]) or now)
if full_at < now then full_at = now end
local ahead = full_at + interval - now
if ahead <= window + 1e-9 then
  redis.call('SET', KEYS[1], string.format('%.6f', now + ahead), 'PX', math.ceil(ahead * 1000))
end
return string.format('%.6f', ahead)
"""


class RedisBuckets:
    """Buckets shared by every process that points at the same Redis.

    When Redis cannot be reached the service fails open (it keeps serving,
    unlimited) and says so once per interval. After a failure Redis is not
    asked at all for `skip_for` seconds (a circuit breaker: otherwise every
    call would wait out the timeout first); then the next calls ask again,
    and limits hold again as soon as it answers.
    """

    def __init__(
        self,
        url: str,
        complain_every: float = 30.0,
        skip_for: float = SKIP_AFTER_FAILURE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A bounded pool whose callers wait their turn: one connection per
        # call in flight would open hundreds under load.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_REDIS_CONNECTIONS,
            timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry_on_timeout=False,
        )
        self._pool = pool
        self._redis = redis.asyncio.Redis(connection_pool=pool)
        self._take = self._redis.register_script(_TAKE)
        self._complain_every = complain_every
        self._complained_at = -math.inf
        self._skip_for = skip_for
        self._clock = clock
        self._skip_until = -math.inf
        self._failing = False

    async def take(self, key: str, limit: int) -> Verdict:
        if self._clock() < self._skip_until:
            REDIS_SKIPPED.inc()
            return Verdict(True, limit, limit, 0.0, 0.0)
        interval = WINDOW / limit
        try:
            ahead = float(
                await self._take(keys=[f"contacts:bucket:{key}"], args=[interval, WINDOW])
            )
        except redis.RedisError as error:
            REDIS_ERRORS.inc()
            now = self._clock()
            self._skip_until = now + self._skip_for
            self._failing = True
            if now - self._complained_at >= self._complain_every:
                self._complained_at = now
                log.error(
                    "rate limits are off until Redis answers again: %s; "
                    "not asking it for %g s after each failure",
                    error,
                    self._skip_for,
                )
            return Verdict(True, limit, limit, 0.0, 0.0)
        if self._failing:
            self._failing = False
            log.warning("Redis answers again: rate limits are on")
        return judge(limit, ahead)

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
