"""After a restart: the ExecIDs that reached `executions` after the store last committed.

The gateway commits forwarded ExecIDs to its store some milliseconds after the broker
acknowledges them. A kill -9 in between left records on the topic whose ExecIDs the store does
not know, and the market maker's resend would forward them a second time. So before the
sessions log on, the gateway reads `executions` from the offsets its store committed (kept per
partition beside the ExecIDs) to the end, and counts every ExecID there as forwarded, keeping
its payload like any report it forwarded (gateways.fix.durable).

The offsets count in one broker epoch (state.epoch), stored beside them: offsets of another
epoch refer to a log that is gone, so every partition is then read from its beginning (the
topic was recreated). The content check below stays as a second line for stores without an
epoch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from gateways.exceptions import GatewayError
from state.topics import Topic, decode

IDLE_S = 0.3  # nothing new for this long once past the watermark: the end
TIMEOUT_S = 30.0
BATCH_RECORDS = 1000


@dataclass(frozen=True)
class Tail:
    exec_ids: frozenset[str]
    next_offsets: dict[int, int]  # per partition, where the next read starts
    reset: frozenset[int]  # partitions found recreated since the store's offsets (read from 0)
    payloads: dict[str, bytes] = field(default_factory=dict)  # record value per ExecID


def read_tail(bootstrap_servers: str, topic: str, starts: Mapping[int, int],
              known: Container[str], *, idle_s: float = IDLE_S,
              timeout_s: float = TIMEOUT_S, recreated: bool = False) -> Tail:
    """ExecIDs on `topic` from `starts` (per partition) to the end. A partition with no start
    (a new store) starts at its end: nothing before it can be this store's.

    Each start is checked first: the record just before it must be one whose ExecID the store
    knows (`known`). When it is not there, the topic was recreated (the embedded broker forgets
    every topic on a restart; the store outlives it) and the partition is read from its
    beginning: offsets count from 0 again. `recreated` (the offsets are of another broker
    epoch) reads every partition from its beginning without looking."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"fix-gateway-recovery-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
    })
    try:
        partitions = _partitions(consumer, topic)
        if recreated:
            starts = dict.fromkeys(partitions, 0)
        # Tansu may report a watermark below the real end (PLATFORM.md): it is a lower bound,
        # and the idle wait takes whatever lies beyond it.
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
        anchors = {p: starts[p] - 1 for p in partitions if starts.get(p, 0) > 0}
        consumer.assign([TopicPartition(topic, p, anchors.get(p, starts.get(p, OFFSET_END)))
                         for p in partitions])
        # Only partitions read from a stored offset have an end to reach; one started at its
        # end has nothing of ours before it (the idle wait takes what came after).
        pending = {p: ends[p] for p in partitions if p in starts and starts[p] < ends[p]}
        read = _read(consumer, topic, pending, idle_s, timeout_s)
        reset = frozenset(p for p, anchor in anchors.items()
                          if read.firsts.get(p) is None or read.firsts[p][0] != anchor
                          or read.firsts[p][1] not in known)
        exec_ids, read_to = set(read.exec_ids), dict(read.read_to)
        payloads = dict(read.payloads)
        if reset:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in reset])
            again = _read(consumer, topic, {p: ends[p] for p in reset if ends[p] > 0},
                          idle_s, timeout_s)
            exec_ids |= again.exec_ids
            payloads.update(again.payloads)
            read_to.update({p: again.read_to.get(p, 0) for p in reset})
        next_offsets = {p: read_to.get(p, 0) if p in reset
                        else max(read_to.get(p, 0), starts.get(p, ends[p])) for p in partitions}
        if recreated:
            reset = frozenset(partitions)
        return Tail(frozenset(exec_ids), next_offsets, reset, payloads)
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


@dataclass
class _Read:
    exec_ids: set[str] = field(default_factory=set)
    read_to: dict[int, int] = field(default_factory=dict)  # offset after the last record
    firsts: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # offset, ExecID
    payloads: dict[str, bytes] = field(default_factory=dict)


def _read(consumer: Consumer, topic: str, pending: dict[int, int], idle_s: float,
          timeout_s: float) -> _Read:
    """Read until every pending partition is at its end and nothing came for `idle_s`."""
    read = _Read()
    deadline = time.monotonic() + timeout_s
    last_record_at = time.monotonic()
    while pending or time.monotonic() - last_record_at < idle_s:
        if time.monotonic() > deadline:
            raise GatewayError(f"{topic}: not read to offsets {pending} within {timeout_s} s")
        for message in consumer.consume(BATCH_RECORDS, timeout=0.05):
            if message.error():
                continue
            last_record_at = time.monotonic()
            partition, exec_id = message.partition(), _exec_id(message.value())
            read.firsts.setdefault(partition, (message.offset(), exec_id))
            read.read_to[partition] = message.offset() + 1
            if exec_id is not None:
                read.exec_ids.add(exec_id)
                read.payloads[exec_id] = message.value() or b""
        # The position, not only the last record: transaction markers take offsets too.
        for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
            reached = max(tp.offset, read.read_to.get(tp.partition, -1))
            if reached >= pending[tp.partition]:
                del pending[tp.partition]
    return read


def _exec_id(raw: bytes | None) -> str | None:
    try:
        return getattr(decode(Topic.EXECUTIONS, raw), "exec_id", None)
    except Exception:  # noqa: BLE001 - a record we cannot read is not one we forwarded
        return None
