"""The ledger rows COPYed in binary format land exactly as given (texts with tabs, newlines,
backslashes and non-ASCII; amounts with exponents; timestamps with offsets), on the fast path
(fresh postings) and on the staged path (a batch mixing landed and fresh postings)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import psycopg
import pytest

from state.messages import LedgerEntry, LedgerTransaction
from state.shard_schema import BOOKKEEPING_SQL, MIGRATIONS
from state.shard_store import Source, connect, migrate, reconcile, schema_version, write_batch

pytestmark = pytest.mark.integration

WHEN = dt.datetime(2026, 3, 2, 9, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5)))


def _odd(n: int) -> LedgerTransaction:
    return LedgerTransaction(
        txn_id=f"t\\{n}\t", account_id="acc\n€", kind="k\\N", cause_id=f"c\r{n}",
        order_id=None if n % 2 else "o\t1", occurred_at=WHEN + dt.timedelta(seconds=n),
        entries=(LedgerEntry("bank:ach\\x", "USD", Decimal("-1E+3")),
                 LedgerEntry("user:acc\n€:cash", "USD", Decimal("1000.000001")),
                 LedgerEntry("user:acc\n€:cash", "USD", Decimal("-1E-6"))))


def _rows(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT t.txn_id, t.account_id, t.kind, t.cause_id, t.order_id, t.occurred_at, "
        "       t.source_topic, t.source_partition, t.source_offset, "
        "       e.leg, e.ledger_account, e.asset, e.amount, e.account_id, e.occurred_at "
        "  FROM ledger_transactions t JOIN ledger_entries e USING (txn_id) "
        " ORDER BY t.txn_id, e.leg").fetchall()


def _expected(postings: list[LedgerTransaction], sources: dict[str, Source]
              ) -> list[tuple[object, ...]]:
    rows = []
    for p in postings:
        source = sources.get(p.txn_id)
        where = (source.topic, source.partition, source.offset) if source else (None,) * 3
        for leg, entry in enumerate(p.entries):
            rows.append((p.txn_id, p.account_id, p.kind, p.cause_id, p.order_id,
                         p.occurred_at, *where, leg,
                         entry.ledger_account, entry.asset, entry.amount, p.account_id,
                         p.occurred_at))
    return sorted(rows, key=lambda row: (str(row[0]), int(row[9])))  # type: ignore[call-overload]


def test_odd_texts_land_as_given_on_the_fast_and_the_staged_path(fresh_databases) -> None:
    dsn = fresh_databases[0]
    migrate(dsn)
    postings = [_odd(n) for n in range(4)]
    sources = {p.txn_id: Source("p\t.ledger.postings", n, 10 + n)
               for n, p in enumerate(postings)}
    with connect(dsn) as conn:
        fast = write_batch(conn, postings[:2], [], sources)
        # the first two are there already: the COPY fails on the key, the staged path lands
        staged = write_batch(conn, postings, [], sources)
        assert (fast.entries_inserted, staged.entries_inserted) == (6, 6)
        assert _rows(conn) == _expected(postings, sources)
        balances = dict(((row[0], row[1]), row[2]) for row in conn.execute(
            "SELECT ledger_account, asset, balance FROM account_balances"))
    assert balances == {("bank:ach\\x", "USD"): Decimal(-4000),
                        ("user:acc\n€:cash", "USD"): Decimal(4000)}
    assert reconcile(dsn) == []


def test_a_shard_of_an_older_version_upgrades_and_keeps_its_rows(fresh_databases) -> None:
    dsn = fresh_databases[0]
    with connect(dsn, autocommit=True) as conn:  # a shard as release 2 left it
        conn.execute(BOOKKEEPING_SQL)
        for migration in MIGRATIONS[:2]:
            conn.execute(migration.sql)  # type: ignore[arg-type]
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
    postings = [_odd(n) for n in range(2)]
    with connect(dsn) as conn:
        write_batch(conn, postings[:1], [])
    migrate(dsn)
    migrate(dsn)  # idempotent
    assert schema_version(dsn) == MIGRATIONS[-1].version
    with connect(dsn) as conn:
        write_batch(conn, postings, [])
        options: dict[str, list[str]] = dict(conn.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN "
            "('account_balances', 'positions')").fetchall())
        assert _rows(conn) == _expected(postings, {})
    assert options == {"account_balances": ["fillfactor=50"], "positions": ["fillfactor=50"]}
    assert reconcile(dsn) == []
