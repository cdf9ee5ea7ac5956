"""Postings and events as the account topology writes them, for the shard tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from state import ledger_accounts as la
from state.ids import order_id_for, txn_id_for
from state.messages import (
    CommandAccepted,
    CommandRejected,
    LedgerEntry,
    LedgerTransaction,
    OrderEvent,
    OrderState,
    OrderType,
    Side,
    TimeInForce,
)

T0 = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
MM = "mm1"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def deposit(account_id: str, amount: str, key: str, when: dt.datetime = T0
            ) -> LedgerTransaction:
    value = Decimal(amount)
    cause = f"{account_id}:{key}"
    return LedgerTransaction(
        txn_id=txn_id_for(cause, "deposit"), account_id=account_id, kind="deposit",
        cause_id=cause, occurred_at=when,
        entries=(LedgerEntry(la.BANK_ACH, la.USD, -value),
                 LedgerEntry(la.user(account_id, la.CASH), la.USD, value)))


def fill(account_id: str, order_id: str, exec_id: str, side: str, symbol: str, quantity: str,
         price: str, when: dt.datetime = T0) -> LedgerTransaction:
    """A fill booked against the market maker's clearing account (no holds involved)."""
    qty, cash = Decimal(quantity), (Decimal(quantity) * Decimal(price)).quantize(Decimal("0.01"))
    sign = 1 if side == "buy" else -1
    bucket = la.SHARES_UNSETTLED if side == "buy" else la.SHARES
    return LedgerTransaction(
        txn_id=txn_id_for(exec_id, "fill"), account_id=account_id, kind="fill", cause_id=exec_id,
        occurred_at=when, order_id=order_id,
        entries=(LedgerEntry(la.user(account_id, la.CASH), la.USD, -sign * cash),
                 LedgerEntry(la.clearing(MM), la.USD, sign * cash),
                 LedgerEntry(la.clearing(MM), symbol, -sign * qty),
                 LedgerEntry(la.user(account_id, bucket), symbol, sign * qty)))


def order_event(account_id: str, key: str, seq: int, state: OrderState, *,
                symbol: str = "AAPL", quantity: str = "10", filled: str = "0",
                when: dt.datetime = T0, reason: str | None = None) -> OrderEvent:
    order_id = order_id_for(account_id, key)
    return OrderEvent(
        event_id=f"{order_id}:{seq}", account_id=account_id, order_id=order_id, seq=seq,
        state=state, symbol=symbol, side=Side.BUY, order_type=OrderType.LIMIT,
        quantity=Decimal(quantity), time_in_force=TimeInForce.DAY,
        filled_quantity=Decimal(filled), occurred_at=when, cause_id=f"{account_id}:{key}",
        idempotency_key=key, limit_price=Decimal("200"), reason=reason)


def accepted(account_id: str, key: str, txn: LedgerTransaction,
             when: dt.datetime = T0) -> CommandAccepted:
    return CommandAccepted(event_id=f"acc:{account_id}:{key}", account_id=account_id,
                           idempotency_key=key, command_type="deposit", occurred_at=when,
                           amount=-txn.entries[0].amount, txn_id=txn.txn_id)


def rejected(account_id: str, key: str, reason: str, when: dt.datetime = T0
             ) -> CommandRejected:
    return CommandRejected(event_id=f"rej:{account_id}:{key}", account_id=account_id,
                           idempotency_key=key, command_type="withdraw", reason=reason,
                           occurred_at=when, detail="not enough cash")
