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


def test_a_commands_outcome_is_read_by_its_key(fresh_databases) -> None:
    """Accepted (with its transaction), rejected (a key reused with another body does not
    hide the first body's outcome), pending while journaled, else unknown."""
    import asyncio
    import json

    from state.router import ShardRouter
    from state.shard_reader import ShardReader

    router = ShardRouter(len(fresh_databases), 2)
    account = next(f"acc-{n}" for n in range(100) if router.shard_of_account(f"acc-{n}") == 0)
    dsn = fresh_databases[0]
    migrate(dsn)
    now = dt.datetime.now(dt.UTC)
    with connect(dsn) as conn:
        for event_id, kind, key, reason, payload in [
            ("e1", "command_accepted", "dep-1", None,
             {"type": "command_accepted", "txn_id": "txn-1", "amount": "5.00"}),
            ("e2", "command_rejected", "dep-1", "duplicate_idempotency_key_different_body",
             {"type": "command_rejected", "reason": "duplicate_idempotency_key_different_body"}),
            ("e3", "command_rejected", "wd-1", "insufficient_withdrawable_cash",
             {"type": "command_rejected", "reason": "insufficient_withdrawable_cash"})]:
            conn.execute(
                "INSERT INTO order_events (event_id, account_id, event_type, idempotency_key, "
                "reason, occurred_at, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (event_id, account, kind, key, reason, now, json.dumps(payload)))
        conn.commit()
    _journal_for(dsn, account, "dep-2")

    async def read() -> list[dict | None]:
        reader = ShardReader(fresh_databases, 2)
        await reader.open()
        try:
            return [await reader.command_outcome(account, key)
                    for key in ("dep-1", "wd-1", "dep-2", "nope")]
        finally:
            await reader.close()

    accepted, rejected, pending, unknown = asyncio.run(read())
    assert accepted is not None and (accepted["status"], accepted["txn_id"]) == (
        "accepted", "txn-1")
    assert rejected is not None and rejected["reason"] == "insufficient_withdrawable_cash"
    assert pending is not None and pending["status"] == "pending"
    assert unknown is None


def _journal_for(dsn: str, account: str, key: str) -> None:
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO intake_journal (account_id, idempotency_key, command_type, payload, "
            "submitted_at, claim) VALUES (%s, %s, 'deposit', '\\x7b7d', now(), 'c')",
            (account, key))
        conn.commit()


def test_an_acknowledged_order_is_read_from_the_journal_until_it_lands(fresh_databases) -> None:
    import asyncio
    from decimal import Decimal

    from state.ids import order_id_for
    from state.intake_journal import JournalEntry
    from state.messages import OrderType, PlaceOrder, Side
    from state.router import ShardRouter
    from state.shard_reader import ShardReader
    from state.topics import encode

    router = ShardRouter(len(fresh_databases), 2)
    account = next(f"acc-{n}" for n in range(100) if router.shard_of_account(f"acc-{n}") == 0)
    migrate(fresh_databases[0])
    order = PlaceOrder(account_id=account, idempotency_key="k-1", symbol="AAPL", side=Side.BUY,
                       order_type=OrderType.LIMIT, quantity=Decimal("2"),
                       limit_price=Decimal("100.00"), submitted_at=dt.datetime.now(dt.UTC))
    entry = JournalEntry.of(order)
    with connect(fresh_databases[0]) as conn:
        conn.execute(
            "INSERT INTO intake_journal (account_id, idempotency_key, command_type, order_id, "
            "payload, submitted_at, claim) VALUES (%s, %s, 'place_order', %s, %s, now(), 'c')",
            (account, "k-1", entry.order_id, encode(order)))
        conn.commit()

    async def read() -> dict | None:
        reader = ShardReader(fresh_databases, 2)
        await reader.open()
        try:
            return await reader.journaled_order(account, order_id_for(account, "k-1"))
        finally:
            await reader.close()

    found = asyncio.run(read())
    assert found is not None
    assert (found["state"], found["symbol"], found["quantity"], found["limit_price"]) == (
        "pending", "AAPL", "2", "100.00")
