"""The simulator's order book on disk (SQLite under store_dir), so a kill -9 and restart
keeps resting orders and fill progress, as a real market maker's would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from gateways.simulator.book import SimOrder

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(SimOrder)


class BookStore:
    def __init__(self, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        # Shared by the FIX and quote threads, always under the application's lock.
        self.db = sqlite3.connect(store_dir / "book.sqlite", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS orders"
                        " (order_id TEXT PRIMARY KEY, state BLOB NOT NULL)")
        self.db.commit()

    def load(self) -> list[SimOrder]:
        return [_DECODER.decode(row[0]) for row in self.db.execute("SELECT state FROM orders")]

    def save(self, orders: list[SimOrder]) -> None:
        if not orders:
            return
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?)",
                                [(o.order_id, _ENCODER.encode(o)) for o in orders])

    def close(self) -> None:
        self.db.close()
