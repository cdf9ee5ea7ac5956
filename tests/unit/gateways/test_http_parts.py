"""The gateway's pure parts: validation, valuation, request/reply book, conflation,
metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest

from gateways.http.context import Gateway
from gateways.http.metrics import Metrics
from gateways.http.openapi import openapi_document
from gateways.http.portfolio import value_portfolio
from gateways.http.problems import Problem
from gateways.http.replies import ReplyBook, answers_placement
from gateways.http.validation import parse_amount, parse_price, parse_quantity
from gateways.http.websocket import Connection, StreamHub, _sender
from state.domain.money import price_tick as tick_size
from state.messages import CommandRejected
from tests.unit.gateways.test_http_fakes import NOW, config, quote


def _code(call: Any, *args: Any) -> str:
    with pytest.raises(Problem) as caught:
        call(*args)
    return caught.value.code


@pytest.mark.parametrize("price, tick", [("1", "0.01"), ("0.9999", "0.0001"),
                                         ("250.00", "0.01")])
def test_tick_size(price: str, tick: str) -> None:
    assert tick_size(Decimal(price)) == Decimal(tick)


def test_decimal_rules() -> None:
    assert parse_quantity("0.000001") == Decimal("0.000001")
    assert parse_quantity("1000000") == Decimal("1000000")
    assert _code(parse_quantity, "0.0000001") == "too_many_decimals"
    assert _code(parse_quantity, "1000000.000001") == "too_large"
    assert _code(parse_quantity, "sNaN") == "not_finite"
    assert _code(parse_quantity, "-inf") == "not_finite"
    assert _code(parse_quantity, "+1") == "invalid_decimal"
    assert _code(parse_quantity, "1\n") == "invalid_decimal"
    assert _code(parse_quantity, " 1") == "invalid_decimal"
    assert _code(parse_quantity, "١") == "invalid_decimal"  # non-ASCII digits
    assert parse_price("limit_price", "209.50") == Decimal("209.50")
    assert parse_price("limit_price", "0.0001") == Decimal("0.0001")
    assert _code(parse_price, "limit_price", "1.001") == "invalid_tick_size"
    assert parse_amount("100.10") == Decimal("100.10")
    assert _code(parse_amount, "0.001") == "too_many_decimals"


def test_valuation_rounds_each_figure_once_at_its_scale() -> None:
    """Issue 14 item 6: money in cents, prices to their tick, shares to 6 places, each
    figure rounded once (half to even) from the exact figures, totals from exact sums."""
    ledger = {"account_id": "a", "cash": Decimal("9000"), "cash_held": Decimal("0.00"),
              "buying_power": Decimal("9000.00"), "as_of": None, "ledger_seq": 3,
              "positions": [
                  {"symbol": "AAPL", "quantity": Decimal("3.5"), "cost_basis": Decimal("700"),
                   "average_cost": Decimal("200"), "quantity_unsettled": Decimal("3.5")},
                  {"symbol": "PNY", "quantity": Decimal("0.5"), "cost_basis": Decimal("0.01"),
                   "average_cost": Decimal("0.02"), "quantity_settled": Decimal("0.5")},
                  {"symbol": "QQQ", "quantity": Decimal("0.5"), "cost_basis": Decimal("0.01"),
                   "average_cost": Decimal("0.02")},
                  {"symbol": "XYZ", "quantity": Decimal("3"), "cost_basis": Decimal("30.01"),
                   "average_cost": Decimal("30.01") / 3}]}
    valued = value_portfolio(ledger, {"AAPL": quote("AAPL", "284.60", "284.70", "284.65"),
                                      "PNY": quote("PNY", "0.0100", "0.0100"),
                                      "QQQ": quote("QQQ", "0.0100", "0.0100")}, NOW)
    aapl, pny, qqq, xyz = valued["positions"]
    assert (aapl["quantity"], aapl["quantity_settled"], aapl["quantity_unsettled"],
            aapl["quantity_held"]) == ("3.500000", "0.000000", "3.500000", "0.000000")
    assert (aapl["price"], aapl["average_cost"], aapl["cost_basis"]) == (
        "284.65", "200.00", "700.00")
    # 996.275 and 296.275: half to even is up here (7 is odd) ...
    assert (aapl["market_value"], aapl["unrealized_pnl"]) == ("996.28", "296.28")
    # ... and down here: 0.005 -> 0.00, -0.005 -> -0.00 written "0.00"
    assert (pny["price"], pny["average_cost"], pny["market_value"], pny["unrealized_pnl"]) == (
        "0.0100", "0.0200", "0.00", "0.00")
    assert qqq["market_value"] == "0.00"
    assert (xyz["average_cost"], xyz["price"], xyz["market_value"]) == ("10.00", None, None)
    # positions: 996.275 + 0.005 + 0.005 + 30.01 (XYZ at cost) = 1026.295, not a sum of parts
    assert valued["positions_value"] == "1026.30"
    assert valued["equity"] == "10026.30" and valued["cash"] == "9000.00"
    # 296.275 - 0.005 - 0.005 = 296.265 -> 296.26 (the rounded parts would add to 296.28)
    assert valued["unrealized_pnl"] == "296.26"


def test_portfolio_shows_withdrawable_cash_and_the_held_deposits() -> None:
    """Issue 14 item 7: the core's ACH rule (3 days), a return marking the oldest unreturned
    deposit of its amount as the rebuilt account reads it."""
    hour = dt.timedelta(hours=1)
    deposits = [{"kind": "deposit", "amount": Decimal("50.00"), "occurred_at": NOW - 240 * hour},
                {"kind": "deposit", "amount": Decimal("100"), "occurred_at": NOW - 120 * hour},
                {"kind": "deposit", "amount": Decimal("50.00"), "occurred_at": NOW - 48 * hour},
                {"kind": "ach_return", "amount": Decimal("-50.00"),
                 "occurred_at": NOW - 24 * hour},
                {"kind": "deposit", "amount": Decimal("7000.00"), "occurred_at": NOW - hour}]
    ledger = {"account_id": "a", "cash": Decimal("7150.00"), "cash_held": Decimal(0),
              "buying_power": Decimal("7150.00"), "positions": [], "deposits": deposits}
    valued = value_portfolio(ledger, {}, NOW)
    assert valued["held_deposits"] == [
        {"amount": "50.00", "available_at": NOW + 24 * hour},
        {"amount": "7000.00", "available_at": NOW + 71 * hour}]
    assert valued["withdrawable_cash"] == "100.00"
    assert value_portfolio(ledger, {}, NOW + 72 * hour)["withdrawable_cash"] == "7150.00"
    spent = value_portfolio({**ledger, "cash": Decimal("10.00")}, {}, NOW)
    assert spent["withdrawable_cash"] == "0.00"
    assert value_portfolio({**ledger, "deposits": []}, {}, NOW)["held_deposits"] == []


def test_reply_book_resolves_the_first_answer_only_for_its_key() -> None:
    async def main() -> None:
        book = ReplyBook()
        future = book.expect("acc", "k1", answers_placement)
        rejected = CommandRejected(event_id="e", account_id="acc", idempotency_key="k1",
                                   command_type="place_order", reason="halted",
                                   occurred_at=NOW)
        other = CommandRejected(event_id="e2", account_id="acc", idempotency_key="k2",
                                command_type="place_order", reason="x", occurred_at=NOW)
        book.deliver([other])
        assert not future.done()
        book.deliver([rejected])
        assert await book.wait(future, 0.1) is rejected
        late = book.expect("acc", "k3", answers_placement)
        assert await book.wait(late, 0.01) is None
        book.forget("acc", "k3", late)
        book.forget("acc", "k1", future)
        assert book._waiters == {}

    asyncio.run(main())


class SlowSocket:
    """A WebSocket whose writes take a while: a slow client."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    async def send_str(self, data: str) -> None:
        await asyncio.sleep(0.01)
        self.sent.append(json.loads(data))

    async def close(self, **_: Any) -> None:
        self.closed = True


def test_a_slow_client_gets_the_latest_quote_not_a_queue() -> None:
    async def main() -> None:
        gateway = Gateway(config())
        gateway.clock = lambda: NOW
        hub = StreamHub()
        socket = SlowSocket()
        connection = Connection(socket)  # type: ignore[arg-type]
        hub.subscribe(connection, ["AAPL", "MSFT"])
        sender = asyncio.create_task(_sender(connection, gateway, 5.0))
        for cents in range(1000):
            hub.publish_quotes([quote("AAPL", f"{100 + cents / 100:.2f}",
                                      f"{100.01 + cents / 100:.2f}")])
            if cents % 100 == 0:
                await asyncio.sleep(0)
        hub.publish_quotes([quote("MSFT", "400.00", "400.01")])
        await asyncio.sleep(0.2)
        sender.cancel()
        quotes = [frame["quote"] for frame in socket.sent if frame["type"] == "quote"]
        assert len(quotes) < 30  # conflated, not 1,001 frames
        assert [q for q in quotes if q["symbol"] == "AAPL"][-1]["bid"] == "109.99"
        assert any(q["symbol"] == "MSFT" for q in quotes)
        assert len(connection.pending_quotes) == 0

    asyncio.run(main())


def test_metrics_text_format() -> None:
    metrics = Metrics()
    metrics.requests.inc(route="/v1/orders", method="POST", status="201")
    metrics.latency.observe(0.004, route="/v1/orders")
    metrics.gauge("gateway_ws_connections", "open", lambda: 3)
    text = metrics.render()
    assert 'http_requests_total{method="POST",route="/v1/orders",status="201"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{route="/v1/orders",le="0.005"} 1' in text
    assert 'http_request_duration_seconds_bucket{route="/v1/orders",le="+Inf"} 1' in text
    assert "gateway_ws_connections 3" in text


def test_openapi_covers_every_contract_endpoint() -> None:
    spec = openapi_document()
    expected = {
        ("post", "/v1/auth/token"), ("post", "/v1/accounts"), ("get", "/v1/accounts/{account_id}"),
        ("post", "/v1/accounts/{account_id}/deposits"),
        ("post", "/v1/accounts/{account_id}/withdrawals"), ("post", "/v1/orders"),
        ("get", "/v1/orders"), ("get", "/v1/orders/{order_id}"),
        ("delete", "/v1/orders/{order_id}"), ("get", "/v1/portfolio"),
        ("get", "/v1/activities"), ("get", "/v1/quotes"), ("get", "/v1/candles/{symbol}"),
        ("get", "/healthz"), ("get", "/metrics"), ("get", "/v1/stream"),
    }
    present = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= present
    order = spec["components"]["schemas"]["OrderRequest"]
    assert order["properties"]["quantity"]["type"] == "string"
    assert set(order["properties"]["side"].get("enum", [])) or "$ref" in str(order)
    json.dumps(spec)  # serialisable
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(spec)}
    assert refs <= set(spec["components"]["schemas"])


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
