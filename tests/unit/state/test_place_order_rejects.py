"""Every pre-trade check, each with its stable reason, and that a refusal holds nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from state import ledger_accounts as la
from state.domain.account import MarketContext, RiskLimits
from state.ids import order_id_for
from state.messages import (
    CommandRejected,
    OrderEvent,
    OrderState,
    PlaceOrder,
    RouteNewOrder,
    SymbolStatus,
)

from .builders import ACCOUNT, T0, D, Driver, ach_return, at, deposit, of_type, place, report


def rejected(d: Driver, message: PlaceOrder, now: dt.datetime | None = None) -> OrderEvent:
    cash_before, held_before = d.cash(), d.cash(la.CASH_HELD)
    out = d.send(message, now)
    assert not of_type(out, RouteNewOrder)
    [event] = of_type(out, OrderEvent)
    assert event.state == OrderState.REJECTED and event.previous_state == OrderState.PENDING
    assert event.event_id == f"{order_id_for(ACCOUNT, message.idempotency_key)}:1"
    assert (d.cash(), d.cash(la.CASH_HELD)) == (cash_before, held_before)
    return event


def funded(**kwargs: object) -> Driver:
    d = Driver(**kwargs)  # type: ignore[arg-type]
    d.send(deposit("dep", "20000.00"))
    return d


@pytest.mark.parametrize("message, detail", [
    (place("k", quantity="0"), "quantity"),
    (place("k", quantity="1.0000001"), "quantity"),
    (place("k", order_type="limit", limit=None), "limit_price required"),
    (place("k", order_type="market", limit="10"), "limit_price not allowed"),
    (place("k", order_type="stop", stop=None), "stop_price required"),
    (place("k", order_type="stop_limit", limit="10", stop=None), "stop_price required"),
    (place("k", order_type="limit", limit="-1"), "limit_price must be positive"),
    # Reg NMS Rule 612: whole cents at or above $1.00, hundredths of a cent below
    (place("k", order_type="limit", limit="20.005"), "not a multiple of the $0.01 tick"),
    (place("k", order_type="limit", limit="1.0001"), "not a multiple of the $0.01 tick"),
    (place("k", order_type="limit", limit="0.50001"), "not a multiple of the $0.0001 tick"),
    (place("k", order_type="stop", stop="20.0001"), "stop_price 20.0001 is not a multiple"),
])
def test_invalid_order(message: PlaceOrder, detail: str) -> None:
    event = rejected(funded(), message)
    assert event.reason == "invalid_order" and detail in (event.detail or "")


@pytest.mark.parametrize("limit", ["20.01", "1.00", "0.9999", "0.0001", "0.5"])
def test_prices_on_their_tick_pass_the_shape_check(limit: str) -> None:
    from state.domain.money import tick_refusal

    assert tick_refusal("limit_price", D(limit)) is None


def test_insufficient_buying_power() -> None:
    event = rejected(funded(), place("k", "buy", "200", reference="100"))  # 21,000 with collar
    assert event.reason == "insufficient_buying_power"


def test_limit_buy_held_at_limit_price_fits_exactly() -> None:
    d = funded()
    d.send(place("k", "buy", "200", order_type="limit", limit="100", reference=None))
    assert d.cash() == 0 and d.cash(la.CASH_HELD) == D("20000.00")


def test_insufficient_shares_no_naked_short() -> None:
    assert rejected(funded(), place("k", "sell", "1")).reason == "insufficient_shares"


def test_sell_counts_shares_already_held_for_open_sells() -> None:
    d = funded()
    d.send(place("b", "buy", "10", order_type="limit", limit="100", reference=None))
    d.send(report("b", "x1", qty="10", px="100", cum="10"))
    d.send(place("s1", "sell", "6", order_type="limit", limit="110", reference=None))
    event = rejected(d, place("s2", "sell", "5", order_type="limit", limit="110", reference=None))
    assert event.reason == "insufficient_shares"


def test_symbol_halted_blocks_buys_and_sells() -> None:
    market = MarketContext(symbol_status={"AAPL": SymbolStatus.HALTED})
    assert rejected(funded(market=market), place("k")).reason == "symbol_halted"
    assert rejected(funded(market=market), place("k", "sell")).reason == "symbol_halted"


def test_symbol_restricted_allows_closing_trades_only() -> None:
    d = funded()
    d.send(place("b", "buy", "10", order_type="limit", limit="100", reference=None))
    d.send(report("b", "x1", qty="10", px="100", cum="10"))
    d.market = MarketContext(symbol_status={"AAPL": SymbolStatus.RESTRICTED})
    assert rejected(d, place("k", "buy", "1")).reason == "symbol_restricted"
    out = d.send(place("s", "sell", "10"))
    assert of_type(out, RouteNewOrder)


def test_quantity_too_large() -> None:
    d = funded(limits=RiskLimits(quantity_max=D("100")))
    assert rejected(d, place("k", "buy", "101", reference="1")).reason == "quantity_too_large"


def test_notional_too_large() -> None:
    d = funded(limits=RiskLimits(notional_usd_max=D("1000")))
    event = rejected(d, place("k", "buy", "11", order_type="limit", limit="100", reference=None))
    assert event.reason == "notional_too_large"


def test_market_buy_needs_reference_price() -> None:
    assert rejected(funded(), place("k", reference=None)).reason == "no_reference_price"


def test_stale_reference_price() -> None:
    d = funded()
    message = place("k", reference="100", reference_time=T0 - dt.timedelta(seconds=61))
    assert rejected(d, message).reason == "stale_reference_price"


def test_market_sell_without_reference_is_allowed() -> None:
    d = funded()
    d.send(place("b", "buy", "10", order_type="limit", limit="100", reference=None))
    d.send(report("b", "x1", qty="10", px="100", cum="10"))
    assert of_type(d.send(place("s", "sell", "10", reference=None)), RouteNewOrder)


def test_rate_limited_past_ten_orders_a_second() -> None:
    d = Driver()
    d.send(deposit("dep", "100000.00"))
    for n in range(10):
        out = d.send(place(f"k{n}", "buy", "1", when=at(n * 0.05)))
        assert of_type(out, RouteNewOrder), n
    assert rejected(d, place("k10", "buy", "1", when=at(0.6))).reason == "rate_limited"
    assert of_type(d.send(place("k11", "buy", "1", when=at(1.2))), RouteNewOrder)


def test_account_restricted_after_ach_return_allows_sells_only() -> None:
    d = Driver()
    d.send(deposit("dep", "1000.00"))
    d.send(place("b", "buy", "5", order_type="limit", limit="100", reference=None))
    d.send(report("b", "x1", qty="5", px="100", cum="5"))
    d.send(ach_return("ret", "dep"))
    assert d.cash() == D("-500.00")
    assert rejected(d, place("k", "buy", "1")).reason == "account_restricted"
    assert of_type(d.send(place("s", "sell", "5")), RouteNewOrder)
    d.send(report("s", "x2", qty="5", px="100", side="sell", cum="5"))
    assert d.cash() == 0
    assert of_type(d.send(place("k2", "buy", "0.000001", reference="1")), OrderEvent)


def _day_trade(d: Driver, n: int, when: dt.datetime) -> None:
    d.send(place(f"b{n}", "buy", "1", order_type="limit", limit="100", reference=None, when=when))
    d.send(report(f"b{n}", f"xb{n}", qty="1", px="100", cum="1"), when)
    d.send(place(f"s{n}", "sell", "1", order_type="limit", limit="100", reference=None,
                 when=when))
    d.send(report(f"s{n}", f"xs{n}", qty="1", px="100", side="sell", cum="1"), when)


def test_pattern_day_trader_blocks_the_fifth_day_trade_under_min_equity() -> None:
    d = funded()
    for n in range(4):
        _day_trade(d, n, at(n * 86400))  # Mon..Thu
    assert len(d.state.day_trades) == 4
    friday = at(4 * 86400)
    d.send(place("b9", "buy", "1", order_type="limit", limit="100", reference=None, when=friday))
    d.send(report("b9", "xb9", qty="1", px="100", cum="1"), friday)
    message = place("s9", "sell", "1", order_type="limit", limit="100", reference=None,
                    when=friday)
    assert rejected(d, message, friday).reason == "pattern_day_trader"
    # not a day trade: sells of shares bought another day are fine
    tuesday_next = at(8 * 86400)
    out = d.send(place("s10", "sell", "1", reference="100", reference_time=tuesday_next,
                       when=tuesday_next))
    assert of_type(out, RouteNewOrder)


def test_pattern_day_trader_does_not_apply_above_min_equity() -> None:
    d = Driver()
    d.send(deposit("dep", "30000.00"))
    for n in range(5):
        _day_trade(d, n, at(n * 3600))
    assert len(d.state.day_trades) == 5


def test_duplicate_key_different_body_is_rejected_with_its_own_reason() -> None:
    d = funded()
    d.send(place("k", "buy", "1"))
    out = d.send(place("k", "buy", "2"))
    [rejection] = of_type(out, CommandRejected)
    assert rejection.reason == "duplicate_idempotency_key_different_body"
    assert rejection.order_id == order_id_for(ACCOUNT, "k")
    assert d.order("k").quantity == D("1")


def test_same_key_same_body_is_a_no_op_even_with_a_newer_quote() -> None:
    d = funded()
    d.send(place("k", "buy", "1"))
    assert d.send(place("k", "buy", "1.0", reference="101", when=at(5))) == []
    assert d.cash(la.CASH_HELD) == D("105.00")
