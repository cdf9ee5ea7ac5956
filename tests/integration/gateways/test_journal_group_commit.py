"""The journal's group commit: concurrent requests of one shard share commits, each is
answered once its own row is durable, and a shard that is down fails every waiter."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import psycopg
import pytest

from compose.embedded import free_port
from gateways.http.journal import ShardJournal
from state.exceptions import ShardUnavailable
from state.intake_journal import JournalEntry, new_claim
from state.messages import Deposit
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
