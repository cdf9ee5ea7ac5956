"""settle_trades (T+1) and the day end's cancels to the market maker."""

from __future__ import annotations

import datetime as dt

import pytest

from state import ledger_accounts as la
from state.domain import lots
from state.domain.account import check_invariants
from state.domain.ledger import balances
from state.ids import order_id_for, txn_id_for
from state.messages import (
    CommandAccepted,
    CommandRejected,
    OrderState,
    RouteCancel,
)

from .builders import (
    ACCOUNT,
    T0,
    D,
    Driver,
    cancel,
    deposit,
    expire,
    of_type,
    place,
    report,
    settle,
    txns,
)

MONDAY = T0.date()  # 2026-03-02
TUESDAY, WEDNESDAY = MONDAY + dt.timedelta(days=1), MONDAY + dt.timedelta(days=2)
FRIDAY = MONDAY + dt.timedelta(days=4)
NEXT_MONDAY = MONDAY + dt.timedelta(days=7)


def on(day: dt.date, hour: int = 15) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def buy(d: Driver, key: str, qty: str, px: str, when: dt.datetime, mm: str = "mm1",
        symbol: str = "AAPL") -> None:
    d.send(place(key, "buy", qty, order_type="limit", limit=px, reference=None, when=when,
                 symbol=symbol))
    d.send(report(key, f"x{key}", qty=qty, px=px, cum=qty, mm=mm, when=when, symbol=symbol))


def sell(d: Driver, key: str, qty: str, px: str, when: dt.datetime, mm: str = "mm1") -> None:
    d.send(place(key, "sell", qty, order_type="limit", limit=px, reference=None, when=when))
    d.send(report(key, f"x{key}", qty=qty, px=px, cum=qty, mm=mm, when=when, side="sell"))


def ledger_of(d: Driver) -> dict[tuple[str, str], D]:
    return balances(txns(d.outputs))


def funded() -> Driver:
    d = Driver()
    d.send(deposit("dep", "100000.00", on(MONDAY, 9)), on(MONDAY, 9))
    return d


def test_a_day_of_buys_settles_the_next_business_day() -> None:
    d = funded()
    buy(d, "b1", "10", "100", on(MONDAY))
    out = d.send(settle(TUESDAY, on(TUESDAY, 22)))
    [txn] = txns(out)
    assert txn.kind == "settle"
    assert txn.txn_id == txn_id_for(f"cmd:{ACCOUNT}:settle-{TUESDAY}", "settle")
    [accepted] = of_type(out, CommandAccepted)
    assert (accepted.command_type, accepted.txn_id) == ("settle_trades", txn.txn_id)
    assert d.shares(la.SHARES) == D(10) and d.shares(la.SHARES_UNSETTLED) == 0
    books = ledger_of(d)
    assert books[("clearing:mm1", "AAPL")] == 0 and books[("clearing:mm1", la.USD)] == 0
    assert books[(la.CUSTODY, "AAPL")] == D(-10)
    assert books[(la.BANK_SETTLEMENT, la.USD)] == D("1000.00")
    assert d.state.unsettled_lots == {}
    check_invariants(d.state)
    # the same command again changes nothing; a later date has nothing left
    assert d.send(settle(TUESDAY, on(TUESDAY, 23))) == []
    out = d.send(settle(WEDNESDAY, on(WEDNESDAY, 22)))
    assert txns(out) == [] and of_type(out, CommandAccepted)


def test_only_trades_up_to_the_business_day_before_settle() -> None:
    d = funded()
    buy(d, "b1", "10", "100", on(MONDAY))
    buy(d, "b2", "5", "102", on(TUESDAY))
    d.send(settle(TUESDAY, on(TUESDAY, 22)))
    assert d.shares(la.SHARES) == D(10) and d.shares(la.SHARES_UNSETTLED) == D(5)
    assert ledger_of(d)[("clearing:mm1", la.USD)] == D("510.00")
    [lot] = d.state.unsettled_lots.values()
    assert lot.trade_date == TUESDAY
    d.send(settle(WEDNESDAY, on(WEDNESDAY, 22)))
    assert d.shares(la.SHARES) == D(15) and d.shares(la.SHARES_UNSETTLED) == 0
    assert ledger_of(d)[("clearing:mm1", la.USD)] == 0


def test_friday_settles_on_monday_and_a_weekend_date_is_refused() -> None:
    d = funded()
    buy(d, "b1", "3", "100", on(FRIDAY))
    [rejected] = of_type(d.send(settle(FRIDAY + dt.timedelta(days=1), on(FRIDAY, 22))),
                         CommandRejected)
    assert rejected.reason == "not_a_business_day"
    d.send(settle(FRIDAY, on(FRIDAY, 22)))  # Friday settles Thursday: nothing
    assert d.shares(la.SHARES_UNSETTLED) == D(3)
    d.send(settle(NEXT_MONDAY, on(NEXT_MONDAY, 22)))
    assert d.shares(la.SHARES) == D(3) and d.shares(la.SHARES_UNSETTLED) == 0


def test_buys_and_sells_net_per_market_maker_and_symbol() -> None:
    d = funded()
    buy(d, "b1", "10", "100", on(MONDAY))
    buy(d, "t1", "2", "200", on(MONDAY), mm="mm2", symbol="TSLA")
    d.send(settle(TUESDAY, on(TUESDAY, 8)))
    sell(d, "s1", "4", "110", on(TUESDAY), mm="mm2")
    buy(d, "b2", "5", "105", on(TUESDAY), mm="mm1")
    sell(d, "s2", "1", "106", on(TUESDAY), mm="mm1")
    out = d.send(settle(WEDNESDAY, on(WEDNESDAY, 8)))
    [txn] = txns(out)
    legs = {(e.ledger_account, e.asset): e.amount for e in txn.entries}
    assert legs[("clearing:mm2", "AAPL")] == D(-4)  # sold 4 through mm2
    assert (la.CUSTODY, "AAPL") not in legs  # 4 in from mm2, 4 out to mm1: nets out
    assert legs[("clearing:mm1", "AAPL")] == D(4)  # bought 5, sold 1
    assert legs[("clearing:mm1", la.USD)] == D("-419.00")  # paid 525, received 106
    assert legs[("clearing:mm2", la.USD)] == D("440.00")
    assert legs[(la.BANK_SETTLEMENT, la.USD)] == D("-21.00")
    assert (la.user(ACCOUNT, la.SHARES_UNSETTLED), "AAPL") in legs
    books = ledger_of(d)
    assert all(amount == 0 for (name, _), amount in books.items()
               if name.startswith("clearing:"))
    assert d.shares(la.SHARES) == D(10) and d.shares(la.SHARES_UNSETTLED) == 0
    assert d.shares(la.SHARES, "TSLA") == D(2)
    check_invariants(d.state)


def test_unsettled_shares_an_open_sell_holds_settle_in_place() -> None:
    d = funded()
    buy(d, "b1", "10", "100", on(MONDAY))
    d.send(place("s1", "sell", "6", order_type="limit", limit="150", reference=None,
                 when=on(MONDAY, 16)), on(MONDAY, 16))
    assert d.order("s1").reserve_unsettled == D(6)
    d.send(settle(TUESDAY, on(TUESDAY, 8)))
    assert d.shares(la.SHARES) == D(4) and d.shares(la.SHARES_UNSETTLED) == 0
    assert d.order("s1").reserve_unsettled == 0 and d.shares(la.SHARES_HELD) == D(6)
    d.send(cancel("c1", "s1", on(TUESDAY, 9)), on(TUESDAY, 9))
    d.send(report("s1", "xc", "canceled", side="sell", when=on(TUESDAY, 9)))
    assert d.shares(la.SHARES) == D(10) and d.shares(la.SHARES_UNSETTLED) == 0
    check_invariants(d.state)


def test_shares_bought_later_stay_unsettled_even_after_sells_from_the_pool() -> None:
    d = funded()
    buy(d, "b1", "10", "100", on(MONDAY))
    buy(d, "b2", "5", "100", on(TUESDAY))
    sell(d, "s1", "12", "101", on(TUESDAY))  # takes 12 of the 15 unsettled
    d.send(settle(TUESDAY, on(TUESDAY, 22)))
    # 3 left in the pool, all bought Tuesday: nothing settles yet
    assert d.shares(la.SHARES_UNSETTLED) == D(3) and d.shares(la.SHARES) == 0
    d.send(settle(WEDNESDAY, on(WEDNESDAY, 22)))
    assert d.shares(la.SHARES) == D(3) and d.shares(la.SHARES_UNSETTLED) == 0


def test_lots_stay_bounded_without_settlement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lots, "LOTS_MAX", 3)
    d = funded()
    for n in range(6):
        day = MONDAY + dt.timedelta(days=n)
        buy(d, f"b{n}", "1", "10", on(day))
    assert len(d.state.unsettled_lots) <= 3
    assert sum(lot.bought for lot in d.state.unsettled_lots.values()) == D(6)
    d.send(settle(NEXT_MONDAY + dt.timedelta(days=1), on(NEXT_MONDAY, 22)))
    assert d.shares(la.SHARES) == D(6) and d.state.unsettled_lots == {}
    assert all(amount == 0 for (name, _), amount in ledger_of(d).items()
               if name.startswith("clearing:"))


# ---- day end ------------------------------------------------------------------------------


def test_day_end_expires_day_orders_and_asks_the_market_maker_to_drop_them() -> None:
    d = funded()
    d.send(place("o1", "buy", "10", order_type="limit", limit="100", reference=None))
    d.send(place("o2", "buy", "10", order_type="limit", limit="100", reference=None))
    d.send(place("g", "buy", "1", order_type="limit", limit="100", reference=None, tif="gtc"))
    d.send(cancel("c1", "o2"))  # a cancel already on its way: this cancel is request 2
    out = d.send(expire(MONDAY, on(MONDAY, 21)), on(MONDAY, 21))
    routes = {r.order_id: r for r in of_type(out, RouteCancel)}
    oid1, oid2 = order_id_for(ACCOUNT, "o1"), order_id_for(ACCOUNT, "o2")
    assert set(routes) == {oid1, oid2}
    assert (routes[oid1].cl_ord_id, routes[oid1].orig_cl_ord_id) == (f"{oid1}.1", oid1)
    assert routes[oid2].cl_ord_id == f"{oid2}.2"
    assert d.order("o1").state == OrderState.EXPIRED
    assert d.order("g").state == OrderState.ROUTED
    assert d.cash(la.CASH_HELD) == D("100.00")
    # the market maker's confirmation of that cancel changes nothing
    assert d.send(report("o1", "xc", "canceled", cl_ord_id=f"{oid1}.1")) == []
