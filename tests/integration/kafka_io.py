"""Small Kafka helpers for integration tests: produce typed messages, read a topic whole."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from state.messages import Message
from state.topics import encode


@dataclass(frozen=True)
class Record:
    key: str | None
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                     "enable.idempotence": True, "linger.ms": 1})


def produce(bootstrap: str, topic: str, messages: Iterable[Message],
            key: Callable[[Message], str] = lambda m: m.account_id) -> None:  # type: ignore[attr-defined]
    sender = producer(bootstrap)
    for message in messages:
        sender.produce(topic, key=key(message).encode(), value=encode(message))
    assert sender.flush(15) == 0, "records not delivered"


def produce_raw(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    sender = producer(bootstrap)
    sender.produce(topic, key=key.encode(), value=value)
    assert sender.flush(15) == 0


def read_topic(bootstrap: str, topic: str, *, until: Callable[[list[Record]], bool] | None = None,
               timeout_s: float = 30.0, idle_s: float = 2.0) -> list[Record]:
    """Every record of `topic` from offset 0: until `until(records)` holds (or the timeout), or,
    without `until`, until nothing new came for `idle_s` (watermarks are not trusted here)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False, "enable.partition.eof": False,
                         "isolation.level": "read_committed"})
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                key = msg.key().decode() if msg.key() is not None else None
                records.append(Record(key, msg.value(), msg.partition(), msg.offset(),
                                      msg.timestamp()[1]))
                last_new = time.monotonic()
                if until is not None and until(records):
                    return records
            elif msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"reading {topic}: {msg.error()}")
            if until is None and time.monotonic() - last_new > idle_s:
                return records
    finally:
        consumer.close()
    if until is not None:
        raise AssertionError(f"{topic}: condition not met in {timeout_s} s; "
                             f"{len(records)} records read")
    return records
