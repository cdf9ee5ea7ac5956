"""The HTTP gateway on the embedded broker, PostgreSQL shards and Redis: the real stores and
Kafka clients, with a tiny responder standing in for the account topology."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from compose.embedded import free_port
from gateways.http.app import create_app
from gateways.http.bus import CommandProducer
from gateways.http.config import HttpConfig
from gateways.http.context import GATEWAY
from state.ids import order_id_for
from state.messages import Candle, OrderState, PlaceOrder
from state.quote_cache import QuoteCache
from state.shard_store import connect, migrate, write_batch
from tests.integration.gateways.test_http_support import Responder, gateway_config, quote
from tests.integration.sinks import ledger_builders as ledger
from tests.openapi_answers import CheckedClient

pytestmark = pytest.mark.integration
Scenario = Callable[[TestClient], Awaitable[None]]


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


def serve(config: HttpConfig, scenario: Scenario) -> None:
    async def main() -> None:
        async with CheckedClient(TestServer(create_app(config))) as client:
            await scenario(client)

    asyncio.run(main())


async def login(client: TestClient, user: str) -> dict[str, str]:
    response = await client.post("/v1/auth/token", json={"user_id": user})
    assert response.status == 201
    return {"Authorization": f"Bearer {(await response.json())['token']}"}


async def open_account(client: TestClient, auth: dict[str, str]) -> str:
    response = await client.post("/v1/accounts", json={}, headers=auth)
    assert response.status == 201, await response.text()
    return str((await response.json())["account_id"])


ORDER = {"symbol": "AAPL", "side": "buy", "order_type": "limit", "quantity": "10",
         "limit_price": "209.50"}


def test_accounts_deposits_orders_portfolio_and_health(
        services: Any, topics: str, databases: tuple[str, ...], responder: Responder) -> None:
    config = gateway_config(services, topics, databases)
    QuoteCache(services.redis_url, topics).put(quote("AAPL", "209.40", "209.45"))

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        account_id = await open_account(client, alice)
        got = await client.get(f"/v1/accounts/{account_id}", headers=alice)
        assert got.status == 200 and (await got.json())["user_id"] == "alice"
        bob = await login(client, "bob")
        assert (await client.get(f"/v1/accounts/{account_id}", headers=bob)).status == 404

        deposit = await client.post(f"/v1/accounts/{account_id}/deposits",
                                    json={"amount": "1000.00"},
                                    headers={**alice, "Idempotency-Key": "dep-1"})
        assert deposit.status == 201, await deposit.text()
        assert (await deposit.json())["txn_id"] == "txn_test"
        refused = await client.post(f"/v1/accounts/{account_id}/deposits",
                                    json={"amount": "9000.00"},
                                    headers={**alice, "Idempotency-Key": "dep-2"})
        assert refused.status == 422 and (await refused.json())["code"] == "deposit_limit"

        order_headers = {**alice, "Idempotency-Key": "ord-1"}
        placed = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                   headers=order_headers)
        assert placed.status == 201, await placed.text()
        order = await placed.json()
        assert order["order_id"] == order_id_for(account_id, "ord-1")
        assert order["state"] == "funds_held"
        replay = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                   headers=order_headers)
        assert replay.status in (200, 202)
        assert (await replay.json())["order_id"] == order["order_id"]
        other = await client.post("/v1/orders",
                                  json={**ORDER, "account_id": account_id, "quantity": "11"},
                                  headers=order_headers)
        assert other.status == 409
        rejected = await client.post(
            "/v1/orders", json={**ORDER, "account_id": account_id, "quantity": "5000"},
            headers={**alice, "Idempotency-Key": "ord-2"})
        assert rejected.status == 422
        assert (await rejected.json())["reason"] == "insufficient_buying_power"

        portfolio = await client.get(f"/v1/portfolio?account_id={account_id}", headers=alice)
        assert portfolio.status == 200, await portfolio.text()
        body = await portfolio.json()
        assert body["account_id"] == account_id and "equity" in body
        assert isinstance(body["cash"], str)
        quotes = await client.get("/v1/quotes?symbols=AAPL,MSFT", headers=alice)
        assert (await quotes.json())["missing"] == ["MSFT"]
        health = await client.get("/healthz")
        assert health.status == 200, await health.text()
        assert set((await health.json())["checks"]) == {"broker", "redis", "shard0", "shard1"}

    serve(config, scenario)
    places = [c for c in responder.commands if isinstance(c, PlaceOrder)]
    # the 409 never reached the topic; the replay may be answered from the shard or not
    assert {c.quantity for c in places} <= {Decimal("10"), Decimal("5000")}
    assert all(c.reference_price is not None for c in places)


def land(dsn: str, postings: list[Any], events: list[Any]) -> None:
    """What the shard sink would have written (no sink runs here)."""
    with connect(dsn) as conn:
        write_batch(conn, postings, events)


def test_every_operation_answers_as_its_schema_says(
        services: Any, topics: str, databases: tuple[str, ...], responder: Responder) -> None:
    """Each read and command once, on the real stores: the client checks every answer against
    the published document (the assertions here only steer to each kind of answer)."""
    config = gateway_config(services, topics, databases, reply_wait_ms=300)
    cache = QuoteCache(services.redis_url, topics)
    cache.put(quote("AAPL", "209.40", "209.45"))
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    cache.write([], [Candle(symbol="AAPL", interval="1m", start=now,
                            end=now + dt.timedelta(minutes=1), open=Decimal("209.40"),
                            high=Decimal("209.50"), low=Decimal("209.30"),
                            close=Decimal("209.45"), volume=Decimal(300),
                            vwap=Decimal("209.4123"), trades=3)])

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        opened = await client.post("/v1/accounts", json={}, headers=alice)
        account = await opened.json()
        account_id, dsn = account["account_id"], databases[account["shard"]]
        assert (await client.get("/v1/accounts", headers=alice)).status == 200
        money = {**alice, "Idempotency-Key": "dep-1"}
        url = f"/v1/accounts/{account_id}/deposits"
        assert (await client.post(url, json={"amount": "1000"}, headers=money)).status == 201
        txn = ledger.deposit(account_id, "1000.00", "dep-1")
        land(dsn, [txn], [ledger.accepted(account_id, "dep-1", txn)])
        retried = await client.post(url, json={"amount": "1000"}, headers=money)
        assert retried.status == 200, await retried.text()
        outcome = await client.get(f"/v1/accounts/{account_id}/commands/dep-1", headers=alice)
        assert (await outcome.json())["status"] == "accepted"
        withdrawal = await client.post(f"/v1/accounts/{account_id}/withdrawals",
                                       json={"amount": "5"},
                                       headers={**alice, "Idempotency-Key": "wd-1"})
        assert withdrawal.status == 202  # the responder does not answer withdrawals
        pending = await client.get(f"/v1/accounts/{account_id}/commands/wd-1", headers=alice)
        assert (await pending.json())["status"] == "pending"
        missing = await client.get(f"/v1/accounts/{account_id}/commands/nope", headers=alice)
        assert missing.status == 404

        placed = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                   headers={**alice, "Idempotency-Key": "ord-1"})
        assert placed.status == 201, await placed.text()
        order_id = (await placed.json())["order_id"]
        held = ledger.order_event(account_id, "ord-1", 0, OrderState.FUNDS_HELD)
        fill = ledger.order_event(account_id, "ord-1", 1, OrderState.PARTIALLY_FILLED,
                                  filled="4")
        land(dsn, [ledger.fill(account_id, order_id, "x1", "buy", "AAPL", "4", "209.45")], [
            msgspec.structs.replace(held, held_amount=Decimal("2095.00")),
            msgspec.structs.replace(fill, previous_state=OrderState.FUNDS_HELD,
                                    last_fill_quantity=Decimal(4),
                                    last_fill_price=Decimal("209.45"),
                                    average_fill_price=Decimal("209.45"),
                                    held_amount=Decimal("2095.00"))])
        read = await (await client.get(f"/v1/orders/{order_id}", headers=alice)).json()
        assert (read["held_usd"], read["events"][1]["last_fill_price"]) == ("2095.00", "209.45")
        assert (await client.get("/v1/orders", headers=alice)).status == 200
        assert (await client.get("/v1/orders/ord_none", headers=alice)).status == 404
        changed = await client.patch(f"/v1/orders/{order_id}",
                                     json={"account_id": account_id, "quantity": "12"},
                                     headers={**alice, "Idempotency-Key": "rep-1"})
        assert changed.status in (200, 202, 422), await changed.text()
        cancel = await client.delete(f"/v1/orders/{order_id}", headers=alice)
        assert cancel.status == 202  # the responder does not answer cancels

        folio = await client.get(f"/v1/portfolio?account_id={account_id}", headers=alice)
        assert (await folio.json())["ledger_seq"] is not None
        activities = await client.get(f"/v1/activities?account_id={account_id}",
                                      headers=alice)
        assert len((await activities.json())["activities"]) >= 2
        quotes = await client.get("/v1/quotes?symbols=AAPL,MSFT", headers=alice)
        assert len((await quotes.json())["quotes"]) == 1
        candles = await client.get("/v1/candles/AAPL?interval=1m", headers=alice)
        assert len((await candles.json())["candles"]) == 1
        assert (await client.get("/v1/candles/AAPL?interval=7m", headers=alice)).status == 400
        assert (await client.get("/v1/nowhere", headers=alice)).status == 404

    serve(config, scenario)


BAD_BODIES: list[tuple[dict[str, Any] | bytes, int, str]] = [
    (b'{"symbol": "AAPL", ', 400, "malformed_json"),
    ({"quantity": "NaN"}, 422, "not_finite"),
    ({"quantity": "Infinity"}, 422, "not_finite"),
    ({"quantity": "-5"}, 422, "not_positive"),
    ({"quantity": "0"}, 422, "not_positive"),
    ({"quantity": "100000000000000000000"}, 422, "too_large"),
    ({"quantity": "1.0000001"}, 422, "too_many_decimals"),
    ({"limit_price": "209.501"}, 422, "invalid_tick_size"),
    ({"side": "sideways"}, 422, "invalid_field"),
    ({"symbol": "AAPL\n"}, 422, "invalid_field"),  # lower case is read as upper case
    (b"{" + b" " * 20000 + b"}", 413, "body_too_large"),
]


def test_bad_input_gets_a_problem_and_nothing_reaches_the_topic(
        services: Any, topics: str, databases: tuple[str, ...], responder: Responder) -> None:
    config = gateway_config(services, topics, databases, token_ttl_s=60, orders_per_s_max=100)
    QuoteCache(services.redis_url, topics).put(quote("AAPL", "209.40", "209.45"))

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        account_id = await open_account(client, alice)
        bob = await login(client, "bob")
        for index, (change, status, code) in enumerate(BAD_BODIES):
            headers = {**alice, "Idempotency-Key": f"bad-{index}",
                       "Content-Type": "application/json"}
            data = change if isinstance(change, bytes) else json.dumps(
                {**ORDER, "account_id": account_id, **change}).encode()
            response = await client.post("/v1/orders", data=data, headers=headers)
            assert response.status == status, (change, await response.text())
            assert response.content_type == "application/problem+json"
            assert (await response.json())["code"] == code, change
        foreign = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                    headers={**bob, "Idempotency-Key": "x"})
        assert foreign.status == 404
        # The token's minute has passed: the gateway's clock moves, not the test's (a sleep
        # as long as the token's life lost the race on a busy machine).
        gateway = client.app[GATEWAY]  # type: ignore[index]
        later = gateway.clock() + dt.timedelta(seconds=61)
        gateway.clock = lambda: later
        expired = await client.get("/v1/accounts", headers=alice)
        assert expired.status == 401 and (await expired.json())["code"] == "token_expired"
        health = await client.get("/healthz")
        assert health.status == 200  # still serving

    serve(config, scenario)
    time.sleep(0.3)
    assert responder.commands == []


def test_no_answer_is_202_and_a_broker_that_cannot_take_the_command_is_503(
        services: Any, topics: str, databases: tuple[str, ...]) -> None:
    config = gateway_config(services, topics, databases, reply_wait_ms=300)
    QuoteCache(services.redis_url, topics).put(quote("AAPL", "209.40", "209.45"))

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        account_id = await open_account(client, alice)
        body = {**ORDER, "account_id": account_id}
        pending = await client.post("/v1/orders", json=body,
                                    headers={**alice, "Idempotency-Key": "slow-1"})
        assert pending.status == 202
        assert (await pending.json())["order_id"] == order_id_for(account_id, "slow-1")
        gateway = client.app[GATEWAY]  # type: ignore[index]
        healthy = gateway.producer
        dead = CommandProducer(f"127.0.0.1:{free_port()}", delivery_timeout_ms=500)
        gateway.producer = dead
        try:
            down = await client.post("/v1/orders", json=body,
                                     headers={**alice, "Idempotency-Key": "down-1"})
            assert down.status == 503
            assert (await down.json())["code"] == "broker_unavailable"
        finally:
            gateway.producer = healthy
            await asyncio.get_running_loop().run_in_executor(None, dead.close, 0.1)
        retried = await client.post("/v1/orders", json=body,
                                    headers={**alice, "Idempotency-Key": "down-1"})
        assert retried.status == 202  # the key was released: the retry goes through

    serve(config, scenario)


def test_orders_rate_limit_in_redis(services: Any, topics: str,
                                    databases: tuple[str, ...]) -> None:
    config = gateway_config(services, topics, databases, orders_per_s_max=3, reply_wait_ms=10)
    QuoteCache(services.redis_url, topics).put(quote("AAPL", "209.40", "209.45"))

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        account_id = await open_account(client, alice)
        body = {**ORDER, "account_id": account_id}
        responses = await asyncio.gather(*(
            client.post("/v1/orders", json=body, headers={**alice, "Idempotency-Key": f"r{i}"})
            for i in range(8)))
        statuses = sorted(r.status for r in responses)
        assert 429 in statuses, statuses
        limited = next(r for r in responses if r.status == 429)
        assert int(limited.headers["Retry-After"]) >= 1

    serve(config, scenario)


def test_run_serves_until_sigterm(services: Any, topics: str,
                                  databases: tuple[str, ...]) -> None:
    config = gateway_config(services, topics, databases)
    code = ("import msgspec, sys; from gateways.http.config import HttpConfig; "
            "from gateways.http.service import run; "
            "run(msgspec.json.decode(sys.argv[1], type=HttpConfig))")
    process = subprocess.Popen([sys.executable, "-c", code,
                                msgspec.json.encode(config).decode()],
                               cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.2)
            status = asyncio.run(_status(f"http://127.0.0.1:{config.port}/healthz"))
        assert status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def _status(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return None
