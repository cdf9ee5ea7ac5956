"""The answers are what the OpenAPI document says: the checker the API tests run every answer
through catches what it must, and the shard's rows become documented answers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from gateways.http import answers
from gateways.http.openapi import openapi_document
from gateways.http.portfolio import value_portfolio
from state.messages import OrderEvent, OrderState, OrderType, Side, TimeInForce
from tests.openapi_answers import AnswerMismatch, check_answer
from tests.unit.gateways.test_http_fakes import NOW, shard_order

DOCUMENT = openapi_document()
JSON = "application/json"
ORDER_PATH = "/v1/orders/ord_1?account_id=acc"


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value, enc_hook=str)


def event_row(seq: int, state: str, payload: dict[str, Any], **columns: Any) -> dict[str, Any]:
    """An order_events row as the shard reader returns it (bookkeeping columns and all)."""
    return {"event_id": f"ord_1:{seq}", "event_type": "order_event", "order_id": "ord_1",
            "seq": seq, "state": state, "previous_state": None, "reason": None,
            "detail": None, "cause_id": "c", "idempotency_key": "k1", "occurred_at": NOW,
            "recorded_at": NOW, "payload": payload, "source_topic": "orders.events",
            "source_partition": 3, "source_offset": 41, **columns}


def filled_row() -> dict[str, Any]:
    fill = {"type": "order_event", "filled_quantity": "10", "last_fill_quantity": "4",
            "last_fill_price": "209.45"}
    return shard_order("acc", "ord_1", state="filled", filled_quantity=Decimal(10),
                       average_fill_price=Decimal("209.4466666667"), events=[
                           event_row(1, "funds_held", {"filled_quantity": "0"}),
                           event_row(2, "filled", fill, previous_state="funds_held"),
                           {**event_row(3, "filled", {}), "event_type": "command_rejected",
                            "seq": None, "state": None, "reason": "order_not_open"}])


def test_an_order_read_is_the_documented_order() -> None:
    body = encode(answers.order(filled_row()))
    check_answer(DOCUMENT, "GET", ORDER_PATH, 200, JSON, body)
    order = msgspec.json.decode(body)
    # bookkeeping columns stay in the shard; the figures are at their scale
    assert "last_event_id" not in order and "held_amount" not in order
    assert (order["quantity"], order["average_fill_price"], order["held_usd"],
            order["held_shares"], order["seq"]) == ("10.000000", "209.45", "2095.00", None, 2)
    # the fill figures are the event's own fields; a refused cancel is not a transition
    assert [e["seq"] for e in order["events"]] == [1, 2]
    assert order["events"][1]["last_fill_quantity"] == "4.000000"
    assert order["events"][1]["last_fill_price"] == "209.45"


def test_the_checker_refuses_what_the_order_answer_used_to_be() -> None:
    """The row as it was answered before (every column, events with their raw payload)."""
    raw = filled_row()
    with pytest.raises(AnswerMismatch, match="last_event_id"):
        check_answer(DOCUMENT, "GET", ORDER_PATH, 200, JSON, encode(raw))


def test_the_checker_catches_an_extra_field_a_wrong_scale_and_an_undocumented_status(
        ) -> None:
    good = msgspec.to_builtins(answers.order(filled_row()))
    check_answer(DOCUMENT, "GET", ORDER_PATH, 200, JSON, encode(good))
    with pytest.raises(AnswerMismatch, match="'surprise' was unexpected"):
        check_answer(DOCUMENT, "GET", ORDER_PATH, 200, JSON, encode({**good, "surprise": 1}))
    with pytest.raises(AnswerMismatch, match="does not match"):
        check_answer(DOCUMENT, "GET", ORDER_PATH, 200, JSON, encode({**good, "held_usd": "5"}))
    with pytest.raises(AnswerMismatch, match="status not documented"):
        check_answer(DOCUMENT, "GET", ORDER_PATH, 418, JSON, encode(good))
    with pytest.raises(AnswerMismatch, match="content type not documented"):
        check_answer(DOCUMENT, "GET", ORDER_PATH, 404, JSON, encode(good))
    problem = {"type": "t", "title": "Not Found", "status": 404, "code": "order_not_found",
               "detail": "no such order", "instance": "/v1/orders/x"}
    check_answer(DOCUMENT, "GET", ORDER_PATH, 404, "application/problem+json", encode(problem))
    with pytest.raises(AnswerMismatch, match="'secret' was unexpected"):
        check_answer(DOCUMENT, "GET", ORDER_PATH, 404, "application/problem+json",
                     encode({**problem, "secret": "x"}))
    with pytest.raises(AnswerMismatch, match="not in the document"):
        check_answer(DOCUMENT, "PUT", ORDER_PATH, 200, JSON, encode(good))


def _event(side: Side, held: Decimal | None) -> OrderEvent:
    return OrderEvent(
        event_id="ord_1:2", account_id="acc", order_id="ord_1", seq=2,
        state=OrderState.FUNDS_HELD, symbol="AAPL", side=side, order_type=OrderType.LIMIT,
        quantity=Decimal("2.5"), time_in_force=TimeInForce.DAY, filled_quantity=Decimal(0),
        occurred_at=NOW, cause_id="c", idempotency_key="k1", limit_price=Decimal("209.5"),
        held_amount=held)


def test_a_hold_is_named_by_its_unit() -> None:
    """The topic's held_amount is USD for a buy and shares for a sell; the answer says which."""
    buy = answers.order_from_event(_event(Side.BUY, Decimal("523.75")))
    sell = answers.order_from_event(_event(Side.SELL, Decimal("2.5")))
    assert (buy.held_usd, buy.held_shares) == ("523.75", None)
    assert (sell.held_usd, sell.held_shares) == (None, "2.500000")
    for order in (buy, sell):
        check_answer(DOCUMENT, "POST", "/v1/orders", 201, JSON, encode(order))
    schema = DOCUMENT["components"]["schemas"]["Order"]["properties"]
    assert "USD" in schema["held_usd"]["anyOf"][0]["description"]
    assert "shares" in schema["held_shares"]["anyOf"][0]["description"]
    # The topic (and the WebSocket's order frames) keep held_amount, and say its unit.
    topic = msgspec.json.schema(OrderEvent)["$defs"]["OrderEvent"]["properties"]
    assert "USD for a buy, shares for a sell" in topic["held_amount"]["description"]


def test_the_portfolio_names_the_shards_ledger_seq_not_a_broker_offset() -> None:
    ledger = {"account_id": "acc", "cash": Decimal("10"), "cash_held": Decimal(0),
              "buying_power": Decimal("10"), "positions": [], "as_of": NOW, "ledger_seq": 7}
    body = value_portfolio(ledger, {}, NOW + dt.timedelta(days=5))
    assert body["ledger_seq"] == 7 and "ledger_offset" not in body
    check_answer(DOCUMENT, "GET", "/v1/portfolio?account_id=acc", 200, JSON, encode(body))
    described = DOCUMENT["components"]["schemas"]["Portfolio"]["properties"]["ledger_seq"]
    assert "broker restart" in described["description"]


def test_every_answer_schema_forbids_fields_it_does_not_name() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    objects = {name: schema for name, schema in schemas.items()
               if schema.get("type") == "object"}
    open_ = [name for name, schema in objects.items()
             if schema.get("additionalProperties") is not False]
    assert open_ == [], open_
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for content in response.get("content", {}).values():
                    if "schema" in content:
                        name = content["schema"]["$ref"].rsplit("/", 1)[1]
                        assert name in objects, (method, path, status, name)
