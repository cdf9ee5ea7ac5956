"""Pure parts of the shard store: average-cost positions and the COPY text format."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from state import ledger_accounts as la
from state.messages import LedgerEntry, LedgerTransaction
from state.shard_store import (
    PositionMove,
    Source,
    apply_move,
    entry_copy_lines,
    position_moves,
    transaction_copy_lines,
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


def test_copy_lines_escape_what_copy_text_format_needs() -> None:
    posting = LedgerTransaction(
        txn_id="t\\1", account_id="a\tb", kind="k\nx", cause_id="c", occurred_at=T0,
        entries=(LedgerEntry("bank:ach", "USD", Decimal("-1E+3")),
                 LedgerEntry("user:a\tb:cash", "USD", Decimal("1000"))))
    assert transaction_copy_lines([posting], {"t\\1": Source("p", 2, 7)}) == (
        "t\\\\1\ta\\tb\tk\\nx\tc\t\\N\t2026-03-02T14:30:00+00:00\tp\t2\t7\n")
    lines = entry_copy_lines([posting]).splitlines()
    assert lines[0] == "t\\\\1\t0\tbank:ach\tUSD\t-1E+3\ta\\tb\t2026-03-02T14:30:00+00:00"
    assert lines[1].split("\t")[2] == "user:a\\tb:cash"
