"""The shard database: migrate, batched idempotent writes, reconciliation, rebuild checks.

Synchronous psycopg 3. `write_batch` lands a batch of ledger postings and account events in
one database transaction: rows are COPYed into session-local staging tables, then inserted with
ON CONFLICT DO NOTHING; balances and positions move only for the rows actually inserted, so
replaying any part of a topic changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

import msgspec
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from state import ledger_accounts as la
from state import topics as t
from state.domain import shard_snapshot as snap
from state.domain.hydrate import AccountSnapshot, SnapshotCommand, SnapshotJournaled
from state.exceptions import DecodeError, StoreError
from state.intake_journal import undecided_of_account
from state.messages import (
    AccountEvent,
    Alert,
    CommandAccepted,
    CommandRejected,
    LedgerEntry,
    LedgerTransaction,
    OrderEvent,
)
from state.router import ShardRouter
from state.shard_schema import BOOKKEEPING_SQL, MIGRATION_LOCK_KEY, MIGRATIONS

ZERO = Decimal(0)
COST_QUANTUM = Decimal("0.000001")  # cost basis keeps 6 places: average cost is deterministic
SHARE_BUCKETS = (la.SHARES, la.SHARES_UNSETTLED, la.SHARES_HELD)
CASH_BUCKETS = (la.CASH, la.CASH_HELD)
CONNECT_TIMEOUT_S = 3
_T = TypeVar("_T")


class MigrationError(StoreError):
    """The database holds a schema version this code does not know."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from: kept with every ledger transaction and audit event."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    transactions_inserted: int
    entries_inserted: int
    events_inserted: int
    positions_moved: int


def connect(dsn: str, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]


# ---- migrations --------------------------------------------------------------------------


def migrate(dsn: str) -> None:
    """Apply every migration the database does not have yet; idempotent and safe to run
    concurrently (an advisory lock serialises callers)."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(BOOKKEEPING_SQL)
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            known = {migration.version for migration in MIGRATIONS}
            if applied - known:
                raise MigrationError(
                    f"database has schema versions {sorted(applied - known)} unknown to this "
                    "code: run a newer release")
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)  # type: ignore[arg-type]
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def schema_version(dsn: str) -> int:
    with connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


# ---- batched writes ----------------------------------------------------------------------

_STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS stage_txn (
    ord integer, txn_id text, account_id text, kind text, cause_id text, order_id text,
    occurred_at timestamptz, source_topic text, source_partition integer, source_offset bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_entry (
    txn_id text, leg smallint, ledger_account text, asset text, amount numeric,
    account_id text, occurred_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_event (
    ord integer, event_id text, account_id text, event_type text, order_id text, seq integer,
    state text, previous_state text, reason text, detail text, cause_id text,
    idempotency_key text, occurred_at timestamptz, payload jsonb, source_topic text,
    source_partition integer, source_offset bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_order (
    order_id text, account_id text, symbol text, side text, order_type text,
    time_in_force text, quantity numeric, limit_price numeric, stop_price numeric, state text,
    filled_quantity numeric, average_fill_price numeric, held_amount numeric, reason text,
    idempotency_key text, seq integer, last_event_id text, created_at timestamptz,
    updated_at timestamptz
) ON COMMIT DELETE ROWS;
"""

_INSERT_LEDGER_SQL = """
WITH new_txn AS (
    INSERT INTO ledger_transactions (txn_id, account_id, kind, cause_id, order_id, occurred_at,
                                     source_topic, source_partition, source_offset)
    SELECT txn_id, account_id, kind, cause_id, order_id, occurred_at,
           source_topic, source_partition, source_offset
      FROM stage_txn ORDER BY ord
    ON CONFLICT (txn_id) DO NOTHING
    RETURNING txn_id
), new_entries AS (
    INSERT INTO ledger_entries (txn_id, leg, ledger_account, asset, amount, account_id,
                                occurred_at)
    SELECT e.txn_id, e.leg, e.ledger_account, e.asset, e.amount, e.account_id, e.occurred_at
      FROM stage_entry e JOIN new_txn n ON n.txn_id = e.txn_id
    ON CONFLICT (txn_id, leg) DO NOTHING
    RETURNING ledger_account, asset, amount
), moved AS (
    INSERT INTO account_balances (ledger_account, asset, balance, account_id)
    SELECT ledger_account, asset, sum(amount),
           CASE WHEN ledger_account LIKE 'user:%' THEN split_part(ledger_account, ':', 2) END
      FROM new_entries GROUP BY ledger_account, asset ORDER BY ledger_account, asset
    ON CONFLICT (ledger_account, asset) DO UPDATE
       SET balance = account_balances.balance + excluded.balance, updated_at = now()
    RETURNING 1
)
SELECT n.txn_id, (SELECT count(*) FROM new_entries) FROM new_txn n
"""

_INSERT_EVENTS_SQL = """
INSERT INTO order_events (event_id, account_id, event_type, order_id, seq, state,
                          previous_state, reason, detail, cause_id, idempotency_key,
                          occurred_at, payload, source_topic, source_partition, source_offset)
SELECT event_id, account_id, event_type, order_id, seq, state, previous_state, reason, detail,
       cause_id, idempotency_key, occurred_at, payload, source_topic, source_partition,
       source_offset
  FROM stage_event ORDER BY ord
ON CONFLICT (event_id) DO NOTHING
"""

# Latest state wins by seq, so a replay or a late duplicate never moves an order backwards.
# stage_order holds one row per order: its latest event of the batch (`_latest_orders`).
_UPSERT_ORDERS_SQL = """
INSERT INTO orders (order_id, account_id, symbol, side, order_type, time_in_force, quantity,
                    limit_price, stop_price, state, filled_quantity, average_fill_price,
                    held_amount, reason, idempotency_key, seq, last_event_id, created_at,
                    updated_at)
SELECT order_id, account_id, symbol, side, order_type, time_in_force, quantity, limit_price,
       stop_price, state, filled_quantity, average_fill_price, held_amount, reason,
       idempotency_key, seq, last_event_id, created_at, updated_at
  FROM stage_order ORDER BY order_id
ON CONFLICT (order_id) DO UPDATE SET
    state = excluded.state, filled_quantity = excluded.filled_quantity,
    average_fill_price = excluded.average_fill_price, held_amount = excluded.held_amount,
    reason = excluded.reason, seq = excluded.seq, last_event_id = excluded.last_event_id,
    limit_price = excluded.limit_price, stop_price = excluded.stop_price,
    quantity = excluded.quantity, updated_at = excluded.updated_at,
    created_at = least(orders.created_at, excluded.created_at)
WHERE orders.seq < excluded.seq
"""

# An offset counts only within the broker log (epoch) it was read from. Within one epoch the
# highest offset wins (batches may land out of order across writers); a later epoch's offset
# replaces an earlier one's, whatever their sizes (the new log counts from 0 again). An epoch
# the shard first saw earlier never displaces a later one: a writer still finishing under the
# old broker cannot move the offsets back into a log that is gone. A write with no epoch ('',
# not from a broker log) never displaces an epoch's offsets.
_NOTE_EPOCH_SQL = "INSERT INTO broker_epochs (epoch) VALUES (%s) ON CONFLICT (epoch) DO NOTHING"

_UPSERT_OFFSETS_SQL = """
INSERT INTO sink_offsets AS s (topic, partition, offset_max, epoch) VALUES (%s, %s, %s, %s)
ON CONFLICT (topic, partition) DO UPDATE
   SET offset_max = CASE WHEN s.epoch = excluded.epoch
                         THEN greatest(s.offset_max, excluded.offset_max)
                         ELSE excluded.offset_max END,
       epoch = excluded.epoch, updated_at = now()
 WHERE s.epoch = excluded.epoch
    OR coalesce((SELECT first_seen_at FROM broker_epochs WHERE epoch = s.epoch), '-infinity')
       <= (SELECT first_seen_at FROM broker_epochs WHERE epoch = excluded.epoch)
"""

_JSON = msgspec.json.Encoder()


def write_batch(
    conn: psycopg.Connection,
    postings: Sequence[LedgerTransaction],
    events: Sequence[AccountEvent],
    sources: Mapping[str, Source] | None = None,
    *,
    epoch: str = "",
) -> WriteResult:
    """Land `postings` and `events` in one database transaction, idempotently.

    `sources` maps a txn_id or event_id to where it was read (kept for audit and rebuilds;
    the highest offset per partition goes to `sink_offsets`, with `epoch`: the broker log the
    offsets count in, '' when they come from no broker log). Positions are derived from the
    postings: a transaction that moves a user's shares moves the position (average cost).
    """
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, (
        "write_batch owns its database transaction: call it outside of one")
    sources = sources or {}
    postings = _unique(postings, lambda posting: posting.txn_id)
    events = _unique(events, lambda event: event.event_id)
    with conn.transaction():
        conn.execute(_STAGING_SQL)
        new_txn_ids, entries_inserted = _write_ledger(conn, postings, sources)
        events_inserted = _write_events(conn, events, sources)
        fresh = [posting for posting in postings if posting.txn_id in new_txn_ids]
        positions_moved = _move_positions(conn, fresh)
        _record_offsets(conn, [sources[key] for key in
                               [p.txn_id for p in postings] + [e.event_id for e in events]
                               if key in sources], epoch)
    return WriteResult(len(new_txn_ids), entries_inserted, events_inserted, positions_moved)


def _unique(items: Sequence[_T], key: Callable[[_T], str]) -> list[_T]:
    seen: set[str] = set()
    unique: list[_T] = []
    for item in items:
        identity = key(item)
        if identity not in seen:
            seen.add(identity)
            unique.append(item)
    return unique


def _write_ledger(conn: psycopg.Connection, postings: Sequence[LedgerTransaction],
                  sources: Mapping[str, Source]) -> tuple[set[str], int]:
    """Fast path: COPY straight into the ledger tables and move the balances by their sums.
    When any txn_id is there already (a replay, the overlap after a restart, a concurrent
    writer), the COPY fails on the primary key and the staged path (ON CONFLICT) lands the
    batch instead: no probe is paid for the common case of fresh postings."""
    if not postings:
        return set(), 0
    if not _all_fresh(conn, lambda: _copy_ledger(conn, postings, sources)):
        return _write_ledger_staged(conn, postings, sources)
    _move_balances(conn, postings)
    return {posting.txn_id for posting in postings}, sum(len(p.entries) for p in postings)


def _all_fresh(conn: psycopg.Connection, copy: Callable[[], None]) -> bool:
    """Run `copy` (COPYs straight into the tables) in a savepoint: True when it landed, False
    when a row's key was there already (the savepoint is rolled back: nothing landed)."""
    try:
        with conn.transaction():  # a savepoint
            copy()
    except psycopg.errors.UniqueViolation:
        return False
    return True


# Binary COPY: psycopg's C dumpers format each row (no text to build and escape here) and the
# server reads numeric and timestamptz without parsing their text: both sides pay less per row
# than with COPY's text format.
TRANSACTION_COPY_COLUMNS = ("txn_id", "account_id", "kind", "cause_id", "order_id",
                            "occurred_at", "source_topic", "source_partition", "source_offset")
TRANSACTION_COPY_TYPES = ("text", "text", "text", "text", "text", "timestamptz", "text", "int4",
                          "int8")
ENTRY_COPY_COLUMNS = ("txn_id", "leg", "ledger_account", "asset", "amount", "account_id",
                      "occurred_at")
ENTRY_COPY_TYPES = ("text", "int2", "text", "text", "numeric", "text", "timestamptz")
_NO_SOURCE = (None, None, None)
CopyRow = tuple[object, ...]


def transaction_copy_rows(postings: Sequence[LedgerTransaction],
                          sources: Mapping[str, Source]) -> Iterator[CopyRow]:
    """Rows of ledger_transactions, in TRANSACTION_COPY_COLUMNS order."""
    for posting in postings:
        source = sources.get(posting.txn_id)
        yield (posting.txn_id, posting.account_id, posting.kind, posting.cause_id,
               posting.order_id, posting.occurred_at,
               *((source.topic, source.partition, source.offset) if source else _NO_SOURCE))


def entry_copy_rows(postings: Sequence[LedgerTransaction]) -> Iterator[CopyRow]:
    """Rows of ledger_entries, in ENTRY_COPY_COLUMNS order."""
    for posting in postings:
        txn_id, account_id, when = posting.txn_id, posting.account_id, posting.occurred_at
        for leg, entry in enumerate(posting.entries):
            yield (txn_id, leg, entry.ledger_account, entry.asset, entry.amount, account_id,
                   when)


def _copy_rows(cur: psycopg.Cursor, table: str, columns: Sequence[str], types: Sequence[str],
               rows: Iterable[CopyRow], *, first: Sequence[str] = ()) -> None:
    """COPY `rows` into `table` in binary format; `first` names leading columns (of the
    staging tables) that the rows carry before `columns`."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, (*first, *columns))))
    with cur.copy(statement) as copy:
        copy.set_types([*("int4" for _ in first), *types])
        for row in rows:
            copy.write_row(row)


def _copy_ledger(conn: psycopg.Connection, postings: Sequence[LedgerTransaction],
                 sources: Mapping[str, Source]) -> None:
    with conn.cursor() as cur:
        _copy_rows(cur, "ledger_transactions", TRANSACTION_COPY_COLUMNS, TRANSACTION_COPY_TYPES,
                   transaction_copy_rows(postings, sources))
        _copy_rows(cur, "ledger_entries", ENTRY_COPY_COLUMNS, ENTRY_COPY_TYPES,
                   entry_copy_rows(postings))


def _move_balances(conn: psycopg.Connection, postings: Sequence[LedgerTransaction]) -> None:
    moved: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for posting in postings:
        for entry in posting.entries:
            moved[(entry.ledger_account, entry.asset)] += entry.amount
    rows = [(name, asset, amount, (la.parse_user(name) or (None, None))[0])
            for (name, asset), amount in sorted(moved.items())]  # one lock order for all
    conn.execute(_UPSERT_BALANCES_SQL, (_JSON.encode(rows).decode(),))


def _write_ledger_staged(conn: psycopg.Connection, postings: Sequence[LedgerTransaction],
                         sources: Mapping[str, Source]) -> tuple[set[str], int]:
    with conn.cursor() as cur:
        _copy_rows(cur, "stage_txn", TRANSACTION_COPY_COLUMNS, TRANSACTION_COPY_TYPES,
                   ((ord_, *row) for ord_, row in
                    enumerate(transaction_copy_rows(postings, sources))), first=("ord",))
        _copy_rows(cur, "stage_entry", ENTRY_COPY_COLUMNS, ENTRY_COPY_TYPES,
                   entry_copy_rows(postings))
        rows = cur.execute(_INSERT_LEDGER_SQL).fetchall()
    new_ids = {row[0] for row in rows}
    return new_ids, int(rows[0][1]) if rows else 0


EVENT_COPY_COLUMNS = ("event_id", "account_id", "event_type", "order_id", "seq", "state",
                      "previous_state", "reason", "detail", "cause_id", "idempotency_key",
                      "occurred_at", "payload", "source_topic", "source_partition",
                      "source_offset")
EVENT_COPY_TYPES = ("text", "text", "text", "text", "int4", "text", "text", "text", "text",
                    "text", "text", "timestamptz", "jsonb", "text", "int4", "int8")
ORDER_COPY_COLUMNS = ("order_id", "account_id", "symbol", "side", "order_type",
                      "time_in_force", "quantity", "limit_price", "stop_price", "state",
                      "filled_quantity", "average_fill_price", "held_amount", "reason",
                      "idempotency_key", "seq", "last_event_id", "created_at", "updated_at")
ORDER_COPY_TYPES = ("text", "text", "text", "text", "text", "text", "numeric", "numeric",
                    "numeric", "text", "numeric", "numeric", "numeric", "text", "text", "int4",
                    "text", "timestamptz", "timestamptz")


def event_copy_rows(events: Sequence[AccountEvent], sources: Mapping[str, Source]
                    ) -> Iterator[CopyRow]:
    """Rows of order_events, in EVENT_COPY_COLUMNS order."""
    for event in events:
        source = sources.get(event.event_id)
        where = (source.topic, source.partition, source.offset) if source else _NO_SOURCE
        yield (event.event_id, event.account_id, type(event).__struct_config__.tag,
               getattr(event, "order_id", None), *_event_facts(event), event.occurred_at,
               Jsonb(event, _JSON.encode), *where)


def _event_facts(event: AccountEvent) -> tuple[object, ...]:
    """seq, state, previous_state, reason, detail, cause_id, idempotency_key."""
    if isinstance(event, OrderEvent):
        return (event.seq, event.state.value,
                event.previous_state.value if event.previous_state else None,
                event.reason, event.detail, event.cause_id, event.idempotency_key)
    if isinstance(event, CommandRejected):
        return (None, None, None, event.reason, event.detail, None, event.idempotency_key)
    if isinstance(event, CommandAccepted):
        return (None, None, None, None, event.command_type, event.txn_id,
                event.idempotency_key)
    if isinstance(event, Alert):
        return (None, None, None, event.code, event.detail, event.exec_id, None)
    raise AssertionError(f"not an account event: {type(event).__name__}")


def _latest_orders(events: Sequence[AccountEvent]) -> Iterator[CopyRow]:
    """Rows of stage_order: each order's event of highest seq in `events`, created at its
    earliest event of them (the upsert keeps the earliest it has seen)."""
    latest: dict[str, OrderEvent] = {}
    created: dict[str, dt.datetime] = {}
    for event in events:
        if not isinstance(event, OrderEvent):
            continue
        order_id = event.order_id
        if order_id not in latest or event.seq > latest[order_id].seq:
            latest[order_id] = event
        if order_id not in created or event.occurred_at < created[order_id]:
            created[order_id] = event.occurred_at
    for order_id, event in latest.items():
        yield (order_id, event.account_id, event.symbol, event.side.value,
               event.order_type.value, event.time_in_force.value, event.quantity,
               event.limit_price, event.stop_price, event.state.value, event.filled_quantity,
               event.average_fill_price, event.held_amount, event.reason,
               event.idempotency_key, event.seq, event.event_id, created[order_id],
               event.occurred_at)


def _write_events(conn: psycopg.Connection, events: Sequence[AccountEvent],
                  sources: Mapping[str, Source]) -> int:
    """Fast path as for the ledger: COPY straight into order_events; when any event is there
    already, the staged path (ON CONFLICT) lands the batch instead. Then each order's latest
    state, one row per order."""
    if not events:
        return 0
    if _all_fresh(conn, lambda: _copy_events(conn, events, sources)):
        inserted = len(events)
    else:
        inserted = _write_events_staged(conn, events, sources)
    with conn.cursor() as cur:
        _copy_rows(cur, "stage_order", ORDER_COPY_COLUMNS, ORDER_COPY_TYPES,
                   _latest_orders(events))
        cur.execute(_UPSERT_ORDERS_SQL)
    return inserted


def _copy_events(conn: psycopg.Connection, events: Sequence[AccountEvent],
                 sources: Mapping[str, Source]) -> None:
    with conn.cursor() as cur:
        _copy_rows(cur, "order_events", EVENT_COPY_COLUMNS, EVENT_COPY_TYPES,
                   event_copy_rows(events, sources))


def _write_events_staged(conn: psycopg.Connection, events: Sequence[AccountEvent],
                         sources: Mapping[str, Source]) -> int:
    with conn.cursor() as cur:
        _copy_rows(cur, "stage_event", EVENT_COPY_COLUMNS, EVENT_COPY_TYPES,
                   ((ord_, *row) for ord_, row in enumerate(event_copy_rows(events, sources))),
                   first=("ord",))
        return max(cur.execute(_INSERT_EVENTS_SQL).rowcount, 0)


def _record_offsets(conn: psycopg.Connection, sources: Iterable[Source], epoch: str) -> None:
    highest: dict[tuple[str, int], int] = {}
    for source in sources:
        key = (source.topic, source.partition)
        highest[key] = max(highest.get(key, -1), source.offset)
    if highest:
        with conn.cursor() as cur:
            if epoch:
                cur.execute(_NOTE_EPOCH_SQL, (epoch,))
            cur.executemany(_UPSERT_OFFSETS_SQL,
                            [(topic, partition, offset, epoch)
                             for (topic, partition), offset in sorted(highest.items())])


# ---- one shard's records: decoded, batched, landed (the sink and rebuilds share this) ------

ShardMessage = LedgerTransaction | AccountEvent


@dataclass(frozen=True, slots=True)
class Refused:
    """A record this shard will not land, with the reason (for the dead-letter topic)."""

    reason: str


def decode_for_shard(family: t.Topic, raw: bytes | None, router: ShardRouter, shard: int
                     ) -> ShardMessage | Refused:
    """A record read from one of `shard`'s partitions of `ledger.postings` or `orders.events`:
    the message, or `Refused` when it is malformed or its account belongs to another shard
    (its producer did not partition by account: it is nobody's to land, so it is refused
    rather than dropped)."""
    try:
        message = t.decode(family, raw)
        owner = router.shard_of_account(message.account_id)
    except (DecodeError, ValueError) as error:
        return Refused(str(error))
    if owner != shard:
        return Refused(f"account {message.account_id} belongs to shard {owner}, not to shard "
                       f"{shard} whose partition holds the record: not partitioned by account")
    return message  # type: ignore[no-any-return]


@dataclass
class ShardBatch:
    """Postings and account events of one shard, with where each was read."""

    postings: list[LedgerTransaction] = field(default_factory=list)
    events: list[AccountEvent] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)
    entries: int = 0

    def add(self, message: ShardMessage, source: Source) -> None:
        if isinstance(message, LedgerTransaction):
            self.postings.append(message)
            self.sources[message.txn_id] = source
            self.entries += len(message.entries)
        else:
            self.events.append(message)
            self.sources[message.event_id] = source

    def size(self) -> int:
        return len(self.postings) + len(self.events)


OnRefused = Callable[[ShardMessage, Source | None, str], None]
_REFUSED_BY_DATABASE = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)


def write_or_split(conn: psycopg.Connection, postings: Sequence[LedgerTransaction],
                   events: Sequence[AccountEvent], sources: Mapping[str, Source],
                   on_refused: OnRefused, *, epoch: str = "") -> None:
    """`write_batch`, except that a record the database refuses (a NUL in a text, a
    constraint) must not block its partition forever: the batch is halved until the refused
    record is alone, which goes to `on_refused` with the database's reason. Connection errors
    propagate (the caller backs off and retries the whole batch: the writes are idempotent)."""
    try:
        write_batch(conn, postings, events, sources, epoch=epoch)
        return
    except _REFUSED_BY_DATABASE as error:
        if len(postings) + len(events) == 1:
            message: ShardMessage = (postings or events)[0]
            key = (message.txn_id if isinstance(message, LedgerTransaction)
                   else message.event_id)
            on_refused(message, sources.get(key), str(error))
            return
    halves: list[tuple[Sequence[LedgerTransaction], Sequence[AccountEvent]]]
    if postings and events:
        halves = [(postings, []), ([], events)]
    else:
        half = max(len(postings), len(events)) // 2
        halves = [(postings[:half], events[:half]), (postings[half:], events[half:])]
    for part_postings, part_events in halves:
        write_or_split(conn, part_postings, part_events, sources, on_refused, epoch=epoch)


def write_chunked(conn: psycopg.Connection, batch: ShardBatch, chunk_size: int,
                  on_refused: OnRefused, *, epoch: str = "") -> None:
    """A batch in database transactions of at most `chunk_size` postings and as many events;
    `epoch`: the broker log the batch was read from (see `write_batch`)."""
    for first in range(0, max(len(batch.postings), len(batch.events)), chunk_size):
        write_or_split(conn, batch.postings[first:first + chunk_size],
                       batch.events[first:first + chunk_size], batch.sources, on_refused,
                       epoch=epoch)


# ---- positions (average cost) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositionMove:
    account_id: str
    symbol: str
    quantity_delta: Decimal
    cash_delta: Decimal  # the account's USD movement in the same transaction


def position_moves(posting: LedgerTransaction) -> list[PositionMove]:
    """What a transaction does to positions: per (user account, symbol), the change of all
    share buckets together, with that user's cash movement in the same transaction."""
    usd = la.USD
    for entry in posting.entries:
        if entry.asset != usd:
            break
    else:
        return []  # most transactions move cash only
    shares: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    cash: dict[str, Decimal] = defaultdict(Decimal)
    for entry in posting.entries:
        owner = la.parse_user(entry.ledger_account)
        if owner is None:
            continue
        account_id, bucket = owner
        if entry.asset == la.USD:
            if bucket in CASH_BUCKETS:
                cash[account_id] += entry.amount
        elif bucket in SHARE_BUCKETS:
            shares[(account_id, entry.asset)] += entry.amount
    return [PositionMove(account_id, symbol, delta, cash[account_id])
            for (account_id, symbol), delta in sorted(shares.items()) if delta != 0]


def apply_move(quantity: Decimal, cost_basis: Decimal, move: PositionMove
               ) -> tuple[Decimal, Decimal]:
    """Average cost: a buy adds what was paid; a sell removes the sold share of the basis."""
    new_quantity = quantity + move.quantity_delta
    if move.quantity_delta > 0:
        return new_quantity, cost_basis + max(-move.cash_delta, ZERO)
    if new_quantity <= 0 or quantity <= 0:
        return new_quantity, ZERO
    kept = (cost_basis * new_quantity / quantity).quantize(COST_QUANTUM, ROUND_HALF_EVEN)
    return new_quantity, kept


def _move_positions(conn: psycopg.Connection, postings: Sequence[LedgerTransaction]) -> int:
    moves = [move for posting in postings for move in position_moves(posting)]
    if not moves:
        return 0
    keys = sorted({(move.account_id, move.symbol) for move in moves})
    with conn.cursor() as cur:
        rows = cur.execute(_LOCK_POSITIONS_SQL, (_JSON.encode(keys).decode(),)).fetchall()
        current = {(row[0], row[1]): (row[2], row[3]) for row in rows}
        for move in moves:
            key = (move.account_id, move.symbol)
            quantity, cost_basis = current.get(key, (ZERO, ZERO))
            current[key] = apply_move(quantity, cost_basis, move)
        cur.execute(_UPSERT_POSITIONS_SQL,
                    (_JSON.encode([(*key, *current[key]) for key in keys]).decode(),))
    return len(moves)


# Rows go in as one JSON parameter: psycopg's array dumpers cost more per element than the
# database's work on the row (msgspec writes Decimal as a JSON string, exactly).
_UPSERT_BALANCES_SQL = """
INSERT INTO account_balances (ledger_account, asset, balance, account_id)
SELECT r->>0, r->>1, (r->>2)::numeric, r->>3 FROM json_array_elements(%s::json) r
ON CONFLICT (ledger_account, asset) DO UPDATE
   SET balance = account_balances.balance + excluded.balance, updated_at = now()
"""

_LOCK_POSITIONS_SQL = """
SELECT account_id, symbol, quantity, cost_basis FROM positions
 WHERE (account_id, symbol) IN (SELECT r->>0, r->>1 FROM json_array_elements(%s::json) r)
 ORDER BY account_id, symbol FOR UPDATE
"""

_UPSERT_POSITIONS_SQL = """
INSERT INTO positions (account_id, symbol, quantity, cost_basis)
SELECT r->>0, r->>1, (r->>2)::numeric, (r->>3)::numeric FROM json_array_elements(%s::json) r
ON CONFLICT (account_id, symbol) DO UPDATE
   SET quantity = excluded.quantity, cost_basis = excluded.cost_basis, updated_at = now()
"""


# ---- reads used by the CLI, reconcile and rebuilds ---------------------------------------


def ledger_balances(dsn: str) -> dict[tuple[str, str], Decimal]:
    """Materialised balances: (ledger_account, asset) -> balance."""
    with connect(dsn) as conn:
        rows = conn.execute("SELECT ledger_account, asset, balance FROM account_balances")
        return {(row[0], row[1]): row[2] for row in rows}


def entry_balances(conn: psycopg.Connection) -> dict[tuple[str, str], Decimal]:
    """Balances recomputed from the entries."""
    rows = conn.execute("SELECT ledger_account, asset, sum(amount) FROM ledger_entries "
                        "GROUP BY ledger_account, asset")
    return {(row[0], row[1]): row[2] for row in rows}


def recompute_positions(conn: psycopg.Connection) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    """Positions replayed from the entries in landing order (the order they were applied)."""
    positions: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    rows = conn.execute(
        "SELECT t.txn_id, t.account_id, t.kind, t.cause_id, t.occurred_at, "
        "       array_agg(e.ledger_account ORDER BY e.leg), array_agg(e.asset ORDER BY e.leg), "
        "       array_agg(e.amount ORDER BY e.leg) "
        "  FROM ledger_transactions t JOIN ledger_entries e USING (txn_id) "
        " WHERE EXISTS (SELECT 1 FROM ledger_entries x WHERE x.txn_id = t.txn_id "
        "               AND x.asset <> 'USD' AND x.ledger_account LIKE 'user:%') "
        " GROUP BY t.ledger_seq, t.txn_id ORDER BY t.ledger_seq")
    for txn_id, account_id, kind, cause_id, occurred_at, names, assets, amounts in rows:
        posting = LedgerTransaction(
            txn_id=txn_id, account_id=account_id, kind=kind, cause_id=cause_id,
            occurred_at=occurred_at,
            entries=tuple(LedgerEntry(n, a, m) for n, a, m in zip(names, assets, amounts,
                                                                  strict=True)))
        for move in position_moves(posting):
            key = (move.account_id, move.symbol)
            quantity, cost_basis = positions.get(key, (ZERO, ZERO))
            positions[key] = apply_move(quantity, cost_basis, move)
    return positions


def snapshot_connection(dsn: str) -> psycopg.Connection:
    """A read-only connection whose transaction reads one snapshot of the shard (REPEATABLE
    READ): on a live shard the sink lands batches meanwhile, and statements that each saw
    the shard at another moment (balances before a batch, entries after it) would differ."""
    conn = connect(dsn)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def reconcile(dsn: str) -> list[str]:
    """Every difference found in one shard (empty: clean): materialised balances against the
    entries, transactions that do not sum to zero per asset (or have no entries), and
    positions against the entries; all read in one snapshot."""
    differences: list[str] = []
    with snapshot_connection(dsn) as conn:
        materialised = {(row[0], row[1]): row[2] for row in
                        conn.execute("SELECT ledger_account, asset, balance "
                                     "FROM account_balances")}
        recomputed = entry_balances(conn)
        for key in sorted(set(materialised) | set(recomputed)):
            stored, derived = materialised.get(key, ZERO), recomputed.get(key, ZERO)
            if stored != derived:
                differences.append(f"balance {key[0]} {key[1]}: materialised {stored}, "
                                   f"entries sum to {derived}")
        for txn_id, asset, total in conn.execute(
                "SELECT txn_id, asset, sum(amount) FROM ledger_entries "
                "GROUP BY txn_id, asset HAVING sum(amount) <> 0 ORDER BY txn_id, asset"):
            differences.append(f"transaction {txn_id}: {asset} sums to {total}")
        for (txn_id,) in conn.execute(
                "SELECT t.txn_id FROM ledger_transactions t WHERE NOT EXISTS "
                "(SELECT 1 FROM ledger_entries e WHERE e.txn_id = t.txn_id) ORDER BY 1"):
            differences.append(f"transaction {txn_id}: no entries")
        differences.extend(_position_differences(conn))
    return differences


def reconcile_with_stream(dsn: str,
                          balances_from_stream: Mapping[tuple[str, str], Decimal]) -> list[str]:
    """Differences between one shard's materialised balances and the balances the account
    topology's stream implies for the same partitions ((ledger_account, asset) -> amount,
    folded from `ledger.postings`); a missing key counts as zero. Meaningful once the sink
    has landed what the stream holds (on a live shard: `stream_comparison_snapshot` reads the
    balances and the offsets to cut the stream at in one snapshot)."""
    with connect(dsn) as conn:
        materialised = {(row[0], row[1]): row[2] for row in
                        conn.execute("SELECT ledger_account, asset, balance "
                                     "FROM account_balances")}
    return balance_differences(materialised, balances_from_stream)


@dataclass(frozen=True, slots=True)
class StreamComparisonSnapshot:
    """What a comparison with the stream reads of a shard, at one moment: its materialised
    balances, how far it has landed each input partition (with the epoch), and the epochs it
    has landed records under."""

    balances: dict[tuple[str, str], Decimal]
    landed: dict[tuple[str, int], Landed]
    epochs: dict[str, dt.datetime]


def stream_comparison_snapshot(dsn: str) -> StreamComparisonSnapshot:
    """The balances and the landed offsets in one snapshot: read apart, a batch landed in
    between (a resting order filling while reconcile runs) shows in the balances but lies past
    the offsets the stream is cut at, and counts as a difference that is none."""
    with snapshot_connection(dsn) as conn:
        balances = {(row[0], row[1]): row[2] for row in
                    conn.execute("SELECT ledger_account, asset, balance FROM account_balances")}
        landed = {(row[0], row[1]): Landed(row[2], row[3]) for row in
                  conn.execute("SELECT topic, partition, offset_max, epoch FROM sink_offsets")}
        epochs = {row[0]: row[1] for row in
                  conn.execute("SELECT epoch, first_seen_at FROM broker_epochs")}
    return StreamComparisonSnapshot(balances, landed, epochs)


def balance_differences(materialised: Mapping[tuple[str, str], Decimal],
                        balances_from_stream: Mapping[tuple[str, str], Decimal]) -> list[str]:
    """The shard's balances against the stream's, each difference in words."""
    differences = []
    for key in sorted(set(materialised) | set(balances_from_stream)):
        stored, streamed = materialised.get(key, ZERO), balances_from_stream.get(key, ZERO)
        if stored != streamed:
            differences.append(f"stream balance {key[0]} {key[1]}: shard {stored}, "
                               f"stream {streamed}")
    return differences


def _position_differences(conn: psycopg.Connection) -> list[str]:
    stored = {(row[0], row[1]): (row[2], row[3]) for row in conn.execute(
        "SELECT account_id, symbol, quantity, cost_basis FROM positions")}
    derived = recompute_positions(conn)
    share_balances: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for (ledger_account, asset), balance in entry_balances(conn).items():
        owner = la.parse_user(ledger_account)
        if owner is not None and owner[1] in SHARE_BUCKETS and asset != la.USD:
            share_balances[(owner[0], asset)] += balance
    differences = []
    for key in sorted(set(stored) | set(derived) | set(share_balances)):
        quantity, cost_basis = stored.get(key, (ZERO, ZERO))
        if quantity != share_balances.get(key, ZERO):
            differences.append(f"position {key[0]} {key[1]}: quantity {quantity}, share "
                               f"entries sum to {share_balances.get(key, ZERO)}")
        if (quantity, cost_basis) != derived.get(key, (ZERO, ZERO)):
            expected = derived.get(key, (ZERO, ZERO))
            differences.append(f"position {key[0]} {key[1]}: stored {quantity} @ basis "
                               f"{cost_basis}, replayed {expected[0]} @ basis {expected[1]}")
    return differences


# ---- rebuild helpers ---------------------------------------------------------------------

# What two copies of a shard must agree on (landing order and wall-clock columns excluded).
_COMPARED = {
    "ledger_transactions": "SELECT txn_id, account_id, kind, cause_id, order_id, occurred_at "
                           "FROM ledger_transactions ORDER BY txn_id",
    "ledger_entries": "SELECT txn_id, leg, ledger_account, asset, amount, account_id, "
                      "occurred_at FROM ledger_entries ORDER BY txn_id, leg",
    "account_balances": "SELECT ledger_account, asset, balance FROM account_balances "
                        "WHERE balance <> 0 ORDER BY 1, 2",
    "positions": "SELECT account_id, symbol, quantity, cost_basis FROM positions "
                 "WHERE quantity <> 0 OR cost_basis <> 0 ORDER BY 1, 2",
    "orders": "SELECT order_id, account_id, state, filled_quantity, seq, last_event_id "
              "FROM orders ORDER BY order_id",
    "order_events": "SELECT event_id, account_id, event_type, order_id, seq, state, reason, "
                    "occurred_at FROM order_events ORDER BY event_id",
}


def compare_shards(live_dsn: str, rebuilt_dsn: str, tables: Iterable[str] | None = None
                   ) -> list[str]:
    """Differences between a live shard and one rebuilt from the topics (empty: equal)."""
    differences: list[str] = []
    with connect(live_dsn) as live, connect(rebuilt_dsn) as rebuilt:
        for table in tables or _COMPARED:
            query = sql.SQL(_COMPARED[table])  # type: ignore[arg-type]
            left = set(live.execute(query).fetchall())
            right = set(rebuilt.execute(query).fetchall())
            if left != right:
                differences.append(f"{table}: {len(left - right)} rows only in live, "
                                   f"{len(right - left)} rows only in rebuilt")
    return differences


def sink_offsets(dsn: str) -> dict[tuple[str, int], int]:
    """Highest offset landed per (topic, partition), whatever broker log it counts in (see
    `landed_offsets` for the epoch)."""
    with connect(dsn) as conn:
        return {(row[0], row[1]): row[2] for row in
                conn.execute("SELECT topic, partition, offset_max FROM sink_offsets")}


# ---- broker epochs: which stored offsets mean something in the broker's log ------------------


@dataclass(frozen=True, slots=True)
class Landed:
    """How far one input partition has landed in a shard, and the broker log (epoch) that
    offset counts in."""

    offset: int
    epoch: str


def landed_offsets(dsn: str) -> dict[tuple[str, int], Landed]:
    """(topic, partition) -> highest offset landed and its epoch."""
    with connect(dsn) as conn:
        return {(row[0], row[1]): Landed(row[2], row[3]) for row in
                conn.execute("SELECT topic, partition, offset_max, epoch FROM sink_offsets")}


def landed_epochs(dsn: str) -> dict[str, dt.datetime]:
    """Every broker epoch the shard has landed records under, with when it first did ('':
    records landed before epochs were recorded)."""
    with connect(dsn) as conn:
        return {row[0]: row[1] for row in
                conn.execute("SELECT epoch, first_seen_at FROM broker_epochs")}


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """What of one shard can be compared with the broker's current log.

    `compared`: partition -> highest offset landed, for partitions whose offsets count in the
    current epoch; `earlier`: partition -> the other epoch its offsets count in (a log that is
    gone: never read ranges by them, never wait for them); `whole_shard`: the shard holds
    nothing landed under another epoch, so its balances as a whole are what the current log
    implies (cut at `compared`)."""

    current: str | None
    compared: dict[int, int]
    earlier: dict[int, str]
    whole_shard: bool
    earlier_epochs: tuple[str, ...]


def plan_stream_comparison(partitions: Iterable[int], landed: Mapping[int, Landed],
                           epochs_landed: Iterable[str], current: str | None) -> StreamPlan:
    """Which of `partitions` (of one topic) compare with the broker's log whose epoch is
    `current` (None: the broker has no epoch record, so nothing stored refers to it).
    Partitions with nothing landed are in neither map: there is nothing to compare."""
    compared: dict[int, int] = {}
    earlier: dict[int, str] = {}
    for partition in sorted(set(partitions)):
        row = landed.get(partition)
        if row is None:
            continue
        if current is not None and row.epoch == current:
            compared[partition] = row.offset
        else:
            earlier[partition] = row.epoch
    others = sorted({epoch for epoch in epochs_landed if epoch != current}
                    | set(earlier.values()))
    return StreamPlan(current=current, compared=compared, earlier=earlier,
                      whole_shard=current is not None and not others,
                      earlier_epochs=tuple(others))


def reconcile_stream_transactions(dsn: str, postings: Iterable[tuple[LedgerTransaction, Source]]
                                  ) -> list[str]:
    """Differences between postings read from the stream and the shard's ledger: each must be
    in the shard with the same legs. The check that still holds when the shard also holds
    records of an earlier broker log (whose balances the stream cannot imply)."""
    read = list(postings)
    stored: dict[str, set[tuple[int, str, str, Decimal]]] = defaultdict(set)
    with connect(dsn) as conn:
        for txn_id, leg, ledger_account, asset, amount in conn.execute(
                "SELECT txn_id, leg, ledger_account, asset, amount FROM ledger_entries "
                "WHERE txn_id = ANY(%s)", ([posting.txn_id for posting, _ in read],)):
            stored[txn_id].add((leg, ledger_account, asset, amount))
    differences = []
    for posting, source in read:
        where = f"{source.topic}[{source.partition}]@{source.offset}"
        legs = {(leg, entry.ledger_account, entry.asset, entry.amount)
                for leg, entry in enumerate(posting.entries)}
        if posting.txn_id not in stored:
            differences.append(f"stream transaction {posting.txn_id} ({where}): not in the "
                               "shard")
        elif stored[posting.txn_id] != legs:
            differences.append(f"stream transaction {posting.txn_id} ({where}): its entries "
                               "differ from the shard's")
    return differences


# ---- hydration: what the shard records of one account ----------------------------------

_SNAPSHOT_AS_OF_SQL = """
SELECT greatest((SELECT max(occurred_at) FROM ledger_transactions WHERE account_id = %(a)s),
                (SELECT max(occurred_at) FROM order_events WHERE account_id = %(a)s))
"""

# Orders open, holding funds on the ledger, changed lately, or with fills lately.
_SNAPSHOT_ORDER_IDS_SQL = """
SELECT order_id FROM orders WHERE account_id = %(a)s AND state <> ALL(%(terminal)s)
UNION
SELECT order_id FROM order_events
 WHERE account_id = %(a)s AND occurred_at >= %(orders_since)s AND event_type = 'order_event'
   AND order_id IS NOT NULL
UNION
SELECT t.order_id FROM ledger_entries e JOIN ledger_transactions t USING (txn_id)
 WHERE e.account_id = %(a)s AND e.ledger_account IN (%(cash_held)s, %(shares_held)s)
   AND t.order_id IS NOT NULL
 GROUP BY t.order_id, e.asset HAVING sum(e.amount) <> 0
UNION
SELECT order_id FROM ledger_transactions
 WHERE account_id = %(a)s AND kind = 'fill' AND occurred_at >= %(fills_since)s
   AND order_id IS NOT NULL
"""

_SNAPSHOT_EVENTS_SQL = """
SELECT payload::text FROM order_events
 WHERE account_id = %(a)s
   AND ((event_type = 'order_event' AND order_id = ANY(%(ids)s))
        OR (event_type IN ('command_accepted', 'command_rejected')
            AND occurred_at >= %(commands_since)s))
 ORDER BY occurred_at, event_id
"""

_SNAPSHOT_TXNS_SQL = """
SELECT t.txn_id, t.kind, t.cause_id, t.order_id, t.occurred_at,
       array_agg(e.ledger_account ORDER BY e.leg), array_agg(e.asset ORDER BY e.leg),
       array_agg(e.amount ORDER BY e.leg)
  FROM ledger_transactions t JOIN ledger_entries e USING (txn_id)
 WHERE t.account_id = %(a)s
   AND (t.order_id = ANY(%(ids)s)
        OR (t.kind = 'fill' AND t.occurred_at >= %(fills_since)s)
        OR (t.kind IN ('deposit', 'ach_return') AND t.occurred_at >= %(deposits_since)s)
        OR (t.kind IN ('withdrawal', 'settle') AND t.occurred_at >= %(commands_since)s))
 GROUP BY t.ledger_seq, t.txn_id ORDER BY t.ledger_seq
"""

_SNAPSHOT_CLEARING_SQL = """
SELECT ledger_account, asset, sum(amount) FROM ledger_entries
 WHERE account_id = %(a)s AND starts_with(ledger_account, 'clearing:')
 GROUP BY ledger_account, asset
"""


# Keys of commands first seen before the lookback (the snapshot's commands cover the rest).
_SNAPSHOT_FORGOTTEN_SQL = """
SELECT idempotency_key, min(occurred_at) FROM order_events
 WHERE account_id = %(a)s AND occurred_at < %(commands_since)s AND idempotency_key IS NOT NULL
 GROUP BY idempotency_key ORDER BY min(occurred_at), idempotency_key
"""


def account_is_open(dsn: str, account_id: str) -> bool:
    """Whether the account was opened (`POST /v1/accounts` wrote its row in its shard)."""
    with connect(dsn) as conn:
        row = conn.execute("SELECT 1 FROM accounts WHERE account_id = %s", (account_id,))
        return row.fetchone() is not None


def load_account_snapshot(dsn: str, account_id: str) -> AccountSnapshot | None:
    """What the account's shard records of it, for the account topology to rebuild the state
    it lost (`state.domain.hydrate`); None when the shard has nothing of the account (a new
    account). One read-only, repeatable-read transaction: a consistent view while sinks write.
    Connection errors propagate (`connect` has a short timeout)."""
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            params: dict[str, object] = {"a": account_id}
            row = conn.execute(_SNAPSHOT_AS_OF_SQL, params).fetchone()
            as_of = row[0] if row else None
            if as_of is None:
                return None
            params.update(
                terminal=list(snap.TERMINAL_STATE_NAMES),
                orders_since=as_of - snap.ORDERS_LOOKBACK,
                fills_since=as_of - snap.FILLS_LOOKBACK,
                deposits_since=as_of - snap.DEPOSITS_LOOKBACK,
                commands_since=as_of - snap.COMMANDS_LOOKBACK,
                cash_held=la.user(account_id, la.CASH_HELD),
                shares_held=la.user(account_id, la.SHARES_HELD))
            params["ids"] = [r[0] for r in conn.execute(_SNAPSHOT_ORDER_IDS_SQL, params)]
            events = [_EVENT_DECODER.decode(r[0]) for r in
                      conn.execute(_SNAPSHOT_EVENTS_SQL, params)]
            transactions = [
                LedgerTransaction(
                    txn_id=txn_id, account_id=account_id, kind=kind, cause_id=cause_id,
                    order_id=order_id, occurred_at=occurred_at,
                    entries=tuple(LedgerEntry(n, a, m) for n, a, m in
                                  zip(names, assets, amounts, strict=True)))
                for txn_id, kind, cause_id, order_id, occurred_at, names, assets, amounts
                in conn.execute(_SNAPSHOT_TXNS_SQL, params)]
            balances: dict[str, dict[str, Decimal]] = defaultdict(dict)
            for name, asset, balance in conn.execute(
                    "SELECT ledger_account, asset, balance FROM account_balances "
                    "WHERE account_id = %(a)s", params):
                owner = la.parse_user(name)
                if owner is not None and owner[0] == account_id:
                    balances[owner[1]][asset] = balance
            clearing: dict[str, dict[str, Decimal]] = defaultdict(dict)
            for name, asset, amount in conn.execute(_SNAPSHOT_CLEARING_SQL, params):
                clearing[name][asset] = amount
            journaled = tuple(
                SnapshotJournaled(idempotency_key=key, command_type=kind, submitted_at=at,
                                  payload=bytes(payload) if kind == "place_order" else None)
                for key, kind, at, payload in undecided_of_account(conn, account_id))
            forgotten = tuple(
                SnapshotCommand(idempotency_key=key, command_type="command", seen_at=at)
                for key, at in conn.execute(_SNAPSHOT_FORGOTTEN_SQL, params))
    snapshot = snap.snapshot_from_records(account_id, balances, clearing, transactions, events)
    if snapshot is None or not (journaled or forgotten):
        return snapshot
    return msgspec.structs.replace(snapshot, journaled=journaled, forgotten=forgotten)


_EVENT_DECODER = msgspec.json.Decoder(AccountEvent)
