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
STALL_S = 15.0  # short of the watermark and nothing for this long: an error, not a wait


def list_topics(bootstrap: str, prefix: str, report: Report) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    for name in sorted(metadata.topics):
        if name.startswith(prefix) and not name.startswith("__"):
            report(f"{name}\t{len(metadata.topics[name].partitions)} partitions")
    return 0


def _assigned_consumer(bootstrap: str, topic: str, start_offset: int,
                       extra: dict[str, str] | None = None) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "brokerage-cli",
                         "enable.auto.commit": False, "enable.partition.eof": False,
                         **(extra or {})})
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
           from_time: dt.datetime | None, report: Report, idle_s: float = IDLE_S_MAX,
           stall_s: float = STALL_S) -> int:
    """Copy records (key, value, headers, timestamp) from `source` into `destination`,
    partitioned by key: every partition from `from_offset` (default 0), or the records
    stamped at or after `from_time`, up to the end the topic had when the replay began.
    Consumers are idempotent by deterministic ids, so a replay changes no balance.

    Never a wait without end: `from_time` is found by scanning record timestamps (ListOffsets
    by timestamp can be wrong or hang on the embedded broker: PLATFORM.md), which is bounded
    by the topic's length; the end is each partition's high watermark at the start (a lower
    bound on this broker) and then `idle_s` with nothing new; records stamped after the start
    are not part of the replay (a topic written all the time still ends); an offset past a
    partition's end is reported, never waited for. Offsets are per broker log: after a broker
    restart (a new epoch, state/epoch.py) the same offset names another record."""
    if source == destination:
        raise ComposeError(f"replay {source} into itself would read its own copies: name "
                           "another destination")
    if from_offset is not None and from_offset < 0:
        raise ComposeError(f"--from-offset {from_offset}: offsets start at 0")
    started_ms = int(time.time() * 1000)
    start = from_offset or 0
    consumer = _assigned_consumer(bootstrap, source, start, {"auto.offset.reset": "error"})
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in consumer.assignment()}
    since_ms = int(from_time.timestamp() * 1000) if from_time else None
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    reached = {partition: start for partition in ends}
    past_end: set[int] = set()
    done: set[int] = set()
    copied = scanned = 0
    last_record_at = time.monotonic()
    try:
        while len(done) < len(ends):
            idle = time.monotonic() - last_record_at
            behind = [p for p in ends if p not in done and reached[p] < ends[p]]
            if idle >= idle_s and not behind:
                break
            if idle >= stall_s:
                raise ComposeError(f"reading {source}: nothing more came for {stall_s:.0f} s "
                                   f"before the end of partitions {behind}")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._AUTO_OFFSET_RESET:
                    past_end.add(msg.partition())  # the start is past this partition's end
                    done.add(msg.partition())
                    continue
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise ComposeError(f"reading {source}: {msg.error()}")
                continue
            last_record_at = time.monotonic()
            partition, stamped_ms = msg.partition(), msg.timestamp()[1]
            reached[partition] = msg.offset() + 1
            if reached[partition] > ends[partition] and stamped_ms >= started_ms:
                done.add(partition)  # written after the replay began: not part of it
                consumer.pause([TopicPartition(source, partition)])
                continue
            scanned += 1
            if since_ms is not None and stamped_ms < since_ms:
                continue
            # The original timestamp travels along: it is the record's event time, which
            # the topologies use as `now` and to align their input topics.
            producer.produce(destination, key=msg.key(), value=msg.value(),
                             headers=msg.headers(), timestamp=stamped_ms)
            producer.poll(0)
            copied += 1
            if copied % 10_000 == 0:
                report(f"replayed {copied} records ...")
    finally:
        consumer.close()
        remaining = producer.flush(30)
    if remaining:
        raise ComposeError(f"replay to {destination}: {remaining} records not delivered")
    past_end |= {p for p in ends if start > 0 and start >= ends[p] and reached[p] == start}
    if from_offset is not None and past_end == set(ends) and not copied:
        raise ComposeError(f"replay {source}: offset {from_offset} is past the end of every "
                           f"partition (ends: {_describe_ends(ends)}): nothing replayed")
    note = ""
    if past_end:
        note = f"; offset {start} is past the end of partitions {sorted(past_end)}"
    elif since_ms is not None and not copied:
        note = f"; no record at or after {from_time.isoformat()} ({scanned} scanned)"  # type: ignore[union-attr]
    report(f"replayed {copied} records from {source} to {destination}{note}")
    return 0


def _describe_ends(ends: dict[int, int]) -> str:
    return ", ".join(f"partition {partition} at {end}" for partition, end in sorted(ends.items()))


def publish_market_status(bootstrap: str, prefix: str, symbol: str, status: str,
                          reason: str | None) -> None:
    message = MarketStatus(symbol=symbol, status=SymbolStatus(status),
                           effective_at=dt.datetime.now(dt.UTC), reason=reason)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(prefix + Topic.MARKET_STATUS, key=symbol.encode(), value=encode(message))
    if producer.flush(10):
        raise ComposeError(f"broker {bootstrap}: market status for {symbol} not delivered")
