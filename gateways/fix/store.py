"""The gateway's own durable record (SQLite under store_dir): forwarded ExecIDs (with each
report's payload until its shard shows it booked: gateways.fix.durable), delivered inbound
sequence numbers, requests sent, open orders and best-execution figures.

Written by the gateway's main thread only. WAL with synchronous=NORMAL survives a kill -9 of
the process (not a power cut, which the FIX resend covers up to the last fsync).

Bounded: `prune` forgets orders closed before a cutoff together with their ClOrdIDs and
ExecIDs (and ExecIDs of reports for orders never routed here, by the time they came); a report
not yet booked, and its order, are kept whatever their age.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateways.fix.durable import StoredExecution
from gateways.fix.tracking import ExecutionStats, OpenOrder
from state.ids import order_id_of_cl_ord_id
from state.messages import ExecType, Side

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forwarded (exec_id TEXT PRIMARY KEY, order_id TEXT,
    forwarded_at_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS inbound (session TEXT PRIMARY KEY, delivered_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (cl_ord_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
    order_id TEXT);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, cl_ord_id TEXT NOT NULL, account_id TEXT NOT NULL,
    symbol TEXT NOT NULL, side TEXT NOT NULL, quantity TEXT NOT NULL,
    market_maker TEXT NOT NULL, session TEXT NOT NULL, routed_at_ms INTEGER NOT NULL,
    reference_price TEXT, cum_qty TEXT NOT NULL, awaiting_since_ms INTEGER,
    stuck_stage INTEGER NOT NULL, terminal INTEGER NOT NULL, replaced_cl_ord_id TEXT,
    closed_at_ms INTEGER);
CREATE TABLE IF NOT EXISTS stats (market_maker TEXT PRIMARY KEY, figures TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executions_tail (partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL);
"""
# Indexes the pruning needs; created after the columns exist (older stores gain them).
_INDEXES = """
CREATE INDEX IF NOT EXISTS forwarded_by_order ON forwarded (order_id);
CREATE INDEX IF NOT EXISTS sent_by_order ON sent (order_id);
CREATE INDEX IF NOT EXISTS orders_closed ON orders (closed_at_ms) WHERE terminal = 1;
CREATE INDEX IF NOT EXISTS forwarded_unbooked ON forwarded (checked_at_ms) WHERE booked = 0;
"""
_FORWARDED_COLUMNS = ("exec_id, order_id, forwarded_at_ms, account_id, exec_type, market_maker,"
                      " payload, epoch, booked, attempts, stored_at_ms, checked_at_ms")
# Columns added after the first stores were written: (table, column, declaration).
_ADDED_COLUMNS = (
    ("orders", "replaced_cl_ord_id", "TEXT"),
    ("orders", "closed_at_ms", "INTEGER"),
    ("forwarded", "order_id", "TEXT"),
    ("forwarded", "forwarded_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("sent", "order_id", "TEXT"),
    # Durable executions: the payload until booked (booked = 0), under which broker epoch
    # it was last forwarded, how often it was forwarded again, when last checked.
    ("forwarded", "account_id", "TEXT"),
    ("forwarded", "exec_type", "TEXT"),
    ("forwarded", "market_maker", "TEXT"),
    ("forwarded", "payload", "BLOB"),
    ("forwarded", "epoch", "TEXT"),
    ("forwarded", "booked", "INTEGER NOT NULL DEFAULT 1"),
    ("forwarded", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("forwarded", "stored_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("forwarded", "checked_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("executions_tail", "epoch", "TEXT"),
)
_ORDER_COLUMNS = ("order_id, cl_ord_id, account_id, symbol, side, quantity, market_maker,"
                  " session, routed_at_ms, reference_price, cum_qty, awaiting_since_ms,"
                  " stuck_stage, terminal, replaced_cl_ord_id, closed_at_ms")

DB_NAME = "gateway.sqlite"


@dataclass(frozen=True)
class Forwarded:
    """A report the broker acknowledged: kept with its payload until booked."""

    exec_id: str
    order_id: str
    account_id: str
    exec_type: ExecType
    market_maker: str
    payload: bytes
    epoch: str | None


@dataclass(frozen=True)
class Pruned:
    """What `prune` dropped, for the caller to drop from memory too."""

    order_ids: frozenset[str]
    cl_ord_ids: frozenset[str]
    exec_ids: frozenset[str]


class GatewayStore:
    def __init__(self, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(store_dir / DB_NAME)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._add_columns()
        self.db.executescript(_INDEXES)
        self.db.commit()

    def _add_columns(self) -> None:
        """A store written by an older gateway lacks some columns: add them. Rows from
        before pruning existed count from now (set by the caller's first `prune`)."""
        for table, column, declaration in _ADDED_COLUMNS:
            columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        # ClOrdIDs are `<order_id>` or `<order_id>.<suffix>` (state.ids.order_id_of_cl_ord_id).
        self.db.execute(
            "UPDATE sent SET order_id = CASE WHEN instr(cl_ord_id, '.') > 0"
            " THEN substr(cl_ord_id, 1, instr(cl_ord_id, '.') - 1) ELSE cl_ord_id END"
            " WHERE order_id IS NULL")

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
        rows = self.db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE terminal = 0")
        orders = {}
        for row in rows:
            orders[row[0]] = OpenOrder(
                order_id=row[0], cl_ord_id=row[1], account_id=row[2], symbol=row[3],
                side=Side(row[4]), quantity=Decimal(row[5]), market_maker=row[6],
                session=row[7], routed_at_ms=row[8],
                reference_price=Decimal(row[9]) if row[9] is not None else None,
                cum_qty=Decimal(row[10]), awaiting_since_ms=row[11], stuck_stage=row[12],
                replaced_cl_ord_id=row[14])
        return orders

    def executions_tail(self) -> dict[int, int]:
        """Per `executions` partition, the offset after the last record whose ExecID is
        committed here: a restart reads the topic from there (gateways.fix.recovery)."""
        return dict(self.db.execute("SELECT partition, next_offset FROM executions_tail"))

    def executions_tail_epoch(self) -> str | None:
        """The broker epoch the stored tail offsets count in (None: not known, an older
        store or none stored)."""
        epochs = {row[0] for row in self.db.execute("SELECT epoch FROM executions_tail")}
        return epochs.pop() if len(epochs) == 1 else None

    def unbooked(self, limit: int) -> list[StoredExecution]:
        """Reports not yet seen booked, those checked longest ago first (a bounded pass)."""
        rows = self.db.execute(
            "SELECT exec_id, account_id, order_id, exec_type, market_maker, payload, epoch,"
            " forwarded_at_ms, stored_at_ms, attempts FROM forwarded WHERE booked = 0"
            " ORDER BY checked_at_ms, stored_at_ms LIMIT ?", (limit,))
        return [stored_execution(row) for row in rows]

    def unbooked_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM forwarded WHERE booked = 0")
                   .fetchone()[0])

    def stats(self) -> dict[str, ExecutionStats]:
        return {mm: stats_from_json(figures)
                for mm, figures in self.db.execute("SELECT market_maker, figures FROM stats")}

    # ---- writes ------------------------------------------------------------------------

    def record(self, *, exec_ids: Sequence[str | tuple[str, str] | Forwarded],
               delivered: dict[str, int],
               sent: Sequence[tuple[str, str] | tuple[str, str, str]],
               orders: Sequence[OpenOrder], stats: dict[str, ExecutionStats],
               tail: dict[int, int] | None = None, now_ms: int = 0,
               tail_epoch: str | None = None,
               reforwarded: Sequence[tuple[str, str | None]] = ()) -> None:
        """One transaction with everything that changed since the last call. `exec_ids` are
        reports with their payloads (`Forwarded`), or (exec_id, order_id) or bare ExecIDs
        (nothing to keep); `sent` are (cl_ord_id, kind[, order_id]); `reforwarded` are
        (exec_id, epoch) of reports forwarded again."""
        with self.db:
            self._add_forwarded(exec_ids, now_ms)
            if reforwarded:
                self.db.executemany(
                    "UPDATE forwarded SET attempts = attempts + 1, epoch = ?,"
                    " forwarded_at_ms = ? WHERE exec_id = ? AND booked = 0",
                    [(epoch, now_ms, exec_id) for exec_id, epoch in reforwarded])
            if delivered:
                self.db.executemany(
                    "INSERT INTO inbound VALUES (?, ?) ON CONFLICT(session) DO UPDATE"
                    " SET delivered_seq = excluded.delivered_seq", list(delivered.items()))
            if sent:
                self.db.executemany(
                    "INSERT OR IGNORE INTO sent VALUES (?, ?, ?)",
                    [(s[0], s[1], s[2] if len(s) > 2 else order_id_of_cl_ord_id(s[0]))  # type: ignore[misc]
                     for s in sent])
            if orders:
                self.db.executemany(
                    f"INSERT OR REPLACE INTO orders ({_ORDER_COLUMNS})"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(o.order_id, o.cl_ord_id, o.account_id, o.symbol, str(o.side),
                      str(o.quantity), o.market_maker, o.session, o.routed_at_ms,
                      str(o.reference_price) if o.reference_price is not None else None,
                      str(o.cum_qty), o.awaiting_since_ms, o.stuck_stage, int(o.terminal),
                      o.replaced_cl_ord_id, o.closed_at_ms)
                     for o in orders])
            if tail:
                # Offsets of one epoch only: a new epoch's offsets replace the old ones.
                self.db.execute("DELETE FROM executions_tail WHERE epoch IS NOT ?",
                                (tail_epoch,))
                self.db.executemany(
                    "INSERT INTO executions_tail (partition, next_offset, epoch)"
                    " VALUES (?, ?, ?) ON CONFLICT(partition) DO UPDATE"
                    " SET next_offset = max(next_offset, excluded.next_offset)",
                    [(p, o, tail_epoch) for p, o in tail.items()])
            if stats:
                self.db.executemany("INSERT OR REPLACE INTO stats VALUES (?, ?)",
                                    [(mm, stats_to_json(s)) for mm, s in stats.items()])

    def restart_tail(self, next_offsets: dict[int, int],
                     exec_ids: Sequence[str | Forwarded], now_ms: int,
                     epoch: str | None = None) -> None:
        """After reading `executions` at start: where the next read starts (replacing the
        stored offsets, which a recreated topic or another epoch put out of range) and the
        reports found there."""
        with self.db:
            self.db.execute("DELETE FROM executions_tail")
            self.db.executemany(
                "INSERT INTO executions_tail (partition, next_offset, epoch) VALUES (?, ?, ?)",
                [(p, o, epoch) for p, o in next_offsets.items()])
            self._add_forwarded(exec_ids, now_ms)

    def _add_forwarded(self, exec_ids: Sequence[str | tuple[str, str] | Forwarded],
                       now_ms: int) -> None:
        """Inside the caller's transaction. A report with its payload is kept unbooked; a
        bare ExecID has nothing to keep."""
        if exec_ids:
            self.db.executemany(
                f"INSERT OR IGNORE INTO forwarded ({_FORWARDED_COLUMNS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [_forwarded_row(e, now_ms) for e in exec_ids])

    def settle(self, exec_ids: Sequence[str], checked: Sequence[str], now_ms: int) -> None:
        """After a pass over the shards: `exec_ids` are booked (their payloads go), the
        others of `checked` wait for the next pass."""
        with self.db:
            self.db.executemany(
                "UPDATE forwarded SET booked = 1, payload = NULL, checked_at_ms = ?"
                " WHERE exec_id = ?", [(now_ms, e) for e in exec_ids])
            self.db.executemany("UPDATE forwarded SET checked_at_ms = ? WHERE exec_id = ?",
                                [(now_ms, e) for e in checked])

    def prune(self, cutoff_ms: int, now_ms: int) -> Pruned:
        """Forget orders closed before `cutoff_ms` with their ClOrdIDs and ExecIDs, and
        ExecIDs of orders this store never held that were forwarded before it. Rows from
        before these times were kept (closed or forwarded at 0/NULL) get `now_ms` first, so
        an upgraded store starts its retention from now instead of dropping everything."""
        with self.db:
            self.db.execute("UPDATE orders SET closed_at_ms = ? WHERE terminal = 1"
                            " AND closed_at_ms IS NULL", (now_ms,))
            self.db.execute("UPDATE forwarded SET forwarded_at_ms = ?"
                            " WHERE forwarded_at_ms = 0", (now_ms,))
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned (order_id TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM pruned")
            self.db.execute("INSERT INTO pruned SELECT order_id FROM orders o"
                            " WHERE terminal = 1 AND closed_at_ms < ? AND NOT EXISTS"
                            " (SELECT 1 FROM forwarded f WHERE f.order_id = o.order_id"
                            " AND f.booked = 0)", (cutoff_ms,))
            order_ids = frozenset(row[0] for row in self.db.execute("SELECT * FROM pruned"))
            stale_exec = (
                "FROM forwarded WHERE booked = 1 AND (order_id IN (SELECT order_id FROM pruned)"
                " OR (forwarded_at_ms < ? AND (order_id IS NULL"
                " OR order_id NOT IN (SELECT order_id FROM orders))))")
            exec_ids = frozenset(row[0] for row in self.db.execute(
                "SELECT exec_id " + stale_exec, (cutoff_ms,)))
            self.db.execute("DELETE " + stale_exec, (cutoff_ms,))
            stale_sent = "FROM sent WHERE order_id IN (SELECT order_id FROM pruned)"
            cl_ord_ids = frozenset(row[0] for row in self.db.execute(
                "SELECT cl_ord_id " + stale_sent))
            self.db.execute("DELETE " + stale_sent)
            self.db.execute("DELETE FROM orders WHERE order_id IN (SELECT order_id FROM pruned)")
            self.db.execute("DELETE FROM pruned")
        return Pruned(order_ids, cl_ord_ids, exec_ids)


def _forwarded_row(entry: str | tuple[str, str] | Forwarded, now_ms: int) -> tuple[object, ...]:
    if isinstance(entry, Forwarded):
        return (entry.exec_id, entry.order_id, now_ms, entry.account_id, str(entry.exec_type),
                entry.market_maker, entry.payload, entry.epoch, 0, 0, now_ms, now_ms)
    exec_id, order_id = (entry, None) if isinstance(entry, str) else entry
    return (exec_id, order_id, now_ms, None, None, None, None, None, 1, 0, now_ms, now_ms)


def stored_execution(row: Sequence[Any]) -> StoredExecution:
    return StoredExecution(
        exec_id=row[0], account_id=row[1], order_id=row[2], exec_type=ExecType(row[3]),
        market_maker=row[4] or "", payload=bytes(row[5]), epoch=row[6],
        forwarded_at_ms=int(row[7]), stored_at_ms=int(row[8]), attempts=int(row[9]))


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
