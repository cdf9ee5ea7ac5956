"""The order's one Redis round trip (limits.OrderAdmission) against the embedded Redis: the
same answers as the rate limiter, the idempotency records and the quote cache one by one."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateways.http.limits import (
    IdempotencyRecords,
    OrderAdmission,
    RateLimiter,
    RedisBreaker,
)
from gateways.http.metrics import Metrics
from gateways.http.problems import Problem
from state.messages import Quote
from state.quote_cache import QuoteCache

NOW_MS = 1_700_000_000_000


def _quote() -> Quote:
    return Quote(symbol="AAPL", bid=Decimal("209.40"), ask=Decimal("209.45"),
                 bid_size=Decimal(100), ask_size=Decimal(100),
                 venue_time=dt.datetime(2024, 1, 2, 15, tzinfo=dt.UTC))


def _admission(client: Any, prefix: str, retry_after_s: float = 1.0
               ) -> tuple[OrderAdmission, RateLimiter, IdempotencyRecords, RedisBreaker]:
    """The gateway's admission on `client`, with the limiter, records and breaker it uses."""
    metrics = Metrics()
    breaker = RedisBreaker(retry_after_s)
    limiter = RateLimiter(client, prefix, breaker, metrics.redis_fallbacks)
    records = IdempotencyRecords(client, prefix, 60, breaker, metrics.redis_fallbacks)
    return (OrderAdmission(client, prefix, limiter, records, breaker, metrics.redis_fallbacks),
            limiter, records, breaker)


async def _scenario(redis_url: str, prefix: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    admission, limiter, records, breaker = _admission(client, prefix)
    seen: dict[str, Any] = {}
    try:
        first = await admission.admit("u1", 3, NOW_MS, "order:a1", "k1", "body-1", "AAPL")
        seen["first"] = first
        seen["replay"] = await admission.admit("u1", 3, NOW_MS, "order:a1", "k1", "body-1",
                                               "AAPL")
        with pytest.raises(Problem) as reused:
            await admission.admit("u1", 3, NOW_MS, "order:a1", "k1", "body-2", "AAPL")
        seen["reused"] = reused.value.status
        with pytest.raises(Problem) as limited:  # the 4th request of u1 in this second
            await admission.admit("u1", 3, NOW_MS, "order:a1", "k2", "body-3", "AAPL")
        seen["limited"] = (limited.value.status, limited.value.headers)
        # Past the budget nothing was claimed: the key is still free for its retry.
        seen["claim_after_limit"] = await records.claim("order:a1", "k2", "body-3")
        # The budget is the limiter's: a plain hit in the same second is over it too.
        with pytest.raises(Problem):
            await limiter.hit("u1", "orders", 3, NOW_MS)
        seen["next_second"] = await admission.admit("u1", 3, NOW_MS + 1000, "order:a1", "k3",
                                                    "body-4", "TSLA")
        # A key claimed one call at a time is seen the same way by the script.
        await records.claim("order:a1", "k4", "body-5")
        seen["mixed"] = await admission.admit("u2", 3, NOW_MS, "order:a1", "k4", "body-5",
                                              "AAPL")
    finally:
        await client.aclose()
    return seen


def test_admission_spends_claims_and_reads_the_quote_in_one_call(services: Any) -> None:
    prefix = f"adm{uuid.uuid4().hex[:6]}."
    QuoteCache(services.redis_url, prefix).put(_quote())
    seen = asyncio.run(_scenario(services.redis_url, prefix))
    assert seen["first"].claimed is True
    assert seen["first"].quote == _quote()
    assert seen["replay"].claimed is False
    assert seen["reused"] == 409
    assert seen["limited"][0] == 429 and "Retry-After" in seen["limited"][1]
    assert seen["claim_after_limit"] is True
    assert seen["next_second"].claimed is True and seen["next_second"].quote is None
    assert seen["mixed"].claimed is False


class _DownRedis:
    """A client whose every round trip fails, as a stopped Redis does."""

    calls = 0

    def register_script(self, _script: str) -> Any:
        async def call(**_: Any) -> Any:
            _DownRedis.calls += 1
            raise ConnectionError("Redis is down")
        return call

    def pipeline(self, transaction: bool = True) -> Any:
        return _DownPipeline()


class _DownPipeline:
    def evalsha(self, *_: Any) -> None:
        pass

    async def execute(self, raise_on_error: bool = True) -> Any:
        _DownRedis.calls += 1
        raise ConnectionError("Redis is down")


def test_without_redis_admission_counts_locally_and_cannot_tell() -> None:
    metrics = Metrics()
    breaker = RedisBreaker(60.0)
    client: Any = _DownRedis()
    limiter = RateLimiter(client, "", breaker, metrics.redis_fallbacks)
    records = IdempotencyRecords(client, "", 60, breaker, metrics.redis_fallbacks)
    admission = OrderAdmission(client, "", limiter, records, breaker, metrics.redis_fallbacks)

    async def scenario() -> list[Any]:
        answers = [await admission.admit("u1", 2, NOW_MS, "order:a1", f"k{i}", "b", "AAPL")
                   for i in range(2)]
        with pytest.raises(Problem) as limited:
            await admission.admit("u1", 2, NOW_MS, "order:a1", "k9", "b", "AAPL")
        return [*answers, limited.value.status]

    first, second, third = asyncio.run(scenario())
    assert first.claimed is None and first.quote is None and second.claimed is None
    assert third == 429
    assert _DownRedis.calls == 1  # the first failure opened the breaker: Redis skipped since
    text = metrics.render()
    for feature in ("rate_limit", "idempotency", "quotes"):
        assert f'gateway_redis_fallbacks_total{{feature="{feature}"}}' in text


async def _concurrent(redis_url: str, prefix: str) -> dict[str, Any]:
    """Forty orders of one user at once (a budget of 25), half of them on one key, with the
    script flushed from Redis first (a restarted Redis): they go out together."""
    client = aioredis.Redis.from_url(redis_url)
    admission, limiter, records, breaker = _admission(client, prefix)
    await client.script_flush()

    async def one(i: int) -> str:
        key = "same" if i % 2 else f"k{i}"
        try:
            answer = await admission.admit("u1", 25, NOW_MS, "order:a1", key, "body",
                                           "AAPL")
        except Problem as problem:
            return str(problem.status)
        return {True: "claimed", False: "replayed", None: "unknown"}[answer.claimed]

    try:
        answers = await asyncio.gather(*(one(i) for i in range(40)))
        count = int(await client.get(limiter.window_key("u1", "orders", NOW_MS)) or 0)
    finally:
        await client.aclose()
    return {"answers": answers, "round_trips": admission.round_trips, "count": count,
            "degraded": breaker.degraded}


def test_orders_admitted_at_once_get_the_answers_they_would_one_by_one(services: Any) -> None:
    seen = asyncio.run(_concurrent(services.redis_url, f"adm{uuid.uuid4().hex[:6]}."))
    answers = seen["answers"]
    assert not seen["degraded"]
    # Every call ran the script once, in call order: the first 25 spent the budget.
    assert seen["count"] == 40
    assert answers[25:] == ["429"] * 15
    assert answers[:25].count("claimed") == 14  # 13 distinct keys and the first "same"
    assert answers[:25].count("replayed") == 11  # "same" again with the same body
    assert answers[1] == "claimed"
    # One pipeline, refused as a whole for the unknown script, then sent again once loaded.
    assert seen["round_trips"] == 2


async def _frozen_redis_scenario() -> dict[str, Any]:
    """A Redis that takes the connection and never answers (frozen): the order whose batch
    is out and one that came meanwhile both fall back when that batch times out; the second
    is not sent to wait out a timeout of its own."""
    received = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            received.set()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # As the gateway's client (app.py): no retries, every wait bounded.
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5,
                            socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    admission, _limiter, _records, breaker = _admission(client, "", retry_after_s=60.0)
    try:
        first = asyncio.ensure_future(
            admission.admit("u1", 5, NOW_MS, "order:a1", "k1", "b1", "AAPL"))
        await received.wait()  # the first batch is out
        second = await admission.admit("u1", 5, NOW_MS, "order:a1", "k2", "b2", "AAPL")
        return {"first": await first, "second": second, "round_trips": admission.round_trips,
                "degraded": breaker.degraded}
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await client.aclose()


def test_orders_queued_behind_a_batch_redis_fails_fall_back_with_it() -> None:
    seen = asyncio.run(_frozen_redis_scenario())
    assert seen["first"].claimed is None and seen["second"].claimed is None
    assert seen["degraded"]
    assert seen["round_trips"] == 1
