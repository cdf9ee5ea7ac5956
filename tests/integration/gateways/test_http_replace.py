"""PATCH /v1/orders/{order_id} on the embedded broker, shards and Redis, with the responder
standing in for the account topology.

python -m pytest -q tests/integration/gateways/test_http_replace.py
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from state.ids import order_id_for
from state.messages import OrderEvent, OrderState, OrderType, ReplaceOrder, Side, TimeInForce
from state.quote_cache import QuoteCache
from state.shard_store import connect, write_batch
from tests.integration.gateways.test_http_gateway import (  # noqa: F401 - fixtures
    ORDER,
    databases,
    login,
    responder,
    serve,
)
from tests.integration.gateways.test_http_support import Responder, gateway_config, quote

pytestmark = pytest.mark.integration


def land_order(dsn: str, account_id: str, order_id: str) -> None:
    """The placed order as the shard sink would have written it."""
    event = OrderEvent(
        event_id=f"{order_id}:1", account_id=account_id, order_id=order_id, seq=1,
        state=OrderState.ROUTED, symbol="AAPL", side=Side.BUY, order_type=OrderType.LIMIT,
        quantity=Decimal(10), time_in_force=TimeInForce.DAY, filled_quantity=Decimal(0),
        occurred_at=dt.datetime.now(dt.UTC), cause_id="ord-1", idempotency_key="ord-1",
        limit_price=Decimal("209.50"))
    with connect(dsn) as conn:
        write_batch(conn, [], [event])


def test_replace_is_answered_through_the_topics(services: Any, topics: str,
                                                databases: tuple[str, ...],  # noqa: F811
                                                responder: Responder) -> None:  # noqa: F811
    config = gateway_config(services, topics, databases)
    QuoteCache(services.redis_url, topics).put(quote("AAPL", "209.40", "209.45"))
    seen: dict[str, str] = {}

    async def scenario(client: TestClient) -> None:
        alice = await login(client, "alice")
        opened = await client.post("/v1/accounts", json={}, headers=alice)
        account = await opened.json()
        account_id = seen["account_id"] = account["account_id"]
        placed = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                   headers={**alice, "Idempotency-Key": "ord-1"})
        assert placed.status == 201, await placed.text()
        order_id = order_id_for(account_id, "ord-1")
        land_order(databases[account["shard"]], account_id, order_id)

        changed = await client.patch(
            f"/v1/orders/{order_id}",
            json={"account_id": account_id, "quantity": "12", "limit_price": "209.60"},
            headers={**alice, "Idempotency-Key": "rep-1"})
        assert changed.status == 200, await changed.text()
        body = await changed.json()
        assert (body["order_id"], body["quantity"], body["limit_price"]) == (
            order_id, "12.000000", "209.60")
        assert (body["pending_replace"]["quantity"], body["pending_replace"]["limit_price"],
                body["pending_replace"]["idempotency_key"]) == ("12.000000", "209.60", "rep-1")

        refused = await client.patch(
            f"/v1/orders/{order_id}", json={"account_id": account_id, "quantity": "5000"},
            headers={**alice, "Idempotency-Key": "rep-2"})
        assert refused.status == 422
        assert (await refused.json())["reason"] == "insufficient_buying_power"

        bad_tick = await client.patch(
            f"/v1/orders/{order_id}", json={"account_id": account_id, "limit_price": "1.001"},
            headers={**alice, "Idempotency-Key": "rep-3"})
        assert bad_tick.status == 422
        assert (await bad_tick.json())["code"] == "invalid_tick_size"

    serve(config, scenario)
    replaces = [c for c in responder.commands if isinstance(c, ReplaceOrder)]
    assert [(c.idempotency_key, c.quantity, c.limit_price) for c in replaces] == [
        ("rep-1", Decimal(12), Decimal("209.60")), ("rep-2", Decimal(5000), None)]
    assert {c.account_id for c in replaces} == {seen["account_id"]}
