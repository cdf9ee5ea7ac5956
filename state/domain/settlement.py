"""T+1 settlement of an account's trades (`settle_trades`).

The trades of every trade date up to the business day before `settle_date` (weekends
skipped, no holidays) settle, in one balanced `settle` transaction per command:
- per market maker and symbol, the clearing balances those trades left move out: shares
  `clearing:<mm>` -> `custody:dtc`, cash `clearing:<mm>` -> `bank:settlement` (signs as they
  are: a net sale moves shares from custody to clearing and cash from the bank);
- per symbol, the account's unsettled shares bought on those dates become settled
  (`shares_unsettled` -> `shares`). Unsettled shares are a pool: sells take from it too, so
  what stays unsettled is what was bought on later trade dates, as far as the pool has it; the
  rest settles. Unsettled shares that an open sell holds settle in place: the order's reserve
  counts them as settled from then on (its `shares_held` does not move).
The due lots are dropped (`AccountState.unsettled_lots`), so a later settlement settles only
what is left, and the command's idempotency key makes a repeat change nothing.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import cast

import msgspec

from state import ledger_accounts as la
from state.domain.ledger import Leg
from state.domain.lots import (
    SettlementLot,
    bought_by_symbol,
    is_business_day,
    split_due,
    trade_date_for,
)
from state.domain.money import ZERO
from state.domain.risk import Reason
from state.domain.step import Step, accept_command, command_cause, reject_command
from state.messages import SettleTrades, Side

__all__ = ["SettleReason", "settle_trades"]


class SettleReason(StrEnum):
    NOT_A_BUSINESS_DAY = "not_a_business_day"


def settle_trades(step: Step, command: SettleTrades) -> None:
    state = step.state
    if not is_business_day(command.settle_date):
        reject_command(step, command, cast(Reason, SettleReason.NOT_A_BUSINESS_DAY),
                        f"{command.settle_date} is a {command.settle_date:%A}")
        return
    due, later = split_due(state.unsettled_lots, trade_date_for(command.settle_date))
    legs = _clearing_legs(due)
    legs += _user_legs(step, due, bought_by_symbol(later))
    cause = command_cause(state.account_id, command.idempotency_key)
    txn = step.post("settle", cause, legs)
    for lot in due:
        del state.unsettled_lots[lot.key]
    accept_command(step, command, None, txn)


def _clearing_legs(due: list[SettlementLot]) -> list[Leg]:
    legs: list[Leg] = []
    for lot in due:
        shares = lot.sold - lot.bought  # the clearing account's shares from these trades
        legs += [(lot.clearing_account, lot.symbol, -shares),
                 (la.CUSTODY, lot.symbol, shares),
                 (lot.clearing_account, la.USD, -lot.cash),
                 (la.BANK_SETTLEMENT, la.USD, lot.cash)]
    return legs


def _user_legs(step: Step, due: list[SettlementLot], not_due: dict[str, Decimal]
               ) -> list[Leg]:
    """Unsettled shares beyond what later trade dates bought become settled."""
    state = step.state
    held_unsettled: dict[str, Decimal] = {}
    for order in state.open_orders.values():
        if order.side is Side.SELL and order.reserve_unsettled:
            held_unsettled[order.symbol] = (held_unsettled.get(order.symbol, ZERO)
                                            + order.reserve_unsettled)
    # Symbols without due lots settle too when nothing later explains their unsettled
    # shares (states kept from before lots were tracked).
    symbols = ({lot.symbol for lot in due} | set(state.balances.get(la.SHARES_UNSETTLED, {}))
               | set(held_unsettled))
    legs: list[Leg] = []
    for symbol in sorted(symbols):
        free = state.balance(la.SHARES_UNSETTLED, symbol)
        pool = free + held_unsettled.get(symbol, ZERO)
        settling = max(pool - not_due.get(symbol, ZERO), ZERO)
        from_free = min(settling, max(free, ZERO))
        legs += [(step.user(la.SHARES_UNSETTLED), symbol, -from_free),
                 (step.user(la.SHARES), symbol, from_free)]
        _settle_held(step, symbol, settling - from_free)
    return legs


def _settle_held(step: Step, symbol: str, quantity: Decimal) -> None:
    """Count `quantity` of the unsettled shares open sells hold as settled."""
    for order in list(step.state.open_orders.values()):
        if quantity <= 0:
            return
        if order.side is not Side.SELL or order.symbol != symbol or not order.reserve_unsettled:
            continue
        settled = min(quantity, order.reserve_unsettled)
        step.store(msgspec.structs.replace(
            order, reserve_unsettled=order.reserve_unsettled - settled))
        quantity -= settled
