"""Order placement without Redis: the gateway on a Redis of its own that the tests stop and
freeze (SIGSTOP), the embedded broker and shards, and the responder standing in for the
account topology (which keeps idempotency and prices market orders on its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from compose.embedded import ChildProcess, free_port, start_redis
from state.messages import Deposit, PlaceOrder
from state.quote_cache import QuoteCache
from state.shard_store import migrate
from tests.integration.gateways.test_http_gateway import ORDER, login, open_account, serve
from tests.integration.gateways.test_http_support import Responder, gateway_config, quote

pytestmark = pytest.mark.integration
MARKET_BUY = {"symbol": "AAPL", "side": "buy", "order_type": "market", "quantity": "5"}
# A frozen Redis may hold a request for one socket timeout (0.5 s) plus a pooled
# connection's wait; the broker round trip comes on top.
FROZEN_ANSWER_S_MAX = 2.0


@pytest.fixture
def databases(fresh_databases: tuple[str, ...]) -> tuple[str, ...]:
    for dsn in fresh_databases:
        migrate(dsn)
    return fresh_databases


@pytest.fixture
def responder(services: Any, topics: str) -> Iterator[Responder]:
    responder = Responder(services.bootstrap_servers, topics, services.account_partitions)
    yield responder
    responder.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[ChildProcess, str]]:
    """A Redis for this test alone (the session's Redis must stay up for everyone else)."""
    port = free_port()
    child = start_redis(port, tmp_path / "redis", tmp_path / "logs")
    try:
        yield child, f"redis://127.0.0.1:{port}/0"
    finally:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.popen.pid, signal.SIGCONT)  # a frozen process ignores SIGTERM
        child.stop(5)


async def post_order(client: TestClient, auth: dict[str, str], key: str,
                     body: dict[str, Any]) -> Any:
    return await client.post("/v1/orders", json=body, headers={**auth, "Idempotency-Key": key})


def fallbacks(metrics_text: str, feature: str) -> float:
    prefix = f'gateway_redis_fallbacks_total{{feature="{feature}"}} '
    lines = [line for line in metrics_text.splitlines() if line.startswith(prefix)]
    return float(lines[0][len(prefix):]) if lines else 0.0


async def next_second() -> None:
    """Wait for a fresh one-second window, so a burst falls in one."""
    await asyncio.sleep(1.02 - time.time() % 1)


def test_no_quote_then_redis_stopped_orders_still_flow(
        services: Any, topics: str, databases: tuple[str, ...], responder: Responder,
        own_redis: tuple[ChildProcess, str]) -> None:
    redis_child, redis_url = own_redis
    config = gateway_config(services, topics, databases, redis_url=redis_url,
                            orders_per_s_max=4, reply_wait_ms=1000)
    QuoteCache(redis_url, topics).put(quote("AAPL", "209.40", "209.45"))

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        account_id = await open_account(client, alice)
        # Redis up, no quote for MSFT: a limit order goes; a market buy gets the topology's
        # reason, not the gateway's.
        limit = await post_order(client, alice, "msft-limit",
                                 {**ORDER, "symbol": "MSFT", "account_id": account_id})
        assert limit.status == 201, await limit.text()
        market = await post_order(client, alice, "msft-market",
                                  {**MARKET_BUY, "symbol": "MSFT", "account_id": account_id})
        assert market.status == 422, await market.text()
        problem = await market.json()
        assert (problem["code"], problem["reason"]) == ("order_rejected", "no_reference_price")

        redis_child.stop(5)
        await next_second()
        body = {**ORDER, "account_id": account_id}
        placed = await post_order(client, alice, "down-limit", body)
        assert placed.status == 201, await placed.text()
        assert (await placed.json())["state"] == "funds_held"
        market = await post_order(client, alice, "down-market",
                                  {**MARKET_BUY, "account_id": account_id})
        assert market.status == 422, await market.text()
        assert (await market.json())["reason"] == "no_reference_price"
        reused = await post_order(client, alice, "down-limit", {**body, "quantity": "11"})
        assert reused.status == 409, await reused.text()
        assert (await reused.json())["code"] == "idempotency_key_reused"
        replay = await post_order(client, alice, "down-limit", body)
        assert replay.status in (200, 202), await replay.text()
        await next_second()  # the replay waited for an answer the topology does not give
        deposit = await client.post(f"/v1/accounts/{account_id}/deposits",
                                    json={"amount": "100.00"},
                                    headers={**alice, "Idempotency-Key": "down-dep"})
        assert deposit.status == 201, await deposit.text()

        await next_second()
        burst = await asyncio.gather(*(post_order(client, alice, f"burst-{i}", body)
                                       for i in range(7)))
        statuses = sorted(r.status for r in burst)
        assert statuses.count(429) == 3, statuses  # the same budget, counted in-process
        limited = next(r for r in burst if r.status == 429)
        assert int(limited.headers["Retry-After"]) >= 1

        health = await client.get("/healthz")
        assert health.status == 200, await health.text()
        report = await health.json()
        assert report["status"] == "degraded" and report["checks"]["redis"] == "degraded"
        text = await (await client.get("/metrics")).text()
        assert fallbacks(text, "rate_limit") >= 7
        assert fallbacks(text, "idempotency") >= 3
        assert "gateway_redis_degraded 1" in text

    serve(config, scenario)
    places = {c.idempotency_key: c for c in responder.commands if isinstance(c, PlaceOrder)}
    assert places["msft-limit"].reference_price is None
    assert places["down-limit"].reference_price is None  # the quote cache was down
    assert places["down-limit"].quantity == Decimal("10")  # the first body stands
    assert any(isinstance(c, Deposit) for c in responder.commands)


def test_a_frozen_redis_holds_no_request_long(
        services: Any, topics: str, databases: tuple[str, ...], responder: Responder,
        own_redis: tuple[ChildProcess, str]) -> None:
    redis_child, redis_url = own_redis
    config = gateway_config(services, topics, databases, redis_url=redis_url,
                            reply_wait_ms=1000)
    QuoteCache(redis_url, topics).put(quote("AAPL", "209.40", "209.45"))

    async def timed(call: Any) -> tuple[Any, float]:
        started = time.monotonic()
        response = await call
        return response, time.monotonic() - started

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        account_id = await open_account(client, alice)
        body = {**ORDER, "account_id": account_id}
        warm = await post_order(client, alice, "warm", body)  # pooled connections now open
        assert warm.status == 201, await warm.text()
        os.kill(redis_child.popen.pid, signal.SIGSTOP)
        try:
            first, first_s = await timed(post_order(client, alice, "frozen-1", body))
            assert first.status == 201, await first.text()
            assert first_s < FROZEN_ANSWER_S_MAX, first_s
            others = await asyncio.gather(*(
                timed(post_order(client, alice, f"frozen-{i}", body)) for i in range(2, 6)))
            for response, elapsed_s in others:
                assert response.status == 201, await response.text()
                assert elapsed_s < FROZEN_ANSWER_S_MAX, elapsed_s
            market, market_s = await timed(post_order(
                client, alice, "frozen-market", {**MARKET_BUY, "account_id": account_id}))
            assert market.status == 422 and market_s < FROZEN_ANSWER_S_MAX
            assert (await market.json())["reason"] == "no_reference_price"
            health, health_s = await timed(client.get("/healthz"))
            assert health.status == 200 and health_s < FROZEN_ANSWER_S_MAX
            assert (await health.json())["checks"]["redis"] == "degraded"
        finally:
            os.kill(redis_child.popen.pid, signal.SIGCONT)
        await asyncio.sleep(config.redis_retry_after_ms / 1000 + 0.1)
        recovered = await post_order(client, alice, "thawed", body)
        assert recovered.status == 201, await recovered.text()
        # Redis answers again: the pre-check catches the reused key before the broker does.
        reused = await post_order(client, alice, "thawed", {**body, "quantity": "12"})
        assert reused.status == 409
        health = await client.get("/healthz")
        assert (await health.json())["checks"]["redis"] == "ok"

    serve(config, scenario)
    keys = [c.idempotency_key for c in responder.commands if isinstance(c, PlaceOrder)]
    assert keys.count("thawed") == 1  # the 409 after recovery came from Redis
