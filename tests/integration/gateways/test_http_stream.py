"""WebSocket /v1/stream on the embedded broker and Redis: auth, subscriptions, quotes from the
`quotes` topic, the user's own order updates from `orders.events`, error frames."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Producer

from gateways.http.app import create_app
from state import topics as t
from state.messages import OrderEvent, OrderState, OrderType, Side, TimeInForce
from state.quote_cache import QuoteCache
from state.shard_store import migrate
from tests.integration.gateways.test_http_support import gateway_config, quote

pytestmark = pytest.mark.integration


def order_event(account_id: str, order_id: str) -> OrderEvent:
    return OrderEvent(
        event_id=f"{order_id}:1", account_id=account_id, order_id=order_id, seq=1,
        state=OrderState.ROUTED, symbol="AAPL", side=Side.BUY, order_type=OrderType.MARKET,
        quantity=Decimal(1), time_in_force=TimeInForce.DAY, filled_quantity=Decimal(0),
        occurred_at=dt.datetime.now(dt.UTC), cause_id="c", idempotency_key="k")


async def next_frame(ws: Any, kind: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The next frame of `kind`, skipping heartbeats and other kinds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        message = await ws.receive(timeout=max(remaining, 0.01))
        assert message.type == WSMsgType.TEXT, message
        frame = message.json()
        if frame["type"] == kind:
            return dict(frame)


def test_stream_quotes_order_updates_and_error_frames(
        services: Any, topics: str, fresh_databases: tuple[str, ...]) -> None:
    for dsn in fresh_databases:
        migrate(dsn)
    config = gateway_config(services, topics, fresh_databases, ws_heartbeat_s=0.5)
    QuoteCache(services.redis_url, topics).put(quote("AAPL", "209.40", "209.45"))
    producer = Producer({"bootstrap.servers": services.bootstrap_servers,
                         "partitioner": "murmur2_random", "linger.ms": 0})

    def produce(topic: t.Topic, key: str, message: Any) -> None:
        producer.produce(topics + topic, key=key.encode(), value=t.encode(message))
        producer.flush(5)

    async def scenario(client: TestClient) -> None:
        token = (await (await client.post("/v1/auth/token", json={"user_id": "alice"})).json()
                 )["token"]
        auth = {"Authorization": f"Bearer {token}"}
        account_id = (await (await client.post("/v1/accounts", json={}, headers=auth)).json()
                      )["account_id"]
        other = (await (await client.post("/v1/accounts", json={}, headers={
            "Authorization": "Bearer " + (await (await client.post(
                "/v1/auth/token", json={"user_id": "bob"})).json())["token"]})).json()
                 )["account_id"]
        async with client.ws_connect("/v1/stream") as ws:
            await ws.send_str("not json")
            assert (await next_frame(ws, "error"))["code"] == "malformed_json"
            await ws.send_json({"op": "dance"})
            assert (await next_frame(ws, "error"))["code"] == "invalid_message"
            await ws.send_json({"op": "subscribe", "quotes": ["AAPL"]})
            assert (await next_frame(ws, "error"))["code"] == "not_authenticated"
            await ws.send_json({"op": "auth", "token": "forged.token.here"})
            assert (await next_frame(ws, "error"))["code"] == "invalid_token"

            await ws.send_json({"op": "auth", "token": token})
            authenticated = await next_frame(ws, "authenticated")
            assert authenticated["accounts"] == [account_id]
            await ws.send_json({"op": "subscribe", "quotes": ["AAPL", "bad symbol"]})
            assert (await next_frame(ws, "error"))["code"] == "invalid_symbol"
            await ws.send_json({"op": "subscribe", "quotes": ["AAPL"]})
            assert (await next_frame(ws, "subscribed"))["quotes"] == ["AAPL"]
            snapshot = await next_frame(ws, "quote")
            assert snapshot["quote"]["ask"] == "209.45"

            produce(t.Topic.QUOTES, "AAPL", quote("AAPL", "209.50", "209.55"))
            live = await next_frame(ws, "quote")
            assert live["quote"]["ask"] == "209.55"

            produce(t.Topic.ORDERS_EVENTS, other, order_event(other, "ord_theirs"))
            produce(t.Topic.ORDERS_EVENTS, account_id, order_event(account_id, "ord_mine"))
            update = await next_frame(ws, "order")
            assert update["event"]["order_id"] == "ord_mine"  # never someone else's

            await ws.send_json({"op": "ping"})
            await next_frame(ws, "pong")
            await next_frame(ws, "heartbeat", timeout_s=3)
            await ws.send_json({"op": "unsubscribe", "quotes": ["AAPL"]})
            assert (await next_frame(ws, "subscribed"))["quotes"] == []

    async def main() -> None:
        async with TestClient(TestServer(create_app(config))) as client:
            await scenario(client)

    asyncio.run(main())
