"""The market-data topology on the embedded broker and Redis: candles, dead letters, and a
replay of the quotes that changes nothing."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from state.messages import Candle, DeadLetter, Quote
from state.quote_cache import QuoteCache
from state.topics import Topic, decode, encode
from tests.integration.connectors.kafka_helpers import read_topic
from topologies.config import KafkaSettings, MarketDataConfig

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 5, 14, 30, tzinfo=dt.UTC)


def _run(config: MarketDataConfig) -> None:
    from topologies.market_data import run

    run(config)


def quote(seconds: int, price: str = "100.00") -> Quote:
    bid = Decimal(price) + Decimal(seconds) / 100
    return Quote(symbol="AAPL", bid=bid, ask=bid + Decimal("0.02"), bid_size=Decimal(100),
                 ask_size=Decimal(100), venue_time=T0 + dt.timedelta(seconds=seconds),
                 last=bid, last_size=Decimal(10))


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def candles_of(records: list[tuple[str | None, bytes]]) -> list[Candle]:
    return [decode(Topic.CANDLES, raw) for _, raw in records]


def test_candles_dead_letters_and_replay(services: Any, topics: str, tmp_path: Path) -> None:
    bootstrap = services.bootstrap_servers
    originals = [("AAPL", encode(quote(s))) for s in range(0, 180, 2)]
    bad = [("AAPL", b"{not json"), ("AAPL", b'{"type":"quote","v":1,"symbol":"AAPL"}')]
    produce(bootstrap, topics + "quotes", originals[:45] + bad + originals[45:])
    config = MarketDataConfig(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=topics),
        state_dir=str(tmp_path), redis_url=services.redis_url, commit_interval_s=0.2,
        candle_intervals=("1m", "5m"))
    process = multiprocessing.get_context("spawn").Process(target=_run, args=(config,))
    process.start()
    cache = QuoteCache(services.redis_url, topics)
    try:
        first = candles_of(read_topic(bootstrap, topics + "candles", lambda r: len(r) >= 2))
        assert [(c.interval, c.start) for c in first] == [
            ("1m", T0), ("1m", T0 + dt.timedelta(minutes=1))]
        minute = first[0]
        assert minute.open == Decimal("100.00") and minute.close == Decimal("100.58")
        assert minute.volume == 300 and minute.trades == 30
        prices = [quote(s).bid for s in range(0, 60, 2)]
        assert minute.vwap == (sum(prices, Decimal(0)) / 30).quantize(Decimal("1E-6"))

        letters = read_topic(bootstrap, topics + "dlq.quotes", lambda r: len(r) >= 2)
        dead = [msgspec.json.decode(raw, type=DeadLetter) for _, raw in letters]
        assert [d.original for d in dead] == [raw for _, raw in bad]
        assert all(d.source_topic == topics + "quotes" and d.offset >= 0 for d in dead)

        # A replay of every quote, then one quote of a later window.
        produce(bootstrap, topics + "quotes", originals + [("AAPL", encode(quote(300)))])
        after = candles_of(read_topic(bootstrap, topics + "candles", lambda r: len(r) >= 4))
        assert [(c.interval, c.start) for c in after] == [
            ("1m", T0), ("1m", T0 + dt.timedelta(minutes=1)),
            ("1m", T0 + dt.timedelta(minutes=2)), ("5m", T0)]
        assert after[3].volume == 900  # every original once, none of the replay
        latest = cache.get("AAPL")
        assert latest is not None and latest.venue_time == T0 + dt.timedelta(seconds=300)
        # The chart store: the closed minutes as published, then the open one.
        deadline = time.monotonic() + 5
        while len(stored := cache.candles("AAPL", "1m", 10)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored[:3] == after[:3]
        assert [c.start for c in stored[3:]] == [T0 + dt.timedelta(minutes=5)]
        assert cache.candles("AAPL", "5m", 10)[0] == after[3]
    finally:
        if process.pid:
            os.kill(process.pid, signal.SIGTERM)
        process.join(20)
        if process.is_alive():
            process.kill()
        cache.clear()
        cache.close()
    assert process.exitcode == 0
