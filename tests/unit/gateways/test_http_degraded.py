"""The write path without Redis or market data: the breaker, the in-process budgets, the
idempotency pre-check that steps aside, and the API answers (orders without a reference price,
the topology's duplicate-key refusal as 409, /healthz degraded, /metrics counting).

python -m pytest -q tests/unit/gateways/test_http_degraded.py
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateways.http import routes
from gateways.http.limits import (
    IdempotencyRecords,
    LocalRateLimiter,
    RateLimiter,
    RedisBreaker,
)
from gateways.http.metrics import Counter
from gateways.http.openapi import openapi_document
from gateways.http.problems import Problem
from state.domain.risk import Reason
from state.exceptions import StoreError
from state.ids import order_id_for
from state.messages import (
    CancelOrder,
    CommandRejected,
    Deposit,
    Message,
    OrderEvent,
    OrderState,
    OrderType,
    PlaceOrder,
    ReplaceOrder,
    Side,
    TimeInForce,
)
from tests.unit.gateways.test_http_api import ORDER, accept_everything, bearer, new_account, run
from tests.unit.gateways.test_http_fakes import NOW, Fakes, quote, shard_order
from tests.unit.gateways.test_http_replace import answer_replaces, open_order

MARKET_BUY = {"symbol": "AAPL", "side": "buy", "order_type": "market", "quantity": "5",
              "limit_price": None}


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class DownRedis:
    """A Redis client whose every call fails as a stopped (or frozen) server's would."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self._error = error or RedisConnectionError("Connection refused")

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self._error

    def register_script(self, script: str) -> Any:
        return self._fail

    set = get = delete = ping = _fail


class DownQuotes:
    async def get(self, symbol: str) -> Any:
        raise StoreError("quote cache: cannot read quotes: Timeout reading from socket")

    async def get_many(self, symbols: Any) -> Any:
        raise StoreError("quote cache: cannot read quotes: Timeout reading from socket")


def duplicate_key_refused(message: Message) -> list[Any]:
    """The topology's idempotency: quantity 11 stands for another body under a used key."""
    if isinstance(message, PlaceOrder) and message.quantity == 11:
        return [CommandRejected(
            event_id="dup", account_id=message.account_id,
            idempotency_key=message.idempotency_key, command_type="place_order",
            reason=Reason.DUPLICATE_IDEMPOTENCY_KEY, occurred_at=NOW,
            detail="key already used by another place_order",
            order_id=order_id_for(message.account_id, message.idempotency_key))]
    if isinstance(message, PlaceOrder) and message.quantity == 12:
        return []  # the same body again: the topology says nothing
    return topology_prices(message)


def topology_prices(message: Message) -> list[Any]:
    """accept_everything, and a market buy without a reference price rejected as the
    topology does."""
    if (isinstance(message, PlaceOrder) and message.order_type is OrderType.MARKET
            and message.side is Side.BUY and message.reference_price is None):
        order_id = order_id_for(message.account_id, message.idempotency_key)
        return [OrderEvent(
            event_id=f"{order_id}:1", account_id=message.account_id, order_id=order_id, seq=1,
            state=OrderState.REJECTED, symbol=message.symbol, side=message.side,
            order_type=message.order_type, quantity=message.quantity,
            time_in_force=message.time_in_force, filled_quantity=Decimal(0),
            occurred_at=NOW, cause_id=message.idempotency_key,
            idempotency_key=message.idempotency_key, reason=Reason.NO_REFERENCE_PRICE,
            detail="a market buy needs a recent quote")]
    return accept_everything(message)


def without_redis(fakes: Fakes, redis: DownRedis | None = None) -> RedisBreaker:
    """The real limiter and idempotency records, on a Redis that is down."""
    client: Any = redis or DownRedis()
    gateway = fakes.gateway
    breaker = RedisBreaker(60.0)
    fallbacks = gateway.metrics.redis_fallbacks
    gateway.breaker = breaker
    gateway.redis = client
    gateway.limiter = RateLimiter(client, "", breaker, fallbacks)
    gateway.idempotency = IdempotencyRecords(client, "", 3600, breaker, fallbacks)
    return breaker


async def place(client: TestClient, account_id: str, key: str, **changes: Any) -> Any:
    return await client.post("/v1/orders", json={**ORDER, "account_id": account_id, **changes},
                             headers={**bearer("alice"), "Idempotency-Key": key})


def produced(fakes: Fakes, kind: type) -> list[Any]:
    return [m for _t, _k, m in fakes.producer.produced if isinstance(m, kind)]


# ---- the parts -----------------------------------------------------------------------------


def test_breaker_skips_redis_for_a_while_after_a_failure() -> None:
    clock = Clock()
    breaker = RedisBreaker(1.0, clock)
    assert breaker.available() and not breaker.degraded
    breaker.failed(RedisTimeoutError("Timeout reading from socket"))
    assert not breaker.available() and breaker.degraded
    assert "Timeout" in (breaker.last_error or "")
    clock.now_s += 0.99
    assert not breaker.available()
    clock.now_s += 0.02
    assert breaker.available() and breaker.degraded  # a probe may go; still degraded
    breaker.succeeded()
    assert breaker.available() and not breaker.degraded


def test_local_budgets_are_fixed_one_second_windows_per_user_and_bucket() -> None:
    limiter = LocalRateLimiter()

    async def main() -> None:
        for _ in range(3):
            await limiter.hit("alice", "orders", 3, 5_000)
        with pytest.raises(Problem) as caught:
            await limiter.hit("alice", "orders", 3, 5_400)
        assert caught.value.status == 429 and caught.value.code == "rate_limited"
        assert caught.value.headers["Retry-After"] == "1"
        await limiter.hit("bob", "orders", 3, 5_500)  # another user
        await limiter.hit("alice", "reads", 3, 5_500)  # another bucket
        await limiter.hit("alice", "orders", 3, 6_000)  # a new second

    asyncio.run(main())
    assert limiter.count("carol", "orders", 6_100) == 1
    assert len(limiter._counts) == 2  # only the current second is kept


def test_limiter_falls_back_in_process_and_skips_redis_while_it_is_down() -> None:
    redis = DownRedis(RedisTimeoutError("Timeout reading from socket"))
    breaker = RedisBreaker(60.0)
    fallbacks = Counter("f", "f")
    limiter = RateLimiter(redis, "", breaker, fallbacks)  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(2):
            await limiter.hit("alice", "orders", 2, 1_000)
        with pytest.raises(Problem) as caught:
            await limiter.hit("alice", "orders", 2, 1_001)
        assert caught.value.status == 429

    asyncio.run(main())
    assert redis.calls == 1  # the first failure opened the breaker
    assert fallbacks.values[(("feature", "rate_limit"),)] == 3


def test_idempotency_steps_aside_without_redis() -> None:
    redis = DownRedis()
    breaker = RedisBreaker(60.0)
    fallbacks = Counter("f", "f")
    records = IdempotencyRecords(redis, "", 3600, breaker, fallbacks)  # type: ignore[arg-type]

    async def main() -> None:
        assert await records.claim("order:a", "k", "body-1") is None
        assert await records.claim("order:a", "k", "body-2") is None  # the topology decides
        await records.release("order:a", "k", "body-1")

    asyncio.run(main())
    assert redis.calls == 1
    assert fallbacks.values[(("feature", "idempotency"),)] == 2


# ---- the API -------------------------------------------------------------------------------


def test_no_quote_sends_the_order_without_a_reference_price() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = topology_prices
        account_id = await new_account(client)
        limit = await place(client, account_id, "k1", symbol="ZZZZ")
        assert limit.status == 201, await limit.text()
        market = await place(client, account_id, "k2", **MARKET_BUY)
        assert market.status == 422
        problem = await market.json()
        assert (problem["code"], problem["reason"]) == ("order_rejected", "no_reference_price")
        assert problem["order_id"] == order_id_for(account_id, "k2")
        [first, second] = produced(fakes, PlaceOrder)
        assert (first.symbol, first.reference_price, first.reference_time) == ("ZZZZ", None,
                                                                               None)
        assert second.order_type is OrderType.MARKET and second.reference_price is None

    run(scenario)


def test_a_quote_still_gives_the_reference_price() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = topology_prices
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        account_id = await new_account(client)
        market = await place(client, account_id, "k1", **MARKET_BUY)
        assert market.status == 201, await market.text()
        [command] = produced(fakes, PlaceOrder)
        assert (command.reference_price, command.reference_time) == (Decimal("209.45"), NOW)

    run(scenario)


def test_quote_cache_down_counts_and_orders_go_on() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = topology_prices
        fakes.gateway.quotes = DownQuotes()
        account_id = await new_account(client)
        assert (await place(client, account_id, "k1")).status == 201
        market = await place(client, account_id, "k2", **MARKET_BUY)
        assert (await market.json())["reason"] == "no_reference_price"
        text = await (await client.get("/metrics")).text()
        assert 'gateway_redis_fallbacks_total{feature="quotes"} 2.0' in text

    run(scenario)


def test_without_redis_orders_money_replace_and_cancel_still_work() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        without_redis(fakes)

        def respond(message: Message) -> list[Any]:
            if isinstance(message, CancelOrder):
                return [OrderEvent(
                    event_id="c", account_id=message.account_id, order_id=message.order_id,
                    seq=3, state=OrderState.CANCELLED, symbol="AAPL", side=Side.BUY,
                    order_type=OrderType.LIMIT, quantity=Decimal(10),
                    time_in_force=TimeInForce.DAY,
                    filled_quantity=Decimal(0), occurred_at=NOW, cause_id=message.idempotency_key,
                    idempotency_key="place-1")]
            return answer_replaces(message) + topology_prices(message)

        fakes.producer.respond = respond
        account_id, order_id = await open_order(client, fakes)
        placed = await place(client, account_id, "k1")
        assert placed.status == 201, await placed.text()
        deposit = await client.post(f"/v1/accounts/{account_id}/deposits",
                                    json={"amount": "100.00"},
                                    headers={**bearer("alice"), "Idempotency-Key": "d1"})
        assert deposit.status == 201, await deposit.text()
        replaced = await client.patch(f"/v1/orders/{order_id}",
                                      json={"account_id": account_id, "quantity": "12"},
                                      headers={**bearer("alice"), "Idempotency-Key": "r1"})
        assert replaced.status == 200, await replaced.text()
        cancelled = await client.delete(f"/v1/orders/{order_id}", headers=bearer("alice"))
        assert cancelled.status == 200, await cancelled.text()
        assert [type(m) for _t, _k, m in fakes.producer.produced] == [
            PlaceOrder, Deposit, ReplaceOrder, CancelOrder]

    run(scenario)


def test_without_redis_the_topology_catches_a_reused_key() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        without_redis(fakes)
        fakes.producer.respond = duplicate_key_refused
        account_id = await new_account(client)
        first = await place(client, account_id, "k1")
        assert first.status == 201
        reused = await place(client, account_id, "k1", quantity="11")
        assert reused.status == 409, await reused.text()
        body = await reused.json()
        assert (body["code"], body["reason"]) == ("idempotency_key_reused",
                                                  "duplicate_idempotency_key_different_body")
        # The same body again: no answer from the topology; the shard has not the order yet.
        pending = await place(client, account_id, "k2", quantity="12")
        assert pending.status == 202
        order_id = order_id_for(account_id, "k2")
        fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(
            account_id, order_id, state="routed", quantity=Decimal(12))
        known = await place(client, account_id, "k2", quantity="12")
        assert known.status == 200 and (await known.json())["order_id"] == order_id
        text = await (await client.get("/metrics")).text()
        assert 'gateway_redis_fallbacks_total{feature="idempotency"} 4.0' in text
        assert 'gateway_redis_fallbacks_total{feature="rate_limit"}' in text

    run(scenario, reply_wait_ms=100)


def test_the_redis_path_maps_the_topology_refusal_too() -> None:
    """A key whose Redis record expired is caught by the topology: the same 409."""
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = duplicate_key_refused
        account_id = await new_account(client)
        reused = await place(client, account_id, "k1", quantity="11")
        assert reused.status == 409
        assert fakes.idempotency.records == {}  # released: nothing was taken

    run(scenario)


def test_without_redis_the_budget_still_holds() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        without_redis(fakes)
        fakes.producer.respond = topology_prices
        account_id = await new_account(client)  # one of the three
        statuses = sorted([(await place(client, account_id, f"k{i}")).status
                           for i in range(4)])
        assert statuses == [201, 201, 429, 429]

    run(scenario, orders_per_s_max=3)


def test_healthz_reports_redis_degraded_not_down(monkeypatch: pytest.MonkeyPatch) -> None:
    async def shard_up(dsn: str) -> bool:
        return True

    monkeypatch.setattr(routes, "_check_shard", shard_up)

    async def scenario(client: TestClient, fakes: Fakes) -> None:
        without_redis(fakes)
        health = await client.get("/healthz")
        assert health.status == 200, await health.text()
        body = await health.json()
        assert body["status"] == "degraded" and body["checks"]["redis"] == "degraded"
        fakes.producer.failing = True  # the broker down is still down
        assert (await client.get("/healthz")).status == 503

    run(scenario)


def test_openapi_says_where_symbol_validity_rests() -> None:
    description = openapi_document()["paths"]["/v1/orders"]["post"]["description"]
    assert "no_reference_price" in description and "market maker" in description


def test_stream_subscribe_survives_a_quote_cache_that_is_down() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.gateway.quotes = DownQuotes()
        token = bearer("alice")["Authorization"].removeprefix("Bearer ")
        async with client.ws_connect("/v1/stream") as ws:
            await ws.send_json({"op": "auth", "token": token})
            assert (await ws.receive_json(timeout=2))["type"] == "authenticated"
            await ws.send_json({"op": "subscribe", "quotes": ["AAPL"]})
            subscribed = await ws.receive_json(timeout=2)
            assert (subscribed["type"], subscribed["quotes"]) == ("subscribed", ["AAPL"])
            await ws.send_json({"op": "ping"})
            assert (await ws.receive_json(timeout=2))["type"] == "pong"

    run(scenario)
