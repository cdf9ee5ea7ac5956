"""Pre-trade risk checks: pure functions over the order, the market and figures of the account.

Each refusal is a stable reason code (`Reason`). Checks run in a fixed order (shape, account,
symbol, rate, size, price reference, notional, pattern day trader, funds) so the same order
against the same state always gets the same reason.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from state.domain.money import ZERO, cents_up, is_price, is_share_quantity, tick_refusal
from state.messages import OrderType, PlaceOrder, Side, SymbolStatus

# A market or stop order's reference quote older than this is refused (stale_reference_price).
# The stack file's `[accounts] quote_age_ms_max` sets it for the account topology and the HTTP
# gateway alike; the gateway publishes it (GET /v1/quotes), so clients can mark stale quotes.
QUOTE_AGE_MS_MAX = 60_000


class Reason(StrEnum):
    """Stable reject reason codes (orders.events `reason`)."""

    INVALID_ORDER = "invalid_order"
    INVALID_AMOUNT = "invalid_amount"
    ACCOUNT_RESTRICTED = "account_restricted"
    SYMBOL_HALTED = "symbol_halted"
    SYMBOL_RESTRICTED = "symbol_restricted"
    RATE_LIMITED = "rate_limited"
    QUANTITY_TOO_LARGE = "quantity_too_large"
    NO_REFERENCE_PRICE = "no_reference_price"
    STALE_REFERENCE_PRICE = "stale_reference_price"
    NOTIONAL_TOO_LARGE = "notional_too_large"
    PATTERN_DAY_TRADER = "pattern_day_trader"
    INSUFFICIENT_BUYING_POWER = "insufficient_buying_power"
    INSUFFICIENT_SHARES = "insufficient_shares"
    INSUFFICIENT_WITHDRAWABLE_CASH = "insufficient_withdrawable_cash"
    DUPLICATE_IDEMPOTENCY_KEY = "duplicate_idempotency_key_different_body"
    COMMAND_TOO_OLD = "command_too_old"  # submitted before what the account still remembers
    UNKNOWN_ORDER = "unknown_order"
    ORDER_NOT_OPEN = "order_not_open"
    CANCEL_PENDING = "cancel_pending"
    UNKNOWN_DEPOSIT = "unknown_deposit"
    DEPOSIT_ALREADY_RETURNED = "deposit_already_returned"
    MARKET_MAKER_REJECTED = "market_maker_rejected"
    UNKNOWN_ACCOUNT = "unknown_account"  # never opened: takes no money and no orders
    ACCOUNT_UNAVAILABLE = "account_unavailable"  # its shard cannot be read right now


@dataclass(frozen=True)
class RiskLimits:
    """Defaults as in topologies.config.AccountTopologyConfig."""

    market_collar_pct: Decimal = Decimal("0.05")
    notional_usd_max: Decimal = Decimal("1000000")
    quantity_max: Decimal = Decimal("100000")
    order_rate_per_s_max: int = 10
    pdt_equity_usd_min: Decimal = Decimal("25000")
    quote_age_ms_max: int = QUOTE_AGE_MS_MAX
    # 4 or more day trades within 5 business days mark a pattern day trader.
    pdt_day_trades_min: int = 4
    pdt_window_business_days: int = 5
    # ACH deposits are provisional (buying power, not withdrawable) for this many days.
    deposit_settle_days: int = 3


@dataclass(frozen=True)
class MarketContext:
    """What the account topology knows of the market: a symbol missing here is open."""

    symbol_status: Mapping[str, SymbolStatus] = field(default_factory=dict)

    def status(self, symbol: str) -> SymbolStatus:
        return self.symbol_status.get(symbol, SymbolStatus.OPEN)


@dataclass(frozen=True)
class AccountFigures:
    """What the checks need to know of the account, computed by the caller."""

    buying_power: Decimal  # USD free to hold
    sellable_shares: Decimal  # shares of the order's symbol owned and not held
    restricted: bool  # closing trades only (a negative balance)
    orders_last_second: int
    day_trades_in_window: int
    is_day_trade: bool  # the order would close a position opened today
    equity: Decimal


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str


def check_order(
    order: PlaceOrder,
    *,
    now: dt.datetime,
    market: MarketContext,
    limits: RiskLimits,
    account: AccountFigures,
) -> Rejection | None:
    """The first check the order fails, or None when it may be held and routed (checks in the
    fixed order; a Rejection is always truthy)."""
    return (
        _check_shape(order)
        or _check_account(order, account)
        or _check_symbol(order, market)
        or _check_rate(account, limits)
        or _check_size(order, limits)
        or _check_reference(order, now, limits)
        or _check_notional(order, limits)
        or _check_day_trading(account, limits)
        or _check_funds(order, account, limits)
    )


def buy_hold_price(order: PlaceOrder, limits: RiskLimits) -> Decimal:
    """The price a buy is held at: its limit, else the reference (or, for a stop, the higher of
    stop and reference, where it will trigger) plus the collar."""
    if order.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        assert order.limit_price is not None
        return order.limit_price
    collared = Decimal(1) + limits.market_collar_pct
    if order.order_type is OrderType.STOP:
        assert order.stop_price is not None
        return max(order.stop_price, order.reference_price or ZERO) * collared
    assert order.reference_price is not None, "market buy without reference passed the checks"
    return order.reference_price * collared


def hold_for(order: PlaceOrder, limits: RiskLimits) -> Decimal:
    """What an accepted order holds: USD (cents, rounded up) for a buy, shares for a sell."""
    if order.side is Side.BUY:
        return cents_up(order.quantity * buy_hold_price(order, limits))
    return order.quantity


def _reject(reason: Reason, detail: str) -> Rejection:
    return Rejection(reason=reason, detail=detail)


def _check_shape(order: PlaceOrder) -> Rejection | None:
    if not is_share_quantity(order.quantity) or order.quantity <= 0:
        return _reject(Reason.INVALID_ORDER, "quantity must be positive with at most 6 places")
    needs_limit = order.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    needs_stop = order.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    if needs_limit != (order.limit_price is not None):
        return _reject(Reason.INVALID_ORDER, f"{order.order_type} order: limit_price "
                       + ("required" if needs_limit else "not allowed"))
    if needs_stop != (order.stop_price is not None):
        return _reject(Reason.INVALID_ORDER, f"{order.order_type} order: stop_price "
                       + ("required" if needs_stop else "not allowed"))
    for name in ("limit_price", "stop_price"):
        price = getattr(order, name)
        refusal = None if price is None else tick_refusal(name, price)
        if refusal is not None:
            return _reject(Reason.INVALID_ORDER, refusal)
    reference = order.reference_price
    if reference is not None and (not is_price(reference) or reference <= 0):
        return _reject(Reason.INVALID_ORDER,
                       "reference_price must be positive with at most 6 places")
    return None


def _check_account(order: PlaceOrder, account: AccountFigures) -> Rejection | None:
    if account.restricted and order.side is Side.BUY:
        return _reject(Reason.ACCOUNT_RESTRICTED, "negative balance: closing trades only")
    return None


def _check_symbol(order: PlaceOrder, market: MarketContext) -> Rejection | None:
    status = market.status(order.symbol)
    if status is SymbolStatus.HALTED:
        return _reject(Reason.SYMBOL_HALTED, f"{order.symbol} is halted")
    if status is SymbolStatus.RESTRICTED and order.side is Side.BUY:
        return _reject(Reason.SYMBOL_RESTRICTED, f"{order.symbol}: closing trades only")
    return None


def _check_rate(account: AccountFigures, limits: RiskLimits) -> Rejection | None:
    if account.orders_last_second >= limits.order_rate_per_s_max:
        return _reject(Reason.RATE_LIMITED,
                       f"more than {limits.order_rate_per_s_max} orders per second")
    return None


def _check_size(order: PlaceOrder, limits: RiskLimits) -> Rejection | None:
    if order.quantity > limits.quantity_max:
        return _reject(Reason.QUANTITY_TOO_LARGE, f"quantity above {limits.quantity_max}")
    return None


def _uses_reference(order: PlaceOrder) -> bool:
    return order.order_type in (OrderType.MARKET, OrderType.STOP)


def _check_reference(order: PlaceOrder, now: dt.datetime, limits: RiskLimits) -> Rejection | None:
    if not _uses_reference(order):
        return None
    if order.reference_price is None:
        if order.side is Side.BUY and order.order_type is OrderType.MARKET:
            return _reject(Reason.NO_REFERENCE_PRICE, "a market buy needs a recent quote")
        return None
    if order.reference_time is None:
        return _reject(Reason.STALE_REFERENCE_PRICE, "reference_price without reference_time")
    age = now - order.reference_time
    if age > dt.timedelta(milliseconds=limits.quote_age_ms_max):
        return _reject(Reason.STALE_REFERENCE_PRICE,
                       f"quote is {int(age.total_seconds() * 1000)} ms old")
    return None


def notional_price(order: PlaceOrder) -> Decimal | None:
    """The price the notional limit is checked at (None: a market sell without a quote)."""
    if order.limit_price is not None:
        return order.limit_price
    if order.order_type is OrderType.STOP:
        return max(order.stop_price or ZERO, order.reference_price or ZERO)
    return order.reference_price


def _check_notional(order: PlaceOrder, limits: RiskLimits) -> Rejection | None:
    price = notional_price(order)
    if price is not None and order.quantity * price > limits.notional_usd_max:
        return _reject(Reason.NOTIONAL_TOO_LARGE, f"notional above {limits.notional_usd_max}")
    return None


def _check_day_trading(account: AccountFigures, limits: RiskLimits) -> Rejection | None:
    if (
        account.is_day_trade
        and account.day_trades_in_window >= limits.pdt_day_trades_min
        and account.equity < limits.pdt_equity_usd_min
    ):
        return _reject(
            Reason.PATTERN_DAY_TRADER,
            f"{account.day_trades_in_window} day trades in {limits.pdt_window_business_days} "
            f"business days with equity under {limits.pdt_equity_usd_min}",
        )
    return None


def _check_funds(
    order: PlaceOrder, account: AccountFigures, limits: RiskLimits
) -> Rejection | None:
    if order.side is Side.BUY:
        hold = hold_for(order, limits)
        if hold > account.buying_power:
            return _reject(Reason.INSUFFICIENT_BUYING_POWER,
                           f"needs {hold}, buying power {max(account.buying_power, ZERO)}")
    elif order.quantity > account.sellable_shares:
        return _reject(Reason.INSUFFICIENT_SHARES,
                       f"sells {order.quantity}, owns {max(account.sellable_shares, ZERO)} free")
    return None


@functools.lru_cache(maxsize=64)  # the same few days on every order
def business_days_back(day: dt.date, count: int) -> dt.date:
    """The first day of the window of `count` business days (Mon-Fri) ending on `day`."""
    first = day
    seen = 1 if day.weekday() < 5 else 0
    while seen < count:
        first -= dt.timedelta(days=1)
        if first.weekday() < 5:
            seen += 1
    return first
