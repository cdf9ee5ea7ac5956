"""After a restart: the ExecIDs that reached `executions` after the store last committed.

The gateway commits forwarded ExecIDs to its store once the broker acknowledges them, one main
loop pass later. A kill -9 inside that pass left records on the topic whose ExecIDs the store
does not know, and the market maker's resend would forward them a second time. So before the
sessions log on, the gateway reads `executions` from the offsets its store committed (kept per
partition beside the ExecIDs) to the end, and counts every ExecID there as forwarded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from gateways.exceptions import GatewayError
from state.topics import Topic, decode

IDLE_S = 0.3  # nothing new for this long once past the watermark: the end
TIMEOUT_S = 30.0
BATCH_RECORDS = 1000


@dataclass(frozen=True)
class Tail:
    exec_ids: frozenset[str]
    next_offsets: dict[int, int]  # per partition, where the next read starts


def read_tail(bootstrap_servers: str, topic: str, starts: Mapping[int, int], *,
              idle_s: float = IDLE_S, timeout_s: float = TIMEOUT_S) -> Tail:
    """ExecIDs on `topic` from `starts` (per partition) to the end. A partition with no start
    (a new store) starts at its end: nothing before it can be this store's."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"fix-gateway-recovery-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
    })
    try:
        partitions = _partitions(consumer, topic)
        assigned = [TopicPartition(topic, p, starts.get(p, OFFSET_END)) for p in partitions]
        # Tansu may report a watermark below the real end (PLATFORM.md): it is a lower bound,
        # and the idle wait takes whatever lies beyond it.
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
        consumer.assign(assigned)
        # Only partitions read from a stored offset have an end to reach; one started at its
        # end has nothing of ours before it (the idle wait takes what came after).
        pending = {p: ends[p] for p in partitions if p in starts and starts[p] < ends[p]}
        exec_ids, read_to = _read(consumer, topic, pending, idle_s, timeout_s)
        next_offsets = {p: max(read_to.get(p, 0), starts.get(p, ends[p])) for p in partitions}
        return Tail(frozenset(exec_ids), next_offsets)
    except KafkaException as error:
        raise GatewayError(f"cannot read {topic} to recover forwarded ExecIDs: {error}") \
            from error
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise GatewayError(f"topic {topic} does not exist")
    return sorted(metadata.partitions)


def _read(consumer: Consumer, topic: str, pending: dict[int, int], idle_s: float,
          timeout_s: float) -> tuple[set[str], dict[int, int]]:
    """ExecIDs read, and per partition the offset after the last record read."""
    exec_ids: set[str] = set()
    read_to: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    last_record_at = time.monotonic()
    while pending or time.monotonic() - last_record_at < idle_s:
        if time.monotonic() > deadline:
            raise GatewayError(f"{topic}: not read to offsets {pending} within {timeout_s} s")
        for message in consumer.consume(BATCH_RECORDS, timeout=0.05):
            if message.error():
                continue
            last_record_at = time.monotonic()
            read_to[message.partition()] = message.offset() + 1
            exec_id = _exec_id(message.value())
            if exec_id is not None:
                exec_ids.add(exec_id)
        # The position, not only the last record: transaction markers take offsets too.
        for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
            reached = max(tp.offset, read_to.get(tp.partition, -1))
            if reached >= pending[tp.partition]:
                del pending[tp.partition]
    return exec_ids, read_to


def _exec_id(raw: bytes | None) -> str | None:
    try:
        return getattr(decode(Topic.EXECUTIONS, raw), "exec_id", None)
    except Exception:  # noqa: BLE001 - a record we cannot read is not one we forwarded
        return None
