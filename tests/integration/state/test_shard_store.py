"""The shard database protects the ledger itself and lands batches idempotently."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import psycopg
import pytest

from state import ledger_accounts as la
from state.domain import ledger
from state.messages import OrderState
from state.shard_schema import MIGRATIONS
from state.shard_store import (
    Landed,
    Source,
    balance_differences,
    compare_shards,
    landed_epochs,
    landed_offsets,
    ledger_balances,
    migrate,
    reconcile,
    reconcile_stream_transactions,
    reconcile_with_stream,
    schema_version,
    snapshot_connection,
    stream_comparison_snapshot,
    write_batch,
)
from tests.integration.sinks.ledger_builders import (
    accepted,
    at,
    deposit,
    fill,
    order_event,
    rejected,
)

pytestmark = pytest.mark.integration

ACC = "acc_test1"


@pytest.fixture
def shard(fresh_databases) -> str:
    dsn = fresh_databases[0]
    migrate(dsn)
    return dsn


def _story() -> tuple[list, list]:
    dep = deposit(ACC, "10000.00", "d1", at(0))
    buy1 = fill(ACC, "ord_1", "x1", "buy", "AAPL", "10", "200.00", at(1))
    buy2 = fill(ACC, "ord_1", "x2", "buy", "AAPL", "10", "230.00", at(2))
    sell = fill(ACC, "ord_2", "x3", "sell", "AAPL", "5", "250.00", at(3))
    events = [accepted(ACC, "d1", dep, at(0)),
              order_event(ACC, "o1", 0, OrderState.PENDING, when=at(0.5)),
              order_event(ACC, "o1", 1, OrderState.ROUTED, when=at(0.6)),
              order_event(ACC, "o1", 2, OrderState.FILLED, filled="10", when=at(2)),
              rejected(ACC, "w1", "insufficient_funds", at(4))]
    return [dep, buy1, buy2, sell], events


def test_migrate_is_idempotent(shard) -> None:
    migrate(shard)
    assert schema_version(shard) == MIGRATIONS[-1].version == max(m.version for m in MIGRATIONS)


def test_batch_lands_balances_positions_orders_and_replay_changes_nothing(shard) -> None:
    postings, events = _story()
    sources = {p.txn_id: Source("ledger.postings", 1, i) for i, p in enumerate(postings)}
    with psycopg.connect(shard) as conn:
        first = write_batch(conn, postings, events, sources)
        assert (first.transactions_inserted, first.entries_inserted) == (4, 14)
        assert first.events_inserted == 5
        again = write_batch(conn, postings + postings[:1], events, sources)
        assert (again.transactions_inserted, again.entries_inserted, again.events_inserted,
                again.positions_moved) == (0, 0, 0, 0)
        # an older event of the same order arriving late never moves it backwards
        write_batch(conn, [], [order_event(ACC, "o1", 1, OrderState.ROUTED, when=at(0.6))])
        position = conn.execute("SELECT quantity, cost_basis FROM positions "
                                "WHERE account_id = %s AND symbol = 'AAPL'", (ACC,)).fetchone()
        order = conn.execute("SELECT state, seq, filled_quantity FROM orders").fetchone()
        offsets = conn.execute("SELECT partition, offset_max FROM sink_offsets").fetchall()
    balances = ledger_balances(shard)
    cash = Decimal("10000.00") - Decimal("2000.00") - Decimal("2300.00") + Decimal("1250.00")
    assert balances[(la.user(ACC, la.CASH), "USD")] == cash
    assert balances[(la.user(ACC, la.SHARES_UNSETTLED), "AAPL")] == 20
    assert balances[(la.user(ACC, la.SHARES), "AAPL")] == -5
    assert balances[(la.BANK_ACH, "USD")] == Decimal("-10000.00")
    # average cost: 20 shares for 4300, sell 5 keeps 15/20 of the basis
    assert position == (Decimal(15), Decimal("3225.000000"))
    assert order == ("filled", 2, Decimal(10))
    assert offsets == [(1, 3)]
    assert reconcile(shard) == []


def test_unbalanced_or_late_legs_are_refused_by_the_database(shard) -> None:
    with psycopg.connect(shard) as conn:
        write_batch(conn, [deposit(ACC, "5.00", "d1")], [])
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.CheckViolation):
        with conn.transaction():
            conn.execute("INSERT INTO ledger_transactions (txn_id, account_id, kind, cause_id, "
                         "occurred_at) VALUES ('t_bad', %s, 'x', 'x', now())", (ACC,))
            conn.execute("INSERT INTO ledger_entries VALUES "
                         "('t_bad', 0, 'bank:ach', 'USD', -5, %s, now()), "
                         "('t_bad', 1, %s, 'USD', 4, %s, now())",
                         (ACC, la.user(ACC, la.CASH), ACC))
    # a header without entries cannot commit (the deferred constraint trigger)
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.CheckViolation):
        with conn.transaction():
            conn.execute("INSERT INTO ledger_transactions (txn_id, account_id, kind, cause_id, "
                         "occurred_at) VALUES ('t_empty', %s, 'x', 'x', now())", (ACC,))
    # a leg added to a committed transaction unbalances it
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.CheckViolation):
        txn_id = deposit(ACC, "5.00", "d1").txn_id
        conn.execute("INSERT INTO ledger_entries VALUES (%s, 9, 'bank:ach', 'USD', 1, %s, now())",
                     (txn_id, ACC))
    assert reconcile(shard) == []


def _header(conn: psycopg.Connection, txn_id: str) -> None:
    conn.execute("INSERT INTO ledger_transactions (txn_id, account_id, kind, cause_id, "
                 "occurred_at) VALUES (%s, %s, 'x', 'x', now())", (txn_id, ACC))


def test_one_commit_check_covers_every_header_of_the_transaction(shard) -> None:
    # the second header, without entries, comes after one that queued the commit check
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.CheckViolation,
                                                       match="t_2 has no entries"):
        with conn.transaction():
            _header(conn, "t_1")
            conn.execute("INSERT INTO ledger_entries VALUES ('t_1', 0, 'a', 'USD', 1, %s, now()),"
                         " ('t_1', 1, 'b', 'USD', -1, %s, now())", (ACC, ACC))
            _header(conn, "t_2")
    # the header that queued it was rolled back to a savepoint: the next one queues it again
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.CheckViolation,
                                                       match="t_4 has no entries"):
        with conn.transaction():
            with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
                _header(conn, "t_3")
                conn.execute("SELECT 1 / 0")
            _header(conn, "t_4")
    # checked at each statement's end, the check re-arms for the next statement's headers
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.CheckViolation,
                                                       match="t_7 has no entries"):
        with conn.transaction():
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            conn.execute("WITH h AS (INSERT INTO ledger_transactions (txn_id, account_id, kind, "
                         "cause_id, occurred_at) VALUES ('t_8', %s, 'x', 'x', now())) "
                         "INSERT INTO ledger_entries VALUES ('t_8', 0, 'a', 'USD', 1, %s, now()),"
                         " ('t_8', 1, 'b', 'USD', -1, %s, now())", (ACC, ACC, ACC))
            _header(conn, "t_7")
    # legs added later to a committed transaction are refused unless they cancel out
    with psycopg.connect(shard) as conn:
        with conn.transaction():
            _header(conn, "t_5")
            conn.execute("INSERT INTO ledger_entries VALUES ('t_5', 0, 'a', 'USD', 2, %s, now()),"
                         " ('t_5', 1, 'b', 'USD', -2, %s, now())", (ACC, ACC))
        conn.execute("INSERT INTO ledger_entries VALUES ('t_5', 2, 'a', 'AAPL', 1, %s, now()), "
                     "('t_5', 3, 'b', 'AAPL', -1, %s, now())", (ACC, ACC))
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation, match="t_5 does not balance"):
            conn.execute("INSERT INTO ledger_entries VALUES "
                         "('t_5', 4, 'a', 'AAPL', 1, %s, now())", (ACC,))
    # (balances were not moved by these raw inserts: only the transactions are checked here)
    assert [d for d in reconcile(shard) if d.startswith("transaction")] == []


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET amount = amount * 2",
    "DELETE FROM ledger_entries",
    "TRUNCATE ledger_entries",
    "UPDATE ledger_transactions SET kind = 'x'",
    "DELETE FROM order_events",
])
def test_ledger_and_audit_are_append_only(shard, statement) -> None:
    postings, events = _story()
    with psycopg.connect(shard) as conn:
        write_batch(conn, postings, events)
    with psycopg.connect(shard) as conn, pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute(statement)


def test_reconcile_reports_a_tampered_balance_and_position(shard) -> None:
    postings, events = _story()
    with psycopg.connect(shard) as conn:
        write_batch(conn, postings, events)
        conn.execute("UPDATE account_balances SET balance = balance + 1 "
                     "WHERE ledger_account = %s", (la.user(ACC, la.CASH),))
        conn.execute("UPDATE positions SET quantity = 14")
        conn.commit()
    differences = reconcile(shard)
    assert any(d.startswith(f"balance user:{ACC}:cash USD") for d in differences)
    assert any(d.startswith(f"position {ACC} AAPL: quantity 14") for d in differences)


def test_compare_shards_sees_equal_and_different_copies(fresh_databases) -> None:
    live, rebuilt = fresh_databases[0], fresh_databases[1]
    postings, events = _story()
    for dsn in (live, rebuilt):
        migrate(dsn)
        with psycopg.connect(dsn) as conn:
            write_batch(conn, postings, events)
    assert compare_shards(live, rebuilt) == []
    with psycopg.connect(live) as conn:
        write_batch(conn, [deposit(ACC, "1.00", "extra")], [])
    assert compare_shards(live, rebuilt)[0].startswith("ledger_transactions: 1 rows only in live")


def test_reconcile_with_stream_compares_with_the_balances_the_postings_imply(shard) -> None:
    postings, events = _story()
    with psycopg.connect(shard) as conn:
        write_batch(conn, postings[:-1], events)
    assert reconcile_with_stream(shard, ledger.balances(postings[:-1])) == []
    differences = reconcile_with_stream(shard, ledger.balances(postings))  # one not landed
    assert f"stream balance user:{ACC}:cash USD: shard 5700.00, stream 6950.00" in differences
    assert len(differences) == 4  # cash, shares and both sides of the market maker's


def test_reconcile_reads_a_live_shard_in_one_snapshot(shard) -> None:
    """A batch the sink lands while reconcile reads (a resting order filling) is in none of
    its reads: balances, entries and offsets are of one moment (`brokerage chaos` found
    reconcile reporting such a fill as a difference with the stream)."""
    postings, events = _story()
    sources = {p.txn_id: Source("ledger.postings", 0, n) for n, p in enumerate(postings)}
    with psycopg.connect(shard) as conn:
        write_batch(conn, postings[:-1], events, sources, epoch="e1")
    with snapshot_connection(shard) as snapshot:
        (before,) = snapshot.execute("SELECT count(*) FROM ledger_transactions").fetchone()
        with psycopg.connect(shard) as conn:  # the sink, meanwhile
            write_batch(conn, postings[-1:], [], sources, epoch="e1")
        (after,) = snapshot.execute("SELECT count(*) FROM ledger_transactions").fetchone()
        (offset,) = snapshot.execute("SELECT offset_max FROM sink_offsets").fetchone()
    assert (before, after, offset) == (3, 3, 2)
    read = stream_comparison_snapshot(shard)
    assert read.landed[("ledger.postings", 0)] == Landed(3, "e1")
    assert set(read.epochs) == {"e1"}
    assert balance_differences(read.balances, ledger.balances(postings)) == []
    assert balance_differences(read.balances, ledger.balances(postings[:-1]))
    assert reconcile(shard) == []


def _offsets_at(conn: psycopg.Connection, partition: int, offset: int, epoch: str) -> None:
    """A batch landing one deposit read at `offset` of ledger.postings[partition] in `epoch`."""
    posting = deposit(ACC, "1.00", f"e{epoch}{partition}{offset}")
    write_batch(conn, [posting], [], {posting.txn_id: Source("ledger.postings", partition,
                                                             offset)}, epoch=epoch)


def test_sink_offsets_keep_the_highest_within_an_epoch_and_restart_with_a_new_one(shard
                                                                                  ) -> None:
    with psycopg.connect(shard) as conn:
        _offsets_at(conn, 0, 40, "old")
        _offsets_at(conn, 0, 30, "old")  # late batch of the same log: the highest stays
        _offsets_at(conn, 1, 9, "old")
        assert landed_offsets(shard)[("ledger.postings", 0)] == Landed(40, "old")
        # the broker came back empty: its offsets count from 0 again and replace the old ones
        _offsets_at(conn, 0, 2, "new")
        assert landed_offsets(shard)[("ledger.postings", 0)] == Landed(2, "new")
        _offsets_at(conn, 0, 1, "new")
        assert landed_offsets(shard)[("ledger.postings", 0)] == Landed(2, "new")
        # a writer still finishing under the old broker cannot move it back to a gone log,
        # and one without an epoch never displaces an epoch's offsets
        _offsets_at(conn, 0, 99, "old")
        _offsets_at(conn, 0, 77, "")
        assert landed_offsets(shard)[("ledger.postings", 0)] == Landed(2, "new")
        # a partition not yet written under the new epoch keeps its old epoch, said so
        assert landed_offsets(shard)[("ledger.postings", 1)] == Landed(9, "old")
    assert set(landed_epochs(shard)) == {"old", "new"}
    assert reconcile(shard) == []


def test_migration_names_records_landed_before_epochs_were_recorded(fresh_databases) -> None:
    from state.shard_schema import BOOKKEEPING_SQL

    dsn = fresh_databases[0]
    with psycopg.connect(dsn, autocommit=True) as conn:  # a shard of the previous release
        conn.execute(BOOKKEEPING_SQL)
        for migration in MIGRATIONS[:3]:
            conn.execute(migration.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
        conn.execute("INSERT INTO sink_offsets (topic, partition, offset_max) "
                     "VALUES ('ledger.postings', 0, 12)")
    with psycopg.connect(dsn) as conn:
        write_batch(conn, [deposit(ACC, "3.00", "legacy")], [])
    migrate(dsn)
    assert landed_offsets(dsn) == {("ledger.postings", 0): Landed(12, "")}
    assert set(landed_epochs(dsn)) == {""}
    with psycopg.connect(dsn) as conn:
        _offsets_at(conn, 0, 0, "first")
    assert landed_offsets(dsn) == {("ledger.postings", 0): Landed(0, "first")}


def test_stream_transactions_must_be_in_the_shard_with_the_same_legs(shard) -> None:
    postings, events = _story()
    with psycopg.connect(shard) as conn:
        write_batch(conn, postings[:-1], events)
    where = [(posting, Source("ledger.postings", 1, i)) for i, posting in enumerate(postings)]
    assert reconcile_stream_transactions(shard, where[:-1]) == []
    forged = msgspec.structs.replace(postings[0], entries=tuple(reversed(postings[0].entries)))
    assert reconcile_stream_transactions(shard, [*where, (forged, where[0][1])]) == [
        f"stream transaction {postings[-1].txn_id} (ledger.postings[1]@3): not in the shard",
        f"stream transaction {postings[0].txn_id} (ledger.postings[1]@0): its entries differ "
        "from the shard's"]


def test_a_batch_partly_landed_lands_the_rest_once_and_keeps_each_order_latest(shard) -> None:
    """Events are copied straight in; one already there sends the batch the staged way, which
    lands only the new ones. Each order keeps its latest state and its first time, whatever
    batch they came in, and each event its payload as the topic carried it."""
    placed = order_event(ACC, "p1", 1, OrderState.PENDING, when=at(1))
    routed = order_event(ACC, "p1", 2, OrderState.ROUTED, when=at(2))
    filled = order_event(ACC, "p1", 3, OrderState.FILLED, filled="10", when=at(3))
    other = order_event(ACC, "p2", 1, OrderState.PENDING, when=at(4))
    with psycopg.connect(shard) as conn:
        assert write_batch(conn, [], [routed, placed]).events_inserted == 2
        assert write_batch(conn, [], [placed, filled, other]).events_inserted == 2
        orders = conn.execute("SELECT order_id, state, seq, filled_quantity, created_at,"
                              " updated_at, last_event_id FROM orders ORDER BY created_at"
                              ).fetchall()
        payload = conn.execute("SELECT payload::text FROM order_events WHERE event_id = %s",
                               (filled.event_id,)).fetchone()
        count = conn.execute("SELECT count(*) FROM order_events").fetchone()
    assert orders == [
        (placed.order_id, "filled", 3, Decimal(10), at(1), at(3), filled.event_id),
        (other.order_id, "pending", 1, Decimal(0), at(4), at(4), other.event_id)]
    assert payload is not None and msgspec.json.decode(payload[0]) == msgspec.json.decode(
        msgspec.json.encode(filled))
    assert count == (4,)
