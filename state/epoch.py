"""Broker epochs: which log a stored offset refers to.

The embedded broker keeps its topics in memory: after a restart every topic is empty again and
every offset counts from 0, while the shards, the FIX store and the intake journal outlive it.
An offset stored beside a record of the past is only meaningful within the log that produced it.
An epoch names one such log: a random id written once, as the first record of the topic
`{prefix}broker.epoch`, by whoever prepares the topics (`brokerage up`, `brokerage init`). A new
cluster or a broker that forgot its data has no such record, so preparing it writes a new one.
Everything that stores offsets stores the epoch beside them and treats offsets of another epoch
as not comparable (they refer to a log that no longer exists).

Several writers may race on an empty topic: the record at the lowest offset is the epoch, for
everyone. Apache Kafka keeps the topic for good (compacted, one key, no retention), so the
epoch changes only when the cluster's data is lost, which is exactly when offsets stop meaning
anything.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from state.exceptions import EpochUnavailable

EPOCH_TOPIC = "broker.epoch"
EPOCH_KEY = b"epoch"
_EPOCH_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "compact"}
_POLL_S = 0.1


class BrokerEpoch(msgspec.Struct, frozen=True, kw_only=True, tag="broker_epoch", tag_field="type"):
    """The one record of `{prefix}broker.epoch`."""

    v: int = 1
    epoch: str
    created_at: dt.datetime


_DECODER = msgspec.json.Decoder(BrokerEpoch)


def epoch_topic(topic_prefix: str) -> str:
    return topic_prefix + EPOCH_TOPIC


def epoch_topic_config() -> dict[str, str]:
    return dict(_EPOCH_CONFIG)


def read_epoch_record(bootstrap_servers: str, topic_prefix: str, *, timeout_s: float = 10.0,
                      extra: dict[str, Any] | None = None) -> BrokerEpoch | None:
    """The broker's epoch record, or None when the topic is missing or empty."""
    config = {"bootstrap.servers": bootstrap_servers, "group.id": f"epoch-{uuid.uuid4()}",
              "enable.auto.commit": False, "log_level": 0, **(extra or {})}
    consumer = Consumer(config)
    topic = epoch_topic(topic_prefix)
    deadline = time.monotonic() + timeout_s
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=max(timeout_s, 0.5))
        except KafkaException as error:
            raise EpochUnavailable(f"broker {bootstrap_servers}: {error}") from error
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            return None
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0),
                                                       timeout=max(timeout_s, 0.5))
        except KafkaException as error:
            raise EpochUnavailable(f"broker {bootstrap_servers}: {error}") from error
        # One record per producer batch here, so the high watermark is exact (PLATFORM.md).
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        while time.monotonic() < deadline:
            message = consumer.poll(_POLL_S)
            if message is None:
                continue
            if message.error() is not None:
                continue
            try:
                return _DECODER.decode(message.value() or b"")
            except msgspec.DecodeError as error:
                raise EpochUnavailable(f"{topic}: not an epoch record: {error}") from error
        raise EpochUnavailable(f"{topic}: holds records but none was read in {timeout_s:.0f} s")
    finally:
        consumer.close()


def read_epoch(bootstrap_servers: str, topic_prefix: str, *, timeout_s: float = 10.0,
               extra: dict[str, Any] | None = None) -> str | None:
    """The broker's current epoch id, or None when it has none yet."""
    record = read_epoch_record(bootstrap_servers, topic_prefix, timeout_s=timeout_s, extra=extra)
    return None if record is None else record.epoch


def ensure_epoch(bootstrap_servers: str, topic_prefix: str, *, timeout_s: float = 10.0,
                 extra: dict[str, Any] | None = None,
                 now: dt.datetime | None = None) -> str:
    """The broker's epoch id, first creating the topic and writing a new epoch when it has
    none (a new cluster, or a broker that forgot its data)."""
    existing = read_epoch(bootstrap_servers, topic_prefix, timeout_s=timeout_s, extra=extra)
    if existing is not None:
        return existing
    _create_topic(bootstrap_servers, topic_prefix, timeout_s, extra)
    record = BrokerEpoch(epoch=uuid.uuid4().hex,
                         created_at=now or dt.datetime.now(dt.UTC))
    producer = Producer({"bootstrap.servers": bootstrap_servers, "log_level": 0,
                         **(extra or {})})
    producer.produce(epoch_topic(topic_prefix), key=EPOCH_KEY,
                     value=msgspec.json.encode(record))
    if producer.flush(timeout_s) != 0:
        raise EpochUnavailable(f"broker {bootstrap_servers}: epoch record not delivered in "
                               f"{timeout_s:.0f} s")
    # Another writer may have won the race: the first record is the epoch, for everyone.
    winner = read_epoch(bootstrap_servers, topic_prefix, timeout_s=timeout_s, extra=extra)
    if winner is None:
        raise EpochUnavailable(f"{epoch_topic(topic_prefix)}: written but not readable")
    return winner


def _create_topic(bootstrap_servers: str, topic_prefix: str, timeout_s: float,
                  extra: dict[str, Any] | None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0,
                         **(extra or {})})
    topic = NewTopic(epoch_topic(topic_prefix), num_partitions=1, replication_factor=-1,
                     config=epoch_topic_config())
    for name, future in admin.create_topics([topic], operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as error:  # noqa: BLE001 - confluent-kafka raises KafkaException
            if "TOPIC_ALREADY_EXISTS" not in str(error):
                raise EpochUnavailable(f"broker {bootstrap_servers}: cannot create {name}: "
                                       f"{error}") from error
