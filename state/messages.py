"""Every message that crosses a topic, defined once.

Messages are frozen msgspec Structs tagged by `type` with a schema version `v`. Money, prices
and quantities are `Decimal` (JSON decimal strings), timestamps are UTC datetimes (RFC 3339).
The JSON Schema of each family is generated from these classes (`state.schemas`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import typing
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import msgspec

AccountId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
# `(?!\n)` before `$`: Python's `$` also matches before a trailing newline ("AAPL\n"); the
# lookahead refuses it and keeps the pattern valid JSON Schema (ECMA-262) as well.
SYMBOL_PATTERN = r"^[A-Z][A-Z0-9.\-]{0,9}(?!\n)$"
# What a person may type (HTTP bodies): the same rule in either case (see normalise_symbol).
SYMBOL_INPUT_PATTERN = r"^[A-Za-z][A-Za-z0-9.\-]{0,9}(?!\n)$"
Symbol = Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN)]
SYMBOL_RULE = ("1 to 10 characters: a letter, then letters, digits, '.' or '-' "
               "(e.g. AAPL, BRK.B)")
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)


def normalise_symbol(text: str) -> str:
    """The one symbol rule of every edge that reads a person's text (HTTP, the CLI): letters
    are read as upper case; anything else outside the rule is refused (ValueError) with the
    rule in words. Topics carry upper case only (the JSON Schema's pattern)."""
    symbol = text.upper()
    if _SYMBOL_RE.search(symbol) is None:
        raise ValueError(f"{text[:20]!r} is not a symbol: {SYMBOL_RULE}")
    return symbol
# The schema versions this code reads: a payload of another version is refused (DLQ), never
# decided as if it were the one it knows.
Version1 = typing.Literal[1]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"


class OrderState(StrEnum):
    PENDING = "pending"
    VALIDATED = "validated"
    FUNDS_HELD = "funds_held"
    ROUTED = "routed"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"


TERMINAL_ORDER_STATES = frozenset(
    {OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED, OrderState.EXPIRED,
     OrderState.FAILED}
)


class ExecType(StrEnum):
    NEW = "new"  # the market maker acknowledged the order
    TRADE = "trade"  # a partial or full fill: last_qty at last_px
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    ORDER_STATUS = "order_status"  # answer to a status request
    CANCEL_REJECTED = "cancel_rejected"  # OrderCancelReject (of a cancel or a replace)
    REPLACED = "replaced"  # a cancel/replace took effect: new quantity and prices
    # The gateway asked the market maker to cancel an order it got no answer for: the order
    # waits for a fill or a confirmed cancel, its funds still held.
    PENDING_CANCEL = "pending_cancel"


class SymbolStatus(StrEnum):
    OPEN = "open"
    HALTED = "halted"
    RESTRICTED = "restricted"  # closing trades only


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of every topic payload: `type` (the tag) and `v` (schema version)."""

    def __post_init__(self) -> None:
        decimals, datetimes = _checked_fields(type(self))
        for name in decimals:
            value = getattr(self, name)
            if isinstance(value, Decimal) and not value.is_finite():
                raise ValueError(f"{name} must be a finite decimal")
        for name in datetimes:
            value = getattr(self, name)
            if isinstance(value, dt.datetime) and value.tzinfo is None:
                raise ValueError(f"{name} must carry a UTC offset")


def _holds(annotation: object, kind: type) -> bool:
    return annotation is kind or any(_holds(arg, kind) for arg in typing.get_args(annotation))


def decimal_fields(cls: type) -> tuple[str, ...]:
    """The fields of a message class that hold money, prices or quantities."""
    return _checked_fields(cls)[0]


@functools.cache
def _checked_fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The fields of a message class whose declared type can hold a Decimal, a datetime."""
    hints = typing.get_type_hints(cls)
    names = cls.__struct_fields__  # type: ignore[attr-defined]
    return (tuple(n for n in names if _holds(hints[n], Decimal)),
            tuple(n for n in names if _holds(hints[n], dt.datetime)))


# ---- orders.commands (key: account_id) -------------------------------------------------


class PlaceOrder(Message, frozen=True, tag="place_order"):
    account_id: AccountId
    idempotency_key: IdempotencyKey
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Decimal
    submitted_at: dt.datetime
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    # The latest quote the producer saw: market buys are held at this price plus a collar.
    reference_price: Decimal | None = None
    reference_time: dt.datetime | None = None
    user_id: str | None = None
    v: Version1 = 1


class CancelOrder(Message, frozen=True, tag="cancel_order"):
    account_id: AccountId
    idempotency_key: IdempotencyKey
    order_id: str
    submitted_at: dt.datetime
    user_id: str | None = None
    v: Version1 = 1


class Deposit(Message, frozen=True, tag="deposit"):
    account_id: AccountId
    idempotency_key: IdempotencyKey
    amount: Decimal
    submitted_at: dt.datetime
    user_id: str | None = None
    v: Version1 = 1


class Withdraw(Message, frozen=True, tag="withdraw"):
    account_id: AccountId
    idempotency_key: IdempotencyKey
    amount: Decimal
    submitted_at: dt.datetime
    user_id: str | None = None
    v: Version1 = 1


class AchReturn(Message, frozen=True, tag="ach_return"):
    account_id: AccountId
    idempotency_key: IdempotencyKey
    deposit_idempotency_key: IdempotencyKey
    submitted_at: dt.datetime
    reason: str = "R01"
    v: Version1 = 1


class ReplaceOrder(Message, frozen=True, tag="replace_order"):
    """Change an open order's quantity and/or prices (FIX OrderCancelReplaceRequest).
    Fields left out keep their values. Extra funds are held before the request is routed;
    funds freed by the change are released only when the market maker confirms it."""

    account_id: AccountId
    idempotency_key: IdempotencyKey
    order_id: str
    submitted_at: dt.datetime
    quantity: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    user_id: str | None = None
    v: Version1 = 1


class SettleTrades(Message, frozen=True, tag="settle_trades"):
    """T+1 settlement: the account's trades of the business day before `settle_date` settle
    (unsettled shares become settled; clearing balances move to custody and the settlement
    bank). `idempotency_key` names the date (e.g. `settle-2026-11-30`)."""

    account_id: AccountId
    idempotency_key: IdempotencyKey
    settle_date: dt.date
    submitted_at: dt.datetime
    v: Version1 = 1


class ExpireOrders(Message, frozen=True, tag="expire_orders"):
    """Day end: every open `day` order of the account expires and its hold is released.
    `idempotency_key` names the trading day (e.g. `eod-2026-11-27`)."""

    account_id: AccountId
    idempotency_key: IdempotencyKey
    trading_day: dt.date
    submitted_at: dt.datetime
    v: Version1 = 1


Command = (PlaceOrder | CancelOrder | ReplaceOrder | Deposit | Withdraw | AchReturn
           | ExpireOrders | SettleTrades)


# ---- orders.route (key: account_id) ----------------------------------------------------


class RouteNewOrder(Message, frozen=True, tag="new_order"):
    account_id: AccountId
    order_id: str
    cl_ord_id: str
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    routed_at: dt.datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reference_price: Decimal | None = None
    v: Version1 = 1


class RouteCancel(Message, frozen=True, tag="cancel_request"):
    account_id: AccountId
    order_id: str
    cl_ord_id: str
    orig_cl_ord_id: str
    symbol: Symbol
    side: Side
    quantity: Decimal
    routed_at: dt.datetime
    v: Version1 = 1


class RouteReplace(Message, frozen=True, tag="replace_request"):
    """FIX OrderCancelReplaceRequest: the order's full new terms under a new ClOrdID."""

    account_id: AccountId
    order_id: str
    cl_ord_id: str
    orig_cl_ord_id: str
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    routed_at: dt.datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    v: Version1 = 1


class RouteStatusRequest(Message, frozen=True, tag="status_request"):
    account_id: AccountId
    order_id: str
    cl_ord_id: str
    symbol: Symbol
    side: Side
    routed_at: dt.datetime
    v: Version1 = 1


RouteRequest = RouteNewOrder | RouteCancel | RouteReplace | RouteStatusRequest


# ---- executions (key: account_id) ------------------------------------------------------


class ExecutionReport(Message, frozen=True, tag="execution_report"):
    """One FIX ExecutionReport / OrderCancelReject, normalised. `exec_id` is unique per
    market maker; a duplicate never books twice."""

    account_id: AccountId
    exec_id: str
    order_id: str
    cl_ord_id: str
    exec_type: ExecType
    symbol: Symbol
    side: Side
    last_qty: Decimal
    last_px: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    transact_time: dt.datetime
    market_maker: str = ""
    orig_cl_ord_id: str | None = None
    text: str | None = None
    poss_dup: bool = False
    v: Version1 = 1


# ---- orders.events (key: account_id) ---------------------------------------------------


class OrderEvent(Message, frozen=True, tag="order_event"):
    """One order state transition. `event_id` is deterministic: `{order_id}:{seq}`."""

    event_id: str
    account_id: AccountId
    order_id: str
    seq: int
    state: OrderState
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    filled_quantity: Decimal
    occurred_at: dt.datetime
    cause_id: str
    idempotency_key: str
    previous_state: OrderState | None = None
    reason: str | None = None
    detail: str | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    average_fill_price: Decimal | None = None
    last_fill_quantity: Decimal | None = None
    last_fill_price: Decimal | None = None
    # Its unit follows `side`; the HTTP answers split it into held_usd and held_shares.
    held_amount: Annotated[Decimal | None, msgspec.Meta(description=(
        "the order's initial hold, in the unit of what it reserves: USD for a buy, shares "
        "for a sell"))] = None
    v: Version1 = 1


class CommandAccepted(Message, frozen=True, tag="command_accepted"):
    """A money command (deposit, withdraw, ach_return) that was booked."""

    event_id: str
    account_id: AccountId
    idempotency_key: str
    command_type: str
    occurred_at: dt.datetime
    amount: Decimal | None = None
    txn_id: str | None = None
    v: Version1 = 1


class CommandRejected(Message, frozen=True, tag="command_rejected"):
    """A command refused with a stable reason code (e.g. `insufficient_buying_power`)."""

    event_id: str
    account_id: AccountId
    idempotency_key: str
    command_type: str
    reason: str
    occurred_at: dt.datetime
    detail: str | None = None
    order_id: str | None = None
    v: Version1 = 1


class Alert(Message, frozen=True, tag="alert"):
    """A critical event for operators: overfill, fill for an unknown order, stuck order."""

    event_id: str
    account_id: AccountId
    severity: str
    code: str
    detail: str
    occurred_at: dt.datetime
    order_id: str | None = None
    exec_id: str | None = None
    v: Version1 = 1


AccountEvent = OrderEvent | CommandAccepted | CommandRejected | Alert


# ---- ledger.postings (key: account_id) -------------------------------------------------


class LedgerEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One leg: `amount` (signed) of `asset` (`USD` or a symbol) on `ledger_account`."""

    ledger_account: str
    asset: str
    amount: Decimal


class LedgerTransaction(Message, frozen=True, tag="ledger_transaction"):
    """A balanced double-entry transaction: per asset, the entries sum to zero.
    `txn_id` is derived from the event that caused it, so a replay writes the same ids."""

    txn_id: str
    account_id: AccountId
    kind: str
    cause_id: str
    occurred_at: dt.datetime
    entries: tuple[LedgerEntry, ...]
    order_id: str | None = None
    v: Version1 = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        totals: dict[str, Decimal] = {}
        for entry in self.entries:
            if not entry.amount.is_finite():
                raise ValueError("ledger entry amount must be finite")
            totals[entry.asset] = totals.get(entry.asset, Decimal(0)) + entry.amount
        unbalanced = {asset: total for asset, total in totals.items() if total != 0}
        if unbalanced or not self.entries:
            raise ValueError(f"transaction {self.txn_id} does not balance: {unbalanced}")


# ---- quotes, market.status, candles (key: symbol) --------------------------------------


class Quote(Message, frozen=True, tag="quote"):
    symbol: Symbol
    bid: Decimal
    ask: Decimal
    bid_size: Decimal
    ask_size: Decimal
    venue_time: dt.datetime
    last: Decimal | None = None
    # Size of a trade printed with this quote at `last` (None: no new trade): candle volume.
    last_size: Decimal | None = None
    v: Version1 = 1


class MarketStatus(Message, frozen=True, tag="market_status"):
    symbol: Symbol
    status: SymbolStatus
    effective_at: dt.datetime
    reason: str | None = None
    v: Version1 = 1


class Candle(Message, frozen=True, tag="candle"):
    symbol: Symbol
    interval: str
    start: dt.datetime
    end: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal
    trades: int
    v: Version1 = 1


# ---- dlq.<topic> -----------------------------------------------------------------------


class DeadLetter(Message, frozen=True, tag="dead_letter"):
    """A payload that could not be processed, with the reason, its bytes and its offset."""

    source_topic: str
    partition: int
    offset: int
    error: str
    original: bytes
    failed_at: dt.datetime
    key: str | None = None
    v: Version1 = 1


def to_builtins(message: Any) -> Any:
    """A message as JSON-ready builtins (Decimals as strings)."""
    return msgspec.to_builtins(message)
