"""Feed -> broker -> market-data topology -> Redis, each service in its own process."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from connectors.config import ConnectorConfig, ConnectorsConfig
from state.quote_cache import QuoteCache
from topologies.config import KafkaSettings, MarketDataConfig

pytestmark = pytest.mark.integration

SYMBOLS = ["AAPL", "MSFT", "TSLA", "GME", "SPY"]


def _run_connectors(config: ConnectorsConfig) -> None:
    from connectors.service import run

    run(config)


def _run_market_data(config: MarketDataConfig) -> None:
    from topologies.market_data import run

    run(config)


@contextmanager
def service(target: Callable[[Any], None], config: Any,
            ) -> Iterator[multiprocessing.process.BaseProcess]:
    """A service in a spawned process, stopped with SIGTERM (then killed) at the end."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=(config,))
    process.start()
    try:
        yield process
    finally:
        if process.is_alive() and process.pid:
            os.kill(process.pid, signal.SIGTERM)
        process.join(20)
        if process.is_alive():
            process.kill()
            process.join(5)


def _connectors_config(bootstrap: str, prefix: str, rate: float) -> ConnectorsConfig:
    feed = ConnectorConfig(name="feed", connector="synthetic_quotes", topic="quotes",
                           settings={"symbols": SYMBOLS, "rate_per_s": rate, "seed": 3})
    return ConnectorsConfig(bootstrap_servers=bootstrap, topic_prefix=prefix,
                            connectors=(feed,))


def _market_data_config(services: Any, prefix: str, state_dir: Path) -> MarketDataConfig:
    return MarketDataConfig(
        kafka=KafkaSettings(bootstrap_servers=services.bootstrap_servers, topic_prefix=prefix),
        state_dir=str(state_dir), redis_url=services.redis_url, commit_interval_s=0.2)


def test_synthetic_feed_reaches_the_quote_cache(services: Any, topics: str,
                                                tmp_path: Path) -> None:
    cache = QuoteCache(services.redis_url, key_prefix=topics)
    try:
        with service(_run_market_data, _market_data_config(services, topics, tmp_path)) as md, \
                service(_run_connectors, _connectors_config(services.bootstrap_servers, topics,
                                                            100)) as feed:
            deadline = time.monotonic() + 45
            found: dict[str, Any] = {}
            while time.monotonic() < deadline and len(found) < len(SYMBOLS):
                assert md.is_alive() and feed.is_alive()
                found = {s: q for s in SYMBOLS if (q := cache.get(s)) is not None}
                time.sleep(0.2)
            assert sorted(found) == sorted(SYMBOLS)
            first = found["AAPL"].venue_time
            time.sleep(1.0)
            later = cache.get("AAPL")
            assert later is not None and later.venue_time > first  # still flowing
            age_ms = (dt.datetime.now(dt.UTC) - later.venue_time) / dt.timedelta(milliseconds=1)
            assert age_ms < 2_000
            assert cache.stale_symbols(dt.datetime.now(dt.UTC), 5_000) == {}
        assert md.exitcode == 0 and feed.exitcode == 0  # both stopped cleanly on SIGTERM
    finally:
        cache.clear()
        cache.close()
