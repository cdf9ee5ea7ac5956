"""Per-user request budgets and idempotency-key records, in Redis (shared by every gateway
process, so a user cannot multiply their budget by spreading requests).

Redis is a helper here, never a dependency of the write path: every call is bounded by the
client's socket timeouts, and when Redis is down or slow the gateway degrades instead of
refusing orders. Budgets fall back to an in-process limiter (the same budgets, per gateway
process) and idempotency falls back to the account topology's own (same key and same body: a
no-op; same key, another body: `duplicate_idempotency_key_different_body`, answered 409).
A `RedisBreaker` remembers a failure for a moment, so one request pays at most one timeout
and the requests after it skip Redis until the breaker lets a probe through."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from gateways.http.metrics import Counter
from gateways.http.problems import Problem
from state.messages import Quote
from state.quote_cache import quotes_key

_T = TypeVar("_T")

# INCR the window's counter and give it a lifetime on first use, in one round trip.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
"""
# Fallback labels on the degraded-mode counter.
RATE_LIMIT = "rate_limit"
IDEMPOTENCY = "idempotency"
QUOTES = "quotes"


class RedisBreaker:
    """Whether Redis is worth asking right now: after a failure it is skipped for
    `retry_after_s`, then the next call probes it again (a success closes the breaker)."""

    def __init__(self, retry_after_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._retry_after_s = retry_after_s
        self._monotonic = monotonic
        self._open_until = 0.0
        self.last_error: str | None = None
        self.failures = 0

    def available(self) -> bool:
        return self._monotonic() >= self._open_until

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(error).__name__}: {error}"
        self._open_until = self._monotonic() + self._retry_after_s

    def succeeded(self) -> None:
        self._open_until = 0.0
        self.last_error = None

    async def call(self, request: Callable[[], Awaitable[_T]]) -> _T | None:
        """`request`'s answer; None while Redis is skipped, or when it fails (which opens
        the breaker)."""
        if not self.available():
            return None
        try:
            answer = await request()
        except (RedisError, OSError) as error:
            self.failed(error)
            return None
        self.succeeded()
        return answer

    @property
    def degraded(self) -> bool:
        """Redis failed lately and is being skipped (or about to be probed)."""
        return self.last_error is not None


def _too_many(bucket: str, limit_per_s: int, now_ms: int) -> Problem:
    retry_after_s = max(1, -(-(1000 - now_ms % 1000) // 1000))
    return Problem(429, "rate_limited", f"more than {limit_per_s} {bucket} requests per second",
                   headers={"Retry-After": str(retry_after_s)})


class LocalRateLimiter:
    """Fixed one-second windows per (user, bucket), in this process only: the fallback while
    Redis cannot count. Only the current window is kept, so memory follows the users active
    in the last second."""

    def __init__(self) -> None:
        self._window = -1
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, user_id: str, bucket: str, now_ms: int) -> int:
        window = now_ms // 1000
        if window > self._window:  # a new second: every earlier count is irrelevant
            self._window = window
            self._counts = {}
        key = (user_id, bucket)
        self._counts[key] = self._counts.get(key, 0) + 1
        return self._counts[key]

    async def hit(self, user_id: str, bucket: str, limit_per_s: int, now_ms: int) -> None:
        if self.count(user_id, bucket, now_ms) > limit_per_s:
            raise _too_many(bucket, limit_per_s, now_ms)


class RateLimiter:
    """Fixed one-second windows per (user, bucket), counted in Redis; counted in this process
    (`LocalRateLimiter`) while Redis cannot answer."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, breaker: RedisBreaker,
                 fallbacks: Counter) -> None:
        self._client = client
        self._prefix = f"{key_prefix}ratelimit:"
        self._hit = client.register_script(_HIT)
        self._breaker = breaker
        self._fallbacks = fallbacks
        self.local = LocalRateLimiter()

    async def hit(self, user_id: str, bucket: str, limit_per_s: int, now_ms: int) -> None:
        count = await self._breaker.call(
            lambda: self._hit(keys=[self.window_key(user_id, bucket, now_ms)], args=[2000]))
        if count is None:
            self.spend_locally(user_id, bucket, limit_per_s, now_ms)
        elif int(count) > limit_per_s:
            raise _too_many(bucket, limit_per_s, now_ms)

    def spend_locally(self, user_id: str, bucket: str, limit_per_s: int, now_ms: int) -> None:
        """Redis cannot count: this process counts (Problem 429 past the budget)."""
        self._fallbacks.inc(feature=RATE_LIMIT)
        if self.local.count(user_id, bucket, now_ms) > limit_per_s:
            raise _too_many(bucket, limit_per_s, now_ms)

    def window_key(self, user_id: str, bucket: str, now_ms: int) -> str:
        return f"{self._prefix}{bucket}:{user_id}:{now_ms // 1000}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def body_fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x1f")
    return digest.hexdigest()


class IdempotencyRecords:
    """idempotency key -> fingerprint of the request that first used it: a pre-check that
    answers replays and reused keys without a trip through the broker. The account topology
    enforces the same rule on its own; this is the fast path, not the guarantee."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, ttl_s: int,
                 breaker: RedisBreaker, fallbacks: Counter) -> None:
        self._client = client
        self._prefix = f"{key_prefix}idempotency:"
        self.ttl_s = ttl_s
        self._breaker = breaker
        self._fallbacks = fallbacks

    def key(self, scope: str, idempotency_key: str) -> str:
        """The Redis key of an idempotency record."""
        return f"{self._prefix}{scope}:{idempotency_key}"

    async def claim(self, scope: str, idempotency_key: str, fingerprint: str) -> bool | None:
        """True when this is the key's first use; False for a replay of the same request;
        Problem 409 when the key was used for another request; None when Redis cannot tell
        (down or slow): the command goes on and the topology's idempotency decides."""
        key = self.key(scope, idempotency_key)

        async def claim_or_read() -> tuple[bool, bytes | str | None]:
            if await self._client.set(key, fingerprint, nx=True, ex=self.ttl_s):
                return True, fingerprint
            return False, await self._client.get(key)

        answer = await self._breaker.call(claim_or_read)
        if answer is None:
            self._fallbacks.inc(feature=IDEMPOTENCY)
            return None
        first, held = answer
        if first:
            return True
        if held is None:  # expired between the two calls: claim again
            return await self.claim(scope, idempotency_key, fingerprint)
        return replayed(held, fingerprint)

    async def release(self, scope: str, idempotency_key: str, fingerprint: str) -> None:
        """Forget a claim whose command never reached the broker, so a retry can proceed."""
        if not self._breaker.available():
            return  # the record expires on its own
        key = self.key(scope, idempotency_key)
        try:
            held = await self._client.get(key)
            if held is not None and _text(held) == fingerprint:
                await self._client.delete(key)
        except (RedisError, OSError) as error:
            self._breaker.failed(error)  # the record expires on its own


def replayed(held: bytes | str, fingerprint: str) -> bool:
    """False: the key's record is this request's (a replay); Problem 409 when it is another
    request's."""
    if _text(held) != fingerprint:
        raise Problem(409, "idempotency_key_reused",
                      "this Idempotency-Key was already used with a different request")
    return False


# An order's Redis work in one round trip: spend the user's budget; within it, claim the
# idempotency key (or read whose it is) and read the symbol's latest quote. Over the budget
# nothing is claimed, as when the two were separate calls.
_ADMIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if count > tonumber(ARGV[2]) then return {count} end
local claimed = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4])
local held = false
if not claimed then held = redis.call('GET', KEYS[2]) end
return {count, claimed and 1 or 0, held, redis.call('HGET', KEYS[3], ARGV[5])}
"""
_QUOTE_DECODER = msgspec.json.Decoder(Quote)


class Admission(NamedTuple):
    """What Redis said about an order: `claimed` as IdempotencyRecords.claim answers (None:
    Redis could not tell), and the symbol's latest quote (None: none, or Redis could not
    tell)."""

    claimed: bool | None
    quote: Quote | None


class _Call(NamedTuple):
    keys_count: int
    keys_and_args: tuple[Any, ...]
    answer: asyncio.Future[Any]


class ScriptBatches:
    """Calls of one Lua script sent together: the calls made while a batch is out go out as
    the next batch, one pipeline (one round trip on one pooled connection). Each call is
    still its own script run, atomic and in call order. Under load redis-py's work per command
    (taking a pooled connection, its retry wrapper, its checks) was about a quarter of the
    HTTP gateway's CPU per order; a batch pays it once."""

    def __init__(self, client: aioredis.Redis, script: str) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._waiting: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self.round_trips = 0

    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """The script's answer for `keys` and `args`; a RedisError or OSError when Redis
        failed this call (or the batch it was in)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(len(keys), (*keys, *args), answer))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_waiting())
        return await answer

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    replies = await self._send(batch)
                except (RedisError, OSError) as error:
                    # The calls queued meanwhile get the same answer now: they would wait
                    # out another timeout on a Redis that just failed one.
                    batch, self._waiting = batch + self._waiting, []
                    replies = [error] * len(batch)
                except asyncio.CancelledError:
                    for call in [*batch, *self._waiting]:
                        call.answer.cancel()
                    raise
                for call, reply in zip(batch, replies, strict=True):
                    if call.answer.done():  # its request was cancelled meanwhile
                        continue
                    if isinstance(reply, BaseException):
                        call.answer.set_exception(reply)
                    else:
                        call.answer.set_result(reply)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Call]) -> list[Any]:
        replies = await self._pipelined(batch)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:  # a Redis that restarted (or another one) does not know the script yet
            self._sha = await self._client.script_load(self._script)
            again = await self._pipelined([batch[i] for i in unknown])
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipelined(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._sha, call.keys_count, *call.keys_and_args)
        self.round_trips += 1
        return list(await pipe.execute(raise_on_error=False))


class OrderAdmission:
    """The rate limit, the idempotency claim and the reference quote of one order in one Redis
    round trip (a Lua script), with the same answers and the same fallbacks as
    `RateLimiter.hit`, `IdempotencyRecords.claim` and the quote cache one by one: while Redis
    is skipped or fails, the budget is counted in this process, the claim is None (the
    topology's idempotency decides) and there is no reference quote."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, limiter: RateLimiter,
                 records: IdempotencyRecords, breaker: RedisBreaker, fallbacks: Counter) -> None:
        self._admit = ScriptBatches(client, _ADMIT)
        self._limiter = limiter
        self._records = records
        self._quotes_key = quotes_key(key_prefix)
        self._breaker = breaker
        self._fallbacks = fallbacks

    @property
    def round_trips(self) -> int:
        """Pipelines sent to Redis so far (each with one or more orders' script runs)."""
        return self._admit.round_trips

    async def admit(self, user_id: str, limit_per_s: int, now_ms: int, scope: str,
                    idempotency_key: str, fingerprint: str, symbol: str) -> Admission:
        """Spend one request of the user's `orders` budget (Problem 429 past it), claim the
        key for `fingerprint` (Problem 409 when another request holds it) and read the quote."""
        keys = [self._limiter.window_key(user_id, "orders", now_ms),
                self._records.key(scope, idempotency_key), self._quotes_key]
        args: list[str | int] = [2000, limit_per_s, fingerprint, self._records.ttl_s, symbol]
        reply = await self._breaker.call(lambda: self._admit.call(keys, args))
        if reply is None:
            self._limiter.spend_locally(user_id, "orders", limit_per_s, now_ms)
            self._fallbacks.inc(feature=IDEMPOTENCY)
            self._fallbacks.inc(feature=QUOTES)
            return Admission(None, None)
        if int(reply[0]) > limit_per_s:
            raise _too_many("orders", limit_per_s, now_ms)
        _count, claimed, held, raw_quote = (list(reply) + [None, None, None])[:4]
        first: bool | None = True
        if not claimed:
            # None: cannot happen in one script; if it did, this process cannot tell.
            first = None if held is None else replayed(held, fingerprint)
        return Admission(first, _quote(raw_quote))


def _quote(raw: bytes | None) -> Quote | None:
    """The cached quote; a record that does not decode is no reference price (the order goes
    on and the topology decides, as when there is no quote)."""
    if raw is None:
        return None
    try:
        return _QUOTE_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
