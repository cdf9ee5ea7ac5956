"""Candles: tumbling windows, OHLC of reference prices, volume and VWAP of trade prints."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from state.messages import Candle, Quote
from topologies.market_data import SymbolCandles, fold_quote, open_candles, window_start_us

T0 = dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC)
D = Decimal


def quote(seconds: float, bid: str, ask: str, last: str | None = None,
          size: str | None = None, symbol: str = "AAPL") -> Quote:
    return Quote(symbol=symbol, bid=D(bid), ask=D(ask), bid_size=D(100), ask_size=D(100),
                 venue_time=T0 + dt.timedelta(seconds=seconds),
                 last=D(last) if last else None, last_size=D(size) if size else None)


def fold_all(quotes: list[Quote], intervals: tuple[str, ...] = ("1m",),
             ) -> tuple[SymbolCandles | None, list[Candle]]:
    state: SymbolCandles | None = None
    closed: list[Candle] = []
    for item in quotes:
        new_state, candles = fold_quote(state, item, intervals)
        state = new_state if new_state is not None else state
        closed += candles
    return state, closed


def test_window_start_aligns_to_the_epoch() -> None:
    assert window_start_us(61_500_000, 60) == 60_000_000
    day_us = 86_400 * 1_000_000
    assert window_start_us(3 * day_us + 5, 86_400) == 3 * day_us


def test_a_minute_candle_closes_when_the_next_minute_starts() -> None:
    state, closed = fold_all([
        quote(0, "100.00", "100.02"),              # mid 100.01, no trade
        quote(10, "100.10", "100.12", "100.12", "200"),
        quote(20, "99.90", "99.92", "99.90", "100"),
        quote(59.9, "100.04", "100.06"),
        quote(60, "100.50", "100.52"),             # opens 14:31 and closes 14:30
    ])
    assert len(closed) == 1
    candle = closed[0]
    assert (candle.start, candle.end) == (T0, T0 + dt.timedelta(minutes=1))
    assert (candle.open, candle.high, candle.low, candle.close) == (
        D("100.01"), D("100.12"), D("99.90"), D("100.05"))
    assert candle.volume == D(300) and candle.trades == 2
    assert candle.vwap == ((D("100.12") * 200 + D("99.90") * 100) / 300).quantize(D("1E-6"))
    (current,) = open_candles("AAPL", state)
    assert current.start == T0 + dt.timedelta(minutes=1) and current.open == D("100.51")


def test_a_window_without_trades_has_zero_volume_and_vwap_at_close() -> None:
    _, (candle,) = fold_all([quote(0, "10.00", "10.02"), quote(61, "10.10", "10.12")])
    assert candle.volume == 0 and candle.trades == 0 and candle.vwap == candle.close


def test_every_interval_closes_on_its_own_boundary() -> None:
    quotes = [quote(s, "50.00", "50.02", "50.01", "10") for s in range(0, 3 * 3600 + 1, 30)]
    _, closed = fold_all(quotes, ("1m", "5m", "1h", "1d"))
    by_interval: dict[str, int] = {}
    for candle in closed:
        by_interval[candle.interval] = by_interval.get(candle.interval, 0) + 1
    assert by_interval == {"1m": 180, "5m": 36, "1h": 3}
    hours = [c for c in closed if c.interval == "1h"]
    # T0 is half past: the first hour holds 60 quotes of 10 shares, the others 120.
    assert [c.volume for c in hours] == [600, 1200, 1200]


def test_a_replayed_or_older_quote_changes_nothing() -> None:
    state, _ = fold_all([quote(0, "1.00", "1.02", "1.01", "5"), quote(1, "1.00", "1.02")])
    assert fold_quote(state, quote(1, "1.00", "1.02"), ("1m",)) == (None, [])
    assert fold_quote(state, quote(0.5, "9.00", "9.02"), ("1m",)) == (None, [])


@given(st.lists(st.tuples(st.integers(1, 10_000), st.integers(1, 5), st.integers(0, 300)),
                min_size=1, max_size=60))
def test_volume_and_vwap_match_the_trades_of_each_window(
        ticks: list[tuple[int, int, int]]) -> None:
    quotes = [quote(i * 7, f"{cents / 100:.2f}", f"{(cents + spread) / 100:.2f}",
                    f"{cents / 100:.2f}" if size else None, str(size) if size else None)
              for i, (cents, spread, size) in enumerate(ticks)]
    state, closed = fold_all(quotes)
    candles = closed + open_candles("AAPL", state)
    assert sum(c.volume for c in candles) == sum(size for *_, size in ticks)
    for candle in candles:
        assert candle.low <= min(candle.open, candle.close) <= candle.high
        if candle.volume:
            assert candle.low <= candle.vwap <= candle.high
