"""replace_order: new terms held before routing, freed funds released only on confirmation."""

from __future__ import annotations

from state import ledger_accounts as la
from state.domain.account import check_invariants
from state.ids import order_id_for, txn_id_for
from state.messages import (
    Alert,
    CommandRejected,
    ExecutionReport,
    OrderEvent,
    OrderState,
    RouteCancel,
    RouteReplace,
)

from .builders import (
    ACCOUNT,
    D,
    Driver,
    cancel,
    deposit,
    of_type,
    place,
    replace,
    report,
    txns,
)

OID = order_id_for(ACCOUNT, "o")


def buying(quantity: str = "10", limit: str = "100") -> Driver:
    d = Driver()
    d.send(deposit("dep", "10000.00"))
    d.send(place("o", "buy", quantity, order_type="limit", limit=limit, reference=None))
    return d


def selling(owned: str = "20", quantity: str = "10") -> Driver:
    d = Driver()
    d.send(deposit("dep", "10000.00"))
    d.send(place("b", "buy", owned, order_type="limit", limit="100", reference=None))
    d.send(report("b", "xb", qty=owned, px="100", cum=owned))
    d.send(place("o", "sell", quantity, order_type="limit", limit="120", reference=None))
    return d


def replaced(order_key: str, exec_id: str, cum: str, leaves: str, request: int = 1,
             side: str = "buy") -> ExecutionReport:
    oid = order_id_for(ACCOUNT, order_key)
    return report(order_key, exec_id, "replaced", cum=cum, leaves=leaves, side=side,
                  cl_ord_id=f"{oid}.{request}", orig_cl_ord_id=oid)


def replace_rejected(order_key: str, exec_id: str, request: int = 1, side: str = "buy",
                     cum: str = "0") -> ExecutionReport:
    oid = order_id_for(ACCOUNT, order_key)
    return report(order_key, exec_id, "cancel_rejected", cum=cum, side=side,
                  cl_ord_id=f"{oid}.{request}", orig_cl_ord_id=oid)


def rejection(out: list) -> str:
    [rejected] = of_type(out, CommandRejected)
    assert rejected.command_type == "replace_order"
    return rejected.reason


# ---- accepted replaces ------------------------------------------------------------------


def test_a_larger_buy_holds_the_difference_before_it_is_routed() -> None:
    d = buying()
    out = d.send(replace("r1", "o", "15"))
    [txn] = txns(out)
    assert txn.kind == "hold" and txn.txn_id == txn_id_for(f"cmd:{ACCOUNT}:r1", "hold")
    assert d.cash(la.CASH_HELD) == D("1500.00") and d.cash() == D("8500.00")
    [event] = of_type(out, OrderEvent)
    assert (event.state, event.previous_state) == (OrderState.ROUTED, OrderState.ROUTED)
    assert (event.reason, event.cause_id) == ("replace_requested", "r1")
    assert event.quantity == D("10")  # the terms change when the market maker confirms
    [route] = of_type(out, RouteReplace)
    assert (route.cl_ord_id, route.orig_cl_ord_id) == (f"{OID}.1", OID)
    assert (route.quantity, route.limit_price, route.order_type) == (D("15"), D("100"), "limit")
    assert out.index(txn) < out.index(event) < out.index(route)
    assert d.order("o").pending_replace is not None

    out = d.send(replaced("o", "xr", cum="0", leaves="15"))
    [event] = of_type(out, OrderEvent)
    assert (event.state, event.reason, event.quantity) == (OrderState.ROUTED, "replaced", D(15))
    assert txns(out) == []  # the hold already covers the new terms
    order = d.order("o")
    assert order.quantity == D("15") and order.pending_replace is None
    assert order.current_cl_ord_id == f"{OID}.1"
    d.send(report("o", "xf", qty="15", px="100", cum="15"))
    assert d.order("o").state == OrderState.FILLED
    assert d.cash(la.CASH_HELD) == 0 and d.cash() == D("8500.00")


def test_a_smaller_buy_releases_only_when_the_market_maker_confirms() -> None:
    d = buying()
    out = d.send(replace("r1", "o", "4", limit="90"))
    assert txns(out) == []
    assert d.cash(la.CASH_HELD) == D("1000.00")
    out = d.send(replaced("o", "xr", cum="0", leaves="4"))
    [txn] = txns(out)
    assert txn.kind == "release" and txn.cause_id == "exec:mm1:xr"
    assert d.cash(la.CASH_HELD) == D("360.00") and d.cash() == D("9640.00")
    order = d.order("o")
    assert (order.quantity, order.limit_price, order.reserve) == (D(4), D(90), D("360.00"))


def test_a_higher_limit_holds_more_and_fills_at_the_new_price_stay_within_it() -> None:
    d = buying()
    d.send(report("o", "x1", qty="3", px="99.99", cum="3", leaves="7"))
    d.send(replace("r1", "o", limit="101.5"))
    # 299.97 booked for 3; the rest (7) at 101.5 = 710.50; cents_up(1010.47) - 299.97
    assert d.cash(la.CASH_HELD) == D("710.50")
    d.send(replaced("o", "xr", cum="3", leaves="7"))
    assert d.order("o").state == OrderState.PARTIALLY_FILLED
    out = d.send(report("o", "x2", qty="7", px="101.5", cum="10"))
    assert not [a for a in of_type(out, Alert) if a.code == "fill_above_hold"]
    assert d.cash(la.CASH_HELD) == 0
    assert d.cash() == D("10000.00") - D("299.97") - D("710.50")


def test_fills_at_the_old_terms_meanwhile_leave_the_new_terms_covered() -> None:
    d = buying()
    d.send(replace("r1", "o", "6", limit="95"))
    d.send(report("o", "x1", qty="2", px="95", cum="2", leaves="8"))
    out = d.send(replaced("o", "xr", cum="2", leaves="4"))
    # reserve 1000 - 190 = 810; the new terms need 4 at 95 = 380: 430 goes back
    [txn] = txns(out)
    assert txn.kind == "release"
    assert d.cash(la.CASH_HELD) == D("380.00")
    check_invariants(d.state)


def test_a_replace_reached_by_fills_meanwhile_fills_the_order() -> None:
    d = buying()
    d.send(replace("r1", "o", "6"))
    d.send(report("o", "x1", qty="6", px="100", cum="6", leaves="4"))
    out = d.send(replaced("o", "xr", cum="6", leaves="0"))
    [event] = of_type(out, OrderEvent)
    assert (event.state, event.reason) == (OrderState.FILLED, "replaced")
    assert d.cash(la.CASH_HELD) == 0 and d.cash() == D("9400.00")


def test_a_shortfall_after_old_fills_is_held_from_free_cash() -> None:
    d = buying()
    d.send(replace("r1", "o", "20", limit="60"))  # 1200 needed: 200 more held
    assert d.cash(la.CASH_HELD) == D("1200.00")
    d.send(report("o", "x1", qty="9", px="100", cum="9", leaves="1"))  # old terms meanwhile
    out = d.send(replaced("o", "xr", cum="9", leaves="11"))
    # 11 left at 60 = 660 (on top of the 900 booked): 360 more than the 300 still held
    [txn] = txns(out)
    assert txn.kind == "hold" and txn.cause_id == "exec:mm1:xr"
    assert d.cash(la.CASH_HELD) == D("660.00")
    assert not of_type(out, Alert)


def test_a_larger_sell_holds_more_shares_a_smaller_one_frees_them_on_confirmation() -> None:
    d = selling()
    d.send(replace("r1", "o", "15"))
    assert d.shares(la.SHARES_HELD) == D("15")
    d.send(replaced("o", "xr", cum="0", leaves="15", side="sell"))
    d.send(replace("r2", "o", "5", limit="125"))
    assert d.shares(la.SHARES_HELD) == D("15")
    [route] = of_type(d.outputs, RouteReplace)[-1:]
    assert (route.cl_ord_id, route.orig_cl_ord_id) == (f"{OID}.2", f"{OID}.1")
    d.send(replaced("o", "xr2", cum="0", leaves="5", request=2, side="sell"))
    assert d.shares(la.SHARES_HELD) == D("5")
    assert d.shares(la.SHARES_UNSETTLED) == D("15")
    check_invariants(d.state)


def test_a_stop_order_takes_a_new_stop_price() -> None:
    d = Driver()
    d.send(deposit("dep", "10000.00"))
    d.send(place("o", "buy", "10", order_type="stop", stop="100", reference="90"))
    assert d.cash(la.CASH_HELD) == D("1050.00")  # stop + 5% collar
    d.send(replace("r1", "o", stop="110"))
    assert d.cash(la.CASH_HELD) == D("1155.00")
    d.send(replaced("o", "xr", cum="0", leaves="10"))
    assert d.order("o").stop_price == D("110")


# ---- refused by the market maker --------------------------------------------------------


def test_a_refused_replace_gives_back_its_extra_hold_and_keeps_the_old_terms() -> None:
    d = buying()
    d.send(report("o", "x1", qty="4", px="100", cum="4", leaves="6"))
    d.send(replace("r1", "o", "15", limit="110"))
    assert d.cash(la.CASH_HELD) == D("1210.00")  # 11 left at 110
    out = d.send(replace_rejected("o", "xrj", cum="4"))
    [event] = of_type(out, OrderEvent)
    assert (event.state, event.reason) == (OrderState.PARTIALLY_FILLED, "replace_rejected")
    assert d.cash(la.CASH_HELD) == D("600.00")
    order = d.order("o")
    assert (order.quantity, order.limit_price, order.pending_replace) == (D(10), D(100), None)
    assert order.current_cl_ord_id == OID
    # a new replace may go now, under the next number
    d.send(replace("r2", "o", "8"))
    [route] = of_type(d.outputs, RouteReplace)[-1:]
    assert route.cl_ord_id == f"{OID}.2" and route.orig_cl_ord_id == OID


def test_a_refused_cancel_is_not_taken_for_a_refused_replace() -> None:
    d = buying()
    d.send(replace("r1", "o", "15"))
    d.send(cancel("c1", "o"))
    [route] = of_type(d.outputs, RouteCancel)
    assert route.cl_ord_id == f"{OID}.2"
    d.send(report("o", "xcr", "cancel_rejected", cl_ord_id=f"{OID}.2", orig_cl_ord_id=OID))
    order = d.order("o")
    assert order.state == OrderState.ROUTED and order.pending_replace is not None
    assert d.cash(la.CASH_HELD) == D("1500.00")


def test_a_cancel_confirmed_while_a_replace_waits_releases_everything() -> None:
    d = buying()
    d.send(replace("r1", "o", "15"))
    d.send(cancel("c1", "o"))
    d.send(report("o", "xc", "canceled"))
    assert d.cash(la.CASH_HELD) == 0 and d.cash() == D("10000.00")
    out = d.send(replace_rejected("o", "xrj"))
    assert out == [] and d.order("o").pending_replace is None


def test_an_unexpected_replaced_report_changes_nothing_and_alerts() -> None:
    d = buying()
    out = d.send(replaced("o", "xr", cum="0", leaves="50"))
    [alert] = of_type(out, Alert)
    assert alert.code == "unexpected_replace"
    assert d.order("o").quantity == D("10") and d.cash(la.CASH_HELD) == D("1000.00")


# ---- refused commands -------------------------------------------------------------------


def test_replace_refusals_have_stable_reasons() -> None:
    d = buying()
    d.send(report("o", "x1", qty="4", px="100", cum="4", leaves="6"))
    assert rejection(d.send(replace("r1", "nope", "5"))) == "unknown_order"
    assert rejection(d.send(replace("r2", "o", "4"))) == "invalid_order"  # not above filled
    assert rejection(d.send(replace("r3", "o", "0.0000001"))) == "invalid_order"
    assert rejection(d.send(replace("r4", "o", stop="90"))) == "invalid_order"  # limit order
    assert rejection(d.send(replace("r5", "o", limit="100.0000001"))) == "invalid_order"
    tick = d.send(replace("r5b", "o", limit="100.005"))  # Reg NMS 612: whole cents above $1
    assert rejection(tick) == "invalid_order" and "$0.01 tick" in str(tick)
    assert rejection(d.send(replace("r6", "o"))) == "invalid_order"  # nothing to change
    assert rejection(d.send(replace("r7", "o", "10", limit="100"))) == "invalid_order"  # same
    assert rejection(d.send(replace("r8", "o", "200"))) == "insufficient_buying_power"
    assert rejection(d.send(replace("r9", "o", "1000000"))) == "quantity_too_large"
    assert d.cash(la.CASH_HELD) == D("600.00")
    d.send(replace("r10", "o", "12"))
    assert rejection(d.send(replace("r11", "o", "11"))) == "replace_pending"
    d.send(cancel("c1", "o"))
    assert rejection(d.send(replace("r12", "o", "11"))) == "cancel_pending"
    d.send(report("o", "xc", "canceled", cum="4"))
    assert rejection(d.send(replace("r13", "o", "11"))) == "order_not_open"
    check_invariants(d.state)


def test_a_market_order_takes_no_price_and_a_sell_needs_the_shares() -> None:
    d = selling(owned="12")
    assert rejection(d.send(replace("r1", "o", "13"))) == "insufficient_shares"
    m = Driver()
    m.send(deposit("dep", "10000.00"))
    m.send(place("m", "buy", "5", reference="100"))
    assert rejection(m.send(replace("r1", "m", limit="100"))) == "invalid_order"
    m.send(replace("r2", "m", "6"))
    assert m.cash(la.CASH_HELD) == D("630.00")  # 6 at 100 + 5% collar


def test_a_replace_is_taken_once_per_key() -> None:
    d = buying()
    command = replace("r1", "o", "15")
    d.send(command)
    assert d.send(command) == []
    assert d.cash(la.CASH_HELD) == D("1500.00")
    other = replace("r1", "o", "16")
    assert rejection(d.send(other)) == "duplicate_idempotency_key_different_body"
    # a duplicate REPLACED report books nothing twice
    confirm = replaced("o", "xr", cum="0", leaves="15")
    d.send(confirm)
    assert d.send(confirm) == []
