"""Tick validation, pure: a quote is published only if it passes; otherwise the reason code
goes with it to `dlq.quotes`. Time is passed in."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

import msgspec

from state.messages import Quote

# Stable reason codes, as they appear in dead letters and counters.
NON_POSITIVE_PRICE = "non_positive_price"
NEGATIVE_SIZE = "negative_size"
CROSSED = "crossed_quote"
LOCKED = "locked_quote"
STALE = "stale_venue_time"
FUTURE = "future_venue_time"
UNKNOWN_SYMBOL = "unknown_symbol"
MALFORMED = "malformed_tick"

_BPS = Decimal(10_000)


class ValidationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # A quote whose venue time is older than this at publication is stale (0: no check).
    stale_ms_max: int = 5_000
    # Clocks drift: a venue time up to this far ahead of ours is accepted.
    future_ms_max: int = 1_000
    # bid >= ask is refused unless (bid - ask) / mid is at most this many basis points; at the
    # default 0 every locked (bid == ask) and crossed (bid > ask) quote is refused.
    cross_tolerance_bps: Decimal = Decimal(0)
    lock_allowed: bool = False

    def __post_init__(self) -> None:
        if self.stale_ms_max < 0 or self.future_ms_max < 0:
            raise ValueError("stale_ms_max and future_ms_max must not be negative")
        # A NaN tolerance made every crossed-quote check raise (decimal InvalidOperation).
        if not self.cross_tolerance_bps.is_finite() or self.cross_tolerance_bps < 0:
            raise ValueError("cross_tolerance_bps must be a finite number, not negative")


def check_quote(quote: Quote, now: dt.datetime, rules: ValidationSettings,
                known_symbols: frozenset[str] | None) -> str | None:
    """The reason a quote must not be published, or None when it is good."""
    if known_symbols is not None and quote.symbol not in known_symbols:
        return UNKNOWN_SYMBOL
    prices = (quote.bid, quote.ask) + ((quote.last,) if quote.last is not None else ())
    if any(price <= 0 for price in prices):
        return NON_POSITIVE_PRICE
    sizes = (quote.bid_size, quote.ask_size) + (
        (quote.last_size,) if quote.last_size is not None else ())
    if any(size < 0 for size in sizes):
        return NEGATIVE_SIZE
    reason = _check_cross(quote.bid, quote.ask, rules)
    if reason:
        return reason
    age_ms = (now - quote.venue_time) / dt.timedelta(milliseconds=1)
    if rules.stale_ms_max and age_ms > rules.stale_ms_max:
        return STALE
    if -age_ms > rules.future_ms_max:
        return FUTURE
    return None


def _check_cross(bid: Decimal, ask: Decimal, rules: ValidationSettings) -> str | None:
    if bid < ask:
        return None
    if bid == ask:
        return None if rules.lock_allowed else LOCKED
    mid = (bid + ask) / 2
    if (bid - ask) / mid * _BPS <= rules.cross_tolerance_bps:
        return None
    return CROSSED


class RejectCounter:
    """Bad ticks counted by reason, so an operator sees what a feed drops."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        self.by_reason[reason.split(":", 1)[0]] += 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())
