"""Cancel/replace through the gateway and the simulator, and the gateway's pending-cancel
report of a stuck order.

python -m pytest -q tests/integration/gateways/test_fix_replace.py
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import pytest
from msgspec.structs import replace

from gateways.fix.harness import TopicReader
from state.ids import cl_ord_id_for
from state.messages import (
    ExecType,
    ExecutionReport,
    OrderType,
    RouteCancel,
    RouteNewOrder,
    RouteReplace,
    RouteStatusRequest,
    Side,
)
from state.topics import Topic, decode
from tests.integration.gateways.test_fix_faults import Link, orders_for, quote_aapl

pytestmark = pytest.mark.integration


def replace_of(order: RouteNewOrder, attempt: int, orig_attempt: int,
               **terms: object) -> RouteReplace:
    fields: dict[str, object] = dict(
        account_id=order.account_id, order_id=order.order_id,
        cl_ord_id=cl_ord_id_for(order.order_id, attempt),
        orig_cl_ord_id=cl_ord_id_for(order.order_id, orig_attempt), symbol=order.symbol,
        side=order.side, order_type=order.order_type, quantity=order.quantity,
        time_in_force=order.time_in_force, routed_at=dt.datetime.now(dt.UTC),
        limit_price=order.limit_price, stop_price=order.stop_price)
    fields.update(terms)
    return RouteReplace(**fields)  # type: ignore[arg-type]


def of_type(reports: list[ExecutionReport], exec_type: ExecType) -> list[ExecutionReport]:
    return [r for r in reports if r.exec_type is exec_type]


def test_replace_then_cancel_by_the_current_cl_ord_id(services, topics,
                                                      tmp_path: Path) -> None:
    link = Link(services, topics, tmp_path, {"sim1": {}})
    quote_aapl(link)
    link.start()
    try:
        link.wait_logged_on(1)
        [base, other] = orders_for("rp", 2, services)
        resting = replace(base, order_type=OrderType.LIMIT, limit_price=Decimal("209.50"),
                          quantity=Decimal(5), side=Side.BUY)
        link.send([resting])
        link.collect(lambda reports: any(r.exec_type is ExecType.NEW for r in reports))
        bigger = replace_of(resting, 1, 0, quantity=Decimal(8), limit_price=Decimal("209.40"))
        link.send([bigger])  # type: ignore[list-item]
        link.collect(lambda reports: bool(of_type(reports, ExecType.REPLACED)))
        [replaced] = of_type(link.reports, ExecType.REPLACED)
        assert (replaced.cl_ord_id, replaced.orig_cl_ord_id) == (bigger.cl_ord_id,
                                                                 resting.cl_ord_id), link.logs()
        assert (replaced.last_qty, replaced.cum_qty, replaced.leaves_qty) == (0, 0, 8)
        assert replaced.exec_id.startswith("sim1:") and replaced.order_id == resting.order_id
        # A replace the market maker refuses (the side may not change): the order lives on.
        refused = replace_of(resting, 2, 1, side=Side.SELL)
        link.send([refused])  # type: ignore[list-item]
        link.collect(lambda reports: bool(of_type(reports, ExecType.CANCEL_REJECTED)))
        [rejected] = of_type(link.reports, ExecType.CANCEL_REJECTED)
        assert (rejected.cl_ord_id, rejected.orig_cl_ord_id) == (refused.cl_ord_id,
                                                                 bigger.cl_ord_id)
        assert rejected.exec_id == f"sim1:cxlrej:{refused.cl_ord_id}"
        assert rejected.text and "CxlRejResponseTo=2" in rejected.text
        # A status request and a cancel that name the order's first ClOrdID: the gateway
        # sends them under the ClOrdID the market maker knows it by now.
        status = RouteStatusRequest(account_id=resting.account_id, order_id=resting.order_id,
                                    cl_ord_id=resting.cl_ord_id, symbol=resting.symbol,
                                    side=resting.side, routed_at=dt.datetime.now(dt.UTC))
        cancel = RouteCancel(account_id=resting.account_id, order_id=resting.order_id,
                             cl_ord_id=cl_ord_id_for(resting.order_id, 3),
                             orig_cl_ord_id=resting.cl_ord_id, symbol=resting.symbol,
                             side=resting.side, quantity=Decimal(8),
                             routed_at=dt.datetime.now(dt.UTC))
        link.send([status, cancel])  # type: ignore[list-item]
        link.collect(lambda reports: bool(of_type(reports, ExecType.CANCELED)))
        state = of_type(link.reports, ExecType.ORDER_STATUS)[-1]
        assert (state.cl_ord_id, state.leaves_qty) == (bigger.cl_ord_id, 8), link.logs()
        [cancelled] = of_type(link.reports, ExecType.CANCELED)
        assert (cancelled.cl_ord_id, cancelled.orig_cl_ord_id) == (cancel.cl_ord_id,
                                                                   bigger.cl_ord_id)
        # A replace of an order no longer open is answered by the gateway itself.
        late = replace_of(resting, 4, 1)
        market = replace(other, quantity=Decimal(3))
        link.send([late, market])  # type: ignore[list-item]
        link.collect(lambda reports: len(of_type(reports, ExecType.CANCEL_REJECTED)) == 2
                     and bool(of_type(reports, ExecType.TRADE)))
        [here] = [r for r in of_type(link.reports, ExecType.CANCEL_REJECTED)
                  if r.cl_ord_id == late.cl_ord_id]
        assert here.exec_id == f"gateway:cxlrej:{late.cl_ord_id}"
    finally:
        link.stop()
    sent = "".join(p.read_text() for p in (tmp_path / "gw" / "log").glob("*messages*"))
    assert "35=G" in sent


def test_stuck_order_cancel_is_reported_as_pending_cancel(services, topics,
                                                          tmp_path: Path) -> None:
    link = Link(services, topics, tmp_path, {"mute": {"silent": True}},
                stuck_order_timeout_ms=300)
    quote_aapl(link)
    events = TopicReader(services.bootstrap_servers, topics + Topic.ORDERS_EVENTS)
    link.start()
    try:
        [order] = orders_for("pc", 1, services)
        link.send([order])
        link.collect(lambda reports: bool(of_type(reports, ExecType.PENDING_CANCEL)))
        alerts: list[object] = []
        deadline = time.monotonic() + 20
        while not alerts and time.monotonic() < deadline:
            alerts = [decode(Topic.ORDERS_EVENTS, v) for _, v in events.poll(0.2)]
        assert alerts, link.logs()
        time.sleep(1.0)  # more stuck rounds: still one pending_cancel report
        link.collect(lambda reports: False, timeout_s=0.5)
    finally:
        events.close()
        link.stop()
    [pending] = of_type(link.reports, ExecType.PENDING_CANCEL)
    assert pending.exec_id == f"gateway:pending_cancel:{order.order_id}"
    assert (pending.order_id, pending.account_id) == (order.order_id, order.account_id)
    assert (pending.last_qty, pending.last_px, pending.cum_qty, pending.leaves_qty) == (
        0, 0, 0, order.quantity)
    assert pending.text == "no answer from mute; cancel requested"
    assert pending.orig_cl_ord_id == order.cl_ord_id
