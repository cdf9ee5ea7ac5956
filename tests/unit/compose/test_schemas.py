"""Every topic's JSON Schema comes from the code and accepts what the code writes."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from compose.cli import main
from state.messages import (
    Deposit,
    ExecType,
    ExecutionReport,
    LedgerEntry,
    LedgerTransaction,
    MarketStatus,
    OrderType,
    PlaceOrder,
    Quote,
    RouteNewOrder,
    Side,
    SymbolStatus,
    TimeInForce,
)
from state.schemas import all_schemas
from state.topics import Topic, encode

NOW = dt.datetime(2026, 11, 27, 15, 0, tzinfo=dt.UTC)
SAMPLES = {
    Topic.ORDERS_COMMANDS: [
        PlaceOrder(account_id="a1", idempotency_key="k", symbol="AAPL", side=Side.BUY,
                   order_type=OrderType.LIMIT, quantity=Decimal("1.5"),
                   limit_price=Decimal("209.50"), submitted_at=NOW),
        Deposit(account_id="a1", idempotency_key="d", amount=Decimal("100.00"),
                submitted_at=NOW)],
    Topic.ORDERS_ROUTE: [RouteNewOrder(
        account_id="a1", order_id="o", cl_ord_id="o", symbol="AAPL", side=Side.BUY,
        order_type=OrderType.MARKET, quantity=Decimal(1), time_in_force=TimeInForce.DAY,
        routed_at=NOW)],
    Topic.EXECUTIONS: [ExecutionReport(
        account_id="a1", exec_id="e", order_id="o", cl_ord_id="o", exec_type=ExecType.TRADE,
        symbol="AAPL", side=Side.BUY, last_qty=Decimal(1), last_px=Decimal("209.5"),
        cum_qty=Decimal(1), leaves_qty=Decimal(0), transact_time=NOW)],
    Topic.LEDGER_POSTINGS: [LedgerTransaction(
        txn_id="t", account_id="a1", kind="deposit", cause_id="c", occurred_at=NOW,
        entries=(LedgerEntry("bank:ach", "USD", Decimal("-1")),
                 LedgerEntry("user:a1:cash", "USD", Decimal("1"))))],
    Topic.QUOTES: [Quote(symbol="AAPL", bid=Decimal("1"), ask=Decimal("1.01"),
                         bid_size=Decimal(100), ask_size=Decimal(100), venue_time=NOW)],
    Topic.MARKET_STATUS: [MarketStatus(symbol="GME", status=SymbolStatus.RESTRICTED,
                                       effective_at=NOW)],
}


@pytest.mark.parametrize("topic", list(SAMPLES))
def test_what_the_code_writes_the_schema_accepts(topic: Topic) -> None:
    schema = all_schemas()[str(topic)]
    for message in SAMPLES[topic]:
        jsonschema.validate(json.loads(encode(message)), schema)


def test_the_schema_refuses_json_numbers_for_money_and_unknown_fields() -> None:
    schema = all_schemas()[str(Topic.ORDERS_COMMANDS)]
    body = json.loads(encode(SAMPLES[Topic.ORDERS_COMMANDS][1]))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "amount": 100.0}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "surprise": 1}, schema)


def test_brokerage_schemas_writes_one_file_per_topic(tmp_path: Path) -> None:
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {f"{t}.schema.json" for t in Topic}
