"""The synthetic NBBO feed: a seeded random walk per symbol, so two runs with one seed publish
the same prices and sizes (venue times differ: they are the publication time)."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from connectors.runtime import Clock, Pause, Publish, Reject, Step
from connectors.validation import ValidationSettings, check_quote
from state.messages import Quote, Symbol
from state.topics import encode

PACE_INTERVAL_S = 0.01  # quotes are released in small bursts every 10 ms at the configured rate
UNPACED_BURST = 1_000  # at rate 0 (as fast as possible) a pause point every this many quotes
_CENT = Decimal("0.01")


class SyntheticQuotesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                              kw_only=True):
    symbols: tuple[Symbol, ...]
    rate_per_s: float = 50.0  # across all symbols; 0: as fast as possible
    seed: int = 1
    start_prices: dict[Symbol, Decimal] = {}
    volatility_bps: float = 2.0  # standard deviation of one step of the mid price
    trade_probability: float = 0.3  # share of quotes that carry a trade print
    quotes_max: int = 0  # stop after this many quotes (0: never); for benchmarks and tests
    validation: ValidationSettings = ValidationSettings()

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("symbols must name at least one symbol")
        # NaN and Infinity (TOML and JSON both write them) pass every comparison below, and
        # the feed then died on its first quote.
        for name in ("rate_per_s", "volatility_bps", "trade_probability"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if self.rate_per_s < 0 or self.quotes_max < 0:
            raise ValueError("rate_per_s and quotes_max must not be negative")
        if self.volatility_bps < 0:
            raise ValueError("volatility_bps must not be negative")
        if not 0 <= self.trade_probability <= 1:
            raise ValueError("trade_probability must be between 0 and 1")
        bad = [symbol for symbol, price in self.start_prices.items()
               if not price.is_finite() or price <= 0]
        if bad:
            raise ValueError(f"start_prices of {bad[:5]} must be positive finite prices")


@dataclass
class _Walk:
    mid_cents: int
    spread_bps: float


class RandomWalk:
    """Prices in integer cents; every figure comes from one seeded generator."""

    def __init__(self, settings: SyntheticQuotesSettings) -> None:
        self._rng = random.Random(settings.seed)
        self._volatility = settings.volatility_bps / 10_000
        self._trade_probability = settings.trade_probability
        self._walks = {symbol: self._start(symbol, settings.start_prices.get(symbol))
                       for symbol in settings.symbols}

    def _start(self, symbol: str, price: Decimal | None) -> _Walk:
        cents = int(price / _CENT) if price is not None else self._rng.randint(1_000, 50_000)
        # Liquid names quote a cent or a few wide; a few basis points of the price is typical.
        return _Walk(mid_cents=max(cents, 10), spread_bps=self._rng.uniform(0.5, 4.0))

    def quote(self, symbol: str, venue_time: dt.datetime) -> Quote:
        walk = self._walks[symbol]
        rng = self._rng
        step = round(rng.gauss(0.0, self._volatility * walk.mid_cents))
        walk.mid_cents = max(walk.mid_cents + step, 10)
        spread = max(1, round(walk.mid_cents * walk.spread_bps / 10_000 * rng.uniform(0.5, 1.5)))
        bid_cents = max(walk.mid_cents - spread // 2, 1)
        ask_cents = bid_cents + spread
        last = last_size = None
        if rng.random() < self._trade_probability:
            last = _cents(ask_cents if rng.random() < 0.5 else bid_cents)
            last_size = Decimal(rng.choice((1, 5, 10, 25, 50, 100, 100, 200, 300, 500)))
        return Quote(
            symbol=symbol, bid=_cents(bid_cents), ask=_cents(ask_cents),
            # random() rather than randint(): a third of the generator's time went to randint.
            bid_size=Decimal(100 + 100 * int(rng.random() * 20)),
            ask_size=Decimal(100 + 100 * int(rng.random() * 20)),
            venue_time=venue_time, last=last, last_size=last_size,
        )


def _cents(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


class SyntheticQuotes:
    """Round-robin over the symbols at `rate_per_s` quotes per second in total."""

    def __init__(self, settings: SyntheticQuotesSettings) -> None:
        self.settings = settings

    def steps(self, clock: Clock) -> Iterator[Step]:
        settings = self.settings
        walk = RandomWalk(settings)
        known = frozenset(settings.symbols)
        symbols = settings.symbols
        started_s = clock.monotonic()
        produced = 0
        while not settings.quotes_max or produced < settings.quotes_max:
            due = self._due(clock.monotonic() - started_s, produced)
            for _ in range(due):
                now = clock.now()
                quote = walk.quote(symbols[produced % len(symbols)], now)
                produced += 1
                reason = check_quote(quote, now, settings.validation, known)
                yield Publish(quote.symbol, quote) if reason is None else \
                    Reject(quote.symbol, reason, encode(quote))
            if settings.rate_per_s:
                yield Pause(clock.monotonic() + PACE_INTERVAL_S)
            else:
                yield Pause(0.0)

    def _due(self, elapsed_s: float, produced: int) -> int:
        limit = self.settings.quotes_max or None
        if not self.settings.rate_per_s:
            due = UNPACED_BURST
        else:
            due = int(elapsed_s * self.settings.rate_per_s) - produced
        if limit is not None:
            due = min(due, limit - produced)
        return max(due, 0)
