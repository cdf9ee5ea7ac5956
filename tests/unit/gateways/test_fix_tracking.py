"""Gateway bookkeeping: delivered sequence numbers, breakers, routing, stuck orders, FIX."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from gateways.fix import fixmsg
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig
from gateways.fix.tracking import (
    CircuitBreaker,
    ExecutionStats,
    OpenOrder,
    Router,
    SeqTracker,
    StuckAction,
    price_improvement,
    stuck_action,
)
from state.messages import ExecType, OrderType, RouteNewOrder, Side, TimeInForce


def test_seq_tracker_waits_for_the_lowest_pending() -> None:
    tracker = SeqTracker(delivered=4)
    for seq in (5, 6, 7):
        tracker.begin(seq)
    tracker.complete(6)
    tracker.complete(7)
    assert tracker.delivered == 4
    tracker.complete(5)
    assert tracker.delivered == 7


def test_breaker_opens_on_silence_and_closes_on_answer() -> None:
    breaker = CircuitBreaker(timeout_ms=1000)
    breaker.on_request(0)
    breaker.on_request(500)
    assert not breaker.is_open(999)
    assert breaker.is_open(1000)
    breaker.on_answer()
    assert not breaker.is_open(5000)


def test_router_round_robin_skips_open_and_disconnected() -> None:
    router = Router("round_robin", {"a": ["a1"], "b": ["b1", "b2"], "c": ["c1"]})
    on = {"a1", "b1", "b2", "c1"}
    picks = [router.choose(on, set(), {})[0] for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    picks = [router.choose(on, {"b"}, {})[0] for _ in range(4)]
    assert "b" not in picks
    assert {router.choose({"c1"}, set(), {})[0] for _ in range(3)} == {"c"}
    # Every breaker open: still route among the connected ones rather than stall.
    assert router.choose({"a1"}, {"a", "b", "c"}, {})[0] == "a"
    sessions = {router.choose({"b1", "b2"}, set(), {})[1] for _ in range(4)}
    assert sessions == {"b1", "b2"}


def test_router_best_price_improvement() -> None:
    router = Router("best_price_improvement", {"a": ["a1"], "b": ["b1"]})
    stats = {"a": ExecutionStats(filled=1, improvement_usd=Decimal(1), improved_qty=Decimal(10)),
             "b": ExecutionStats(filled=1, improvement_usd=Decimal(5), improved_qty=Decimal(10))}
    assert {router.choose({"a1", "b1"}, set(), stats)[0] for _ in range(3)} == {"b"}


def test_stuck_order_escalates() -> None:
    order = OpenOrder(order_id="o", cl_ord_id="o", account_id="a", symbol="AAPL",
                      side=Side.BUY, quantity=Decimal(1), market_maker="m", session="s",
                      routed_at_ms=0, awaiting_since_ms=0)
    assert stuck_action(order, 999, 1000) is None
    assert stuck_action(order, 1000, 1000) == StuckAction.STATUS
    order.stuck_stage = 1
    assert stuck_action(order, 1000, 1000) == StuckAction.CANCEL
    order.stuck_stage = 2
    assert stuck_action(order, 1000, 1000) == StuckAction.ALERT
    order.stuck_stage = 3
    assert stuck_action(order, 1000, 1000) is None
    order.awaiting_since_ms = None
    order.stuck_stage = 0
    assert stuck_action(order, 10**9, 1000) is None


def test_price_improvement_and_stats() -> None:
    assert price_improvement(Side.BUY, Decimal("210.00"), Decimal("209.98"), Decimal(10)) \
        == Decimal("0.20")
    assert price_improvement(Side.SELL, Decimal("209.90"), Decimal("209.92"), Decimal(10)) \
        == Decimal("0.20")
    stats = ExecutionStats(orders=4, filled=3, improvement_usd=Decimal("0.6"),
                           improved_qty=Decimal(30), fill_ms_total=30)
    assert stats.fill_rate == Decimal("0.75")
    assert stats.improvement_per_share == Decimal("0.02")
    assert stats.average_fill_ms == Decimal("10.0")


def test_config_rejects_unknown_fields_and_bad_policy() -> None:
    import msgspec

    mm = MarketMakerConfig(name="m", host="h", port=1, sender_comp_id="B", target_comp_id="M")
    with pytest.raises(ValueError):
        FixGatewayConfig(bootstrap_servers="b", market_makers=(mm,), store_dir="/x",
                         routing_policy="random")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"bootstrap_servers":"b","market_makers":[],"store_dir":"x",'
                            b'"bogus":1}', type=FixGatewayConfig)


def test_new_order_single_and_report_round_trip_exact_decimals() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    order = RouteNewOrder(account_id="acc1", order_id="ord_1", cl_ord_id="ord_1", symbol="AAPL",
                          side=Side.SELL, order_type=OrderType.LIMIT,
                          quantity=Decimal("0.123456"), time_in_force=TimeInForce.GTC,
                          routed_at=now, limit_price=Decimal("209.50"))
    message = fixmsg.new_order_single(order, now)
    assert message.getField(fixmsg.ORDER_QTY) == "0.123456"
    assert message.getField(fixmsg.PRICE) == "209.50"
    assert message.getField(fixmsg.TRANSACT_TIME) == "20260102-03:04:05.678"
    report = fixmsg.new_message(fixmsg.MSG_EXECUTION_REPORT)
    for tag, value in [(37, "S-1"), (17, "E9"), (150, "F"), (39, "1"), (54, "2"), (55, "AAPL"),
                       (11, "ord_1"), (32, "0.1"), (31, "209.51"), (14, "0.1"),
                       (151, "0.023456"), (6, "209.51"), (1, "acc1"),
                       (60, "20260102-03:04:06.000")]:
        report.setField(tag, value)
    parsed = fixmsg.execution_report_from_fix(report, "mm1", None, now)
    assert parsed.exec_id == "mm1:E9" and parsed.exec_type is ExecType.TRADE
    assert parsed.last_px == Decimal("209.51") and parsed.leaves_qty == Decimal("0.023456")
    assert parsed.order_id == "ord_1" and parsed.market_maker == "mm1"
    assert parsed.transact_time == dt.datetime(2026, 1, 2, 3, 4, 6, tzinfo=dt.UTC)
    report.removeField(1)
    with pytest.raises(fixmsg.FixFieldError):
        fixmsg.execution_report_from_fix(report, "mm1", None, now)
