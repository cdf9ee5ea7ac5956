from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from connectors import validation as v
from state.messages import Quote

NOW = dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC)
KNOWN = frozenset({"AAPL"})


def quote(bid: str = "209.50", ask: str = "209.52", age_ms: int = 0, symbol: str = "AAPL",
          last: str | None = None, size: str = "100") -> Quote:
    return Quote(symbol=symbol, bid=Decimal(bid), ask=Decimal(ask), bid_size=Decimal(size),
                 ask_size=Decimal(100), venue_time=NOW - dt.timedelta(milliseconds=age_ms),
                 last=Decimal(last) if last else None)


@pytest.mark.parametrize(("tick", "reason"), [
    (quote(), None),
    (quote(symbol="ZZZZ"), v.UNKNOWN_SYMBOL),
    (quote(bid="0"), v.NON_POSITIVE_PRICE),
    (quote(ask="-1"), v.NON_POSITIVE_PRICE),
    (quote(last="0"), v.NON_POSITIVE_PRICE),
    (quote(size="-100"), v.NEGATIVE_SIZE),
    (quote(bid="209.52", ask="209.52"), v.LOCKED),
    (quote(bid="209.60", ask="209.52"), v.CROSSED),
    (quote(age_ms=5_001), v.STALE),
    (quote(age_ms=-1_001), v.FUTURE),
    (quote(age_ms=4_999), None),
])
def test_default_rules(tick: Quote, reason: str | None) -> None:
    assert v.check_quote(tick, NOW, v.ValidationSettings(), KNOWN) == reason


def test_tolerances() -> None:
    rules = v.ValidationSettings(cross_tolerance_bps=Decimal(5), lock_allowed=True,
                                 stale_ms_max=0)
    assert v.check_quote(quote(bid="100.04", ask="100.00"), NOW, rules, None) is None  # 4 bps
    assert v.check_quote(quote(bid="100.06", ask="100.00"), NOW, rules, None) == v.CROSSED
    assert v.check_quote(quote(bid="100.00", ask="100.00"), NOW, rules, None) is None
    assert v.check_quote(quote(age_ms=10**9), NOW, rules, None) is None  # staleness off
    assert v.check_quote(quote(symbol="ANY"), NOW, rules, None) is None  # no universe


def test_reject_counter_groups_by_reason_code() -> None:
    counter = v.RejectCounter()
    for reason in (v.STALE, v.STALE, f"{v.MALFORMED}: missing bid"):
        counter.count(reason)
    assert counter.by_reason == {v.STALE: 2, v.MALFORMED: 1} and counter.total == 3
