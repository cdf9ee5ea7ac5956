"""Reading what a service produced, without consumer groups or watermarks (PLATFORM.md)."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def read_topic(bootstrap: str, topic: str, done: Callable[[list[tuple[str | None, bytes]]], bool],
               timeout_s: float = 30.0) -> list[tuple[str | None, bytes]]:
    """Every record of `topic` from the beginning until `done(records)` or the timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[tuple[str | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while not done(records) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            key = message.key()
            records.append((key.decode() if key else None, message.value() or b""))
        return records
    finally:
        consumer.close()
