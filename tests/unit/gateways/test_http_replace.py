"""PATCH /v1/orders/{order_id}: validation, the ReplaceOrder command, its answers.

python -m pytest -q tests/unit/gateways/test_http_replace.py
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp.test_utils import TestClient

from gateways.http.openapi import openapi_document
from gateways.http.replies import answers_replace, command_keys
from state.ids import order_id_for
from state.messages import (
    CommandRejected,
    Message,
    OrderEvent,
    OrderState,
    OrderType,
    ReplaceOrder,
    Side,
    TimeInForce,
)
from tests.unit.gateways.test_http_api import bearer, new_account, run
from tests.unit.gateways.test_http_fakes import NOW, Fakes, shard_order


def event(account_id: str, order_id: str, cause_id: str, state: OrderState,
          quantity: str = "10", limit_price: str | None = "100.00",
          reason: str | None = None) -> OrderEvent:
    return OrderEvent(
        event_id=f"{order_id}:2", account_id=account_id, order_id=order_id, seq=2, state=state,
        symbol="AAPL", side=Side.BUY, order_type=OrderType.LIMIT, quantity=Decimal(quantity),
        time_in_force=TimeInForce.DAY, filled_quantity=Decimal(0), occurred_at=NOW,
        cause_id=cause_id, idempotency_key="place-1", reason=reason,
        limit_price=Decimal(limit_price) if limit_price else None)


def answer_replaces(message: Message) -> list[Any]:
    """Replaces to more than 500 shares are refused; others are accepted as the topology
    does: the order keeps its terms (10 at 100.00) and an event with reason
    `replace_requested` answers the command."""
    if not isinstance(message, ReplaceOrder):
        return []
    if message.quantity is not None and message.quantity > 500:
        return [CommandRejected(event_id="r", account_id=message.account_id,
                                idempotency_key=message.idempotency_key,
                                command_type="replace_order",
                                reason="insufficient_buying_power", occurred_at=NOW,
                                detail="not enough cash", order_id=message.order_id)]
    return [
        # An event of another order with the same cause answers nothing here.
        event(message.account_id, "ord_other", message.idempotency_key, OrderState.ROUTED),
        event(message.account_id, message.order_id, f"cmd:{message.account_id}:"
              f"{message.idempotency_key}", OrderState.ROUTED, reason="replace_requested")]


async def open_order(client: TestClient, fakes: Fakes, state: str = "routed",
                     order_type: str = "limit", filled: str = "0") -> tuple[str, str]:
    account_id = await new_account(client)
    order_id = order_id_for(account_id, "place-1")
    fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(
        account_id, order_id, state=state, order_type=order_type,
        filled_quantity=Decimal(filled), quantity=Decimal(10))
    return account_id, order_id


def patch_headers(key: str = "rep-1", user: str = "alice") -> dict[str, str]:
    return {**bearer(user), "Idempotency-Key": key}


def test_replace_produces_the_command_and_returns_the_order() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = answer_replaces
        account_id, order_id = await open_order(client, fakes)
        response = await client.patch(
            f"/v1/orders/{order_id}", headers=patch_headers(),
            json={"account_id": account_id, "quantity": "12", "limit_price": "101.25"})
        assert response.status == 200, await response.text()
        body = await response.json()
        # The order's terms are the current ones until the market maker confirms; the
        # answer shows the terms asked for in its pending replace.
        assert (body["order_id"], body["quantity"], body["limit_price"], body["reason"]) == (
            order_id, "10.000000", "100.00", "replace_requested")
        assert body["pending_replace"] == {
            "state": "requested", "idempotency_key": "rep-1", "quantity": "12.000000",
            "limit_price": "101.25", "stop_price": None}
        [(topic, key, command)] = fakes.producer.produced
        assert topic.endswith("orders.commands") and key == account_id
        assert isinstance(command, ReplaceOrder)
        assert (command.order_id, command.idempotency_key, command.quantity,
                command.limit_price, command.stop_price, command.user_id) == (
            order_id, "rep-1", Decimal(12), Decimal("101.25"), None, "alice")
        # The same key and body again: sent again (the topology takes a key once).
        again = await client.patch(
            f"/v1/orders/{order_id}", headers=patch_headers(),
            json={"account_id": account_id, "quantity": "12", "limit_price": "101.25"})
        assert again.status == 200
        # The same key with another body is a conflict.
        other = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(),
                                   json={"account_id": account_id, "quantity": "13"})
        assert other.status == 409
        assert (await other.json())["code"] == "idempotency_key_reused"

    run(scenario)


def test_rejected_replace_is_422_with_the_reason() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = answer_replaces
        account_id, order_id = await open_order(client, fakes)
        response = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(),
                                      json={"account_id": account_id, "quantity": "600"})
        assert response.status == 422
        body = await response.json()
        assert (body["code"], body["reason"]) == ("replace_rejected",
                                                  "insufficient_buying_power")

    run(scenario)


def test_no_answer_in_time_is_202() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id, order_id = await open_order(client, fakes)
        response = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(),
                                      json={"account_id": account_id, "limit_price": "99.99"})
        assert response.status == 202
        body = await response.json()
        assert body["status"] == "replace_requested"
        # The quantity left out keeps the order's.
        assert body["pending_replace"] == {
            "state": "sent", "idempotency_key": "rep-1", "quantity": "10.000000",
            "limit_price": "99.99", "stop_price": None}

    run(scenario, reply_wait_ms=20)


def test_invalid_replaces_are_refused_before_the_topic() -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({}, 422, "missing_field"),
        ({"quantity": "-1"}, 422, "not_positive"),
        ({"quantity": "NaN"}, 422, "not_finite"),
        ({"quantity": "1e3"}, 422, "invalid_decimal"),
        ({"quantity": "0.0000001"}, 422, "too_many_decimals"),
        ({"limit_price": "100.001"}, 422, "invalid_tick_size"),
        ({"stop_price": "99.00"}, 422, "unexpected_field"),  # a limit order has no stop
        ({"quantity": 12}, 422, "invalid_field"),  # a JSON number, not a decimal string
        ({"quantity": "4"}, 422, "quantity_not_above_filled"),
        ({"bogus": "1"}, 422, "invalid_field"),
    ]

    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id, order_id = await open_order(client, fakes, state="partially_filled",
                                                filled="4")
        for fields, status, code in cases:
            response = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(),
                                          json={"account_id": account_id, **fields})
            body = await response.json()
            assert (response.status, body["code"]) == (status, code), (fields, body)
        missing_key = await client.patch(f"/v1/orders/{order_id}", headers=bearer("alice"),
                                         json={"account_id": account_id, "quantity": "12"})
        assert missing_key.status == 400
        assert fakes.producer.produced == []

    run(scenario, orders_per_s_max=100)


def test_done_foreign_and_unknown_orders() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id, order_id = await open_order(client, fakes, state="filled")
        body = {"account_id": account_id, "quantity": "12"}
        done = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(), json=body)
        assert done.status == 409 and (await done.json())["code"] == "order_not_open"
        theirs = await client.patch(f"/v1/orders/{order_id}",
                                    headers=patch_headers(user="bob"), json=body)
        assert theirs.status == 404
        nope = await client.patch("/v1/orders/ord_nope", headers=patch_headers(), json=body)
        assert nope.status == 404
        assert fakes.producer.produced == []

    run(scenario)


def test_broker_down_is_503_and_frees_the_key() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id, order_id = await open_order(client, fakes)
        fakes.producer.failing = True
        body = {"account_id": account_id, "quantity": "12"}
        down = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(), json=body)
        assert down.status == 503
        fakes.producer.failing = False
        fakes.producer.respond = answer_replaces
        other = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(),
                                   json={"account_id": account_id, "quantity": "11"})
        assert other.status == 200

    run(scenario)


def test_events_answer_the_command_that_caused_them() -> None:
    routed = event("acc1", "ord_1", "cmd:acc1:rep-1", OrderState.ROUTED)
    assert command_keys(routed) == ("place-1", "rep-1")
    bare = event("acc1", "ord_1", "rep-1", OrderState.ROUTED)
    assert command_keys(bare) == ("place-1", "rep-1")
    assert command_keys(event("acc1", "ord_1", "place-1", OrderState.ROUTED)) == ("place-1",)
    answers = answers_replace("ord_1", "rep-1")
    assert answers(routed) and answers(bare)
    assert not answers(event("acc1", "ord_2", "rep-1", OrderState.ROUTED))
    assert not answers(event("acc1", "ord_1", "exec:xyz", OrderState.PARTIALLY_FILLED))


def test_openapi_documents_the_patch() -> None:
    document = openapi_document()
    operation = document["paths"]["/v1/orders/{order_id}"]["patch"]
    assert operation["operationId"] == "replace_order"
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderReplaceRequest"}
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    schema = document["components"]["schemas"]["OrderReplaceRequest"]
    assert set(schema["properties"]) == {"account_id", "quantity", "limit_price", "stop_price"}
    assert schema["required"] == ["account_id"]


def test_replace_left_out_terms_keep_the_orders() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = answer_replaces
        account_id, order_id = await open_order(client, fakes)
        response = await client.patch(f"/v1/orders/{order_id}", headers=patch_headers(),
                                      json={"account_id": account_id, "quantity": "7"})
        assert response.status == 200, await response.text()
        assert (await response.json())["pending_replace"] == {
            "state": "requested", "idempotency_key": "rep-1", "quantity": "7.000000",
            "limit_price": "100.00", "stop_price": None}

    run(scenario)


def test_openapi_documents_the_pending_replace() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    responses = document["paths"]["/v1/orders/{order_id}"]["patch"]["responses"]
    for status, name in (("200", "Order"), ("202", "OrderAccepted")):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{name}"}
        assert "pending_replace" in schemas[name]["properties"]
        assert "pending_replace" not in schemas[name].get("required", [])
    pending = schemas["PendingReplace"]
    assert {"state", "idempotency_key", "quantity", "limit_price", "stop_price"} <= set(
        pending["properties"])
    assert set(pending["required"]) == {"state", "idempotency_key", "quantity"}
    # The fields the answers had before stay as they were.
    assert {"quantity", "limit_price", "stop_price", "state", "reason"} <= set(
        schemas["Order"]["properties"])
    assert set(schemas["OrderAccepted"]["required"]) == {
        "order_id", "account_id", "status", "state", "idempotency_key"}
