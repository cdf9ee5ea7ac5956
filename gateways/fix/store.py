"""The gateway's own durable record (SQLite under store_dir): forwarded ExecIDs, delivered
inbound sequence numbers, requests sent, open orders and best-execution figures.

Written by the gateway's main thread only. WAL with synchronous=NORMAL survives a kill -9 of
the process (not a power cut, which the FIX resend covers up to the last fsync).
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

from gateways.fix.tracking import ExecutionStats, OpenOrder
from state.messages import Side

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forwarded (exec_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS inbound (session TEXT PRIMARY KEY, delivered_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (cl_ord_id TEXT PRIMARY KEY, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, cl_ord_id TEXT NOT NULL, account_id TEXT NOT NULL,
    symbol TEXT NOT NULL, side TEXT NOT NULL, quantity TEXT NOT NULL,
    market_maker TEXT NOT NULL, session TEXT NOT NULL, routed_at_ms INTEGER NOT NULL,
    reference_price TEXT, cum_qty TEXT NOT NULL, awaiting_since_ms INTEGER,
    stuck_stage INTEGER NOT NULL, terminal INTEGER NOT NULL, replaced_cl_ord_id TEXT);
CREATE TABLE IF NOT EXISTS stats (market_maker TEXT PRIMARY KEY, figures TEXT NOT NULL);
"""

DB_NAME = "gateway.sqlite"


class GatewayStore:
    def __init__(self, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(store_dir / DB_NAME)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._add_replaced_column()
        self.db.commit()

    def _add_replaced_column(self) -> None:
        """A store written before replaces were handled lacks the column: add it."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(orders)")}
        if "replaced_cl_ord_id" not in columns:
            self.db.execute("ALTER TABLE orders ADD COLUMN replaced_cl_ord_id TEXT")

    def close(self) -> None:
        self.db.close()

    # ---- reads at start ----------------------------------------------------------------

    def forwarded_exec_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT exec_id FROM forwarded")}

    def delivered_seqs(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT session, delivered_seq FROM inbound"))

    def sent_cl_ord_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT cl_ord_id FROM sent")}

    def open_orders(self) -> dict[str, OpenOrder]:
        rows = self.db.execute(
            "SELECT order_id, cl_ord_id, account_id, symbol, side, quantity, market_maker,"
            " session, routed_at_ms, reference_price, cum_qty, awaiting_since_ms, stuck_stage,"
            " replaced_cl_ord_id FROM orders WHERE terminal = 0")
        orders = {}
        for row in rows:
            orders[row[0]] = OpenOrder(
                order_id=row[0], cl_ord_id=row[1], account_id=row[2], symbol=row[3],
                side=Side(row[4]), quantity=Decimal(row[5]), market_maker=row[6],
                session=row[7], routed_at_ms=row[8],
                reference_price=Decimal(row[9]) if row[9] is not None else None,
                cum_qty=Decimal(row[10]), awaiting_since_ms=row[11], stuck_stage=row[12],
                replaced_cl_ord_id=row[13])
        return orders

    def stats(self) -> dict[str, ExecutionStats]:
        return {mm: stats_from_json(figures)
                for mm, figures in self.db.execute("SELECT market_maker, figures FROM stats")}

    # ---- writes ------------------------------------------------------------------------

    def record(self, *, exec_ids: list[str], delivered: dict[str, int],
               sent: list[tuple[str, str]], orders: list[OpenOrder],
               stats: dict[str, ExecutionStats]) -> None:
        """One transaction with everything that changed since the last call."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO forwarded VALUES (?)",
                                [(exec_id,) for exec_id in exec_ids])
            self.db.executemany(
                "INSERT INTO inbound VALUES (?, ?) ON CONFLICT(session) DO UPDATE"
                " SET delivered_seq = excluded.delivered_seq", list(delivered.items()))
            self.db.executemany("INSERT OR IGNORE INTO sent VALUES (?, ?)", sent)
            self.db.executemany(
                "INSERT OR REPLACE INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(o.order_id, o.cl_ord_id, o.account_id, o.symbol, str(o.side), str(o.quantity),
                  o.market_maker, o.session, o.routed_at_ms,
                  str(o.reference_price) if o.reference_price is not None else None,
                  str(o.cum_qty), o.awaiting_since_ms, o.stuck_stage, int(o.terminal),
                  o.replaced_cl_ord_id)
                 for o in orders])
            self.db.executemany("INSERT OR REPLACE INTO stats VALUES (?, ?)",
                                [(mm, stats_to_json(s)) for mm, s in stats.items()])


def stats_to_json(stats: ExecutionStats) -> str:
    return json.dumps({
        "orders": stats.orders, "filled": stats.filled, "rejected": stats.rejected,
        "filled_qty": str(stats.filled_qty), "improvement_usd": str(stats.improvement_usd),
        "improved_qty": str(stats.improved_qty), "fill_ms_total": stats.fill_ms_total,
        "fill_ms": stats.fill_ms[-1000:],
    })


def stats_from_json(text: str) -> ExecutionStats:
    raw = json.loads(text)
    return ExecutionStats(
        orders=raw["orders"], filled=raw["filled"], rejected=raw["rejected"],
        filled_qty=Decimal(raw["filled_qty"]), improvement_usd=Decimal(raw["improvement_usd"]),
        improved_qty=Decimal(raw["improved_qty"]), fill_ms_total=raw["fill_ms_total"],
        fill_ms=list(raw["fill_ms"]))
