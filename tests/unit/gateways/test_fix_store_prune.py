"""The gateway store stays bounded: orders closed before the cutoff are forgotten with their
ClOrdIDs and ExecIDs; open and recently closed ones are kept."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

from gateways.fix.store import GatewayStore
from gateways.fix.tracking import OpenOrder
from state.messages import Side

DAY_MS = 86_400_000
NOW_MS = 100 * DAY_MS


def order(order_id: str, closed_at_ms: int | None = None) -> OpenOrder:
    return OpenOrder(order_id=order_id, cl_ord_id=order_id, account_id="acc1", symbol="AAPL",
                     side=Side.BUY, quantity=Decimal(10), market_maker="mm1", session="s",
                     routed_at_ms=0, terminal=closed_at_ms is not None,
                     closed_at_ms=closed_at_ms)


def test_prune_drops_orders_closed_before_the_cutoff(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path)
    old_ms, recent_ms = NOW_MS - 10 * DAY_MS, NOW_MS - DAY_MS
    store.record(exec_ids=[("mm1:old-1", "old"), ("mm1:old-2", "old")], delivered={},
                 sent=[("old", "new"), ("old.c1", "cancel")],
                 orders=[order("old", closed_at_ms=old_ms)], stats={}, now_ms=old_ms)
    store.record(exec_ids=[("mm1:recent-1", "recent"), ("mm1:open-1", "open"),
                           ("mm1:stray-old", "never_routed")],
                 delivered={}, sent=[("recent", "new"), ("open", "new"), ("open.r1", "replace")],
                 orders=[order("recent", closed_at_ms=recent_ms), order("open")], stats={},
                 now_ms=old_ms)
    store.record(exec_ids=[("mm1:stray-new", "never_routed_either")], delivered={}, sent=[],
                 orders=[], stats={}, now_ms=recent_ms)

    pruned = store.prune(NOW_MS - 7 * DAY_MS, NOW_MS)

    assert pruned.order_ids == {"old"}
    assert pruned.cl_ord_ids == {"old", "old.c1"}
    assert pruned.exec_ids == {"mm1:old-1", "mm1:old-2", "mm1:stray-old"}
    store.close()
    again = GatewayStore(tmp_path)
    assert again.forwarded_exec_ids() == {"mm1:recent-1", "mm1:open-1", "mm1:stray-new"}
    assert again.sent_cl_ord_ids() == {"recent", "open", "open.r1"}
    assert set(again.open_orders()) == {"open"}
    # Nothing more to drop until time moves on; then the recent one goes too.
    assert not again.prune(NOW_MS - 7 * DAY_MS, NOW_MS).order_ids
    later = again.prune(recent_ms + 1, NOW_MS)
    assert later.order_ids == {"recent"} and later.exec_ids == {"mm1:recent-1",
                                                                "mm1:stray-new"}
    assert again.sent_cl_ord_ids() == {"open", "open.r1"}
    again.close()


def test_a_store_from_before_pruning_starts_its_retention_now(tmp_path: Path) -> None:
    """Rows written before the columns existed have no times: the first prune dates them
    `now`, so an upgrade keeps them for a whole retention instead of dropping them."""
    old = sqlite3.connect(tmp_path / "gateway.sqlite")
    old.executescript("""
        CREATE TABLE forwarded (exec_id TEXT PRIMARY KEY);
        CREATE TABLE sent (cl_ord_id TEXT PRIMARY KEY, kind TEXT NOT NULL);
        CREATE TABLE orders (
            order_id TEXT PRIMARY KEY, cl_ord_id TEXT NOT NULL, account_id TEXT NOT NULL,
            symbol TEXT NOT NULL, side TEXT NOT NULL, quantity TEXT NOT NULL,
            market_maker TEXT NOT NULL, session TEXT NOT NULL, routed_at_ms INTEGER NOT NULL,
            reference_price TEXT, cum_qty TEXT NOT NULL, awaiting_since_ms INTEGER,
            stuck_stage INTEGER NOT NULL, terminal INTEGER NOT NULL);
        INSERT INTO forwarded VALUES ('mm1:e1');
        INSERT INTO sent VALUES ('o.c1', 'cancel');
        INSERT INTO orders VALUES ('o', 'o', 'a', 'AAPL', 'buy', '1', 'mm1', 's', 0, NULL,
                                   '1', NULL, 0, 1);
    """)
    old.commit()
    old.close()
    store = GatewayStore(tmp_path)
    first = store.prune(NOW_MS - 7 * DAY_MS, NOW_MS)
    assert not (first.order_ids or first.exec_ids or first.cl_ord_ids)
    assert store.forwarded_exec_ids() == {"mm1:e1"}
    # A retention later they go: the sent ClOrdID by its order id, derived on upgrade.
    gone = store.prune(NOW_MS + 1, NOW_MS + 8 * DAY_MS)
    assert (gone.order_ids, gone.cl_ord_ids, gone.exec_ids) == ({"o"}, {"o.c1"}, {"mm1:e1"})
    store.close()
