"""WebSocket /v1/stream on the embedded broker and Redis: auth, subscriptions, quotes from the
`quotes` topic, the user's own order updates from `orders.events`, error frames. Then the
fan-out's rounds on fake transports: one write per watcher per round with the newest frame of
each symbol, frames encoded once and shared, backlogged transports conflated, order updates
before quotes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Producer

from gateways.http.app import create_app
from gateways.http.metrics import Metrics
from gateways.http.websocket import (
    Connection,
    QuoteFrame,
    StreamHub,
    _sender,
    frame,
    text_frame,
)
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

            burst = [quote("AAPL", f"{210 + cents / 100:.2f}", f"{210.01 + cents / 100:.2f}")
                     for cents in range(50)]
            for record in burst:
                producer.produce(topics + t.Topic.QUOTES, key=b"AAPL", value=t.encode(record))
            producer.flush(5)
            received = 0
            while (await next_frame(ws, "quote"))["quote"]["ask"] != "210.50":
                received += 1
            assert received < len(burst)  # conflated; the newest always arrives

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


class FakeTransport:
    """Records what the fan-out writes; `buffered` plays the bytes the kernel has not taken."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeSocket:
    """The aiohttp side of a connection: its text frames land in the same transport log."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.closed = False

    async def send_str(self, data: str) -> None:
        self.transport.write(text_frame(data.encode()))


def connect(hub: StreamHub, symbols: list[str]) -> tuple[Connection, FakeTransport]:
    transport = FakeTransport()
    connection = Connection(cast(Any, FakeSocket(transport)), transport)
    hub.subscribe(connection, symbols)
    return connection, transport


def frames_of(data: bytes) -> list[dict[str, Any]]:
    """Parse unmasked server text frames (RFC 6455 5.2)."""
    frames = []
    while data:
        assert data[0] == 0x81, data[:2]  # FIN + text, never fragmented
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        frames.append(json.loads(data[start:start + length]))
        data = data[start + length:]
    return frames


def test_text_frame_headers_and_the_quote_frame_is_the_documented_json() -> None:
    for size in (0, 125, 126, 65535, 65536):
        encoded = text_frame(b"x" * size)
        assert len(encoded) - size == (2 if size < 126 else 4 if size < 65536 else 10)
    sample = quote("AAPL", "209.40", "209.45")
    shared = QuoteFrame(sample)
    assert shared.text == frame("quote", quote=sample)  # the frame clients always had
    assert frames_of(shared.wire) == [json.loads(frame("quote", quote=sample))]


def test_a_round_writes_each_watcher_once_with_the_newest_shared_frames() -> None:
    async def main() -> None:
        hub = StreamHub(flush_interval_s=0.01)
        hub.metrics = Metrics()
        both, both_out = connect(hub, ["AAPL", "MSFT"])
        one, one_out = connect(hub, ["AAPL"])
        _other, other_out = connect(hub, ["TSLA"])
        hub.publish_quotes([quote("AAPL", f"{100 + c / 100:.2f}", f"{100.01 + c / 100:.2f}")
                            for c in range(100)] + [quote("MSFT", "400.00", "400.01")])
        await asyncio.sleep(0.05)
        assert len(both_out.writes) == 1 and len(one_out.writes) == 1 and not other_out.writes
        assert sorted((f["quote"]["symbol"], f["quote"]["bid"]) for f in frames_of(
            both_out.writes[0])) == [("AAPL", "100.99"), ("MSFT", "400.00")]
        assert one_out.writes[0] is hub.latest["AAPL"].wire  # encoded once, shared
        assert hub.metrics.ws_messages.values[(("kind", "quote"),)] == 3
        await asyncio.sleep(0.05)
        assert len(both_out.writes) == 1  # nothing new, nothing written
        hub.publish_quotes([quote("MSFT", "401.00", "401.01")])
        await asyncio.sleep(0.05)
        assert [f["quote"]["bid"] for f in frames_of(both_out.writes[1])] == ["401.00"]
        assert len(one_out.writes) == 1
        hub.close()

    asyncio.run(main())


def test_a_backlogged_transport_gets_only_the_newest_quote_once_it_drains() -> None:
    async def main() -> None:
        hub = StreamHub(flush_interval_s=0.01)
        _slow, out = connect(hub, ["AAPL"])
        out.buffered = 1 << 20
        for cents in range(5):
            hub.publish_quotes([quote("AAPL", f"{100 + cents / 100:.2f}", "101.00")])
            await asyncio.sleep(0.03)
        assert out.writes == []
        out.buffered = 0  # retried without any new quote arriving
        await asyncio.sleep(0.05)
        assert [f["quote"]["bid"] for w in out.writes for f in frames_of(w)] == ["100.04"]
        hub.close()

    asyncio.run(main())


def test_order_updates_are_written_before_quotes_and_the_snapshot_yields_to_the_feed() -> None:
    async def main() -> None:
        hub = StreamHub(flush_interval_s=0.01)
        gateway = SimpleNamespace(metrics=Metrics(), hub=hub,
                                  clock=lambda: dt.datetime.now(dt.UTC))
        connection, out = connect(hub, ["AAPL", "MSFT"])
        sender = asyncio.create_task(_sender(connection, cast(Any, gateway), 5.0))
        connection.send_later(frame("subscribed", quotes=["AAPL", "MSFT"]))
        hub.publish_quotes([quote("AAPL", "209.50", "209.55")])
        connection.offer_quote(quote("AAPL", "200.00", "200.01"))  # older than the feed's
        connection.offer_quote(quote("MSFT", "400.00", "400.01"))  # the feed has none yet
        await asyncio.sleep(0.05)
        sender.cancel()
        written = [f for w in out.writes for f in frames_of(w)]
        assert written[0]["type"] == "subscribed"
        assert sorted((f["quote"]["symbol"], f["quote"]["bid"]) for f in written[1:]) == [
            ("AAPL", "209.50"), ("MSFT", "400.00")]
        hub.close()

    asyncio.run(main())
