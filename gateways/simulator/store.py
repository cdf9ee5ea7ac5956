"""The simulator's order book on disk (SQLite under store_dir), so a kill -9 and restart
keeps resting orders and fill progress, as a real market maker's would.

One transaction per inbound request, committed in the FIX callback after the reports went
out: QuickFIX counts the request as received only when the callback returns, so a kill -9
before the commit makes the gateway resend the request and the book redo it under the same
ExecIDs (dropped as duplicates by the gateway). Batching commits across requests would need
the callback to return first, and a kill -9 in between would lose requests that were answered.

Durability is against a killed process, not a lost machine: `synchronous=OFF` hands each
commit to the OS (write(), no fsync), which a kill -9 cannot undo; only a power cut or
kernel crash could lose the last commits, as it could lose the QuickFIX file store's last
messages (also written without fsync). With `synchronous=NORMAL` the commit cost was the
same except at WAL checkpoints, which fsync and put milliseconds on whichever order hit them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from gateways.simulator.book import SimOrder

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(SimOrder)
_UPSERT = ("INSERT INTO orders VALUES (?, ?)"
           " ON CONFLICT(order_id) DO UPDATE SET state = excluded.state")


class BookStore:
    def __init__(self, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        # Shared by the FIX and quote threads, always under the application's lock.
        # Autocommit mode: transactions are opened explicitly, one per save.
        self.db = sqlite3.connect(store_dir / "book.sqlite", check_same_thread=False,
                                  isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        # One process owns the book: no shared-memory locking round per transaction.
        self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self.db.execute("CREATE TABLE IF NOT EXISTS orders"
                        " (order_id TEXT PRIMARY KEY, state BLOB NOT NULL)")

    def load(self) -> list[SimOrder]:
        return [_DECODER.decode(row[0]) for row in self.db.execute("SELECT state FROM orders")]

    def save(self, orders: list[SimOrder]) -> None:
        if not orders:
            return
        self.db.execute("BEGIN")
        try:
            if len(orders) == 1:
                self.db.execute(_UPSERT, (orders[0].order_id, _ENCODER.encode(orders[0])))
            else:
                self.db.executemany(_UPSERT, [(o.order_id, _ENCODER.encode(o)) for o in orders])
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
