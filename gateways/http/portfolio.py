"""Portfolio valuation, pure: the shard's ledger figures plus the latest quotes.

Every figure is computed exactly from the ledger and the quotes, then rounded once, where it is
written out, at its scale (`state.domain.money`, banker's rounding): money (cash, cost basis,
market value, P&L, equity) to the cent, prices (mark price, average cost) to their tick,
share quantities to 6 places. A total is rounded from the exact sum, not summed from rounded
parts. Withdrawable cash and the ACH deposits still held follow the account core's rule
(`state.domain.account.held_deposits`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from state.domain.account import DepositRecord, held_deposits
from state.domain.money import ZERO, money_text, price_text, shares_text
from state.domain.risk import RiskLimits
from state.messages import Quote

_TWO = Decimal(2)
DEPOSIT_SETTLE_DAYS = RiskLimits().deposit_settle_days  # the account topology's limit


def mark_price(quote: Quote) -> Decimal:
    """The last trade when the quote carries one, else the bid/ask midpoint."""
    if quote.last is not None:
        return quote.last
    return (quote.bid + quote.ask) / _TWO


def deposit_records(rows: Iterable[Mapping[str, Any]]) -> list[DepositRecord]:
    """The shard's deposit and ACH-return rows (kind, occurred_at, amount on the user's cash),
    in landing order, as the core's deposit records: a return marks the oldest unreturned
    deposit of its amount made before it returned (the shard does not record which one; the
    rebuilt account reads it the same way, `state.domain.shard_snapshot`)."""
    deposits: list[DepositRecord] = []
    for row in rows:
        amount = Decimal(row["amount"])
        if row["kind"] == "deposit":
            deposits.append(DepositRecord(amount=amount, deposited_at=row["occurred_at"]))
        elif row["kind"] == "ach_return":
            for index, deposit in enumerate(deposits):
                if not deposit.returned and deposit.amount == -amount:
                    deposits[index] = DepositRecord(amount=deposit.amount,
                                                    deposited_at=deposit.deposited_at,
                                                    returned=True)
                    break
    return deposits


def value_portfolio(ledger: dict[str, Any], quotes: dict[str, Quote], now: dt.datetime,
                    settle_days: int = DEPOSIT_SETTLE_DAYS) -> dict[str, Any]:
    """Market value and unrealised P&L per position; equity = cash + held cash + positions;
    withdrawable cash = cash less the deposits still held. A position without a quote is
    valued at its cost basis and shows no price."""
    positions = []
    positions_value = ZERO
    unrealized_total = ZERO
    quote_times: list[dt.datetime] = []
    for position in ledger.get("positions", []):
        quantity = Decimal(position["quantity"])
        cost_basis = Decimal(position["cost_basis"])
        quote = quotes.get(position["symbol"])
        if quote is None:
            price = market_value = unrealized = None
            positions_value += cost_basis
        else:
            price = mark_price(quote)
            market_value = quantity * price
            unrealized = market_value - cost_basis
            positions_value += market_value
            unrealized_total += unrealized
            quote_times.append(quote.venue_time)
        positions.append({
            "symbol": position["symbol"],
            "quantity": shares_text(quantity),
            **{part: shares_text(Decimal(position.get(part, 0))) for part in
               ("quantity_settled", "quantity_unsettled", "quantity_held")},
            "average_cost": price_text(Decimal(position["average_cost"])),
            "cost_basis": money_text(cost_basis),
            "price": None if price is None else price_text(price),
            "market_value": None if market_value is None else money_text(market_value),
            "unrealized_pnl": None if unrealized is None else money_text(unrealized),
        })
    cash = Decimal(ledger["cash"])
    cash_held = Decimal(ledger["cash_held"])
    held = held_deposits(deposit_records(ledger.get("deposits", [])), now, settle_days)
    withdrawable = max(cash - sum((amount for amount, _ in held), ZERO), ZERO)
    return {
        "account_id": ledger["account_id"],
        "cash": money_text(cash),
        "cash_held": money_text(cash_held),
        "buying_power": money_text(Decimal(ledger["buying_power"])),
        "withdrawable_cash": money_text(withdrawable),
        "held_deposits": [{"amount": money_text(amount), "available_at": available_at}
                          for amount, available_at in held],
        "positions_value": money_text(positions_value),
        "equity": money_text(cash + cash_held + positions_value),
        "unrealized_pnl": money_text(unrealized_total),
        "positions": positions,
        "as_of": ledger.get("as_of"),
        "ledger_seq": ledger.get("ledger_seq"),
        "quotes_as_of": min(quote_times) if quote_times else None,
    }
