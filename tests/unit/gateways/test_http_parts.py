"""The gateway's pure parts: tokens, validation, valuation, request/reply book, conflation,
metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal
from typing import Any

import pytest

from gateways.http.auth import issue_token, verify_token
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

SECRET = "s3cret"


def _code(call: Any, *args: Any) -> str:
    with pytest.raises(Problem) as caught:
        call(*args)
    return caught.value.code


def test_token_round_trip_and_expiry() -> None:
    token = issue_token(SECRET, "alice", 1000, 60)
    assert verify_token(SECRET, token, 1059) == "alice"
    assert _code(verify_token, SECRET, token, 1060) == "token_expired"
    assert _code(verify_token, "other-secret", token, 1001) == "invalid_token"


def test_token_algorithm_is_pinned() -> None:
    token = issue_token(SECRET, "alice", 1000, 60)
    _header, claims, signature = token.split(".")
    for header in ({"alg": "none", "typ": "JWT"}, {"alg": "HS512", "typ": "JWT"},
                   {"alg": "RS256", "typ": "JWT"}):
        forged = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        assert _code(verify_token, SECRET, f"{forged}.{claims}.{signature}", 1001) == \
            "invalid_token"
        assert _code(verify_token, SECRET, f"{forged}.{claims}.", 1001) == "invalid_token"


def test_token_claims_cannot_be_swapped() -> None:
    alice = issue_token(SECRET, "alice", 1000, 60).split(".")
    bob = issue_token(SECRET, "bob", 1000, 60).split(".")
    assert _code(verify_token, SECRET, f"{alice[0]}.{bob[1]}.{alice[2]}", 1001) == \
        "invalid_token"


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


def test_valuation_is_exact() -> None:
    ledger = {"account_id": "a", "cash": Decimal("0.10"), "cash_held": Decimal("0.20"),
              "buying_power": Decimal("0.10"), "as_of": None, "ledger_offset": 3,
              "positions": [{"symbol": "AAPL", "quantity": Decimal("0.333333"),
                             "average_cost": Decimal("3"), "cost_basis": Decimal("0.999999")}]}
    valued = value_portfolio(ledger, {"AAPL": quote("AAPL", "3.00", "3.02")})
    assert valued["positions"][0]["market_value"] == "1.00333233"  # 0.333333 * 3.01
    assert valued["positions"][0]["unrealized_pnl"] == "0.00333333"
    assert valued["equity"] == "1.30333233"


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
