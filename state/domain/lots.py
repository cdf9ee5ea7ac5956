"""Unsettled trades of an account, by trade date: what T+1 settlement moves.

Every fill transaction passes a symbol and its cash through one `clearing:<market maker>`
account. An account keeps, per trade date, clearing account and symbol, the sums of those
clearing legs (a lot); `settle_trades` moves the lots of due trade dates from clearing to
custody and the settlement bank, and drops them. The trade date is the UTC day of the fill's
booking (`occurred_at`), as in `compose.settlement`'s netting report.

The lots are bounded: one per (trade date, market maker, symbol) traded, and dropped when
settled; should settlement stop running, past `LOTS_MAX` the oldest trade date is folded into
the next one, so those trades settle a day later than due (never earlier).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal

import msgspec

from state import ledger_accounts as la
from state.domain.money import ZERO
from state.messages import LedgerTransaction

LOTS_MAX = 500  # a few dozen kB of state at most; settlement runs daily
_CLEARING_PREFIX = la.clearing("x")[: -len("x")]  # "clearing:"
SATURDAY = 5


class SettlementLot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                    omit_defaults=True):
    """One trade date's fills through one clearing account in one symbol."""

    trade_date: dt.date
    clearing_account: str
    symbol: str
    bought: Decimal = ZERO  # shares the account bought (the clearing account gave them)
    sold: Decimal = ZERO  # shares the account sold (the clearing account took them)
    cash: Decimal = ZERO  # the clearing account's USD from these fills: paid - received

    @property
    def key(self) -> str:
        return lot_key(self.trade_date, self.clearing_account, self.symbol)


def lot_key(trade_date: dt.date, clearing_account: str, symbol: str) -> str:
    return f"{trade_date.isoformat()}|{clearing_account}|{symbol}"


def note_fill(lots: dict[str, SettlementLot], txn: LedgerTransaction, trade_date: dt.date
              ) -> None:
    """Add a fill transaction's clearing legs to the lot of its trade date (in place)."""
    by_account: dict[str, list[tuple[str, Decimal]]] = {}
    for entry in txn.entries:
        if entry.ledger_account.startswith(_CLEARING_PREFIX):
            by_account.setdefault(entry.ledger_account, []).append((entry.asset, entry.amount))
    for clearing_account, legs in by_account.items():
        symbols = {asset for asset, _ in legs if asset != la.USD}
        assert len(symbols) == 1, (
            f"fill {txn.txn_id} moves {sorted(symbols)} through {clearing_account}")
        [symbol] = symbols
        key = lot_key(trade_date, clearing_account, symbol)
        lot = lots.get(key) or SettlementLot(trade_date=trade_date,
                                             clearing_account=clearing_account, symbol=symbol)
        bought, sold, cash = lot.bought, lot.sold, lot.cash
        for asset, amount in legs:
            if asset == la.USD:
                cash += amount
            elif amount < 0:
                bought -= amount
            else:
                sold += amount
        lots[key] = msgspec.structs.replace(lot, bought=bought, sold=sold, cash=cash)
    if len(lots) > LOTS_MAX:
        _fold_oldest_date(lots)


def _fold_oldest_date(lots: dict[str, SettlementLot]) -> None:
    """Fold the lots of the oldest trade date into the next date's (they settle later)."""
    dates = sorted({lot.trade_date for lot in lots.values()})
    if len(dates) < 2:
        return
    oldest, later = dates[0], dates[1]
    for key in [k for k, lot in lots.items() if lot.trade_date == oldest]:
        lot = lots.pop(key)
        target_key = lot_key(later, lot.clearing_account, lot.symbol)
        target = lots.get(target_key) or msgspec.structs.replace(
            lot, trade_date=later, bought=ZERO, sold=ZERO, cash=ZERO)
        lots[target_key] = msgspec.structs.replace(
            target, bought=target.bought + lot.bought, sold=target.sold + lot.sold,
            cash=target.cash + lot.cash)


def is_business_day(day: dt.date) -> bool:
    return day.weekday() < SATURDAY


def trade_date_for(settle_date: dt.date) -> dt.date:
    """The business day before `settle_date` (T+1: Monday settles Friday's trades); no
    holidays are modelled."""
    day = settle_date - dt.timedelta(days=1)
    while not is_business_day(day):
        day -= dt.timedelta(days=1)
    return day


def split_due(lots: Mapping[str, SettlementLot], last_trade_date: dt.date
              ) -> tuple[list[SettlementLot], list[SettlementLot]]:
    """(lots of trade dates up to `last_trade_date`, the others)."""
    due: list[SettlementLot] = []
    later: list[SettlementLot] = []
    for lot in lots.values():
        (due if lot.trade_date <= last_trade_date else later).append(lot)
    return due, later


def bought_by_symbol(lots: Iterable[SettlementLot]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for lot in lots:
        totals[lot.symbol] = totals.get(lot.symbol, ZERO) + lot.bought
    return totals
