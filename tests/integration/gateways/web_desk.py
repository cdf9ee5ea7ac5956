"""A stand-in for the account topology AND the shard sink, for the web page's end-to-end test
(no tests here).

It reuses the gateway tests' `Responder` (which reads orders.commands and answers on
orders.events) and its `answer` rule, and adds what a page needs to look alive: deposits and
holds booked in the shard's ledger, market buys filled at the reference price, cancels answered
with a `cancelled` event. Everything is written to the account's shard (as the sink would)
BEFORE the event is produced, so a read the page makes after seeing the event finds it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

from state import ledger_accounts as la
from state import topics as t
from state.messages import (
    TERMINAL_ORDER_STATES,
    AccountEvent,
    CancelOrder,
    CommandAccepted,
    CommandRejected,
    Deposit,
    LedgerEntry,
    LedgerTransaction,
    OrderEvent,
    OrderState,
    OrderType,
    PlaceOrder,
    ReplaceOrder,
    Side,
)
from state.router import ShardRouter
from state.shard_store import connect, write_batch
from tests.integration.gateways.test_http_support import Responder, _batch, answer

STREET = la.clearing("street")


@dataclass
class Booking:
    """What one command produced: events for orders.events, postings for the ledger."""

    events: list[AccountEvent] = field(default_factory=list)
    postings: list[LedgerTransaction] = field(default_factory=list)


@dataclass
class _Open:
    last: OrderEvent
    held_usd: Decimal


def _txn(txn_id: str, account_id: str, kind: str, cause_id: str, now: dt.datetime,
         entries: list[tuple[str, str, Decimal]], order_id: str | None = None
         ) -> LedgerTransaction:
    return LedgerTransaction(
        txn_id=txn_id, account_id=account_id, kind=kind, cause_id=cause_id, occurred_at=now,
        entries=tuple(LedgerEntry(ledger_account=a, asset=asset, amount=amount)
                      for a, asset, amount in entries), order_id=order_id)


class Desk:
    """The booking rules, pure apart from its own memory of open orders and positions."""

    def __init__(self) -> None:
        self.open_orders: dict[str, _Open] = {}
        self.shares: dict[tuple[str, str], Decimal] = defaultdict(Decimal)

    def book(self, command: Any, now: dt.datetime) -> Booking:
        if isinstance(command, Deposit):
            return self._deposit(command, now)
        if isinstance(command, PlaceOrder):
            return self._place(command, now)
        if isinstance(command, CancelOrder):
            return self._cancel(command, now)
        if isinstance(command, ReplaceOrder):
            return self._replace(command, now)
        return Booking()

    def _deposit(self, command: Deposit, now: dt.datetime) -> Booking:
        first = answer(command, now)  # the shared rule: deposits over 5,000 are refused
        if isinstance(first, CommandRejected):
            return Booking([first])
        assert isinstance(first, CommandAccepted), first
        account, key = command.account_id, command.idempotency_key
        txn_id = f"dep:{account}:{key}"
        posting = _txn(txn_id, account, "deposit", key, now, [
            (la.BANK_ACH, la.USD, -command.amount),
            (la.user(account, la.CASH), la.USD, command.amount)])
        return Booking([msgspec.structs.replace(first, txn_id=txn_id)], [posting])

    def _place(self, command: PlaceOrder, now: dt.datetime) -> Booking:
        first = answer(command, now)  # funds_held, or rejected past 1,000 shares
        assert isinstance(first, OrderEvent), first
        account = command.account_id
        if first.state == OrderState.REJECTED:
            price = command.limit_price or command.reference_price
            needs = "" if price is None else f"needs {command.quantity * price:.2f}, "
            return Booking([msgspec.structs.replace(
                first, detail=f"{needs}the desk takes at most 1000 shares")])
        if command.side == Side.SELL:
            owned = self.shares[(account, command.symbol)]
            if command.quantity > owned:
                return Booking([msgspec.structs.replace(
                    first, state=OrderState.REJECTED, reason="insufficient_shares",
                    detail=f"{owned} {command.symbol} available")])
            return self._open(first, Decimal(0))
        price = (command.limit_price if command.order_type != OrderType.STOP
                 else command.stop_price) or command.reference_price
        assert price is not None, "the gateway sends a reference price"
        held = command.quantity * price
        held_event = msgspec.structs.replace(first, held_amount=held)
        hold = _txn(f"hold:{first.order_id}", account, "hold", first.event_id, now, [
            (la.user(account, la.CASH), la.USD, -held),
            (la.user(account, la.CASH_HELD), la.USD, held)], first.order_id)
        booking = self._open(held_event, held)
        booking.postings.insert(0, hold)
        if command.order_type == OrderType.MARKET:
            booking.events.append(self._fill(held_event, price, now, booking))
        return booking

    def _open(self, event: OrderEvent, held: Decimal) -> Booking:
        self.open_orders[event.order_id] = _Open(event, held)
        return Booking([event])

    def _fill(self, last: OrderEvent, price: Decimal, now: dt.datetime,
              booking: Booking) -> OrderEvent:
        account, symbol, quantity = last.account_id, last.symbol, last.quantity
        held = self.open_orders.pop(last.order_id).held_usd
        cost = quantity * price
        booking.postings.append(_txn(f"fill:{last.order_id}:1", account, "fill", last.event_id,
                                     now, [
            (la.user(account, la.CASH_HELD), la.USD, -held),
            (la.user(account, la.CASH), la.USD, held - cost),
            (STREET, la.USD, cost),
            (la.user(account, la.SHARES_UNSETTLED), symbol, quantity),
            (STREET, symbol, -quantity)], last.order_id))
        self.shares[(account, symbol)] += quantity
        return msgspec.structs.replace(
            last, event_id=f"{last.order_id}:{last.seq + 1}", seq=last.seq + 1,
            state=OrderState.FILLED, previous_state=last.state, filled_quantity=quantity,
            average_fill_price=price, last_fill_quantity=quantity, last_fill_price=price,
            occurred_at=now, cause_id=f"exec:{last.order_id}:1")

    def _replace(self, command: ReplaceOrder, now: dt.datetime) -> Booking:
        """The new terms take effect at once; the hold stays as it was (a stand-in: the
        topology would hold for the new terms)."""
        account, key = command.account_id, command.idempotency_key
        opened = self.open_orders.get(command.order_id)
        if opened is None:
            return Booking([CommandRejected(
                event_id=f"rej:{key}", account_id=account, idempotency_key=key,
                command_type="replace_order", reason="order_not_open", occurred_at=now,
                order_id=command.order_id)])
        last = opened.last
        opened.last = msgspec.structs.replace(
            last, event_id=f"{last.order_id}:{last.seq + 1}", seq=last.seq + 1,
            previous_state=last.state, occurred_at=now, cause_id=key,
            quantity=command.quantity or last.quantity,
            limit_price=command.limit_price or last.limit_price,
            stop_price=command.stop_price or last.stop_price)
        return Booking([opened.last])

    def _cancel(self, command: CancelOrder, now: dt.datetime) -> Booking:
        account, key = command.account_id, command.idempotency_key
        opened = self.open_orders.pop(command.order_id, None)
        if opened is None or opened.last.state in TERMINAL_ORDER_STATES:
            return Booking([CommandRejected(
                event_id=f"rej:{key}", account_id=account, idempotency_key=key,
                command_type="cancel_order", reason="order_not_open", occurred_at=now,
                order_id=command.order_id)])
        last = opened.last
        # The cancel's answer carries the cancel's key: that is what the gateway waits for.
        cancelled = msgspec.structs.replace(
            last, event_id=f"{last.order_id}:{last.seq + 1}", seq=last.seq + 1,
            state=OrderState.CANCELLED, previous_state=last.state, occurred_at=now,
            cause_id=key, idempotency_key=key, held_amount=Decimal(0))
        postings = [] if not opened.held_usd else [_txn(
            f"release:{last.order_id}", account, "release", cancelled.event_id, now, [
                (la.user(account, la.CASH_HELD), la.USD, -opened.held_usd),
                (la.user(account, la.CASH), la.USD, opened.held_usd)], last.order_id)]
        return Booking([cancelled], postings)


class DeskResponder(Responder):
    """The shared Responder's consumer and producer, answering with the `Desk` and landing
    each booking in the account's shard before its events are produced."""

    def __init__(self, bootstrap_servers: str, prefix: str, partitions_per_shard: int,
                 shard_dsns: tuple[str, ...]) -> None:
        # Set before the base class starts the thread that reads them.
        self.desk = Desk()
        self.errors: list[str] = []
        # Seconds each answer waits: longer than the gateway's reply wait, its answer is 202.
        self.answer_delay_s = 0.0
        # False: the bookings land in the shard but no event reaches orders.events (the
        # stream tells nothing; a client learns the answer by reading the order).
        self.publish = True
        self._router = ShardRouter(len(shard_dsns), partitions_per_shard)
        self._connections: list[psycopg.Connection] = [connect(dsn, autocommit=True)
                                                       for dsn in shard_dsns]
        super().__init__(bootstrap_servers, prefix, len(shard_dsns) * partitions_per_shard)

    def _run(self) -> None:
        while self._running:
            for record in _batch(self._consumer):
                if record.error():
                    continue
                try:
                    self._handle(t.decode(t.Topic.ORDERS_COMMANDS, record.value()))
                except Exception as error:  # noqa: BLE001 - surfaced by the test
                    self.errors.append(repr(error))

    def _handle(self, command: Any) -> None:
        self.commands.append(command)
        if self.answer_delay_s:
            time.sleep(self.answer_delay_s)
        booking = self.desk.book(command, dt.datetime.now(dt.UTC))
        shard = self._router.shard_of_account(command.account_id)
        write_batch(self._connections[shard], booking.postings, booking.events)
        for event in booking.events if self.publish else ():
            self._producer.produce(self._prefix + t.Topic.ORDERS_EVENTS,
                                   key=command.account_id.encode(), value=t.encode(event))
        self._producer.flush(5)

    def close(self) -> None:
        super().close()
        for connection in self._connections:
            connection.close()
