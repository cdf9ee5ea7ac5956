"""The simulator's book: cancel/replace of resting and partly filled orders, and refusals.

python -m pytest -q tests/unit/gateways/test_simulator_replace.py
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from gateways.simulator.book import (
    Book,
    CxlRejReason,
    NewOrder,
    OrdStatus,
    ReplaceRequest,
    SimOrder,
)
from gateways.simulator.store import BookStore
from state.messages import ExecType, OrderType, Side


def book() -> Book:
    b = Book(Decimal("1"), Decimal("1000"))
    b.on_quote("AAPL", Decimal("209.90"), Decimal("210.00"))
    return b


def limit(cl: str = "o1", qty: str = "10", price: str = "209.50") -> NewOrder:
    return NewOrder(cl_ord_id=cl, account="a1", symbol="AAPL", side=Side.BUY,
                    order_type=OrderType.LIMIT, quantity=Decimal(qty),
                    limit_price=Decimal(price))


def replace(cl: str = "o1.1", orig: str = "o1", qty: str = "12", price: str | None = "209.60",
            **changes: object) -> ReplaceRequest:
    fields: dict[str, object] = dict(
        cl_ord_id=cl, orig_cl_ord_id=orig, symbol="AAPL", side=Side.BUY,
        order_type=OrderType.LIMIT, quantity=Decimal(qty),
        limit_price=Decimal(price) if price else None)
    fields.update(changes)
    return ReplaceRequest(**fields)  # type: ignore[arg-type]


def test_resting_limit_is_replaced_under_the_new_cl_ord_id() -> None:
    b = book()
    b.new_order(limit())
    [report] = b.replace(replace())
    assert report.exec_type is ExecType.REPLACED and report.kind == "report"
    assert (report.cl_ord_id, report.orig_cl_ord_id) == ("o1.1", "o1")
    assert (report.ord_status, report.order_qty, report.cum_qty, report.leaves_qty) == (
        OrdStatus.NEW, 12, 0, 12)
    # The new price is the one that trades; both ids name the order.
    assert b.on_quote("AAPL", Decimal("209.50"), Decimal("209.65")) == []  # above 209.60
    assert b.on_quote("AAPL", Decimal("209.50"), Decimal("209.60")) != []
    assert b.orders["o1"] is b.orders["o1.1"]
    assert b.orders["o1"].cum_qty == 12


def test_replace_to_a_marketable_price_fills_at_once() -> None:
    b = book()
    b.new_order(limit())
    reports = b.replace(replace(price="210.00"))
    assert [r.exec_type for r in reports] == [ExecType.REPLACED, ExecType.TRADE]
    assert reports[1].cl_ord_id == "o1.1" and reports[1].last_qty == 12


def test_partly_filled_order_keeps_its_fills_and_replaces_the_rest() -> None:
    b = book()
    b.new_order(limit(qty="1000"))
    order = b.orders["o1"]
    # A fill of 400 arrived, the other parts are still open (as a real market maker may do).
    order.fill_parts = [Decimal(400)]
    b.on_quote("AAPL", Decimal("209.40"), Decimal("209.45"))
    order.fill_parts = [Decimal(600)]
    b.on_quote("AAPL", Decimal("209.90"), Decimal("210.00"))
    assert (order.cum_qty, order.ord_status) == (400, OrdStatus.PARTIALLY_FILLED)
    [report] = b.replace(replace(qty="500", price="209.40"))
    assert (report.ord_status, report.cum_qty, report.leaves_qty) == (
        OrdStatus.PARTIALLY_FILLED, 400, 100)
    fills = b.on_quote("AAPL", Decimal("209.30"), Decimal("209.40"))
    assert [f.last_qty for f in fills] == [100] and fills[0].ord_status == OrdStatus.FILLED


def test_quantity_at_or_below_the_filled_quantity_is_too_late() -> None:
    b = book()
    b.new_order(limit(qty="1000"))
    order = b.orders["o1"]
    order.cum_qty, order.ord_status = Decimal(400), OrdStatus.PARTIALLY_FILLED
    [reject] = b.replace(replace(qty="400"))
    assert reject.kind == "cancel_reject" and reject.response_to == "2"
    assert reject.rej_reason == CxlRejReason.TOO_LATE
    assert (reject.cl_ord_id, reject.orig_cl_ord_id) == ("o1.1", "o1")
    assert order.request.quantity == 1000 and "o1.1" not in b.orders


def test_replace_of_unknown_or_done_orders_is_refused() -> None:
    b = book()
    [unknown] = b.replace(replace(orig="nope"))
    assert (unknown.kind, unknown.rej_reason, unknown.response_to) == (
        "cancel_reject", CxlRejReason.UNKNOWN_ORDER, "2")
    b.new_order(NewOrder(cl_ord_id="m1", account="a1", symbol="AAPL", side=Side.BUY,
                         order_type=OrderType.MARKET, quantity=Decimal(5)))
    [done] = b.replace(replace(cl="m1.1", orig="m1"))
    assert (done.kind, done.rej_reason, done.ord_status) == (
        "cancel_reject", CxlRejReason.TOO_LATE, OrdStatus.FILLED)
    b.new_order(limit(cl="c1"))
    b.cancel("c1.1", "c1")
    [cancelled] = b.replace(replace(cl="c1.2", orig="c1"))
    assert cancelled.rej_reason == CxlRejReason.TOO_LATE


def test_replace_keeps_symbol_and_side_and_needs_prices() -> None:
    b = book()
    b.new_order(limit())
    [side] = b.replace(replace(side=Side.SELL))
    assert side.kind == "cancel_reject" and side.rej_reason == CxlRejReason.OTHER
    [no_price] = b.replace(replace(price=None))
    assert no_price.kind == "cancel_reject" and no_price.text == "limit price required"


def test_a_resent_replace_changes_nothing_and_later_ones_chain() -> None:
    b = book()
    b.new_order(limit())
    b.replace(replace())
    assert b.replace(replace()) == []
    [again] = b.replace(replace(cl="o1.2", orig="o1.1", qty="20"))
    assert again.exec_type is ExecType.REPLACED and again.order_qty == 20
    [status] = b.status_of("o1.2")
    assert status.leaves_qty == 20


def test_replaced_order_survives_a_restart(tmp_path: Path) -> None:
    b = book()
    b.new_order(limit())
    b.replace(replace(qty="15"))
    store = BookStore(tmp_path)
    store.save(b.take_dirty())
    store.close()
    store = BookStore(tmp_path)
    loaded: list[SimOrder] = store.load()
    store.close()
    restarted = book()
    restarted.load(loaded)
    assert restarted.orders["o1.1"] is restarted.orders["o1"]
    assert restarted.orders["o1.1"].request.quantity == 15
    assert restarted.orders["o1.1"].request.limit_price == Decimal("209.60")
    fills = restarted.on_quote("AAPL", Decimal("209.50"), Decimal("209.60"))
    assert [f.last_qty for f in fills] == [15] and fills[0].cl_ord_id == "o1.1"
