"""The simulator's book: prices, partial fills, resting orders, cancels, rejects."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from gateways.simulator.book import NBBO, Book, NewOrder, OrdStatus, fill_parts, improved_price
from state.messages import ExecType, OrderType, Side, SymbolStatus, TimeInForce


def book(**kwargs) -> Book:  # noqa: ANN003
    b = Book(Decimal("1"), Decimal("1000"), **kwargs)
    b.on_quote("AAPL", Decimal("209.90"), Decimal("210.00"))
    return b


def order(cl: str = "o1", qty: str = "10", side: Side = Side.BUY,
          kind: OrderType = OrderType.MARKET, **kwargs) -> NewOrder:  # noqa: ANN003
    return NewOrder(cl_ord_id=cl, account="a1", symbol=kwargs.pop("symbol", "AAPL"), side=side,
                    order_type=kind, quantity=Decimal(qty), **kwargs)


def test_improved_price_rounds_to_the_cent() -> None:
    nbbo = NBBO(Decimal("209.90"), Decimal("210.00"))
    assert improved_price(Side.BUY, nbbo, Decimal(1)) == Decimal("209.98")
    assert improved_price(Side.SELL, nbbo, Decimal(1)) == Decimal("209.92")
    assert improved_price(Side.BUY, nbbo, Decimal(0)) == Decimal("210.00")


def test_fill_parts() -> None:
    assert fill_parts(Decimal(1000), Decimal(1000)) == [400, 300, 300]
    assert fill_parts(Decimal(999), Decimal(1000)) == [999]
    parts = fill_parts(Decimal("1000.5"), Decimal(1000))
    assert sum(parts) == Decimal("1000.5") and len(parts) == 3


def test_market_order_acks_then_fills() -> None:
    reports = book().new_order(order())
    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE]
    fill = reports[1]
    assert (fill.last_qty, fill.last_px, fill.cum_qty, fill.leaves_qty) == (
        10, Decimal("209.98"), 10, 0)
    assert fill.ord_status == OrdStatus.FILLED
    assert len({r.exec_id for r in reports}) == 2


def test_large_order_fills_in_three_parts() -> None:
    reports = book().new_order(order(qty="1000", side=Side.SELL))
    fills = [r for r in reports if r.exec_type is ExecType.TRADE]
    assert [f.last_qty for f in fills] == [400, 300, 300]
    assert [f.cum_qty for f in fills] == [400, 700, 1000]
    assert [f.ord_status for f in fills] == ["1", "1", "2"]


def test_limit_rests_until_the_quote_crosses() -> None:
    b = book()
    reports = b.new_order(order(kind=OrderType.LIMIT, limit_price=Decimal("209.50")))
    assert [r.exec_type for r in reports] == [ExecType.NEW]
    assert b.on_quote("AAPL", Decimal("209.40"), Decimal("209.60")) == []
    fills = b.on_quote("AAPL", Decimal("209.30"), Decimal("209.45"))
    assert [(f.exec_type, f.last_px) for f in fills] == [(ExecType.TRADE, Decimal("209.43"))]


def test_stop_triggers_then_fills_at_market() -> None:
    b = book()
    b.new_order(order(kind=OrderType.STOP, stop_price=Decimal("211.00")))
    assert b.on_quote("AAPL", Decimal("210.40"), Decimal("210.50")) == []
    fills = b.on_quote("AAPL", Decimal("210.90"), Decimal("211.00"))
    assert fills and fills[0].last_px == Decimal("210.98")


def test_cancel_and_cancel_reject() -> None:
    b = book()
    b.new_order(order(kind=OrderType.LIMIT, limit_price=Decimal("200")))
    [cancelled] = b.cancel("o1.1", "o1")
    assert cancelled.exec_type is ExecType.CANCELED and cancelled.leaves_qty == 0
    [again] = b.cancel("o1.2", "o1")
    assert again.kind == "cancel_reject"
    [unknown] = b.cancel("x.1", "x")
    assert unknown.kind == "cancel_reject" and unknown.text == "unknown order"


def test_rejects_unknown_unquoted_halted_and_duplicate() -> None:
    b = book(known_symbols=("AAPL", "MSFT"))
    assert b.new_order(order("a", symbol="ZZZ"))[0].text == "unknown symbol"
    assert b.new_order(order("b", symbol="MSFT"))[0].text == "no quote for symbol"
    b.on_status("AAPL", SymbolStatus.HALTED)
    assert b.new_order(order("c"))[0].text == "symbol halted"
    b.on_status("AAPL", SymbolStatus.OPEN)
    b.new_order(order("d"))
    dup = b.new_order(order("d"))
    assert dup[0].exec_type is ExecType.REJECTED and dup[0].rej_reason == "6"


def test_ioc_limit_not_marketable_is_cancelled() -> None:
    reports = book().new_order(order(kind=OrderType.LIMIT, limit_price=Decimal("200"),
                                     time_in_force=TimeInForce.IOC))
    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.CANCELED]


def test_status_of_a_filled_order() -> None:
    b = book()
    b.new_order(order())
    [status] = b.status_of("o1")
    assert status.exec_type is ExecType.ORDER_STATUS and status.cum_qty == 10


def test_replayed_old_quote_does_not_fill_a_newer_order() -> None:
    b = book()
    arrived = dt.datetime(2026, 1, 2, 15, 0, tzinfo=dt.UTC)
    b.new_order(order(kind=OrderType.LIMIT, limit_price=Decimal("209.50")), arrived)
    old = arrived - dt.timedelta(seconds=1)
    assert b.on_quote("AAPL", Decimal("209.30"), Decimal("209.40"), old) == []
    later = arrived + dt.timedelta(seconds=1)
    assert b.on_quote("AAPL", Decimal("209.30"), Decimal("209.40"), later)


def test_unknown_status_request_is_answered_rejected() -> None:
    [report] = book().status_of("nope", "AAPL", Side.SELL)
    assert report.exec_type is ExecType.ORDER_STATUS and report.ord_status == OrdStatus.REJECTED


def test_book_survives_a_restart(tmp_path) -> None:  # noqa: ANN001
    from gateways.simulator.store import BookStore

    b = book()
    b.new_order(order("r1", kind=OrderType.LIMIT, limit_price=Decimal("209.50")))
    b.new_order(order("c1", kind=OrderType.LIMIT, limit_price=Decimal("100")))
    b.cancel("c1.1", "c1")
    store = BookStore(tmp_path)
    store.save(b.take_dirty())
    store.close()
    again = book()
    store = BookStore(tmp_path)
    again.load(store.load())
    store.close()
    assert again.orders["c1.1"] is again.orders["c1"]
    assert again.orders["c1"].ord_status == OrdStatus.CANCELED
    fills = again.on_quote("AAPL", Decimal("209.30"), Decimal("209.45"))
    assert [(f.cl_ord_id, f.exec_id) for f in fills] == [("r1", "S-r1-2")]


# ---- orders before the first quote (held as Pending New, bounded) -----------------------------

T0 = dt.datetime(2026, 1, 2, 14, 30, tzinfo=dt.UTC)


def unquoted_book(quote_wait_s: float = 30.0) -> Book:
    """A book that knows MSFT but has no quote for it yet (a stack's first seconds)."""
    return book(known_symbols=("AAPL", "MSFT"), quote_wait_s=quote_wait_s)


def test_order_before_the_first_quote_fills_when_it_arrives() -> None:
    b = unquoted_book()
    [held] = b.new_order(order("w", symbol="MSFT"), T0)
    assert (held.exec_type, held.ord_status, held.fix_exec_type) == (
        ExecType.ORDER_STATUS, OrdStatus.PENDING_NEW, "A")
    assert b.expire_held(T0 + dt.timedelta(seconds=5)) == []
    reports = b.on_quote("MSFT", Decimal("415.00"), Decimal("415.20"),
                         T0 + dt.timedelta(seconds=5))
    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE]
    assert (reports[1].ord_status, reports[1].last_px) == (OrdStatus.FILLED, Decimal("415.16"))
    assert b.expire_held(T0 + dt.timedelta(seconds=60)) == []  # nothing left to expire
    assert len({r.exec_id for r in [held, *reports]}) == 3


def test_order_without_a_quote_is_rejected_after_the_wait() -> None:
    b = unquoted_book()
    b.new_order(order("w", symbol="MSFT"), T0)
    assert b.expire_held(T0 + dt.timedelta(seconds=29.9)) == []
    [rejected] = b.expire_held(T0 + dt.timedelta(seconds=30))
    assert (rejected.exec_type, rejected.ord_status, rejected.text) == (
        ExecType.REJECTED, OrdStatus.REJECTED, "no quote for symbol")
    assert b.on_quote("MSFT", Decimal("415.00"), Decimal("415.20"),
                      T0 + dt.timedelta(seconds=31)) == []


def test_without_a_wait_an_unquoted_order_is_rejected_at_once() -> None:
    [rejected] = unquoted_book(quote_wait_s=0).new_order(order("w", symbol="MSFT"), T0)
    assert rejected.text == "no quote for symbol"


def test_a_held_order_is_checked_again_when_accepted() -> None:
    b = unquoted_book()
    b.new_order(order("w", symbol="MSFT"), T0)
    b.on_status("MSFT", SymbolStatus.HALTED)
    [rejected] = b.on_quote("MSFT", Decimal("415.00"), Decimal("415.20"),
                            T0 + dt.timedelta(seconds=1))
    assert (rejected.exec_type, rejected.text) == (ExecType.REJECTED, "symbol halted")


def test_a_held_order_can_be_cancelled_not_replaced() -> None:
    from gateways.simulator.book import ReplaceRequest

    b = unquoted_book()
    b.new_order(order("w", symbol="MSFT", kind=OrderType.LIMIT,
                      limit_price=Decimal("400")), T0)
    [refused] = b.replace(ReplaceRequest(
        cl_ord_id="w.1", orig_cl_ord_id="w", symbol="MSFT", side=Side.BUY,
        order_type=OrderType.LIMIT, quantity=Decimal(5), limit_price=Decimal("401")))
    assert refused.kind == "cancel_reject" and "not yet accepted" in (refused.text or "")
    [cancelled] = b.cancel("w.2", "w")
    assert cancelled.exec_type is ExecType.CANCELED and cancelled.leaves_qty == 0
    assert b.expire_held(T0 + dt.timedelta(seconds=60)) == []


def test_a_held_order_survives_a_restart(tmp_path) -> None:  # noqa: ANN001
    from gateways.simulator.store import BookStore

    b = unquoted_book()
    b.new_order(order("w", symbol="MSFT"), T0)
    store = BookStore(tmp_path)
    store.save(b.take_dirty())
    again = unquoted_book()
    again.load(store.load())
    store.close()
    # A quote from before the order (replayed) does not accept it; the next one does.
    assert again.on_quote("MSFT", Decimal("414"), Decimal("415"),
                          T0 - dt.timedelta(seconds=1)) == []
    reports = again.on_quote("MSFT", Decimal("415.00"), Decimal("415.20"),
                             T0 + dt.timedelta(seconds=1))
    assert [(r.exec_type, r.exec_id) for r in reports] == [
        (ExecType.NEW, "S-w-2"), (ExecType.TRADE, "S-w-3")]


def test_a_quote_looks_only_at_its_symbols_open_orders() -> None:
    """The resting index holds exactly the open orders, whatever ended the others: a quote's
    cost follows what rests, not every order the book ever had."""
    b = book()
    b.on_quote("MSFT", Decimal("400.00"), Decimal("400.10"))
    b.new_order(order("filled"))
    b.new_order(order("ioc", kind=OrderType.LIMIT, limit_price=Decimal("1.00"),
                      time_in_force=TimeInForce.IOC))
    b.new_order(order("cancelled", kind=OrderType.LIMIT, limit_price=Decimal("200.00")))
    b.cancel("cancelled-x", "cancelled")
    b.new_order(order("rests", kind=OrderType.LIMIT, limit_price=Decimal("209.50")))
    b.new_order(order("other", symbol="MSFT", kind=OrderType.LIMIT,
                      limit_price=Decimal("399.00")))
    scanned = {o.order_id for o in b.orders.values() if o.open}
    assert {i for orders in b.resting.values() for i in orders} == scanned
    assert list(b.resting["AAPL"]) == ["S-rests"]
    fills = b.on_quote("AAPL", Decimal("209.40"), Decimal("209.45"))
    assert [r.cl_ord_id for r in fills] == ["rests"]
    assert b.resting["AAPL"] == {} and list(b.resting["MSFT"]) == ["S-other"]
