"""Portfolio valuation, pure: the shard's ledger figures plus the latest quotes. Every figure
is an exact Decimal product or sum (no rounding), written as a string."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from state.messages import Quote

_TWO = Decimal(2)


def mark_price(quote: Quote) -> Decimal:
    """The last trade when the quote carries one, else the bid/ask midpoint."""
    if quote.last is not None:
        return quote.last
    return (quote.bid + quote.ask) / _TWO


def value_portfolio(ledger: dict[str, Any], quotes: dict[str, Quote]) -> dict[str, Any]:
    """Market value and unrealised P&L per position; equity = cash + held cash + positions.
    A position without a quote is valued at its cost basis and shows no price."""
    positions = []
    positions_value = Decimal(0)
    unrealized_total = Decimal(0)
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
            "quantity": str(quantity),
            **{part: str(position.get(part, 0)) for part in
               ("quantity_settled", "quantity_unsettled", "quantity_held")},
            "average_cost": str(position["average_cost"]),
            "cost_basis": str(cost_basis),
            "price": None if price is None else str(price),
            "market_value": None if market_value is None else str(market_value),
            "unrealized_pnl": None if unrealized is None else str(unrealized),
        })
    cash = Decimal(ledger["cash"])
    cash_held = Decimal(ledger["cash_held"])
    return {
        "account_id": ledger["account_id"],
        "cash": str(cash),
        "cash_held": str(cash_held),
        "buying_power": str(ledger["buying_power"]),
        "positions_value": str(positions_value),
        "equity": str(cash + cash_held + positions_value),
        "unrealized_pnl": str(unrealized_total),
        "positions": positions,
        "as_of": ledger.get("as_of"),
        "ledger_offset": ledger.get("ledger_offset"),
        "quotes_as_of": min(quote_times) if quote_times else None,
    }
