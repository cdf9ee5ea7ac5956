"""Settlement: business days and the netting fold.

python -m pytest -q tests/unit/compose/test_settlement.py
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from compose.cli import build_parser
from compose.exceptions import ComposeError
from compose.settlement import (
    ClearingLeg,
    Netting,
    NettingReport,
    fold_netting,
    is_business_day,
    trade_date_for,
)

D = Decimal


@pytest.mark.parametrize(("settle", "trade"), [
    ("2026-11-30", "2026-11-27"),  # Monday settles Friday
    ("2026-12-01", "2026-11-30"),  # Tuesday settles Monday
    ("2026-12-04", "2026-12-03"),  # Friday settles Thursday
    ("2024-01-01", "2023-12-29"),  # across a year end and a weekend
    ("2027-01-04", "2027-01-01"),  # New Year's Day counts: holidays are not modelled
    ("2024-03-01", "2024-02-29"),  # leap day
])
def test_trade_date_is_the_business_day_before(settle: str, trade: str) -> None:
    assert trade_date_for(dt.date.fromisoformat(settle)) == dt.date.fromisoformat(trade)


@pytest.mark.parametrize("weekend", ["2026-11-28", "2026-11-29"])
def test_no_settlement_on_weekends(weekend: str) -> None:
    day = dt.date.fromisoformat(weekend)
    assert not is_business_day(day)
    with pytest.raises(ComposeError, match="business days only"):
        trade_date_for(day)


def buy(txn: str, mm: str, symbol: str, qty: str, cash: str) -> list[ClearingLeg]:
    """The clearing legs of a buy fill: the market maker gives shares, we owe cash."""
    return [ClearingLeg(txn, f"clearing:{mm}", "USD", D(cash)),
            ClearingLeg(txn, f"clearing:{mm}", symbol, -D(qty))]


def sell(txn: str, mm: str, symbol: str, qty: str, cash: str) -> list[ClearingLeg]:
    return [ClearingLeg(txn, f"clearing:{mm}", symbol, D(qty)),
            ClearingLeg(txn, f"clearing:{mm}", "USD", -D(cash))]


def test_fold_nets_per_market_maker_and_symbol() -> None:
    legs = [*buy("t1", "mm1", "AAPL", "10", "2100.00"),
            *sell("t2", "mm1", "AAPL", "4", "842.00"),
            *buy("t3", "mm1", "MSFT", "0.5", "200.25"),
            *sell("t4", "mm2", "AAPL", "3", "630.30"),
            *buy("t5", "mm1", "AAPL", "1", "210.00")]
    nettings = fold_netting(legs)
    assert set(nettings) == {("mm1", "AAPL"), ("mm1", "MSFT"), ("mm2", "AAPL")}
    aapl = nettings[("mm1", "AAPL")]
    assert (aapl.bought, aapl.sold, aapl.net_shares) == (D(11), D(4), D(7))
    assert (aapl.paid, aapl.received, aapl.net_cash) == (D("2310.00"), D("842.00"),
                                                         D("1468.00"))
    assert aapl.fills == 3
    mm2 = nettings[("mm2", "AAPL")]
    assert (mm2.net_shares, mm2.net_cash) == (D(-3), D("-630.30"))
    # Folding another shard's legs goes on from where the first stopped.
    fold_netting(sell("t9", "mm2", "AAPL", "1", "210.10"), nettings)
    assert (nettings[("mm2", "AAPL")].net_shares, nettings[("mm2", "AAPL")].fills) == (D(-4), 2)


def test_a_fill_moving_no_symbol_or_two_is_refused() -> None:
    cash_only = [ClearingLeg("t1", "clearing:mm1", "USD", D(5))]
    with pytest.raises(ComposeError, match="t1"):
        fold_netting(cash_only)
    two = [*buy("t2", "mm1", "AAPL", "1", "1"), ClearingLeg("t2", "clearing:mm1", "MSFT", D(1))]
    with pytest.raises(ComposeError, match="expected one"):
        fold_netting(two)


def test_report_totals_cash_per_market_maker_and_prints_a_table() -> None:
    rows = (Netting("mm1", "AAPL", bought=D(10), paid=D("2100.00"), fills=1),
            Netting("mm1", "MSFT", sold=D(2), received=D("800.00"), fills=1),
            Netting("mm2", "AAPL", sold=D(1), received=D("210.00"), fills=1))
    report = NettingReport(dt.date(2026, 11, 30), dt.date(2026, 11, 27), 3, rows)
    assert report.cash_by_market_maker() == {"mm1": D("1300.00"), "mm2": D("-210.00")}
    lines = report.lines()
    assert lines[0].startswith("netting for trade date 2026-11-27 (settles 2026-11-30)")
    assert any("MSFT" in line and "-2" in line and "-800.00" in line for line in lines)
    assert lines[-1].split() == ["mm2", "(all)", "-210.00"]
    empty = NettingReport(dt.date(2026, 11, 30), dt.date(2026, 11, 27), 0)
    assert empty.lines()[-1] == "no fills on the trade date"


def test_cli_has_settle_with_a_date() -> None:
    args = build_parser().parse_args(["settle", "--date", "2026-11-30"])
    assert args.date == dt.date(2026, 11, 30) and args.handler.__name__ == "cmd_settle"
