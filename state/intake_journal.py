"""The intake journal: what the HTTP gateway acknowledged, durable in the account's shard.

The embedded broker forgets every topic when it restarts, so a command answered 201 or 202
must not live only there. The gateway writes the command's exact `orders.commands` payload to
`intake_journal` in the account's shard before it produces it, and answers only once the row
is written. A replayer (`gateways.http.journal`) re-publishes, with the same key and bytes,
every entry whose outcome the shard does not show yet: at once after the broker's epoch
changed, otherwise once it is older than a few seconds. The account topology's idempotence
makes a second publication of a decided command harmless.

When a command is decided, as the shard shows it (`DECIDED_SQL`):
- a place_order: its order row exists (every placement, accepted or rejected, emits an
  OrderEvent), or a `command_rejected` event of its key;
- any command: a `command_accepted` or `command_rejected` event of its key (a refusal as
  another body's key is not the key's own decision), an OrderEvent it caused (cancel and
  replace requests are OrderEvents whose cause is the key), or a ledger transaction it caused
  (`cmd:<account>:<key>`; the ledger may land before the events).
These are the same records `state.domain.shard_snapshot` derives an account's known keys from,
so a key the journal holds as undecided is unknown to a snapshot read in the same transaction
(`undecided_of_account`), and hydration does not refuse its re-publication as too old.

Plain SQL helpers over a psycopg connection (async for the gateway, sync for the snapshot
loader); no pools and no policy here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from state import topics as t
from state.ids import order_id_for
from state.messages import Command, PlaceOrder

# Outcome events occur at the topology's clock, after the gateway's `submitted_at`; the slack
# covers clocks of different hosts and bounds the index range each check reads.
CLOCK_SLACK = dt.timedelta(hours=1)
# Publications of an entry that stays undecided are spaced out: replay_after_s * 2**n, n capped.
BACKOFF_DOUBLINGS_MAX = 5
_ANOTHER_BODY = "duplicate_idempotency_key_different_body"

_MONEY_TYPES = "'deposit', 'withdraw', 'ach_return'"
DECIDED_SQL = f"""(
    (j.order_id IS NOT NULL AND EXISTS (SELECT 1 FROM orders o WHERE o.order_id = j.order_id))
    OR EXISTS (
        SELECT 1 FROM order_events e
         WHERE e.account_id = j.account_id AND e.occurred_at >= j.submitted_at - %(slack)s
           AND ((e.event_type = 'command_rejected'
                 AND e.idempotency_key = j.idempotency_key
                 AND e.reason IS DISTINCT FROM '{_ANOTHER_BODY}')
                OR (e.event_type = 'command_accepted'
                    AND e.idempotency_key = j.idempotency_key
                    AND j.command_type NOT IN ({_MONEY_TYPES}))
                OR (e.event_type = 'order_event' AND e.cause_id = j.idempotency_key)))
    OR (j.order_id IS NULL AND EXISTS (
        SELECT 1 FROM ledger_transactions x
         WHERE x.account_id = j.account_id AND x.occurred_at >= j.submitted_at - %(slack)s
           AND x.cause_id = 'cmd:' || j.account_id || ':' || j.idempotency_key))
)"""
# A place order is decided once its order is on record: its hold alone (the ledger landed,
# its events were lost with the broker) leaves an order nobody can see, so it is re-published
# (and announced again, see state.domain.hydrate). An accepted money command is decided once
# its transaction is on record: its acceptance event alone is half of its step.

# One statement: the row, or (a retry of the same key) the claim of this request on it. The
# body stays the first request's: which body a key means is the topology's to decide.
_JOURNAL_SQL = """
WITH inserted AS (
    INSERT INTO intake_journal (account_id, idempotency_key, command_type, order_id, payload,
                                submitted_at, claim, published_epoch)
    VALUES (%(a)s, %(k)s, %(type)s, %(order_id)s, %(payload)s, %(submitted_at)s, %(claim)s,
            %(epoch)s)
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING 1)
UPDATE intake_journal SET claim = %(claim)s
 WHERE account_id = %(a)s AND idempotency_key = %(k)s AND NOT EXISTS (SELECT 1 FROM inserted)
"""

_WITHDRAW_SQL = """
DELETE FROM intake_journal
 WHERE account_id = %(a)s AND idempotency_key = %(k)s AND claim = %(claim)s
   AND publish_count = 0 AND decided_at IS NULL
"""

_MARK_DECIDED_SQL = """
UPDATE intake_journal SET decided_at = now()
 WHERE account_id = %(a)s AND idempotency_key = %(k)s AND decided_at IS NULL
"""

_DUE_SQL = f"""
SELECT j.account_id, j.idempotency_key, j.command_type, j.payload, j.publish_count,
       j.journaled_at, {DECIDED_SQL} AS decided
  FROM intake_journal j
 WHERE j.decided_at IS NULL
   AND (j.published_epoch IS DISTINCT FROM %(epoch)s
        OR coalesce(j.last_published_at, j.journaled_at) <= now() - make_interval(
               secs => %(after_s)s * power(2, least(j.publish_count, %(doublings)s))))
 ORDER BY j.journaled_at, j.account_id, j.idempotency_key
 LIMIT %(limit)s
"""

_DECIDED_NOW_SQL = """
UPDATE intake_journal SET decided_at = now()
 WHERE decided_at IS NULL AND (account_id, idempotency_key) IN (
       SELECT * FROM unnest(%(accounts)s::text[], %(keys)s::text[]))
"""

_PUBLISHED_SQL = """
UPDATE intake_journal
   SET published_epoch = %(epoch)s, last_published_at = now(), publish_count = publish_count + 1
 WHERE (account_id, idempotency_key) IN (
       SELECT * FROM unnest(%(accounts)s::text[], %(keys)s::text[]))
"""

# Place orders whose order id (derived from the key) is already on record: the key named an
# order before, and every faster memory of it (Redis, the journal, the account topology) may
# have expired. Their terms, and whether a replace ever changed them.
_ORDERS_ON_RECORD_SQL = """
SELECT o.order_id, o.symbol, o.side, o.order_type, o.time_in_force, o.quantity,
       o.limit_price, o.stop_price,
       EXISTS (SELECT 1 FROM order_events e
                WHERE e.order_id = o.order_id AND e.reason = 'replaced') AS replaced
  FROM orders o WHERE o.order_id = ANY(%(order_ids)s)
"""

_PRUNE_SQL = """
DELETE FROM intake_journal WHERE (account_id, idempotency_key) IN (
    SELECT account_id, idempotency_key FROM intake_journal
     WHERE decided_at IS NOT NULL AND decided_at < now() - make_interval(secs => %(keep_s)s)
     ORDER BY decided_at LIMIT %(limit)s)
"""

_UNDECIDED_OF_ACCOUNT_SQL = f"""
SELECT j.idempotency_key, j.command_type, j.submitted_at, j.payload FROM intake_journal j
 WHERE j.account_id = %(a)s AND j.decided_at IS NULL AND NOT {DECIDED_SQL}
 ORDER BY j.submitted_at, j.idempotency_key
"""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One command as the gateway journals it: `payload` is what goes to orders.commands."""

    account_id: str
    idempotency_key: str
    command_type: str
    order_id: str | None
    payload: bytes
    submitted_at: dt.datetime

    @classmethod
    def of(cls, command: Command) -> JournalEntry:
        account_id, key = command.account_id, command.idempotency_key
        tag = type(command).__struct_config__.tag
        assert isinstance(tag, str)
        return cls(account_id=account_id, idempotency_key=key, command_type=tag,
                   order_id=order_id_for(account_id, key) if isinstance(command, PlaceOrder)
                   else None,
                   payload=t.encode(command), submitted_at=command.submitted_at)


@dataclass(frozen=True, slots=True)
class DueEntry:
    """An undecided entry the replayer looked at (`decided`: the shard shows its outcome)."""

    account_id: str
    idempotency_key: str
    command_type: str
    payload: bytes
    publish_count: int
    journaled_at: dt.datetime
    decided: bool


def new_claim() -> str:
    return uuid.uuid4().hex


def _keys(entries: list[DueEntry]) -> dict[str, Any]:
    return {"accounts": [e.account_id for e in entries],
            "keys": [e.idempotency_key for e in entries]}


async def journal_many(conn: psycopg.AsyncConnection[Any],
                       entries: Sequence[tuple[JournalEntry, str]], epoch: str | None
                       ) -> dict[str, dict[str, Any]]:
    """Write each (entry, claim) pair (a key already journaled keeps its row; `claim` becomes
    its claim) in one database transaction: one commit (and one WAL flush) for all of them,
    the statements pipelined. A place order whose order is already on record is not written:
    returns the terms of those orders, by order id."""
    order_ids = [entry.order_id for entry, _ in entries if entry.order_id is not None]
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        on_record: dict[str, dict[str, Any]] = {}
        if order_ids:
            await cursor.execute(_ORDERS_ON_RECORD_SQL, {"order_ids": order_ids})
            on_record = {row.pop("order_id"): row for row in await cursor.fetchall()}
        fresh = [(entry, claim) for entry, claim in entries
                 if entry.order_id is None or entry.order_id not in on_record]
        if fresh:
            await cursor.executemany(_JOURNAL_SQL, [{
                "a": entry.account_id, "k": entry.idempotency_key,
                "type": entry.command_type, "order_id": entry.order_id,
                "payload": entry.payload, "submitted_at": entry.submitted_at,
                "claim": claim, "epoch": epoch}
                for entry, claim in fresh])
    return on_record


async def withdraw(conn: psycopg.AsyncConnection[Any], account_id: str, key: str,
                   claim: str) -> bool:
    """Remove an entry the broker did not take, if this request still holds its claim and it
    was never re-published; whether it was removed."""
    cur = await conn.execute(_WITHDRAW_SQL, {"a": account_id, "k": key, "claim": claim})
    return cur.rowcount > 0


async def mark_decided(conn: psycopg.AsyncConnection[Any], account_id: str, key: str) -> None:
    """The gateway saw the command refused: a refusal changes nothing, so nothing to replay
    (re-deciding a lost refusal later could accept what the client was told was refused)."""
    await conn.execute(_MARK_DECIDED_SQL, {"a": account_id, "k": key})


async def due_entries(conn: psycopg.AsyncConnection[Any], epoch: str, replay_after_s: float,
                      limit: int) -> list[DueEntry]:
    """Undecided entries last published under another epoch (or never), or not published for
    their backoff; oldest first, at most `limit`, each with whether the shard shows it
    decided now."""
    cur = await conn.execute(_DUE_SQL, {
        "epoch": epoch, "after_s": replay_after_s, "doublings": BACKOFF_DOUBLINGS_MAX,
        "limit": limit, "slack": CLOCK_SLACK})
    return [DueEntry(account_id=r[0], idempotency_key=r[1], command_type=r[2],
                     payload=bytes(r[3]), publish_count=r[4], journaled_at=r[5],
                     decided=bool(r[6]))
            for r in await cur.fetchall()]


async def note_decided(conn: psycopg.AsyncConnection[Any], entries: list[DueEntry]) -> None:
    if entries:
        await conn.execute(_DECIDED_NOW_SQL, _keys(entries))


async def note_published(conn: psycopg.AsyncConnection[Any], entries: list[DueEntry],
                         epoch: str) -> None:
    if entries:
        await conn.execute(_PUBLISHED_SQL, {**_keys(entries), "epoch": epoch})


async def prune(conn: psycopg.AsyncConnection[Any], keep_s: float, limit: int) -> int:
    """Delete up to `limit` entries decided more than `keep_s` ago; how many."""
    cur = await conn.execute(_PRUNE_SQL, {"keep_s": keep_s, "limit": limit})
    return max(cur.rowcount, 0)


def undecided_of_account(conn: psycopg.Connection[Any], account_id: str
                         ) -> list[tuple[str, str, dt.datetime, bytes]]:
    """(key, command type, submitted_at, payload) of the account's entries the shard shows no
    outcome of, by submission: for the snapshot the account topology hydrates from."""
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(
        _UNDECIDED_OF_ACCOUNT_SQL, {"a": account_id, "slack": CLOCK_SLACK})]


_UNDECIDED_SUMMARY_SQL = f"""
SELECT count(*), min(j.journaled_at),
       count(*) FILTER (WHERE j.journaled_at <= now() - make_interval(secs => %(stuck_s)s))
  FROM intake_journal j
 WHERE j.decided_at IS NULL AND NOT {DECIDED_SQL}
"""


@dataclass(frozen=True, slots=True)
class Undecided:
    """Commands acknowledged to a client (201/202) whose outcome the shard does not show yet."""

    count: int
    oldest: dt.datetime | None
    stuck: int  # of them, journaled longer ago than the stuck threshold


def undecided_summary(conn: psycopg.Connection[Any], stuck_s: float) -> Undecided:
    row = conn.execute(_UNDECIDED_SUMMARY_SQL,
                       {"slack": CLOCK_SLACK, "stuck_s": stuck_s}).fetchone()
    assert row is not None
    return Undecided(count=row[0], oldest=row[1], stuck=row[2])
