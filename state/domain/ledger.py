"""The double-entry ledger: transactions built from legs, balances derived from entries.

A transaction is a set of entries per asset (`USD` or a symbol's shares) over ledger accounts
named in `state.ledger_accounts`; per asset the entries sum to zero (LedgerTransaction refuses
anything else). Balances are never stored on their own: they are the sum of entries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal

from state.ids import txn_id_for
from state.messages import LedgerEntry, LedgerTransaction

Leg = tuple[str, str, Decimal]  # (ledger_account, asset, signed amount)
BalanceKey = tuple[str, str]  # (ledger_account, asset)


def balances(transactions: Iterable[LedgerTransaction]) -> dict[BalanceKey, Decimal]:
    """The balance of every (ledger_account, asset) the transactions touch."""
    totals: dict[BalanceKey, Decimal] = {}
    for txn in transactions:
        apply(totals, txn)
    return totals


def apply(totals: dict[BalanceKey, Decimal], txn: LedgerTransaction) -> None:
    """Add the entries of one transaction to running totals (in place)."""
    for entry in txn.entries:
        key = (entry.ledger_account, entry.asset)
        totals[key] = totals.get(key, Decimal(0)) + entry.amount


def transaction(
    *,
    account_id: str,
    kind: str,
    cause_id: str,
    occurred_at: dt.datetime,
    legs: Iterable[Leg],
    order_id: str | None = None,
) -> LedgerTransaction | None:
    """A balanced transaction from legs: legs on the same account and asset are merged, zero
    legs dropped; None when nothing is left to book. The id derives from cause and kind, so a
    replay writes the same id. An unbalanced set of legs raises (a broken invariant)."""
    merged: dict[BalanceKey, Decimal] = {}
    for ledger_account, asset, amount in legs:
        key = (ledger_account, asset)
        merged[key] = merged.get(key, Decimal(0)) + amount
    entries = tuple(
        LedgerEntry(ledger_account=account, asset=asset, amount=amount)
        for (account, asset), amount in merged.items()
        if amount != 0
    )
    if not entries:
        return None
    try:
        return LedgerTransaction(
            txn_id=txn_id_for(cause_id, kind),
            account_id=account_id,
            kind=kind,
            cause_id=cause_id,
            occurred_at=occurred_at,
            entries=entries,
            order_id=order_id,
        )
    except ValueError as error:
        raise AssertionError(f"unbalanced {kind} for {cause_id}: {error}") from error


def unbalanced_assets(txn: LedgerTransaction) -> Mapping[str, Decimal]:
    """Assets whose entries do not sum to zero (empty for a valid transaction)."""
    totals: dict[str, Decimal] = {}
    for entry in txn.entries:
        totals[entry.asset] = totals.get(entry.asset, Decimal(0)) + entry.amount
    return {asset: total for asset, total in totals.items() if total != 0}
