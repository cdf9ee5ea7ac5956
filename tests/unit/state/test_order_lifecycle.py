"""Cancels, market-maker rejects and expiries, day end, late and unknown fills, sells."""

from __future__ import annotations

import datetime as dt

from state import ledger_accounts as la
from state.domain.ledger import balances
from state.ids import order_id_for
from state.messages import (
    Alert,
    CommandAccepted,
    CommandRejected,
    OrderEvent,
    OrderState,
    RouteCancel,
    RouteStatusRequest,
)

from .builders import (
    ACCOUNT,
    T0,
    D,
    Driver,
    at,
    cancel,
    deposit,
    expire,
    of_type,
    place,
    report,
    states,
    txns,
)


def bought(shares: str = "10") -> Driver:
    d = Driver()
    d.send(deposit("dep", "10000.00"))
    d.send(place("b", "buy", shares, order_type="limit", limit="100", reference=None))
    d.send(report("b", "xb", qty=shares, px="100", cum=shares))
    return d


def buying() -> Driver:
    d = Driver()
    d.send(deposit("dep", "10000.00"))
    d.send(place("o", "buy", "10", order_type="limit", limit="100", reference=None))
    return d


def test_cancel_goes_pending_and_keeps_funds_held_until_confirmed() -> None:
    d = buying()
    out = d.send(cancel("c1", "o"))
    assert states(out) == [OrderState.PENDING_CANCEL]
    [route] = of_type(out, RouteCancel)
    oid = order_id_for(ACCOUNT, "o")
    assert (route.cl_ord_id, route.orig_cl_ord_id) == (f"{oid}.1", oid)
    assert d.cash(la.CASH_HELD) == D("1000.00")
    out = d.send(report("o", "xc", "canceled"))
    assert states(out) == [OrderState.CANCELLED]
    assert d.cash(la.CASH_HELD) == 0 and d.cash() == D("10000.00")


def test_partial_fill_then_cancel_releases_only_the_rest() -> None:
    d = buying()
    d.send(report("o", "x1", qty="4", px="99.50", cum="4", leaves="6"))
    d.send(cancel("c1", "o"))
    out = d.send(report("o", "x2", qty="1", px="99", cum="5", leaves="5"))
    assert states(out) == [OrderState.PENDING_CANCEL]
    d.send(report("o", "xc", "canceled", cum="5"))
    assert d.order("o").state == OrderState.CANCELLED
    assert d.cash() == D("10000.00") - D("398.00") - D("99.00")
    assert d.shares() == D("5") and d.cash(la.CASH_HELD) == 0


def test_cancel_rejected_returns_the_order_to_where_it_was() -> None:
    d = buying()
    d.send(report("o", "x1", qty="4", px="100", cum="4", leaves="6"))
    d.send(cancel("c1", "o"))
    out = d.send(report("o", "xr", "cancel_rejected", cum="4"))
    [event] = of_type(out, OrderEvent)
    assert event.state == OrderState.PARTIALLY_FILLED and event.reason == "cancel_rejected"
    assert of_type(d.send(cancel("c2", "o")), RouteCancel)[0].cl_ord_id.endswith(".2")


def test_cancel_rejects_unknown_closed_and_pending() -> None:
    d = buying()
    reasons = []
    for message in (cancel("c1", "nope"), cancel("c2", "o"), cancel("c3", "o")):
        reasons += [r.reason for r in of_type(d.send(message), CommandRejected)]
    d.send(report("o", "xc", "canceled"))
    reasons += [r.reason for r in of_type(d.send(cancel("c4", "o")), CommandRejected)]
    assert reasons == ["unknown_order", "cancel_pending", "order_not_open"]


def test_market_maker_reject_releases_the_hold() -> None:
    d = buying()
    out = d.send(report("o", "xr", "rejected"))
    [event] = of_type(out, OrderEvent)
    assert event.state == OrderState.REJECTED and event.reason == "market_maker_rejected"
    assert d.cash() == D("10000.00") and d.cash(la.CASH_HELD) == 0


def test_market_maker_expiry_releases_the_hold() -> None:
    d = buying()
    assert states(d.send(report("o", "xe", "expired"))) == [OrderState.EXPIRED]
    assert d.cash(la.CASH_HELD) == 0


def test_day_end_expires_day_orders_only_and_releases() -> None:
    d = buying()
    d.send(place("g", "buy", "10", order_type="limit", limit="100", reference=None, tif="gtc"))
    d.send(place("s", "buy", "1", order_type="limit", limit="100", reference=None,
                 when=at(86400)))
    out = d.send(expire(T0.date(), at(3600)))
    [event] = of_type(out, OrderEvent)
    assert event.order_id == order_id_for(ACCOUNT, "o") and event.state == OrderState.EXPIRED
    assert of_type(out, CommandAccepted)
    assert d.cash(la.CASH_HELD) == D("1100.00")
    assert d.send(expire(T0.date(), at(3601))) == []


def test_fill_after_cancel_is_booked_from_cash_with_a_critical_alert() -> None:
    d = buying()
    d.send(report("o", "xc", "canceled"))
    out = d.send(report("o", "x1", qty="2", px="100", cum="2"))
    [alert] = of_type(out, Alert)
    assert alert.severity == "critical" and alert.code == "fill_after_cancelled"
    assert d.shares() == D("2") and d.cash() == D("9800.00")
    assert d.order("o").filled_quantity == D("2")


def test_overfill_is_booked_and_alerted() -> None:
    d = bought("10")
    out = d.send(report("b", "xb2", qty="1", px="100", cum="11"))
    assert {a.code for a in of_type(out, Alert)} == {"fill_after_filled", "overfill"}
    assert d.shares() == D("11") and d.cash() == D("8900.00")


def test_fill_for_unknown_order_is_booked() -> None:
    d = Driver()
    d.send(deposit("dep", "1000.00"))
    out = d.send(report("?", "xu", qty="1", px="10", cum="1", order_id="ord_unknown"))
    [alert] = of_type(out, Alert)
    assert alert.code == "fill_for_unknown_order" and alert.severity == "critical"
    assert d.shares() == D("1") and d.cash() == D("990.00")
    assert d.send(report("?", "xu", qty="1", px="10", cum="1", order_id="ord_unknown")) == []


def test_sell_holds_settled_then_unsettled_and_books_proceeds() -> None:
    d = bought("10")
    d.state.balances[la.SHARES_UNSETTLED]["AAPL"] -= 4  # as if 4 had settled
    d.state.balances.setdefault(la.SHARES, {})["AAPL"] = D("4")
    out = d.send(place("s", "sell", "6", order_type="limit", limit="101", reference=None))
    [hold] = txns(out)
    assert balances([hold]) == {
        (la.user(ACCOUNT, la.SHARES), "AAPL"): D("-4"),
        (la.user(ACCOUNT, la.SHARES_UNSETTLED), "AAPL"): D("-2"),
        (la.user(ACCOUNT, la.SHARES_HELD), "AAPL"): D("6"),
    }
    d.send(report("s", "x1", qty="5", px="101.25", side="sell", cum="5", leaves="1"))
    d.send(report("s", "xc", "canceled", side="sell", cum="5"))
    assert d.shares(la.SHARES_HELD) == 0
    assert d.shares(la.SHARES) + d.shares() == D("5")
    assert d.cash() == D("9000.00") + D("506.25")


def test_market_buy_fill_above_the_hold_takes_the_excess_from_cash() -> None:
    d = Driver()
    d.send(deposit("dep", "1000.00"))
    d.send(place("o", "buy", "1", reference="100"))
    out = d.send(report("o", "x1", qty="1", px="106", cum="1"))
    assert [a.code for a in of_type(out, Alert)] == ["fill_above_hold"]
    assert d.cash() == D("894.00") and d.cash(la.CASH_HELD) == 0


def test_a_missing_fill_asks_for_the_order_status() -> None:
    d = buying()
    out = d.send(report("o", "x2", qty="2", px="100", cum="5", leaves="5"))
    assert of_type(out, RouteStatusRequest)
    assert [a.code for a in of_type(out, Alert)] == ["fill_gap"]


def test_cumulative_rounding_keeps_a_limit_buy_within_its_hold() -> None:
    d = Driver()
    d.send(deposit("dep", "10.01"))
    d.send(place("o", "buy", "0.3", order_type="limit", limit="33.35", reference=None))
    assert d.cash(la.CASH_HELD) == D("10.01")  # 10.005 rounded up
    paid = []
    for n in range(3):  # rounding each fill alone would take 3 x 3.34 = 10.02
        out = d.send(report("o", f"x{n}", qty="0.1", px="33.35", cum=str(D("0.1") * (n + 1))))
        paid.append(-balances(txns(out)[:1])[(la.user(ACCOUNT, la.CASH_HELD), "USD")])
    assert paid == [D("3.34"), D("3.33"), D("3.33")]
    assert not of_type(d.outputs, Alert)
    assert d.cash() == D("0.01") and d.cash(la.CASH_HELD) == 0


def test_events_follow_each_other_by_seq() -> None:
    d = buying()
    d.send(report("o", "x1", qty="4", px="100", cum="4", leaves="6"))
    d.send(report("o", "x2", qty="6", px="100", cum="10"))
    seqs = [e.seq for e in of_type(d.outputs, OrderEvent)]
    assert seqs == [1, 2, 3, 4, 5]


def test_expire_keeps_a_pending_cancel_order_released_once() -> None:
    d = buying()
    d.send(cancel("c", "o"))
    d.send(expire(T0.date(), at(10)))
    assert d.send(report("o", "xc", "canceled", when=at(11))) == []
    assert d.cash() == D("10000.00")


def test_unknown_order_ack_is_a_warning() -> None:
    d = Driver()
    out = d.send(report("?", "xa", "new", order_id="ord_x"), T0 + dt.timedelta(seconds=1))
    assert [(a.code, a.severity) for a in of_type(out, Alert)] == [
        ("execution_for_unknown_order", "warning")]
