"""Operator commands on topics: list, tail, replay, and publishing market status."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from compose.exceptions import ComposeError
from state.messages import MarketStatus, SymbolStatus
from state.topics import Topic, encode

Report = Callable[[str], None]
IDLE_S_MAX = 2.0  # the broker's high watermark is unreliable: stop after this long with nothing


def list_topics(bootstrap: str, prefix: str, report: Report) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    for name in sorted(metadata.topics):
        if name.startswith(prefix) and not name.startswith("__"):
            report(f"{name}\t{len(metadata.topics[name].partitions)} partitions")
    return 0


def _assigned_consumer(bootstrap: str, topic: str, start_offset: int) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "brokerage-cli",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    metadata = consumer.list_topics(topic, timeout=10)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        consumer.close()
        raise ComposeError(f"topic {topic} does not exist")
    consumer.assign([TopicPartition(topic, p, start_offset)
                     for p in metadata.topics[topic].partitions])
    return consumer


def tail(bootstrap: str, topic: str, count: int, from_beginning: bool, report: Report) -> int:
    consumer = _assigned_consumer(bootstrap, topic, 0 if from_beginning else -1)
    seen = 0
    try:
        while count == 0 or seen < count:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            key = (msg.key() or b"").decode(errors="replace")
            report(f"{msg.partition()}:{msg.offset()} {key} "
                   f"{(msg.value() or b'').decode(errors='replace')}")
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def replay(bootstrap: str, source: str, destination: str, *, from_offset: int | None,
           from_time: dt.datetime | None, report: Report) -> int:
    """Copy records (key, value, headers, timestamp) from `source` into `destination`,
    partitioned by key.
    Consumers are idempotent by deterministic ids, so a replay changes no balance."""
    consumer = _assigned_consumer(bootstrap, source, from_offset or 0)
    since_ms = int(from_time.timestamp() * 1000) if from_time else None
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    copied = 0
    last_seen = time.monotonic()
    try:
        while time.monotonic() - last_seen < IDLE_S_MAX:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise ComposeError(f"reading {source}: {msg.error()}")
                continue
            last_seen = time.monotonic()
            if since_ms is not None and msg.timestamp()[1] < since_ms:
                continue
            # The original timestamp travels along: it is the record's event time, which
            # the topologies use as `now` and to align their input topics.
            producer.produce(destination, key=msg.key(), value=msg.value(),
                             headers=msg.headers(), timestamp=msg.timestamp()[1])
            producer.poll(0)
            copied += 1
            if copied % 10_000 == 0:
                report(f"replayed {copied} records ...")
    finally:
        consumer.close()
        remaining = producer.flush(30)
    if remaining:
        raise ComposeError(f"replay to {destination}: {remaining} records not delivered")
    report(f"replayed {copied} records from {source} to {destination}")
    return 0


def publish_market_status(bootstrap: str, prefix: str, symbol: str, status: str,
                          reason: str | None) -> None:
    message = MarketStatus(symbol=symbol, status=SymbolStatus(status),
                           effective_at=dt.datetime.now(dt.UTC), reason=reason)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(prefix + Topic.MARKET_STATUS, key=symbol.encode(), value=encode(message))
    if producer.flush(10):
        raise ComposeError(f"broker {bootstrap}: market status for {symbol} not delivered")
