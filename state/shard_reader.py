"""Async reads (and account creation) against the shards, for the HTTP gateway.

One psycopg AsyncConnectionPool per shard. A shard that cannot be reached raises
`ShardUnavailable` for its own accounts only; the pools of the other shards are untouched.
Figures are Decimals straight from the ledger tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from state import ledger_accounts as la
from state.domain.shard_snapshot import DEPOSITS_LOOKBACK
from state.exceptions import ShardUnavailable
from state.router import ShardRouter

ZERO = Decimal(0)
DIRECTORY_SHARD = 0
POOL_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 3

_ACTIVITIES_SQL = """
SELECT e.txn_id, e.leg, t.kind, t.cause_id, t.order_id, e.ledger_account, e.asset, e.amount,
       e.occurred_at, t.ledger_seq,
       sum(e.amount) OVER (PARTITION BY e.ledger_account, e.asset
                           ORDER BY e.occurred_at, t.ledger_seq, e.leg) AS balance_after
  FROM ledger_entries e JOIN ledger_transactions t ON t.txn_id = e.txn_id
 WHERE e.account_id = %(account_id)s AND starts_with(e.ledger_account, %(prefix)s)
   AND e.occurred_at <= %(as_of)s
 ORDER BY e.occurred_at, t.ledger_seq, e.leg
"""

# A key reused with another body gets its own refusal; the key's outcome is its first body's.
_COMMAND_OUTCOME_SQL = """
SELECT payload FROM order_events
 WHERE account_id = %(a)s AND idempotency_key = %(k)s
   AND event_type IN ('command_accepted', 'command_rejected')
   AND reason IS DISTINCT FROM 'duplicate_idempotency_key_different_body'
 ORDER BY occurred_at, event_id LIMIT 1
"""

# The account's deposits and ACH returns over the lookback a rebuilt account reads them over
# (back from its newest transaction), each with its amount on the user's cash (a return's is
# negative), in landing order.
_DEPOSITS_SQL = """
SELECT t.kind, t.occurred_at, sum(e.amount) AS amount
  FROM ledger_transactions t JOIN ledger_entries e ON e.txn_id = t.txn_id
 WHERE t.account_id = %(a)s AND t.kind IN ('deposit', 'ach_return')
   AND t.occurred_at >= (SELECT max(occurred_at) FROM ledger_transactions
                          WHERE account_id = %(a)s) - %(lookback)s
   AND e.ledger_account = %(cash)s AND e.asset = %(usd)s
 GROUP BY t.txn_id, t.kind, t.occurred_at, t.ledger_seq
 ORDER BY t.ledger_seq
"""

_EVENTS_SQL = """
SELECT event_id, event_type, order_id, seq, state, previous_state, reason, detail, cause_id,
       idempotency_key, occurred_at, recorded_at, payload, source_topic, source_partition,
       source_offset
  FROM order_events
"""


async def open_shard_pools(dsns: Sequence[str], name: str, *,
                           pool_timeout_s: float = POOL_TIMEOUT_S,
                           connect_timeout_s: int = CONNECT_TIMEOUT_S
                           ) -> list[AsyncConnectionPool]:
    """A small pool per shard, opened without waiting: a shard down at start is not fatal
    (its requests fail with PoolTimeout after `pool_timeout_s` until it answers)."""
    pools = [AsyncConnectionPool(dsn, min_size=1, max_size=8, open=False, timeout=pool_timeout_s,
                                 kwargs={"connect_timeout": connect_timeout_s,
                                         "autocommit": True},
                                 name=f"{name}{shard}")
             for shard, dsn in enumerate(dsns)]
    for pool in pools:
        await pool.open(wait=False)
    return pools


async def close_pools(pools: Sequence[AsyncConnectionPool]) -> None:
    for pool in pools:
        await pool.close()


class ShardReader:
    def __init__(self, shard_dsns: Sequence[str], partitions_per_shard: int) -> None:
        self._dsns = tuple(shard_dsns)
        self.router = ShardRouter(len(self._dsns), partitions_per_shard)
        self._pools: list[AsyncConnectionPool] = []

    async def open(self) -> None:
        self._pools = await open_shard_pools(self._dsns, "shard")

    async def close(self) -> None:
        await close_pools(self._pools)
        self._pools = []

    # -- plumbing ----------------------------------------------------------------------------

    async def _fetch(self, shard: int, query: str, params: Any = None) -> list[dict[str, Any]]:
        assert self._pools, "ShardReader.open() was not called"
        try:
            async with self._pools[shard].connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)  # type: ignore[arg-type]
                return await cur.fetchall() if cur.description else []
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise ShardUnavailable(f"shard {shard} unavailable: {error}") from error

    def shard_of_account(self, account_id: str) -> int:
        return self.router.shard_of_account(account_id)

    # -- accounts ----------------------------------------------------------------------------

    async def create_account(self, user_id: str, account_id: str, shard: int) -> dict:
        """Create (or return, when it exists) the account on its shard, then record it in the
        directory on shard 0. Idempotent; the returned `user_id` is the owner of record."""
        assert self.router.shard_of_account(account_id) == shard, (
            f"account {account_id} hashes to shard {self.router.shard_of_account(account_id)},"
            f" not {shard}")
        rows = await self._fetch(shard, """
            WITH created AS (
                INSERT INTO accounts (account_id, user_id, shard) VALUES (%s, %s, %s)
                ON CONFLICT (account_id) DO NOTHING RETURNING *)
            SELECT * FROM created UNION ALL
            SELECT * FROM accounts WHERE account_id = %s""",
            (account_id, user_id, shard, account_id))
        account = rows[0]
        await self._fetch(DIRECTORY_SHARD,
                          "INSERT INTO account_directory (account_id, user_id, shard) "
                          "VALUES (%s, %s, %s) ON CONFLICT (account_id) DO NOTHING",
                          (account_id, account["user_id"], shard))
        return account

    async def account(self, account_id: str) -> dict | None:
        rows = await self._fetch(self.shard_of_account(account_id),
                                 "SELECT * FROM accounts WHERE account_id = %s", (account_id,))
        return rows[0] if rows else None

    async def accounts_of_user(self, user_id: str) -> list[dict]:
        """From the directory on shard 0; when shard 0 is down, from every shard that
        answers (its own accounts table), so one shard's outage does not hide the others."""
        try:
            listed = await self._fetch(
                DIRECTORY_SHARD, "SELECT account_id, shard FROM account_directory "
                "WHERE user_id = %s ORDER BY created_at, account_id", (user_id,))
        except ShardUnavailable:
            return await self._accounts_of_user_everywhere(user_id)
        accounts: list[dict] = []
        for entry in listed:
            try:
                account = await self.account(entry["account_id"])
            except ShardUnavailable:
                account = {"account_id": entry["account_id"], "user_id": user_id,
                           "shard": entry["shard"], "status": "unavailable",
                           "created_at": None}
            if account is not None:
                accounts.append(account)
        return accounts

    async def _accounts_of_user_everywhere(self, user_id: str) -> list[dict]:
        accounts: list[dict] = []
        for shard in range(len(self._dsns)):
            try:
                accounts += await self._fetch(
                    shard, "SELECT * FROM accounts WHERE user_id = %s", (user_id,))
            except ShardUnavailable:
                continue
        return sorted(accounts, key=lambda a: (a["created_at"], a["account_id"]))

    async def shard_loads(self) -> dict[int, int]:
        """Accounts per shard, from the directory: the input of the router's policy."""
        rows = await self._fetch(DIRECTORY_SHARD, "SELECT shard, count(*) AS accounts "
                                 "FROM account_directory GROUP BY shard")
        return {row["shard"]: row["accounts"] for row in rows}

    # -- portfolio ---------------------------------------------------------------------------

    async def portfolio(self, account_id: str) -> dict:
        shard = self.shard_of_account(account_id)
        balances = await self._fetch(
            shard, "SELECT ledger_account, asset, balance FROM account_balances "
            "WHERE account_id = %s", (account_id,))
        positions = await self._fetch(
            shard, "SELECT symbol, quantity, cost_basis FROM positions "
            "WHERE account_id = %s AND (quantity <> 0 OR cost_basis <> 0) ORDER BY symbol",
            (account_id,))
        latest = await self._fetch(
            shard, "SELECT occurred_at, ledger_seq FROM ledger_transactions"
            " WHERE account_id = %s ORDER BY ledger_seq DESC LIMIT 1", (account_id,))
        deposits = await self._fetch(
            shard, _DEPOSITS_SQL, {"a": account_id, "lookback": DEPOSITS_LOOKBACK,
                                   "cash": la.user(account_id, la.CASH), "usd": la.USD})
        by_bucket: dict[tuple[str, str], Decimal] = {}
        for row in balances:
            owner = la.parse_user(row["ledger_account"])
            if owner is not None:
                by_bucket[(owner[1], row["asset"])] = row["balance"]
        cash = by_bucket.get((la.CASH, la.USD), ZERO)
        return {
            "account_id": account_id,
            "cash": cash,
            "cash_held": by_bucket.get((la.CASH_HELD, la.USD), ZERO),
            "buying_power": cash,
            "positions": [_position(row, by_bucket) for row in positions],
            "deposits": deposits,
            "as_of": latest[0]["occurred_at"] if latest else None,
            # The shard's own landing number, not the broker offset the transaction came
            # from: an offset restarts with a new broker epoch, ledger_seq never goes back.
            "ledger_seq": latest[0]["ledger_seq"] if latest else None,
        }

    # -- orders ------------------------------------------------------------------------------

    async def orders(self, account_id: str, limit: int = 100) -> list[dict]:
        return await self._fetch(
            self.shard_of_account(account_id),
            "SELECT * FROM orders WHERE account_id = %s ORDER BY created_at DESC, order_id "
            "LIMIT %s", (account_id, limit))

    async def order(self, account_id: str, order_id: str) -> dict | None:
        shard = self.shard_of_account(account_id)
        rows = await self._fetch(shard, "SELECT * FROM orders WHERE order_id = %s "
                                 "AND account_id = %s", (order_id, account_id))
        if not rows:
            return None
        order = rows[0]
        order["events"] = await self._fetch(
            shard, _EVENTS_SQL + " WHERE order_id = %s AND account_id = %s "
            "ORDER BY seq NULLS LAST, occurred_at, event_id", (order_id, account_id))
        return order

    async def journaled_order(self, account_id: str, order_id: str) -> dict | None:
        """An order acknowledged to its client whose events have not landed yet, as its
        journaled place_order describes it (read-your-writes right after a 201 or 202)."""
        rows = await self._fetch(
            self.shard_of_account(account_id),
            "SELECT payload, submitted_at FROM intake_journal "
            "WHERE account_id = %s AND order_id = %s", (account_id, order_id))
        if not rows:
            return None
        command = msgspec.json.decode(bytes(rows[0]["payload"]))
        return {
            "order_id": order_id, "account_id": account_id, "symbol": command["symbol"],
            "side": command["side"], "order_type": command["order_type"],
            "quantity": command["quantity"],
            "time_in_force": command.get("time_in_force", "day"), "state": "pending",
            "filled_quantity": "0", "limit_price": command.get("limit_price"),
            "stop_price": command.get("stop_price"),
            "idempotency_key": command["idempotency_key"],
            "created_at": rows[0]["submitted_at"], "events": [],
            "detail": "accepted; its decision is not on record yet"}

    async def command_outcome(self, account_id: str, key: str) -> dict | None:
        """What became of the command with this idempotency key: `accepted` or `rejected`
        (the command event's payload: txn_id, reason, detail), else `pending` while the
        intake journal holds it undecided, else None (no such command)."""
        shard = self.shard_of_account(account_id)
        rows = await self._fetch(shard, _COMMAND_OUTCOME_SQL, {"a": account_id, "k": key})
        if rows:
            payload = rows[0]["payload"]
            status = "accepted" if payload["type"] == "command_accepted" else "rejected"
            return {**payload, "status": status}
        journaled = await self._fetch(
            shard, "SELECT command_type, submitted_at FROM intake_journal "
            "WHERE account_id = %(a)s AND idempotency_key = %(k)s", {"a": account_id, "k": key})
        if journaled:
            return {"status": "pending", "account_id": account_id, "idempotency_key": key,
                    "command_type": journaled[0]["command_type"],
                    "submitted_at": journaled[0]["submitted_at"]}
        return None

    # -- audit -------------------------------------------------------------------------------

    async def activities(self, account_id: str, as_of: dt.datetime | None = None
                         ) -> list[dict]:
        """The account's ledger entries up to `as_of` (default: everything), oldest first,
        each with the balance of its ledger account and asset after it."""
        rows = await self._fetch(
            self.shard_of_account(account_id), _ACTIVITIES_SQL,
            {"account_id": account_id, "prefix": f"user:{account_id}:",
             "as_of": as_of or dt.datetime.max.replace(tzinfo=dt.UTC)})
        for row in rows:
            owner = la.parse_user(row["ledger_account"])
            row["bucket"] = owner[1] if owner else None
        return rows

    async def history(self, account_id: str, as_of: dt.datetime | None = None) -> dict:
        """The account's full history as of a time, from its shard: entries with the balance
        after each, every audit event, and each order's state as of then."""
        shard = self.shard_of_account(account_id)
        cutoff = as_of or dt.datetime.max.replace(tzinfo=dt.UTC)
        events = await self._fetch(
            shard, _EVENTS_SQL + " WHERE account_id = %s AND occurred_at <= %s "
            "ORDER BY occurred_at, event_id", (account_id, cutoff))
        orders: dict[str, dict] = {}
        for event in events:
            if event["event_type"] == "order_event":
                current = orders.get(event["order_id"])
                if current is None or event["seq"] > current["seq"]:
                    orders[event["order_id"]] = event
        return {"account_id": account_id, "as_of": as_of,
                "entries": await self.activities(account_id, as_of), "events": events,
                "orders": [{"order_id": order_id, "state": event["state"], "seq": event["seq"],
                            "occurred_at": event["occurred_at"]}
                           for order_id, event in sorted(orders.items())]}


def _position(row: dict, by_bucket: dict[tuple[str, str], Decimal]) -> dict:
    quantity, cost_basis = row["quantity"], row["cost_basis"]
    average = cost_basis / quantity if quantity > 0 else ZERO  # rounded where it is shown
    return {
        "symbol": row["symbol"],
        "quantity": quantity,
        "average_cost": average,
        "cost_basis": cost_basis,
        "quantity_settled": by_bucket.get((la.SHARES, row["symbol"]), ZERO),
        "quantity_unsettled": by_bucket.get((la.SHARES_UNSETTLED, row["symbol"]), ZERO),
        "quantity_held": by_bucket.get((la.SHARES_HELD, row["symbol"]), ZERO),
    }
