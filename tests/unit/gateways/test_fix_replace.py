"""Cancel/replace and pending cancel in the FIX gateway's messages and bookkeeping.

python -m pytest -q tests/unit/gateways/test_fix_replace.py
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from gateways.fix import fixmsg
from gateways.fix.service import pending_cancel_report
from gateways.fix.store import GatewayStore
from gateways.fix.tracking import OpenOrder
from state.messages import ExecType, OrderType, RouteCancel, RouteReplace, Side, TimeInForce

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def open_order(**changes: object) -> OpenOrder:
    fields: dict[str, object] = dict(
        order_id="ord_1", cl_ord_id="ord_1", account_id="acc1", symbol="AAPL",
        side=Side.BUY, quantity=Decimal(10), market_maker="mm1", session="FIX.4.4:B->M",
        routed_at_ms=0)
    fields.update(changes)
    return OpenOrder(**fields)  # type: ignore[arg-type]


def replace_request(**changes: object) -> RouteReplace:
    fields: dict[str, object] = dict(
        account_id="acc1", order_id="ord_1", cl_ord_id="ord_1.2", orig_cl_ord_id="ord_1",
        symbol="AAPL", side=Side.BUY, order_type=OrderType.STOP_LIMIT,
        quantity=Decimal("12.5"), time_in_force=TimeInForce.GTC, routed_at=NOW,
        limit_price=Decimal("209.55"), stop_price=Decimal("209.00"))
    fields.update(changes)
    return RouteReplace(**fields)  # type: ignore[arg-type]


def test_cancel_replace_request_carries_the_full_new_terms() -> None:
    message = fixmsg.order_cancel_replace_request(replace_request(), "ord_1.1", NOW)
    assert fixmsg.msg_type(message) == "G"
    expected = {fixmsg.ORIG_CL_ORD_ID: "ord_1.1", fixmsg.CL_ORD_ID: "ord_1.2",
                fixmsg.ACCOUNT: "acc1", fixmsg.SYMBOL: "AAPL", fixmsg.SIDE: "1",
                fixmsg.ORDER_QTY: "12.5", fixmsg.ORD_TYPE: "4", fixmsg.PRICE: "209.55",
                fixmsg.STOP_PX: "209.00", fixmsg.TIME_IN_FORCE: "1",
                fixmsg.TRANSACT_TIME: "20260102-03:04:05.000"}
    assert {tag: message.getField(tag) for tag in expected} == expected
    limit_only = fixmsg.order_cancel_replace_request(
        replace_request(order_type=OrderType.LIMIT, stop_price=None), "ord_1", NOW)
    assert not limit_only.isSetField(fixmsg.STOP_PX)


def _replaced_report(**tags: str) -> object:
    report = fixmsg.new_message(fixmsg.MSG_EXECUTION_REPORT)
    values = {37: "S-1", 17: "E7", 150: "5", 39: "1", 54: "1", 55: "AAPL", 11: "ord_1.2",
              41: "ord_1", 14: "4", 151: "8.5", 6: "209.50", 1: "acc1", 32: "4",
              31: "209.50"}
    values.update({int(tag[1:]): value for tag, value in tags.items()})
    for tag, value in values.items():
        report.setField(tag, value)
    return report


def test_replaced_report_moves_no_shares_and_names_both_ids() -> None:
    parsed = fixmsg.execution_report_from_fix(_replaced_report(), "mm1", None, NOW)
    assert parsed.exec_type is ExecType.REPLACED
    assert (parsed.last_qty, parsed.last_px) == (0, 0)
    assert (parsed.cum_qty, parsed.leaves_qty) == (Decimal(4), Decimal("8.5"))
    assert (parsed.cl_ord_id, parsed.orig_cl_ord_id, parsed.order_id) == (
        "ord_1.2", "ord_1", "ord_1")
    assert parsed.exec_id == "mm1:E7"


def test_replace_reject_is_a_cancel_reject_with_the_original_id() -> None:
    reject = fixmsg.new_message(fixmsg.MSG_ORDER_CANCEL_REJECT)
    for tag, value in [(37, "S-1"), (11, "ord_1.2"), (41, "ord_1"), (39, "2"), (434, "2"),
                       (102, "0"), (58, "too late")]:
        reject.setField(tag, value)
    known = fixmsg.KnownOrder("acc1", "AAPL", Side.BUY, Decimal(10), Decimal(10), "ord_1")
    parsed = fixmsg.cancel_reject_from_fix(reject, "mm1", known, NOW)
    assert parsed.exec_type is ExecType.CANCEL_REJECTED
    assert (parsed.cl_ord_id, parsed.orig_cl_ord_id) == ("ord_1.2", "ord_1")
    assert parsed.exec_id == "mm1:cxlrej:ord_1.2"
    assert parsed.text == "CxlRejResponseTo=2 CxlRejReason=0 too late"
    # A market maker that does not know the order names no OrigClOrdID: ours fills in.
    reject.setField(41, "NONE")
    known.cl_ord_id = "ord_1.1"
    assert fixmsg.cancel_reject_from_fix(reject, "mm1", known, NOW).orig_cl_ord_id == "ord_1.1"


def test_open_order_goes_by_its_latest_confirmed_cl_ord_id() -> None:
    order = open_order()
    assert order.current_cl_ord_id == "ord_1"
    order.on_replaced("ord_1.2", Decimal(4), Decimal("8.5"))
    assert order.current_cl_ord_id == "ord_1.2" and order.cl_ord_id == "ord_1"
    assert order.quantity == Decimal("12.5")


def test_store_keeps_the_replaced_cl_ord_id(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path)
    order = open_order()
    order.on_replaced("ord_1.2", Decimal(0), Decimal(7))
    store.record(exec_ids=[], delivered={}, sent=[("ord_1.2", "replace")], orders=[order],
                 stats={})
    store.close()
    again = GatewayStore(tmp_path)
    loaded = again.open_orders()["ord_1"]
    assert (loaded.current_cl_ord_id, loaded.quantity) == ("ord_1.2", Decimal(7))
    assert again.sent_cl_ord_ids() == {"ord_1.2"}
    again.close()


def test_store_written_before_replaces_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "gateway.sqlite")
    old.execute(
        "CREATE TABLE orders (order_id TEXT PRIMARY KEY, cl_ord_id TEXT NOT NULL,"
        " account_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,"
        " quantity TEXT NOT NULL, market_maker TEXT NOT NULL, session TEXT NOT NULL,"
        " routed_at_ms INTEGER NOT NULL, reference_price TEXT, cum_qty TEXT NOT NULL,"
        " awaiting_since_ms INTEGER, stuck_stage INTEGER NOT NULL, terminal INTEGER NOT NULL)")
    old.execute("INSERT INTO orders VALUES ('o', 'o', 'a', 'AAPL', 'buy', '1', 'mm', 's', 0,"
                " NULL, '0', NULL, 0, 0)")
    old.commit()
    old.close()
    store = GatewayStore(tmp_path)
    assert store.open_orders()["o"].current_cl_ord_id == "o"
    store.close()


def test_pending_cancel_report_of_a_stuck_order() -> None:
    order = open_order(cum_qty=Decimal(3), replaced_cl_ord_id="ord_1.2")
    cancel = RouteCancel(account_id="acc1", order_id="ord_1", cl_ord_id="ord_1.gw1",
                         orig_cl_ord_id=order.current_cl_ord_id, symbol="AAPL",
                         side=Side.BUY, quantity=order.quantity, routed_at=NOW)
    report = pending_cancel_report(order, cancel, NOW)
    assert report.exec_type is ExecType.PENDING_CANCEL
    assert report.exec_id == "gateway:pending_cancel:ord_1"
    assert (report.last_qty, report.last_px, report.cum_qty, report.leaves_qty) == (
        0, 0, Decimal(3), Decimal(7))
    assert (report.cl_ord_id, report.orig_cl_ord_id) == ("ord_1.gw1", "ord_1.2")
    assert report.text == "no answer from mm1; cancel requested"
    assert report.market_maker == "mm1" and report.account_id == "acc1"
