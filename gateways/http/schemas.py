"""Request and response bodies of the HTTP API, defined once: handlers decode with them and the
OpenAPI document is generated from them. Money, prices and quantities are decimal strings; in
answers each has one scale (`MoneyText`: cents, `PriceText`: the price tick, `SharesText`: 6
places)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec

from gateways.http.auth import USER_ID_PATTERN
from state.messages import (
    SYMBOL_INPUT_PATTERN,
    SYMBOL_RULE,
    OrderState,
    OrderType,
    Side,
    TimeInForce,
)

DecimalString = Annotated[str, msgspec.Meta(
    min_length=1, max_length=40, description="a decimal number as a string, e.g. \"209.50\"")]
# The scales of figures in answers (state.domain.money): computed figures are rounded once,
# with banker's rounding, and written with every place of their scale.
MoneyText = Annotated[str, msgspec.Meta(
    pattern=r"^-?[0-9]+\.[0-9]{2}$",
    description="USD in cents: always 2 decimal places, computed figures rounded half to "
                "even, e.g. \"9996.28\"")]
PriceText = Annotated[str, msgspec.Meta(
    pattern=r"^[0-9]+\.([0-9]{2}|[0-9]{4})$",
    description="a price to its tick (Reg NMS Rule 612): 2 decimal places at $1.00 or more, "
                "4 below, computed figures rounded half to even, e.g. \"210.05\", "
                "\"0.4321\"")]
SharesText = Annotated[str, msgspec.Meta(
    pattern=r"^-?[0-9]+\.[0-9]{6}$",
    description="a share quantity: always 6 decimal places, e.g. \"2.500000\"")]
AccountIdField = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
SymbolField = Annotated[str, msgspec.Meta(
    pattern=SYMBOL_INPUT_PATTERN,
    description="ticker, e.g. AAPL (" + SYMBOL_RULE + "; lower case is read as upper case)")]


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class TokenRequest(Body, frozen=True):
    user_id: Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN)]


class TokenReply(Body, frozen=True):
    token: str
    token_type: str
    expires_at: dt.datetime


class AccountCreate(Body, frozen=True):
    pass


class Account(Body, frozen=True):
    account_id: str
    user_id: str
    shard: int
    created_at: dt.datetime | None = None


class AccountList(Body, frozen=True):
    accounts: list[Account]


class MoneyRequest(Body, frozen=True):
    amount: DecimalString


class MoneyReply(Body, frozen=True):
    account_id: str
    idempotency_key: str
    kind: str
    amount: MoneyText
    status: Annotated[str, msgspec.Meta(description="accepted | rejected | pending")]
    txn_id: str | None = None
    reason: str | None = None


class CommandOutcome(Body, frozen=True):
    """What became of a command, read by its Idempotency-Key (a retry with the same key gets
    the same answer as the first request)."""

    account_id: str
    idempotency_key: str
    status: Annotated[str, msgspec.Meta(
        description="accepted | rejected | pending (acknowledged, not decided yet)")]
    command_type: str | None = None
    txn_id: str | None = None
    amount: MoneyText | None = None
    reason: str | None = None
    detail: str | None = None
    occurred_at: str | None = None


class OrderRequest(Body, frozen=True):
    account_id: AccountIdField
    symbol: SymbolField
    side: Side
    order_type: OrderType
    quantity: DecimalString
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: DecimalString | None = None
    stop_price: DecimalString | None = None


class OrderReplaceRequest(Body, frozen=True):
    """New terms for an open order: at least one of quantity, limit_price, stop_price; the
    fields left out keep their values."""

    account_id: AccountIdField
    quantity: DecimalString | None = None
    limit_price: DecimalString | None = None
    stop_price: DecimalString | None = None


class OrderEventView(Body, frozen=True):
    event_id: str
    seq: int
    state: OrderState
    occurred_at: dt.datetime
    previous_state: OrderState | None = None
    reason: str | None = None
    filled_quantity: str | None = None
    last_fill_quantity: str | None = None
    last_fill_price: str | None = None


class PendingReplace(Body, frozen=True):
    """A replace (PATCH) of the order on its way: the terms it asked for. The order's own
    `quantity`, `limit_price` and `stop_price` stay its current terms until the market maker
    confirms the replace (its event then has reason `replaced`)."""

    state: Annotated[str, msgspec.Meta(description=(
        "sent (on the broker, the risk answer has not come yet) | requested (accepted, "
        "on its way to the market maker) | replaced (the order has the new terms) | "
        "rejected"))]
    idempotency_key: str
    quantity: Annotated[str, msgspec.Meta(description="the quantity asked for")]
    limit_price: Annotated[str | None, msgspec.Meta(
        description="the limit price asked for (the order's, if the PATCH left it out)")] = None
    stop_price: Annotated[str | None, msgspec.Meta(
        description="the stop price asked for (the order's, if the PATCH left it out)")] = None


class Order(Body, frozen=True):
    order_id: str
    account_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: str
    time_in_force: TimeInForce
    state: OrderState | None = None
    filled_quantity: str | None = None
    limit_price: str | None = None
    stop_price: str | None = None
    average_fill_price: str | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    updated_at: dt.datetime | None = None
    events: list[OrderEventView] | None = None
    pending_replace: Annotated[PendingReplace | None, msgspec.Meta(
        description="in a PATCH's answer: the replace asked for and its state")] = None


class OrderAccepted(Body, frozen=True):
    """The 202 answer: the command is on the broker, the risk answer has not come yet."""

    order_id: str
    account_id: str
    status: str
    idempotency_key: str
    pending_replace: Annotated[PendingReplace | None, msgspec.Meta(
        description="in a PATCH's answer: the replace asked for (state `sent`)")] = None


class OrderList(Body, frozen=True):
    orders: list[dict[str, Any]]


class Position(Body, frozen=True):
    symbol: str
    quantity: SharesText
    quantity_settled: SharesText
    quantity_unsettled: SharesText
    quantity_held: Annotated[str, msgspec.Meta(
        pattern=r"^-?[0-9]+\.[0-9]{6}$",
        description="shares reserved for open sell orders, 6 decimal places")]
    average_cost: Annotated[str, msgspec.Meta(
        pattern=r"^[0-9]+\.([0-9]{2}|[0-9]{4})$",
        description="cost basis / quantity, rounded to the price tick (2 decimal places at "
                    "$1.00 or more, 4 below), half to even")]
    cost_basis: MoneyText
    price: Annotated[str | None, msgspec.Meta(
        description="the mark price (last trade, else the bid/ask midpoint) rounded to its "
                    "tick; null without a quote")]
    market_value: Annotated[str | None, msgspec.Meta(
        description="quantity x mark price, in cents (rounded once, half to even); null "
                    "without a quote")]
    unrealized_pnl: Annotated[str | None, msgspec.Meta(
        description="market value - cost basis, in cents (rounded once, half to even); null "
                    "without a quote")]


class HeldDeposit(Body, frozen=True):
    """An ACH deposit still provisional: buying power, not yet withdrawable."""

    amount: MoneyText
    available_at: Annotated[dt.datetime, msgspec.Meta(
        description="when it becomes withdrawable (the deposit's time + the ACH hold)")]


class Portfolio(Body, frozen=True):
    """Figures are computed exactly and each rounded once at its scale (totals from the exact
    sums, so a total may differ by a cent from the sum of the rounded parts)."""

    account_id: str
    cash: MoneyText
    cash_held: Annotated[str, msgspec.Meta(
        pattern=r"^-?[0-9]+\.[0-9]{2}$", description="USD in cents held for open buy orders")]
    buying_power: MoneyText
    withdrawable_cash: Annotated[str, msgspec.Meta(
        pattern=r"^-?[0-9]+\.[0-9]{2}$",
        description="USD in cents that can be withdrawn now: cash less the ACH deposits still "
                    "held (held_deposits)")]
    held_deposits: Annotated[list[HeldDeposit], msgspec.Meta(
        description="ACH deposits not yet withdrawable, soonest available first")]
    positions_value: MoneyText
    equity: Annotated[str, msgspec.Meta(
        pattern=r"^-?[0-9]+\.[0-9]{2}$",
        description="cash + cash_held + the positions' market value (cost basis without a "
                    "quote), in cents")]
    unrealized_pnl: MoneyText
    positions: list[Position]
    as_of: dt.datetime | None = None
    ledger_offset: int | None = None
    quotes_as_of: dt.datetime | None = None


class QuoteView(Body, frozen=True):
    symbol: str
    bid: str
    ask: str
    bid_size: str
    ask_size: str
    venue_time: dt.datetime
    last: str | None = None


class QuoteList(Body, frozen=True):
    quotes: list[QuoteView]
    missing: list[str]


class CandleList(Body, frozen=True):
    symbol: str
    interval: str
    candles: list[dict[str, Any]]


class ActivityList(Body, frozen=True):
    account_id: str
    activities: list[dict[str, Any]]


class Health(Body, frozen=True):
    status: str
    checks: dict[str, str]


class ProblemDoc(Body, frozen=True):
    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None
