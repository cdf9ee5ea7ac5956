"""Several market-data workers in one group over more quote partitions (a hot symbol on its
own), and a worker whose session times out (frozen past the session timeout, as on an
overloaded machine): the group rebalances and quotes keep flowing, nothing crashes."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from compose.kafka import create_topics
from connectors.partitioning import SymbolPartitioner
from state.messages import Quote
from state.quote_cache import QuoteCache
from state.topics import encode, topic_specs
from topologies.config import KafkaSettings, MarketDataConfig

pytestmark = pytest.mark.integration
psutil = pytest.importorskip("psutil")

SYMBOLS = ["AAPL", "MSFT", "TSLA", "GME", "SPY", "NVDA", "AMZN", "META"]
PARTITIONS = 4
SESSION_MS = 3000


def _run(config: MarketDataConfig) -> None:
    from topologies.market_data import run

    run(config)


def _feed(bootstrap: str, topic: str, stop: threading.Event) -> None:
    partitioner = SymbolPartitioner(PARTITIONS, {"GME": 3})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    while not stop.is_set():
        now = dt.datetime.now(dt.UTC)
        for symbol in SYMBOLS:
            quote = Quote(symbol=symbol, bid=Decimal("10.00"), ask=Decimal("10.02"),
                          bid_size=Decimal(100), ask_size=Decimal(100), venue_time=now,
                          last=Decimal("10.01"), last_size=Decimal(5))
            producer.produce(topic, key=symbol, value=encode(quote),
                             partition=partitioner.partition(symbol))
        producer.poll(0)
        time.sleep(0.02)
    producer.flush(10)


def _ages_ms(cache: QuoteCache) -> dict[str, float]:
    now = dt.datetime.now(dt.UTC)
    return {s: (now - q.venue_time) / dt.timedelta(milliseconds=1)
            for s, q in cache.get_many(SYMBOLS).items()}


def _wait_fresh(cache: QuoteCache, process: Any, age_ms_max: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.is_alive()
        ages = _ages_ms(cache)
        if len(ages) == len(SYMBOLS) and max(ages.values()) < age_ms_max:
            return
        time.sleep(0.2)
    raise AssertionError(f"quotes not fresh: {_ages_ms(cache)}")


def test_two_workers_survive_a_session_timeout(services: Any, tmp_path: Path) -> None:
    prefix = f"w{uuid.uuid4().hex[:6]}."
    bootstrap = services.bootstrap_servers
    create_topics(bootstrap, topic_specs(prefix, 2, PARTITIONS))
    config = MarketDataConfig(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix),
        redis_url=services.redis_url, commit_interval_s=0.2, session_timeout_ms=SESSION_MS,
        processes=2)
    process = multiprocessing.get_context("spawn").Process(target=_run, args=(config,))
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(bootstrap, prefix + "quotes", stop))
    cache = QuoteCache(services.redis_url, prefix)
    process.start()
    feeder.start()
    try:
        _wait_fresh(cache, process, 1_000, 40)
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2
        frozen = workers[0]
        frozen.suspend()  # SIGSTOP: no heartbeats, the group evicts it
        time.sleep(SESSION_MS / 1000 * 2)
        _wait_fresh(cache, process, 1_000, 20)  # the other worker took every partition
        frozen.resume()  # it finds itself evicted, rejoins, and carries on
        time.sleep(SESSION_MS / 1000 * 2)
        _wait_fresh(cache, process, 1_000, 20)
        assert all(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
                   for worker in workers)
    finally:
        stop.set()
        feeder.join()
        if process.pid:
            os.kill(process.pid, signal.SIGTERM)
        process.join(30)
        if process.is_alive():
            process.kill()
        cache.clear()
        cache.close()
    assert process.exitcode == 0
