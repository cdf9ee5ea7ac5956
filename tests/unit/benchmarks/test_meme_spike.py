"""The meme spike benchmark's own parts: its schedule, the hot symbol's paced feed, the stack's
connectors dir, and how orders are counted (dropped = acknowledged, not final)."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

import pytest

from benchmarks.meme_spike import (
    HOT,
    Account,
    HotQuotes,
    Order,
    Schedule,
    TopicRecord,
    _interleave,
    order_figures,
    parse_args,
    write_connectors,
)
from connectors.config import load_connector_dir
from connectors.registry import parse_settings
from connectors.runtime import Publish
from connectors.synthetic import SyntheticQuotesSettings
from tests.unit.connectors.fakes import T0, FakeClock, play

START = T0.timestamp()


def schedule(factor: float = 7.0, ramp_s: float = 2.0) -> Schedule:
    args = argparse.Namespace(warmup_s=5.0, baseline_s=10.0, spike_s=10.0, ramp_s=ramp_s,
                              factor=factor)
    return Schedule.of(args, START)


def test_the_windows_follow_each_other_and_the_spike_ramps_to_its_factor() -> None:
    plan = schedule()
    assert [plan.window(START + s) for s in (-1, 0, 4.9, 5, 14.9, 15, 24.9, 25)] == [
        None, "warmup", "warmup", "baseline", "baseline", "spike", "spike", None]
    assert plan.hot_factor(START + 14.9) == 1.0
    assert plan.hot_factor(START + 16) == pytest.approx(4.0)  # halfway up a 2 s ramp
    assert plan.hot_factor(START + 17) == plan.hot_factor(START + 24) == 7.0
    assert schedule(ramp_s=0).hot_factor(START + 15) == 7.0
    assert plan.seconds("baseline") == plan.seconds("spike") == 10.0


def test_the_hot_feed_paces_its_quotes_at_the_scheduled_rate() -> None:
    plan = schedule()
    settings = SyntheticQuotesSettings(symbols=(HOT,), rate_per_s=10,
                                       start_prices={HOT: Decimal("23.40")})
    feed = HotQuotes(settings, lambda at: 10.0 * plan.hot_factor(at))
    times = [at for at, step in play(feed, FakeClock(), until_s=25.0)
             if isinstance(step, Publish)]
    assert all(isinstance(step, Publish) and step.key == HOT
               for _at, step in play(HotQuotes(settings, lambda at: 10.0), FakeClock(),
                                     until_s=1.0))
    baseline = sum(1 for t in times if 5 <= t < 15)
    spike = sum(1 for t in times if 17 <= t < 25)  # past the ramp
    assert baseline == pytest.approx(100, abs=2)
    assert spike == pytest.approx(8 * 70, abs=2)


def test_the_stacks_feed_is_the_example_less_the_hot_symbol(tmp_path: Path) -> None:
    write_connectors(tmp_path, 10.0)
    configs = {c.name: c for c in load_connector_dir(tmp_path)}
    feed = next(c for c in configs.values() if c.connector == "synthetic_quotes")
    settings = parse_settings(feed)
    assert settings.symbols == ("AAPL", "MSFT", "TSLA", "SPY")
    assert settings.rate_per_s == 40.0  # 10 a second each, as the example's 50 over 5
    assert HOT not in settings.start_prices and settings.start_prices["AAPL"] == Decimal("209.50")
    assert any(c.connector == "market_status" for c in configs.values())


def account(name: str, small: bool = False) -> Account:
    return Account(name, 0, {}, small)


def test_accounts_alternate_while_both_lists_last() -> None:
    regular = [account(f"r{i}") for i in range(3)]
    small = [account("s0", True)]
    assert [a.account_id for a in _interleave(regular, small)] == ["r0", "s0", "r1", "r2"]


def order(n: int, status: int | None, reason: str | None = None) -> Order:
    return Order("AAPL", "baseline", account(f"acct{n}"), f"key{n}", "buy", 100.0,
                 answered=100.05, status=status, reason=reason)


def test_an_acknowledged_order_not_final_by_the_end_counts_as_not_decided() -> None:
    orders = [order(0, 201), order(1, 202), order(2, 422, "insufficient_buying_power"),
              order(3, 429, "rate_limited"), order(4, None, "TimeoutError"),
              order(5, 201)]
    final = {orders[0].order_id: ("filled", None),
             orders[1].order_id: ("rejected", "insufficient_buying_power"),
             orders[2].order_id: ("rejected", "insufficient_buying_power"),
             orders[5].order_id: ("routed", None)}
    record = TopicRecord()
    record.command_at[orders[0].order_id] = 100.01
    record.first_event_seen[orders[0].order_id] = 100.04
    record.fill_report_at[orders[0].order_id] = 100.10
    record.final[orders[0].order_id] = ("filled", None, 100.20)
    figures = order_figures(orders, record, final)
    assert figures["sent"] == 6
    assert figures["acknowledged"] == 4  # 201, 202, the risk refusal, and the open one
    assert figures["decided"] == 3 and figures["filled"] == 1
    assert figures["risk_refusals"] == {"insufficient_buying_power": 2}
    assert figures["refused_at_intake"] == {"429:rate_limited": 1}
    assert figures["unanswered"] == 1
    assert figures["fill_ms"]["p50"] == pytest.approx(200.0)
    assert figures["stages_ms"]["risk"]["p50"] == pytest.approx(30.0)
    assert figures["stages_ms"]["booking"]["p50"] == pytest.approx(100.0)


def test_the_run_is_bounded() -> None:
    assert parse_args([]).factor == 7.0
    with pytest.raises(SystemExit):
        parse_args(["--baseline-s", "400", "--spike-s", "400"])
    with pytest.raises(SystemExit):
        parse_args(["--factor", "0"])
