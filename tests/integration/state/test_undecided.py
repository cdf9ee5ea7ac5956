"""What `brokerage reconcile` reports of work accepted but not decided yet."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from state.intake_journal import undecided_summary
from state.shard_store import connect, migrate

pytestmark = pytest.mark.integration


def _journal(conn: psycopg.Connection, key: str, age_s: float, order_id: str | None) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    conn.execute(
        "INSERT INTO intake_journal (account_id, idempotency_key, command_type, order_id, "
        "payload, submitted_at, journaled_at, claim) VALUES ('acc-1', %s, 'place_order', %s, "
        "'\\x7b7d', %s, %s, 'c')", (key, order_id, when, when))


def test_undecided_commands_are_counted_and_the_stuck_ones_named(fresh_databases) -> None:
    dsn = fresh_databases[0]
    migrate(dsn)
    with connect(dsn) as conn:
        assert undecided_summary(conn, 60).count == 0
        _journal(conn, "fresh", 1, "ord-fresh")
        _journal(conn, "old", 600, "ord-old")
        _journal(conn, "decided", 600, "ord-decided")
        conn.execute("UPDATE intake_journal SET decided_at = now() "
                     "WHERE idempotency_key = 'decided'")
        conn.commit()
        pending = undecided_summary(conn, 60)
    assert (pending.count, pending.stuck) == (2, 1)
    assert pending.oldest is not None
    assert dt.datetime.now(dt.UTC) - pending.oldest > dt.timedelta(seconds=590)
