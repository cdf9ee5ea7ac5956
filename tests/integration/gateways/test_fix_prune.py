"""The gateway forgets orders closed longer ago than its retention (store and memory), and
refuses route records older than that retention, so a forgotten order is never sent twice."""

from __future__ import annotations

import datetime as dt
import queue
import time
from decimal import Decimal
from pathlib import Path

import pytest
from msgspec.structs import replace

from gateways.fix.store import GatewayStore
from gateways.fix.tracking import OpenOrder
from state.messages import ExecType, Side
from tests.integration.gateways.test_fix_bad_input import MM, Rig

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def test_closed_orders_are_pruned_and_stale_routes_refused(services, topics,  # noqa: ANN001
                                                           tmp_path: Path) -> None:
    rig = Rig(services, topics, tmp_path)
    month_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    stale = replace(rig.order("stale", "FILL"), routed_at=month_ago)
    month_ago_ms = int(month_ago.timestamp() * 1000)
    store = GatewayStore(tmp_path / "gw")
    store.record(
        exec_ids=[(f"{MM}:stale-fill", stale.order_id)], delivered={},
        sent=[(stale.cl_ord_id, "new")],
        orders=[OpenOrder(order_id=stale.order_id, cl_ord_id=stale.cl_ord_id,
                          account_id=rig.account, symbol="FILL", side=Side.BUY,
                          quantity=Decimal(10), market_maker=MM, session="s",
                          routed_at_ms=month_ago_ms, terminal=True,
                          closed_at_ms=month_ago_ms + 1000)],
        stats={}, now_ms=month_ago_ms)
    store.close()
    rig.start()
    try:
        # The stale record is a replay of the forgotten order: not sent again. The next
        # order is routed as usual.
        fresh = rig.order("fresh", "FILL")
        rig.route(stale, fresh)
        rig.until(lambda: any(a.code == "stale_route" for a in rig.alerts)
                  and any(r.exec_type is ExecType.TRADE for r in rig.reports_of(fresh.order_id)))
        [alert] = [a for a in rig.alerts if a.code == "stale_route"]
        assert alert.order_id == stale.order_id
        assert rig.reports_of(stale.order_id) == []
        sent: list[str] = []
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                kind, cl_ord_id = rig.peer.app.received.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "D":
                sent.append(cl_ord_id)
        assert sent == [fresh.cl_ord_id], sent
        assert "pruned 1 closed orders, 1 ClOrdIDs, 1 ExecIDs older than 7 days" in rig.log()
    finally:
        rig.stop()
    again = GatewayStore(tmp_path / "gw")
    assert f"{MM}:stale-fill" not in again.forwarded_exec_ids()
    assert again.sent_cl_ord_ids() == {fresh.cl_ord_id}
    again.close()
