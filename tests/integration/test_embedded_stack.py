"""The embedded servers work as the real thing: keyed partitioning, Postgres, Redis."""

from __future__ import annotations

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Producer

from state.ids import account_id_for, partition_for_key, shard_of_partition
from state.topics import Topic

pytestmark = pytest.mark.integration


def test_murmur2_matches_the_clients_partitioner(services, topics) -> None:
    """Our partition arithmetic is the one producers use, so accounts stay in their shard."""
    topic = topics + Topic.ORDERS_COMMANDS
    producer = Producer({"bootstrap.servers": services.bootstrap_servers,
                         "partitioner": "murmur2_random"})
    placed: dict[str, int] = {}

    def record(err, msg) -> None:  # noqa: ANN001
        assert err is None, err
        placed[msg.key().decode()] = msg.partition()

    keys = [account_id_for(f"seed{i}", i % 2, 2, 2) for i in range(20)]
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"{}", on_delivery=record)
    assert producer.flush(10) == 0
    for i, key in enumerate(keys):
        assert placed[key] == partition_for_key(key, services.account_partitions)
        assert shard_of_partition(placed[key], 2) == i % 2


def test_records_round_trip(services, topics) -> None:
    topic = topics + Topic.QUOTES
    producer = Producer({"bootstrap.servers": services.bootstrap_servers})
    for i in range(5):
        producer.produce(topic, key=b"AAPL", value=f"m{i}".encode())
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": services.bootstrap_servers,
                         "group.id": topics + "g", "auto.offset.reset": "earliest",
                         "session.timeout.ms": 3000})
    consumer.subscribe([topic])
    seen: list[bytes] = []
    try:
        for _ in range(200):
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                seen.append(msg.value())
            if len(seen) == 5:
                break
    finally:
        consumer.close()
    assert seen == [f"m{i}".encode() for i in range(5)]


def test_postgres_and_redis_answer(services) -> None:
    for dsn in services.shard_dsns:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    client = redis.Redis.from_url(services.redis_url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()
