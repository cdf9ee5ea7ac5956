"""Pure parts of the shard store: average-cost positions and the rows COPYed into the ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from state import ledger_accounts as la
from state.messages import LedgerEntry, LedgerTransaction
from state.shard_store import (
    ENTRY_COPY_COLUMNS,
    ENTRY_COPY_TYPES,
    TRANSACTION_COPY_COLUMNS,
    TRANSACTION_COPY_TYPES,
    PositionMove,
    Source,
    apply_move,
    entry_copy_rows,
    position_moves,
    transaction_copy_rows,
)

T0 = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)


def _txn(account: str, *entries: tuple[str, str, str]) -> LedgerTransaction:
    return LedgerTransaction(txn_id="t1", account_id=account, kind="fill", cause_id="x1",
                             occurred_at=T0,
                             entries=tuple(LedgerEntry(n, a, Decimal(v)) for n, a, v in entries))


def test_a_buy_with_a_hold_release_moves_the_position_by_what_was_paid() -> None:
    posting = _txn("a", (la.user("a", la.CASH_HELD), "USD", "-1000"),
                   (la.user("a", la.CASH), "USD", "50"), (la.clearing("mm"), "USD", "950"),
                   (la.clearing("mm"), "AAPL", "-5"),
                   (la.user("a", la.SHARES_UNSETTLED), "AAPL", "5"))
    assert position_moves(posting) == [PositionMove("a", "AAPL", Decimal(5), Decimal(-950))]


def test_moves_between_share_buckets_and_cash_only_moves_change_nothing() -> None:
    settle = _txn("a", (la.user("a", la.SHARES_UNSETTLED), "AAPL", "-5"),
                  (la.user("a", la.SHARES), "AAPL", "5"))
    deposit = _txn("a", (la.BANK_ACH, "USD", "-5"), (la.user("a", la.CASH), "USD", "5"))
    assert position_moves(settle) == [] and position_moves(deposit) == []


def test_average_cost() -> None:
    quantity, basis = apply_move(Decimal(0), Decimal(0),
                                 PositionMove("a", "X", Decimal(3), Decimal("-300")))
    quantity, basis = apply_move(quantity, basis,
                                 PositionMove("a", "X", Decimal(1), Decimal("-140")))
    assert (quantity, basis) == (4, Decimal(440))
    quantity, basis = apply_move(quantity, basis,
                                 PositionMove("a", "X", Decimal(-1), Decimal("150")))
    assert (quantity, basis) == (3, Decimal("330.000000"))  # 110 a share, as before
    assert apply_move(quantity, basis, PositionMove("a", "X", Decimal(-3), Decimal(1))) == (0, 0)


def test_copy_rows_carry_every_column_in_order_with_a_type_each() -> None:
    posting = LedgerTransaction(
        txn_id="t\\1", account_id="a\tb", kind="k\nx", cause_id="c", occurred_at=T0,
        entries=(LedgerEntry("bank:ach", "USD", Decimal("-1E+3")),
                 LedgerEntry("user:a\tb:cash", "USD", Decimal("1000"))))
    assert len(TRANSACTION_COPY_COLUMNS) == len(TRANSACTION_COPY_TYPES)
    assert len(ENTRY_COPY_COLUMNS) == len(ENTRY_COPY_TYPES)
    assert list(transaction_copy_rows([posting], {"t\\1": Source("p", 2, 7)})) == [
        ("t\\1", "a\tb", "k\nx", "c", None, T0, "p", 2, 7)]
    assert list(transaction_copy_rows([posting], {}))[0][-3:] == (None, None, None)
    assert list(entry_copy_rows([posting])) == [
        ("t\\1", 0, "bank:ach", "USD", Decimal("-1E+3"), "a\tb", T0),
        ("t\\1", 1, "user:a\tb:cash", "USD", Decimal("1000"), "a\tb", T0)]
