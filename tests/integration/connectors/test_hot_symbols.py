"""A hot symbol's quotes land only in its dedicated partition, and no other symbol's do."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from compose.kafka import create_topics
from connectors.config import ConnectorConfig, ConnectorsConfig
from state.topics import topic_specs

pytestmark = pytest.mark.integration

SYMBOLS = ["AAPL", "MSFT", "TSLA", "GME", "SPY", "NVDA", "AMZN", "META", "AMD", "QQQ"]
PARTITIONS = 4
HOT = {"GME": 3}


def _run(config: ConnectorsConfig) -> None:
    from connectors.service import run

    run(config)


def symbols_by_partition(bootstrap: str, topic: str, count: int) -> dict[int, set[str]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                         "enable.auto.commit": False})
    found: dict[int, set[str]] = defaultdict(set)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        seen, deadline = 0, time.monotonic() + 30
        while seen < count and time.monotonic() < deadline:
            for record in consumer.consume(500, 0.2):
                if record.error() is None:
                    found[record.partition()].add((record.key() or b"").decode())
                    seen += 1
    finally:
        consumer.close()
    return dict(found)


def test_a_hot_symbol_has_its_partition_to_itself(services: Any) -> None:
    prefix = f"hot{uuid.uuid4().hex[:6]}."
    create_topics(services.bootstrap_servers, topic_specs(prefix, 2, PARTITIONS))
    feed = ConnectorConfig(name="feed", connector="synthetic_quotes", topic="quotes",
                           settings={"symbols": SYMBOLS, "rate_per_s": 0, "quotes_max": 2000})
    config = ConnectorsConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=prefix,
                              connectors=(feed,), hot_symbols=HOT)
    process = multiprocessing.get_context("spawn").Process(target=_run, args=(config,))
    process.start()
    try:
        found = symbols_by_partition(services.bootstrap_servers, prefix + "quotes", 2000)
    finally:
        if process.pid:
            os.kill(process.pid, signal.SIGTERM)
        process.join(20)
        if process.is_alive():
            process.kill()
    assert sum(len(v) for v in found.values()) >= len(SYMBOLS)
    assert found[3] == {"GME"}
    assert all("GME" not in symbols for partition, symbols in found.items() if partition != 3)
    assert set().union(*(found.get(p, set()) for p in range(3))) == set(SYMBOLS) - {"GME"}
