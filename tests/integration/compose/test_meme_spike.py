"""The short meme spike: the whole embedded stack, a baseline of market orders on five symbols
over accounts on both shards, then GME's orders and quotes x7 within 2 s while the others trade
on. Nothing acknowledged is lost (every order final in its shard by the end), buying power runs
out into refusals, never below zero (shards and API), and GME's latest quote reaches the
WebSocket and the cache. Speed is not asserted here: benchmarks/meme_spike.py prints it."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.meme_spike import HOT, SYMBOLS, parse_args, run, start_spike_stack

pytestmark = pytest.mark.integration

ARGS = ["--warmup-s", "3", "--baseline-s", "8", "--spike-s", "8", "--factor", "7",
        "--orders-per-s", "2", "--accounts", "12", "--small-accounts", "6",
        "--small-deposit", "60.00", "--drain-timeout-s", "30", "--no-reconcile"]


def test_a_meme_spike_drops_nothing_overdraws_nothing_and_delivers_the_latest_quote(
        server_dir: Path) -> None:
    args = parse_args(ARGS)
    stack = start_spike_stack(server_dir, args.market_data_processes, args.hot_quotes_per_s)
    try:
        figures = run(stack, args)
    finally:
        code = stack.stop()
    assert code == 0, "".join(stack.output[-50:])
    checks = figures["correctness"]
    assert checks["acknowledged"] > 0, figures
    assert checks["dropped"] == 0, checks
    assert checks["negative_balances_in_shards"] == [], checks
    assert checks["accounts_checked_over_api"] == 18
    assert checks["negative_over_api"] == [], checks
    assert set(figures["setup"]["accounts"]["per_shard"]) == {"0", "1"}, figures["setup"]
    latest = checks["latest_hot_quote"]
    assert latest["ws_delivered"] and latest["cache_delivered"], latest
    spike, baseline = figures["windows"]["spike"], figures["windows"]["baseline"]
    refusals = [spike["orders"][HOT]["risk_refusals"], baseline["orders"][HOT]["risk_refusals"]]
    assert sum(r.get("insufficient_buying_power", 0) for r in refusals) > 0, refusals
    # The spike happened, and every symbol's quotes still arrived (conflated, not stopped).
    assert spike["quotes"][HOT]["produced"] > 3 * baseline["quotes"][HOT]["produced"], spike
    assert spike["orders"][HOT]["sent"] > 3 * baseline["orders"][HOT]["sent"], spike
    assert all(spike["quotes"][s]["delivered_ws"] > 0 for s in SYMBOLS), spike["quotes"]
