"""Reads of the shards for the FIX gateway: which execution reports the account topology
booked, and which orders the shards still hold open.

How a report lands in a shard (state.domain.account): every transition it causes is an
`order_events` row whose `cause_id` is the report's ExecID (an alert it raises too: its
`cause_id` column carries the ExecID), and money it moves is a `ledger_transactions` row whose
`cause_id` is `exec:<market maker>:<exec id>` (txn id `txn_id_for(cause, kind)`, kinds `fill`
and `release`). A report that changes nothing (an acknowledgement, a status answer that
matches, a cancel of an order already final) leaves no row: the caller decides with the
order's state (`ShardOrder`) whether there is anything left to book.

Synchronous psycopg, one short connection per shard and call: the gateway reads every few
seconds from a thread of its own.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from state.exceptions import ShardUnavailable
from state.ids import txn_id_for
from state.messages import TERMINAL_ORDER_STATES, OrderState
from state.router import ShardRouter
from state.shard_store import connect

# An alert that says a report was seen and NOT booked (hydrate's forgotten-order rule).
NOT_BOOKED_ALERT_CODES = frozenset({"execution_for_forgotten_order"})
OPEN_ORDER_STATES = tuple(sorted(s.value for s in OrderState if s not in TERMINAL_ORDER_STATES))
EXEC_TXN_KINDS = ("fill", "release", "hold")  # a replace confirmed may hold more


@dataclass(frozen=True, slots=True)
class ExecutionRef:
    """One report to look up: its account (its shard), order, ExecID and market maker."""

    account_id: str
    order_id: str
    exec_id: str
    market_maker: str
    is_fill: bool = False


@dataclass(frozen=True, slots=True)
class ShardOrder:
    """An order as its shard records it (the latest landed state)."""

    order_id: str
    account_id: str
    state: OrderState
    symbol: str
    side: str
    quantity: Decimal
    filled_quantity: Decimal
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def is_open(self) -> bool:
        return self.state not in TERMINAL_ORDER_STATES


def exec_cause_id(market_maker: str, exec_id: str) -> str:
    """The ledger cause of a report (state.domain.account._exec_cause)."""
    return f"exec:{market_maker}:{exec_id}"


def _booked(ref: ExecutionRef, with_event: set[str], with_txn: set[str]) -> bool:
    """A report is booked when its order event landed, and a fill when its ledger transaction
    landed too. The sink lands the two topics apart, so a broker reset can keep a step's
    transaction (a fill, a release) and lose its event; forwarded again, the report completes
    what is missing (the account topology re-books a fill its shard lacks, moves an order its
    events left open, and completes an order its fills have filled). Reports that move no
    order leave no event: `gateways.fix.durable.nothing_left_to_book` settles those."""
    if ref.exec_id not in with_event:
        return False
    if not ref.is_fill:
        return True
    return txn_id_for(exec_cause_id(ref.market_maker, ref.exec_id), "fill") in with_txn


def exec_txn_ids(market_maker: str, exec_id: str) -> list[str]:
    cause = exec_cause_id(market_maker, exec_id)
    return [txn_id_for(cause, kind) for kind in EXEC_TXN_KINDS]


class BookingReader:
    """Per-shard reads; a shard that does not answer raises `ShardUnavailable` for its own
    accounts only (the caller skips them and asks again later)."""

    def __init__(self, shard_dsns: Sequence[str], partitions_per_shard: int) -> None:
        self.shard_dsns = tuple(shard_dsns)
        self.router = ShardRouter(len(self.shard_dsns), partitions_per_shard)

    def shard_of_account(self, account_id: str) -> int:
        return self.router.shard_of_account(account_id)

    def _connect(self, shard: int) -> psycopg.Connection:
        try:
            return connect(self.shard_dsns[shard], autocommit=True)
        except psycopg.OperationalError as error:
            raise ShardUnavailable(f"shard {shard} unavailable: {error}") from error

    def by_shard(self, refs: Iterable[ExecutionRef]) -> dict[int, list[ExecutionRef]]:
        grouped: dict[int, list[ExecutionRef]] = defaultdict(list)
        for ref in refs:
            grouped[self.shard_of_account(ref.account_id)].append(ref)
        return dict(grouped)

    def booked(self, shard: int, refs: Sequence[ExecutionRef]) -> set[str]:
        """The ExecIDs among `refs` (all of this shard) that left a row in the shard."""
        if not refs:
            return set()
        order_ids = sorted({r.order_id for r in refs})
        exec_ids = sorted({r.exec_id for r in refs})
        txn_of: dict[str, str] = {}
        for ref in refs:
            for txn_id in exec_txn_ids(ref.market_maker, ref.exec_id):
                txn_of[txn_id] = ref.exec_id
        try:
            with self._connect(shard) as conn:
                events = conn.execute(
                    "SELECT DISTINCT cause_id FROM order_events"
                    " WHERE order_id = ANY(%s) AND cause_id = ANY(%s)"
                    " AND NOT (event_type = 'alert' AND reason = ANY(%s))",
                    (order_ids, exec_ids, sorted(NOT_BOOKED_ALERT_CODES))).fetchall()
                txns = conn.execute(
                    "SELECT txn_id FROM ledger_transactions WHERE txn_id = ANY(%s)",
                    (sorted(txn_of),)).fetchall()
        except psycopg.OperationalError as error:
            raise ShardUnavailable(f"shard {shard} unavailable: {error}") from error
        with_event = {row[0] for row in events}
        with_txn = {row[0] for row in txns}
        return {ref.exec_id for ref in refs if _booked(ref, with_event, with_txn)}

    def orders(self, shard: int, order_ids: Sequence[str]) -> dict[str, ShardOrder]:
        """The shard's record of these orders (those it has)."""
        if not order_ids:
            return {}
        return {o.order_id: o for o in self._orders(
            shard, "WHERE order_id = ANY(%s)", (sorted(set(order_ids)),))}

    def open_orders(self, shard: int) -> list[ShardOrder]:
        """Every order the shard holds open."""
        return self._orders(shard, "WHERE state = ANY(%s)", (list(OPEN_ORDER_STATES),))

    def _orders(self, shard: int, where: str, params: tuple[object, ...]) -> list[ShardOrder]:
        try:
            with self._connect(shard) as conn:
                rows = conn.execute(
                    "SELECT order_id, account_id, state, symbol, side, quantity,"
                    " filled_quantity, created_at, updated_at FROM orders " + where,
                    params).fetchall()
        except psycopg.OperationalError as error:
            raise ShardUnavailable(f"shard {shard} unavailable: {error}") from error
        return [ShardOrder(order_id=r[0], account_id=r[1], state=OrderState(r[2]), symbol=r[3],
                           side=r[4], quantity=r[5], filled_quantity=r[6], created_at=r[7],
                           updated_at=r[8]) for r in rows]
