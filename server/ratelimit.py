"""Per-principal request rate limits: a token bucket in Redis, refilled at RATE_LIMIT_PER_S up to
RATE_LIMIT_BURST tokens, one token per request.

Owns: `TOKEN_BUCKET_LUA` (the bucket's whole read-refill-take-write step, run atomically by Redis, so that any
number of API processes share one bucket per principal), `RateLimiter` and `RateLimited`. The bucket's clock is
Redis's own (`TIME`), never an API process's. Must not import FastAPI.

Redis being down does not take the API down with it: the request is let through and the failure is logged
(the limiter protects the service from a busy client, it is not an access control).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

#: KEYS[1] = the bucket's hash; ARGV[1] = refill rate (tokens per second), ARGV[2] = burst (bucket size).
#: Returns {allowed (0|1), seconds until one token is available (as a string: Lua numbers become integers)}.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""
KEY_PREFIX = "ris:ratelimit:"


class RateLimited(Exception):
    """The principal's bucket is empty (HTTP 429); `retry_after_s` = whole seconds until a token is back."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: seconds until the next token (0 when allowed)
    wait_s: float


class RateLimiter:
    """One token bucket per principal id, in Redis. `rate_per_s` = 0 turns limiting off."""

    def __init__(self, client: redis.Redis, *, rate_per_s: float, burst: int) -> None:
        if rate_per_s < 0 or burst < 1:
            raise ValueError("rate_per_s must be >= 0 and burst >= 1")
        self._client = client
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def take(self, principal_id: str) -> Decision:
        """Take one token from `principal_id`'s bucket. Raises redis.RedisError when Redis is unreachable."""
        allowed, wait = self._script(keys=[KEY_PREFIX + principal_id], args=[self.rate_per_s, self.burst])
        return Decision(allowed=bool(int(allowed)), wait_s=float(wait))

    def check(self, principal_id: str) -> None:
        """Let the request through or raise RateLimited; lets it through (and logs) when Redis is down."""
        if not self.enabled:
            return
        try:
            decision = self.take(principal_id)
        except (redis.RedisError, OSError) as exc:
            log.warning("rate limit not checked (Redis unavailable): %s", exc)
            return
        if not decision.allowed:
            raise RateLimited(max(1, math.ceil(decision.wait_s)))
