"""Request and response bodies of the HTTP API, defined once: handlers decode with them and the
OpenAPI document is generated from them. Money, prices and quantities are decimal strings; in
answers each has one scale (`MoneyText`: cents, `PriceText`: the price tick, `SharesText`: 6
places)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

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
MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{2}$"
# Signed: an order refused at intake (a command produced straight to orders.commands) shows
# the terms it was refused for, a negative price included.
PRICE_PATTERN = r"^-?[0-9]+\.([0-9]{2}|[0-9]{4})$"
SHARES_PATTERN = r"^-?[0-9]+\.[0-9]{6}$"
AMOUNT_PATTERN = r"^-?[0-9]+\.([0-9]{2}|[0-9]{6})$"  # cents or shares, as its asset says
MoneyText = Annotated[str, msgspec.Meta(
    pattern=MONEY_PATTERN,
    description="USD in cents: always 2 decimal places, computed figures rounded half to "
                "even, e.g. \"9996.28\"")]
PriceText = Annotated[str, msgspec.Meta(
    pattern=PRICE_PATTERN,
    description="a price to its tick (Reg NMS Rule 612): 2 decimal places at $1.00 or more, "
                "4 below, computed figures rounded half to even, e.g. \"210.05\", "
                "\"0.4321\"; negative only on an order refused for it")]
SharesText = Annotated[str, msgspec.Meta(
    pattern=SHARES_PATTERN,
    description="a share quantity: always 6 decimal places, e.g. \"2.500000\"")]
AccountIdField = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
SymbolField = Annotated[str, msgspec.Meta(
    pattern=SYMBOL_INPUT_PATTERN,
    description="ticker, e.g. AAPL (" + SYMBOL_RULE + "; lower case is read as upper case)")]


class RequestStatus(StrEnum):
    """What became of a request answered 202 so far (an order's own state is `state`)."""

    PENDING = "pending"  # a new order: on the broker, the risk answer has not come yet
    CANCEL_REQUESTED = "cancel_requested"
    REPLACE_REQUESTED = "replace_requested"


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
    status: Annotated[str, msgspec.Meta(description=(
        "active | unavailable (listed by the directory, but its shard cannot be read now: "
        "created_at is then null)"))]
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
    """One state transition of the order (refused cancels and replaces are not here: their
    outcome is read by their Idempotency-Key)."""

    event_id: str
    seq: Annotated[int, msgspec.Meta(description="0 for the order's first event, then +1")]
    state: OrderState
    occurred_at: dt.datetime
    filled_quantity: Annotated[str, msgspec.Meta(
        pattern=SHARES_PATTERN, description="shares filled so far, 6 decimal places")]
    previous_state: OrderState | None = None
    reason: str | None = None
    detail: str | None = None
    last_fill_quantity: Annotated[str, msgspec.Meta(
        pattern=SHARES_PATTERN,
        description="shares of this event's fill, 6 decimal places; null without a fill")
    ] | None = None
    last_fill_price: Annotated[str, msgspec.Meta(
        pattern=PRICE_PATTERN,
        description="USD per share of this event's fill, to its tick; null without a fill")
    ] | None = None


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
    """An order: `state` is the order's state (a 202 carries it too, beside the request's
    `status`). Quantities are shares (6 places), prices USD per share (to their tick)."""

    order_id: str
    account_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: SharesText
    time_in_force: TimeInForce
    state: OrderState
    filled_quantity: SharesText
    idempotency_key: str
    seq: Annotated[int | None, msgspec.Meta(description=(
        "the seq of the order's latest event: of two views of one order the higher seq is "
        "the newer; null while the order is acknowledged but not decided (state pending)"))
    ] = None
    limit_price: PriceText | None = None
    stop_price: PriceText | None = None
    average_fill_price: Annotated[str, msgspec.Meta(
        pattern=PRICE_PATTERN,
        description="USD per share over the fills so far, rounded to the tick; null before "
                    "the first fill")] | None = None
    # One name, one unit: the topic's `held_amount` is USD for a buy and shares for a sell.
    held_usd: Annotated[str, msgspec.Meta(pattern=MONEY_PATTERN, description=(
        "a buy's initial hold: USD in cents reserved when the order was accepted (it is "
        "released as the order fills or ends; the portfolio's cash_held is what is held "
        "now); null for a sell and before the hold"))] | None = None
    held_shares: Annotated[str, msgspec.Meta(pattern=SHARES_PATTERN, description=(
        "a sell's initial hold: shares (6 decimal places) reserved when the order was "
        "accepted (released as it fills or ends; the position's quantity_held is what is "
        "held now); null for a buy and before the hold"))] | None = None
    reason: str | None = None
    detail: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    events: Annotated[list[OrderEventView] | None, msgspec.Meta(
        description="in GET /v1/orders/{order_id}: the order's state transitions, oldest "
                    "first")] = None
    pending_replace: Annotated[PendingReplace | None, msgspec.Meta(
        description="in a PATCH's answer: the replace asked for and its state")] = None


class OrderAccepted(Body, frozen=True):
    """The 202 answer: the command is on the broker, the risk answer has not come yet.
    `status` is the request's (what became of it so far), `state` the order's."""

    order_id: str
    account_id: str
    status: RequestStatus
    state: Annotated[OrderState, msgspec.Meta(description=(
        "the order's state as the gateway last read it: `pending` for a new order; a cancel "
        "or replace has not changed it yet"))]
    idempotency_key: str
    pending_replace: Annotated[PendingReplace | None, msgspec.Meta(
        description="in a PATCH's answer: the replace asked for (state `sent`)")] = None


class OrderList(Body, frozen=True):
    """Without their events (GET /v1/orders/{order_id} has them)."""

    orders: list[Order]


class Position(Body, frozen=True):
    symbol: str
    quantity: SharesText
    quantity_settled: SharesText
    quantity_unsettled: SharesText
    quantity_held: Annotated[str, msgspec.Meta(
        pattern=SHARES_PATTERN,
        description="shares reserved for open sell orders, 6 decimal places")]
    average_cost: Annotated[str, msgspec.Meta(
        pattern=PRICE_PATTERN,
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
        pattern=MONEY_PATTERN, description="USD in cents held for open buy orders")]
    buying_power: MoneyText
    withdrawable_cash: Annotated[str, msgspec.Meta(
        pattern=MONEY_PATTERN,
        description="USD in cents that can be withdrawn now: cash less the ACH deposits still "
                    "held (held_deposits)")]
    held_deposits: Annotated[list[HeldDeposit], msgspec.Meta(
        description="ACH deposits not yet withdrawable, soonest available first")]
    positions_value: MoneyText
    equity: Annotated[str, msgspec.Meta(
        pattern=MONEY_PATTERN,
        description="cash + cash_held + the positions' market value (cost basis without a "
                    "quote), in cents")]
    unrealized_pnl: MoneyText
    positions: list[Position]
    as_of: Annotated[dt.datetime | None, msgspec.Meta(
        description="when the account's latest ledger transaction happened; null without "
                    "one")] = None
    ledger_seq: Annotated[int | None, msgspec.Meta(description=(
        "the shard's landing number (ledger_seq) of the account's latest ledger transaction: "
        "it only grows and survives a broker restart, so of two portfolio answers for one "
        "account the higher ledger_seq saw more of the ledger (a shard rebuilt from the "
        "topics numbers afresh); null without a transaction"))
    ] = None
    quotes_as_of: Annotated[dt.datetime | None, msgspec.Meta(
        description="venue time of the oldest quote the positions are valued at")] = None


UsdPerShare = Annotated[str, msgspec.Meta(description="USD per share, as quoted")]
ShareCount = Annotated[str, msgspec.Meta(description="shares, as quoted")]


class QuoteView(Body, frozen=True):
    symbol: str
    bid: UsdPerShare
    ask: UsdPerShare
    bid_size: ShareCount
    ask_size: ShareCount
    venue_time: dt.datetime
    last: Annotated[str | None, msgspec.Meta(
        description="USD per share of the last trade; null when the feed gives none")] = None
    last_size: Annotated[str | None, msgspec.Meta(
        description="shares of the trade printed with this quote; null: no new trade")] = None


class QuoteList(Body, frozen=True):
    quotes: list[QuoteView]
    missing: list[str]
    quote_age_ms_max: Annotated[int, msgspec.Meta(
        gt=0,
        description="added in 1.2.0: the risk check's quote age limit, in milliseconds: a "
                    "market or stop order priced at a quote whose venue_time is older than "
                    "this is refused with reason `stale_reference_price`; a client marks such "
                    "quotes stale")]


class CandleView(Body, frozen=True):
    start: dt.datetime
    end: dt.datetime
    open: UsdPerShare
    high: UsdPerShare
    low: UsdPerShare
    close: UsdPerShare
    volume: SharesText
    vwap: Annotated[str, msgspec.Meta(
        pattern=PRICE_PATTERN, description="volume-weighted average price, USD per share to "
                                           "its tick")]
    trades: int


class CandleList(Body, frozen=True):
    """Oldest first; the last candle may still be open."""

    symbol: str
    interval: str
    candles: list[CandleView]


class Activity(Body, frozen=True):
    """One leg of a ledger transaction on one of the account's ledger accounts."""

    txn_id: str
    leg: int
    kind: Annotated[str, msgspec.Meta(
        description="deposit, withdrawal, hold, release, fill, settlement, ach_return, ...")]
    cause_id: str
    ledger_account: str
    bucket: Annotated[str | None, msgspec.Meta(
        description="the ledger account's bucket (cash, cash_held, shares, ...)")]
    asset: Annotated[str, msgspec.Meta(
        description="what amount and balance_after count: USD, or a symbol's shares")]
    amount: Annotated[str, msgspec.Meta(
        pattern=AMOUNT_PATTERN, description=(
            "in units of `asset`: USD in cents (2 places) when asset is USD, else shares "
            "(6 places); negative leaves the ledger account"))]
    balance_after: Annotated[str, msgspec.Meta(
        pattern=AMOUNT_PATTERN, description="the ledger account's balance in `asset` after "
                                            "this leg, at amount's scale")]
    occurred_at: dt.datetime
    ledger_seq: Annotated[int, msgspec.Meta(
        description="the shard's landing number of the transaction")]
    order_id: str | None = None


class ActivityList(Body, frozen=True):
    account_id: str
    activities: list[Activity]


class Health(Body, frozen=True):
    status: str
    checks: dict[str, str]


class ProblemDoc(Body, frozen=True):
    """RFC 9457 problem details with a stable `code`; the extension members below appear where
    they apply."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None
    reason: Annotated[str | None, msgspec.Meta(
        description="the account topology's stable refusal reason")] = None
    field: Annotated[str | None, msgspec.Meta(
        description="the parameter or body field at fault")] = None
    order_id: str | None = None
    account_id: str | None = None
    idempotency_key: str | None = None
    down: Annotated[list[str] | None, msgspec.Meta(
        description="/healthz: the dependencies that are down")] = None
    checks: Annotated[dict[str, str] | None, msgspec.Meta(
        description="/healthz: every dependency's state")] = None
