"""Deposits (provisional until settled), withdrawals, ACH returns, and the ledger helpers."""

from __future__ import annotations

import datetime as dt

import pytest

from state import ledger_accounts as la
from state.domain import ledger
from state.messages import Alert, CommandAccepted, CommandRejected, LedgerEntry

from .builders import ACCOUNT, T0, D, Driver, ach_return, deposit, of_type, txns, withdraw

LATER = T0 + dt.timedelta(days=3)


def reasons(out: list) -> list[str]:
    return [r.reason for r in of_type(out, CommandRejected)]


def test_provisional_deposit_buys_but_is_not_withdrawable_until_settled() -> None:
    d = Driver()
    d.send(deposit("dep", "500.00"))
    assert reasons(d.send(withdraw("w1", "0.01", T0 + dt.timedelta(days=2)))) == [
        "insufficient_withdrawable_cash"]
    out = d.send(withdraw("w2", "200.00", LATER))
    [accepted] = of_type(out, CommandAccepted)
    [txn] = txns(out)
    assert accepted.txn_id == txn.txn_id and accepted.amount == D("200.00")
    assert ledger.balances([txn]) == {(la.user(ACCOUNT, la.CASH), "USD"): D("-200.00"),
                                      (la.BANK_WITHDRAWALS, "USD"): D("200.00")}
    assert reasons(d.send(withdraw("w3", "300.01", LATER))) == ["insufficient_withdrawable_cash"]


@pytest.mark.parametrize("amount", ["0", "-5.00", "1.001"])
def test_invalid_amounts(amount: str) -> None:
    d = Driver()
    assert reasons(d.send(deposit("dep", amount))) == ["invalid_amount"]
    assert reasons(d.send(withdraw("w", amount))) == ["invalid_amount"]
    assert d.cash() == 0


def test_ach_return_reverses_the_deposit_and_restricts_a_negative_account() -> None:
    d = Driver()
    d.send(deposit("d1", "100.00"))
    d.send(deposit("d2", "50.00"))
    d.send(withdraw("w", "120.00", LATER))
    out = d.send(ach_return("r1", "d1", LATER))
    assert of_type(out, CommandAccepted)[0].amount == D("100.00")
    assert d.cash() == D("-70.00")
    assert [(a.code, a.severity) for a in of_type(out, Alert)] == [("account_restricted",
                                                                   "warning")]
    assert reasons(d.send(withdraw("w2", "1.00", LATER))) == ["account_restricted"]
    assert reasons(d.send(ach_return("r2", "d1", LATER))) == ["deposit_already_returned"]
    assert reasons(d.send(ach_return("r3", "nope", LATER))) == ["unknown_deposit"]


def test_a_returned_deposit_no_longer_counts_as_provisional() -> None:
    d = Driver()
    d.send(deposit("d1", "100.00"))
    d.send(deposit("d2", "50.00", LATER), LATER)
    d.send(ach_return("r1", "d2", LATER))
    assert of_type(d.send(withdraw("w", "100.00", LATER)), CommandAccepted)


def test_same_key_same_body_books_once_and_another_body_is_refused() -> None:
    d = Driver()
    d.send(deposit("dep", "100.00"))
    assert d.send(deposit("dep", "100.0", T0 + dt.timedelta(seconds=3))) == []
    [rejection] = of_type(d.send(deposit("dep", "200.00")), CommandRejected)
    assert rejection.reason == "duplicate_idempotency_key_different_body"
    assert of_type(d.send(withdraw("dep", "1.00")), CommandRejected)
    assert d.cash() == D("100.00")


def test_balances_sum_entries_per_account_and_asset() -> None:
    a = ledger.transaction(account_id=ACCOUNT, kind="k", cause_id="c1", occurred_at=T0,
                           legs=[("x", "USD", D("5")), ("y", "USD", D("-5")),
                                 ("x", "AAPL", D("1")), ("z", "AAPL", D("-1"))])
    b = ledger.transaction(account_id=ACCOUNT, kind="k", cause_id="c2", occurred_at=T0,
                           legs=[("x", "USD", D("-2")), ("y", "USD", D("2")),
                                 ("y", "USD", D("0"))])
    assert a is not None and b is not None
    assert ledger.balances([a, b]) == {("x", "USD"): D("3"), ("y", "USD"): D("-3"),
                                       ("x", "AAPL"): D("1"), ("z", "AAPL"): D("-1")}
    assert len(b.entries) == 2  # zero and merged legs folded
    assert ledger.unbalanced_assets(a) == {}


def test_an_unbalanced_transaction_is_a_crash() -> None:
    with pytest.raises(AssertionError, match="unbalanced"):
        ledger.transaction(account_id=ACCOUNT, kind="k", cause_id="c", occurred_at=T0,
                           legs=[("x", "USD", D("1")), ("y", "USD", D("-0.99"))])
    assert ledger.transaction(account_id=ACCOUNT, kind="k", cause_id="c", occurred_at=T0,
                              legs=[("x", "USD", D("0"))]) is None
    assert LedgerEntry("x", "USD", D("1")).amount == 1


def details(out: list) -> list[str | None]:
    return [r.detail for r in of_type(out, CommandRejected)]


def test_a_refused_withdrawal_names_the_held_deposits_and_when_they_free_up() -> None:
    """Issue 14 item 7: the refusal says why cash is not withdrawable (the ACH hold), how much
    each held deposit is and when it becomes withdrawable; the reason code is unchanged."""
    d = Driver()
    d.send(deposit("d1", "7000.00"))
    out = d.send(withdraw("w1", "7000.00", T0 + dt.timedelta(hours=1)))
    assert reasons(out) == ["insufficient_withdrawable_cash"]
    assert details(out) == [
        "withdrawable 0.00 of 7000.00 cash: 7000.00 in deposits held until "
        "2026-03-05T15:00:00Z (ACH, 3 days)"]
    d.send(deposit("d2", "500.00", T0 + dt.timedelta(days=1, microseconds=5)))
    d.send(deposit("d3", "0.50", T0 + dt.timedelta(days=2)))
    out = d.send(withdraw("w2", "0.01", T0 + dt.timedelta(days=2, hours=1)))
    assert details(out) == [
        "withdrawable 0.00 of 7500.50 cash: 7500.50 in deposits held (ACH, 3 days): "
        "7000.00 until 2026-03-05T15:00:00Z, 500.00 until 2026-03-06T15:00:01Z, "
        "0.50 until 2026-03-07T15:00:00Z"]
    out = d.send(withdraw("w3", "7000.01", LATER))  # d1 is settled, d2 and d3 are not
    assert reasons(out) == ["insufficient_withdrawable_cash"]
    assert details(out) == [
        "withdrawable 7000.00 of 7500.50 cash: 500.50 in deposits held (ACH, 3 days): "
        "500.00 until 2026-03-06T15:00:01Z, 0.50 until 2026-03-07T15:00:00Z"]


def test_a_refusal_without_held_deposits_shows_the_cash() -> None:
    d = Driver()
    d.send(deposit("d1", "100.00"))
    out = d.send(withdraw("w1", "100.01", LATER))
    assert details(out) == ["withdrawable 100.00 of 100.00 cash"]
