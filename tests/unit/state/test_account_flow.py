"""The main path: deposit, a held market buy, fills booked as they come, release."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec
import pytest

from state import ledger_accounts as la
from state.domain.account import (
    AccountState,
    check_invariants,
    state_from_builtins,
    state_from_bytes,
    state_to_builtins,
    state_to_bytes,
)
from state.domain.ledger import balances
from state.ids import order_id_for, txn_id_for
from state.messages import (
    CommandAccepted,
    LedgerTransaction,
    OrderEvent,
    OrderState,
    RouteNewOrder,
)

from .builders import ACCOUNT, D, Driver, at, deposit, of_type, place, report, states, txns

CASH = la.user(ACCOUNT, la.CASH)
HELD = la.user(ACCOUNT, la.CASH_HELD)
UNSETTLED = la.user(ACCOUNT, la.SHARES_UNSETTLED)


def test_deposit_credits_cash_from_ach() -> None:
    d = Driver()
    out = d.send(deposit("dep-1", "150000.00"))
    [accepted] = of_type(out, CommandAccepted)
    [txn] = txns(out)
    assert accepted.txn_id == txn.txn_id == txn_id_for(f"cmd:{ACCOUNT}:dep-1", "deposit")
    assert balances([txn]) == {(la.BANK_ACH, "USD"): D("-150000.00"), (CASH, "USD"): D("150000.00")}
    assert d.cash() == D("150000.00")


def test_market_buy_holds_reference_plus_collar_and_routes() -> None:
    d = Driver()
    d.send(deposit("dep-1", "150000.00"))
    out = d.send(place("o-1", "buy", "1000", reference="100"))
    oid = order_id_for(ACCOUNT, "o-1")
    assert states(out) == [OrderState.VALIDATED, OrderState.FUNDS_HELD, OrderState.ROUTED]
    assert [e.event_id for e in of_type(out, OrderEvent)] == [f"{oid}:1", f"{oid}:2", f"{oid}:3"]
    [hold] = txns(out)
    assert balances([hold]) == {(CASH, "USD"): D("-105000.00"), (HELD, "USD"): D("105000.00")}
    [route] = of_type(out, RouteNewOrder)
    assert route.order_id == route.cl_ord_id == oid and route.quantity == D("1000")
    assert d.cash() == D("45000.00") and d.cash(la.CASH_HELD) == D("105000.00")


def test_partial_fills_are_booked_as_they_come_and_the_rest_released() -> None:
    d = Driver()
    d.send(deposit("dep-1", "150000.00"))
    d.send(place("o-1", "buy", "1000", reference="100"))
    d.send(report("o-1", "x0", "new", leaves="1000"))
    fills = [("x1", "400", "100.10"), ("x2", "300", "100.20"), ("x3", "300", "99.90")]
    cum = Decimal(0)
    for exec_id, qty, px in fills:
        cum += D(qty)
        out = d.send(report("o-1", exec_id, qty=qty, px=px, cum=str(cum),
                            leaves=str(1000 - cum)), at(1))
        fill = next(t for t in txns(out) if t.kind == "fill")
        assert balances([fill])[(la.clearing("mm1"), "AAPL")] == -D(qty)
        assert balances([fill])[(UNSETTLED, "AAPL")] == D(qty)
    cost = D("40040.00") + D("30060.00") + D("29970.00")
    assert d.shares() == D("1000")
    assert d.cash(la.CASH_HELD) == 0
    assert d.cash() == D("150000.00") - cost
    order = d.order("o-1")
    assert order.state == OrderState.FILLED and order.average_fill_price == D("100.07")
    assert states(d.outputs)[-2:] == [OrderState.PARTIALLY_FILLED, OrderState.FILLED]
    ledger = balances(t for t in d.outputs if isinstance(t, LedgerTransaction))
    assert ledger[(la.clearing("mm1"), "USD")] == cost
    assert ledger[(HELD, "USD")] == 0


def test_duplicate_exec_id_never_books_twice() -> None:
    d = Driver()
    d.send(deposit("dep-1", "10000.00"))
    d.send(place("o-1", "buy", "10", reference="100"))
    d.send(report("o-1", "x1", qty="4", px="100", cum="4", leaves="6"))
    assert d.send(report("o-1", "x1", qty="4", px="100", cum="4", leaves="6")) == []
    assert d.shares() == D("4")


def test_state_round_trips_through_builtins() -> None:
    d = Driver()
    d.send(deposit("dep-1", "10000.00"))
    d.send(place("o-1", "buy", "10", reference="100"))
    d.send(report("o-1", "x1", qty="4", px="100.5", cum="4", leaves="6"))
    data = state_to_builtins(d.state)
    import json

    assert state_from_builtins(json.loads(json.dumps(data))) == d.state
    assert AccountState.empty("a").balances == {}


def test_stored_state_gives_back_exactly_the_state_with_producer_offsets() -> None:
    """The topology skips decoding while the store holds a state's bytes, so decoding must
    give back exactly that state: producers' times with UTC offsets are kept as UTC."""
    paris = dt.timezone(dt.timedelta(hours=1))
    d = Driver()
    d.send(deposit("dep-1", "10000.00", when=at(0).astimezone(paris)), now=at(0))
    d.send(place("o-1", "buy", "10", reference="100", when=at(1).astimezone(paris)), now=at(1))
    d.send(report("o-1", "x1", qty="4", px="100.50", cum="4", leaves="6",
                  when=at(2).astimezone(paris)), now=at(2))
    d.send(report("zz", "x2", qty="1", px="9", cum="1", leaves="0", when=at(3).astimezone(paris)),
           now=at(3))
    decoded = state_from_bytes(state_to_bytes(d.state))
    assert msgspec.json.encode(decoded) == msgspec.json.encode(d.state)


def test_decide_refuses_a_clock_that_is_not_utc() -> None:
    d = Driver()
    with pytest.raises(AssertionError, match="not UTC"):
        d.send(deposit("dep-1", "1.00"), now=at(0).astimezone(dt.timezone(dt.timedelta(hours=2))))


def test_a_step_that_moves_a_reserve_without_its_hold_is_a_crash(monkeypatch) -> None:
    """decide checks what each step touches: were the release of a filled order's remaining
    hold lost (a bug), the order's reserve and cash_held would part, and the step stops."""
    from state.domain import account

    d = Driver()
    d.send(deposit("dep-1", "10000.00"))
    d.send(place("o-1", "buy", "10", reference="100"))
    monkeypatch.setattr(account, "_release", lambda step, order, cause_id, kind="release":
                        msgspec.structs.replace(order, reserve=D(0), reserve_unsettled=D(0)))
    with pytest.raises(AssertionError, match="cash_held moved"):
        d.send(report("o-1", "x1", qty="10", px="100", cum="10", leaves="0"))


def test_a_corrupted_stored_state_fails_the_whole_check() -> None:
    d = Driver()
    d.send(deposit("dep-1", "10000.00"))
    d.send(place("o-1", "buy", "10", reference="100"))
    order = d.order("o-1")
    d.state.open_orders[order.order_id] = msgspec.structs.replace(order, reserve=D("1.00"))
    with pytest.raises(AssertionError, match="cash_held"):
        check_invariants(state_from_bytes(state_to_bytes(d.state)))
