"""The journal's group commit: concurrent requests of one shard share commits, each is
answered once its own row is durable, and a shard that is down fails every waiter. A place
order whose key already named an order on record is not journaled: its terms come back."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import psycopg
import pytest

from compose.embedded import free_port
from gateways.http.journal import ShardJournal
from state.exceptions import ShardUnavailable
from state.ids import order_id_for
from state.intake_journal import JournalEntry, new_claim
from state.messages import Deposit, OrderType, PlaceOrder, Side
from state.shard_store import migrate

pytestmark = pytest.mark.integration


def _entry(n: int) -> JournalEntry:
    return JournalEntry.of(Deposit(account_id=f"acc-{n % 7}", idempotency_key=f"k-{n}",
                                   amount=Decimal("1.00"),
                                   submitted_at=dt.datetime.now(dt.UTC)))


async def _write_all(journal: ShardJournal, count: int) -> list[BaseException | None]:
    await journal.open()
    try:
        return await asyncio.gather(*(journal.write(_entry(n), new_claim())
                                      for n in range(count)), return_exceptions=True)
    finally:
        await journal.close()


def test_concurrent_writes_all_land(fresh_databases) -> None:
    for dsn in fresh_databases:
        migrate(dsn)
    results = asyncio.run(_write_all(ShardJournal(fresh_databases, 2), 60))
    assert results == [None] * 60
    rows = 0
    for dsn in fresh_databases:
        with psycopg.connect(dsn) as conn:
            rows += conn.execute("SELECT count(*) FROM intake_journal").fetchone()[0]
    assert rows == 60


def test_a_shard_that_is_down_fails_every_waiter() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    results = asyncio.run(_write_all(ShardJournal((dead, dead), 2), 5))
    assert all(isinstance(r, ShardUnavailable) for r in results), results


def _place(account_id: str, key: str) -> JournalEntry:
    return JournalEntry.of(PlaceOrder(
        account_id=account_id, idempotency_key=key, symbol="AAPL", side=Side.BUY,
        order_type=OrderType.LIMIT, quantity=Decimal(10), limit_price=Decimal("209.50"),
        submitted_at=dt.datetime.now(dt.UTC)))


def _order_on_record(dsn: str, account_id: str, key: str, replaced: bool) -> str:
    order_id = order_id_for(account_id, key)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO orders (order_id, account_id, symbol, side, order_type, time_in_force,"
            " quantity, limit_price, state, filled_quantity, idempotency_key, seq,"
            " last_event_id, created_at, updated_at) VALUES (%s, %s, 'AAPL', 'buy', 'limit',"
            " 'day', 12, 209.50, 'filled', 12, %s, 3, %s, now(), now())",
            (order_id, account_id, key, f"{order_id}:3"))
        if replaced:
            conn.execute(
                "INSERT INTO order_events (event_id, account_id, event_type, order_id, seq,"
                " state, reason, occurred_at, payload) VALUES (%s, %s, 'order_event', %s, 2,"
                " 'funds_held', 'replaced', now(), '{}')",
                (f"{order_id}:2", account_id, order_id))
    return order_id


def test_a_place_order_whose_key_named_an_order_is_not_journaled(fresh_databases) -> None:
    """In the same transaction as the rows (group commit), the journal looks up the orders
    the batch's keys derive: one already on record comes back with its terms and is not
    written; the rest are."""
    for dsn in fresh_databases:
        migrate(dsn)
    journal = ShardJournal(fresh_databases, 2)
    account = "acc-used"
    dsn = fresh_databases[journal.router.shard_of_account(account)]
    _order_on_record(dsn, account, "k-plain", replaced=False)
    _order_on_record(dsn, account, "k-replaced", replaced=True)

    async def scenario() -> list[BaseException | dict | None]:
        await journal.open()
        try:
            return await asyncio.gather(*(journal.write(entry, new_claim()) for entry in (
                _place(account, "k-plain"), _place(account, "k-new"),
                _place(account, "k-replaced"), _entry(1))), return_exceptions=True)
        finally:
            await journal.close()

    plain, new, replaced, deposit = asyncio.run(scenario())
    terms = {"symbol": "AAPL", "side": "buy", "order_type": "limit", "time_in_force": "day",
             "quantity": Decimal(12), "limit_price": Decimal("209.50"), "stop_price": None}
    assert plain == {**terms, "replaced": False}
    assert replaced == {**terms, "replaced": True}
    assert new is None and deposit is None
    with psycopg.connect(dsn) as conn:
        keys = {row[0] for row in conn.execute(
            "SELECT idempotency_key FROM intake_journal WHERE account_id = %s", (account,))}
    assert keys == {"k-new"}
