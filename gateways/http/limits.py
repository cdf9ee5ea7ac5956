"""Per-user request budgets and idempotency-key records, in Redis (shared by every gateway
process, so a user cannot multiply their budget by spreading requests)."""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateways.http.problems import Problem

# INCR the window's counter and give it a lifetime on first use, in one round trip.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def _unavailable(error: RedisError) -> Problem:
    return Problem(503, "redis_unavailable", f"rate-limit/idempotency store unavailable: {error}",
                   headers={"Retry-After": "1"})


class RateLimiter:
    """Fixed one-second windows per (user, bucket)."""

    def __init__(self, client: aioredis.Redis, key_prefix: str) -> None:
        self._client = client
        self._prefix = f"{key_prefix}ratelimit:"
        self._hit = client.register_script(_HIT)

    async def hit(self, user_id: str, bucket: str, limit_per_s: int, now_ms: int) -> None:
        window = now_ms // 1000
        try:
            count = int(await self._hit(keys=[f"{self._prefix}{bucket}:{user_id}:{window}"],
                                        args=[2000]))
        except RedisError as error:
            raise _unavailable(error) from error
        if count > limit_per_s:
            retry_after_s = max(1, -(-(1000 - now_ms % 1000) // 1000))
            raise Problem(429, "rate_limited",
                          f"more than {limit_per_s} {bucket} requests per second",
                          headers={"Retry-After": str(retry_after_s)})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def body_fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x1f")
    return digest.hexdigest()


class IdempotencyRecords:
    """idempotency key -> fingerprint of the request that first used it."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, ttl_s: int) -> None:
        self._client = client
        self._prefix = f"{key_prefix}idempotency:"
        self._ttl_s = ttl_s

    def _key(self, scope: str, idempotency_key: str) -> str:
        return f"{self._prefix}{scope}:{idempotency_key}"

    async def claim(self, scope: str, idempotency_key: str, fingerprint: str) -> bool:
        """True when this is the key's first use; False for a replay of the same request;
        Problem 409 when the key was used for another request."""
        key = self._key(scope, idempotency_key)
        try:
            if await self._client.set(key, fingerprint, nx=True, ex=self._ttl_s):
                return True
            held = await self._client.get(key)
        except RedisError as error:
            raise _unavailable(error) from error
        if held is None:  # expired between the two calls: claim again
            return await self.claim(scope, idempotency_key, fingerprint)
        if _text(held) != fingerprint:
            raise Problem(409, "idempotency_key_reused",
                          "this Idempotency-Key was already used with a different request")
        return False

    async def release(self, scope: str, idempotency_key: str, fingerprint: str) -> None:
        """Forget a claim whose command never reached the broker, so a retry can proceed."""
        key = self._key(scope, idempotency_key)
        try:
            held = await self._client.get(key)
            if held is not None and _text(held) == fingerprint:
                await self._client.delete(key)
        except RedisError:
            pass  # the record expires on its own
