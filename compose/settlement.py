"""T+1 settlement: `brokerage settle --date D`.

Two parts:
- one `settle_trades` command per account (idempotency key `settle-YYYY-MM-DD`, so running it
  twice for a date changes nothing): the account topology moves the account's trades of the
  trade date from unsettled to settled and the clearing balances to custody and the
  settlement bank;
- the netting report: per market maker and symbol, the shares and cash that change hands for
  the trade date, folded from the `fill` ledger transactions of every shard (their
  `clearing:<market maker>` legs), read-only.

The trade date is the business day before the settlement date. Business days are Monday to
Friday: exchange holidays are not modelled (a settlement after a holiday must be run with the
right date by hand), and a settlement date on a weekend is refused. Days are UTC days, as
everywhere in the system (the trade date's fills are those with `occurred_at` in that UTC day).

Signs in the report: net shares > 0 the market maker delivers shares to us (we bought more
than we sold), < 0 we deliver; net cash > 0 we pay the market maker, < 0 it pays us.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg

from compose.exceptions import ComposeError
from compose.per_account import produce_per_account
from state import ledger_accounts as la
from state.messages import SettleTrades

SATURDAY = 5
ZERO = Decimal(0)
_CLEARING_PREFIX = la.clearing("x")[: -len("x")]  # "clearing:"
_FILL_LEGS_SQL = """
SELECT e.txn_id, e.ledger_account, e.asset, e.amount
  FROM ledger_transactions t
  JOIN ledger_entries e ON e.txn_id = t.txn_id
 WHERE t.kind = 'fill'
   AND t.occurred_at >= %(start)s AND t.occurred_at < %(end)s
   AND e.ledger_account LIKE %(clearing)s
 ORDER BY e.txn_id, e.leg
"""


# ---- business days -------------------------------------------------------------------------


def is_business_day(day: dt.date) -> bool:
    return day.weekday() < SATURDAY


def trade_date_for(settle_date: dt.date) -> dt.date:
    """The business day before `settle_date` (T+1: Monday settles Friday's trades)."""
    if not is_business_day(settle_date):
        raise ComposeError(f"settlement date {settle_date} is a {settle_date:%A}: "
                           "settlement happens on business days only")
    day = settle_date - dt.timedelta(days=1)
    while not is_business_day(day):
        day -= dt.timedelta(days=1)
    return day


# ---- the netting fold ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClearingLeg:
    """One `clearing:<market maker>` leg of a fill transaction."""

    txn_id: str
    ledger_account: str
    asset: str
    amount: Decimal


@dataclass
class Netting:
    """What one market maker and we exchange for one symbol on one trade date."""

    market_maker: str
    symbol: str
    bought: Decimal = ZERO  # shares the market maker delivers (our buys)
    sold: Decimal = ZERO  # shares we deliver (our sells)
    paid: Decimal = ZERO  # USD we owe (for our buys)
    received: Decimal = ZERO  # USD owed to us (for our sells)
    fills: int = 0

    @property
    def net_shares(self) -> Decimal:
        return self.bought - self.sold

    @property
    def net_cash(self) -> Decimal:
        return self.paid - self.received


def _market_maker(ledger_account: str) -> str:
    assert ledger_account.startswith(_CLEARING_PREFIX), (
        f"{ledger_account} is not a clearing account")
    return ledger_account[len(_CLEARING_PREFIX):]


def _fold_transaction(txn_id: str, legs: list[ClearingLeg],
                      nettings: dict[tuple[str, str], Netting]) -> None:
    """A fill moves one symbol and its cash through one clearing account."""
    by_account: dict[str, list[ClearingLeg]] = {}
    for leg in legs:
        by_account.setdefault(leg.ledger_account, []).append(leg)
    for account, account_legs in by_account.items():
        symbols = {leg.asset for leg in account_legs if leg.asset != la.USD}
        if len(symbols) != 1:
            raise ComposeError(f"fill transaction {txn_id}: {account} moves "
                               f"{sorted(symbols) or 'no'} symbols, expected one")
        [symbol] = symbols
        key = (_market_maker(account), symbol)
        netting = nettings.get(key) or nettings.setdefault(key, Netting(*key))
        netting.fills += 1
        for leg in account_legs:
            if leg.asset == la.USD:
                if leg.amount > 0:
                    netting.paid += leg.amount
                else:
                    netting.received -= leg.amount
            elif leg.amount < 0:  # the clearing account gives shares: we bought
                netting.bought -= leg.amount
            else:
                netting.sold += leg.amount


def fold_netting(legs: Iterable[ClearingLeg],
                 nettings: dict[tuple[str, str], Netting] | None = None
                 ) -> dict[tuple[str, str], Netting]:
    """Fold clearing legs (grouped by transaction, as the query orders them) into one
    netting per (market maker, symbol); pass `nettings` to go on folding another shard."""
    nettings = {} if nettings is None else nettings
    for txn_id, group in itertools.groupby(legs, key=lambda leg: leg.txn_id):
        _fold_transaction(txn_id, list(group), nettings)
    return nettings


@dataclass(frozen=True)
class NettingReport:
    settle_date: dt.date
    trade_date: dt.date
    accounts: int  # accounts sent a settle_trades command
    rows: tuple[Netting, ...] = field(default_factory=tuple)  # by market maker, then symbol

    def cash_by_market_maker(self) -> dict[str, Decimal]:
        """Net cash per market maker across symbols (> 0: we pay it)."""
        totals: dict[str, Decimal] = {}
        for row in self.rows:
            totals[row.market_maker] = totals.get(row.market_maker, ZERO) + row.net_cash
        return totals

    def lines(self) -> list[str]:
        head = (f"netting for trade date {self.trade_date} (settles {self.settle_date}); "
                "net shares > 0: delivered to us; net cash > 0: we pay")
        table = [f"{'market maker':<14}{'symbol':<8}{'fills':>7}{'bought':>14}{'sold':>14}"
                 f"{'net shares':>14}{'net cash USD':>16}"]
        table += [f"{r.market_maker:<14}{r.symbol:<8}{r.fills:>7}{r.bought:>14}{r.sold:>14}"
                  f"{r.net_shares:>14}{r.net_cash:>16}" for r in self.rows]
        totals = [f"{mm:<14}{'(all)':<8}{'':>49}{cash:>16}"
                  for mm, cash in sorted(self.cash_by_market_maker().items())]
        empty = [] if self.rows else ["no fills on the trade date"]
        return [head, *table, *totals, *empty]


def netting_report(shard_dsns: Sequence[str], settle_date: dt.date,
                   accounts: int = 0) -> NettingReport:
    """The netting of the trade date, read from every shard (read-only transactions). Fills
    booked on the days before it that are not business days (a weekend) belong to it too,
    as the account topology settles every trade up to the trade date."""
    trade_date = trade_date_for(settle_date)
    start = dt.datetime.combine(trade_date, dt.time(), dt.UTC)
    while not is_business_day((start - dt.timedelta(days=1)).date()):
        start -= dt.timedelta(days=1)
    end = dt.datetime.combine(trade_date + dt.timedelta(days=1), dt.time(), dt.UTC)
    params = {"start": start, "end": end,
              "clearing": _CLEARING_PREFIX + "%"}
    nettings: dict[tuple[str, str], Netting] = {}
    for shard, dsn in enumerate(shard_dsns):
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                conn.read_only = True
                with conn.cursor(name="settlement_fill_legs") as cursor:
                    cursor.execute(_FILL_LEGS_SQL, params)
                    fold_netting((ClearingLeg(*row) for row in cursor), nettings)
        except psycopg.Error as error:
            raise ComposeError(f"shard {shard}: cannot read fills: {error}") from error
    return NettingReport(settle_date, trade_date, accounts,
                         tuple(nettings[key] for key in sorted(nettings)))


# ---- the command ---------------------------------------------------------------------------


def settle(bootstrap: str, prefix: str, shard_dsns: Sequence[str], settle_date: dt.date,
           report: Callable[[str], None]) -> NettingReport:
    """Send every account its `settle_trades` command, then print and return the netting."""
    trade_date = trade_date_for(settle_date)

    def settle_command(account_id: str, now: dt.datetime) -> SettleTrades:
        return SettleTrades(account_id=account_id, idempotency_key=f"settle-{settle_date}",
                            settle_date=settle_date, submitted_at=now)

    accounts = produce_per_account(bootstrap, prefix, shard_dsns, settle_command, report)
    report(f"trades of {trade_date} settling on {settle_date} for {accounts} accounts")
    netting = netting_report(shard_dsns, settle_date, accounts)
    for line in netting.lines():
        report(line)
    return netting
