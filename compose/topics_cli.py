"""Operator commands on topics: list, tail, replay (and the bounded read that replay and
`compose.redrive` share), and publishing market status."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from compose.exceptions import ComposeError
from state.messages import MarketStatus, SymbolStatus
from state.topics import Topic, encode

Report = Callable[[str], None]
IDLE_S_MAX = 2.0  # the broker's high watermark is unreliable: stop after this long with nothing
STALL_S = 15.0  # short of the watermark and nothing for this long: an error, not a wait
PROGRESS_EVERY = 10_000  # records between progress lines of a long read


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


@dataclass(frozen=True)
class Bounds:
    """Which records of a topic a bounded read yields: offsets in [from_offset, to_offset) of
    every partition, stamped in [from_time, to_time)."""

    from_offset: int | None = None
    to_offset: int | None = None
    from_time: dt.datetime | None = None
    to_time: dt.datetime | None = None

    def check(self, source: str) -> None:
        for name, offset in (("--from-offset", self.from_offset), ("--to-offset", self.to_offset)):
            if offset is not None and offset < 0:
                raise ComposeError(f"{name} {offset}: offsets start at 0")
        if self.to_offset is not None and self.to_offset <= (self.from_offset or 0):
            raise ComposeError(f"reading {source}: --to-offset {self.to_offset} leaves nothing "
                               f"after --from-offset {self.from_offset or 0}")

    def stamped_within(self, stamped_ms: int) -> bool:
        if self.from_time is not None and stamped_ms < _ms(self.from_time):
            return False
        return self.to_time is None or stamped_ms < _ms(self.to_time)


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


class BoundedRead:
    """Every partition of a topic read once, within `bounds`, up to the end the topic had when
    the read began.

    Never a wait without end: times are found by scanning record timestamps (ListOffsets by
    timestamp can be wrong or hang on the embedded broker: PLATFORM.md), which is bounded by
    the topic's length; the end is each partition's high watermark at the start (a lower bound
    on this broker) and then `idle_s` with nothing new; records stamped after the start are not
    part of the read (a topic written all the time still ends); an offset past a partition's
    end is noted in `past_end`, never waited for. Offsets are per broker log: after a broker
    restart (a new epoch, state/epoch.py) the same offset names another record."""

    def __init__(self, bootstrap: str, source: str, bounds: Bounds, *,
                 idle_s: float = IDLE_S_MAX, stall_s: float = STALL_S) -> None:
        bounds.check(source)
        self.source, self.bounds = source, bounds
        self._idle_s, self._stall_s = idle_s, stall_s
        self.start = bounds.from_offset or 0
        self._started_ms = int(time.time() * 1000)
        self._consumer = _assigned_consumer(bootstrap, source, self.start,
                                            {"auto.offset.reset": "error"})
        self.ends = {tp.partition: self._consumer.get_watermark_offsets(tp, timeout=10)[1]
                     for tp in self._consumer.assignment()}
        self._stop_at = {p: min(end, bounds.to_offset if bounds.to_offset is not None else end)
                         for p, end in self.ends.items()}
        self._reached = {partition: self.start for partition in self.ends}
        self._done: set[int] = set()
        self.past_end: set[int] = set()
        self.scanned = 0  # records within the offsets, whatever their time

    def records(self) -> Iterator[Any]:
        """The records within the bounds, in each partition's order; closes the consumer."""
        last_record_at = time.monotonic()
        try:
            while len(self._done) < len(self.ends):
                idle_s = time.monotonic() - last_record_at
                if self._idle_over(idle_s):
                    break
                self._check_progress(idle_s)
                msg = self._consumer.poll(0.2)
                if msg is None or not self._usable(msg):
                    continue
                last_record_at = time.monotonic()
                if self._within(msg):
                    yield msg
        finally:
            self._consumer.close()
        start = self.start
        self.past_end |= {p for p, end in self.ends.items()
                          if start > 0 and start >= end and self._reached[p] == start}

    def _behind(self) -> list[int]:
        behind = [p for p in self.ends
                  if p not in self._done and self._reached[p] < self._stop_at[p]]
        if behind:
            # A transaction's commit marker takes an offset and is never delivered: the
            # consumer's position, not the last record, tells whether it was read past.
            positions = self._consumer.position([TopicPartition(self.source, p) for p in behind])
            for position in positions:
                self._reached[position.partition] = max(self._reached[position.partition],
                                                        position.offset)
        return [p for p in behind if self._reached[p] < self._stop_at[p]]

    def _idle_over(self, idle_s: float) -> bool:
        return idle_s >= self._idle_s and not self._behind()

    def _check_progress(self, idle_s: float) -> None:
        if idle_s >= self._stall_s:
            raise ComposeError(f"reading {self.source}: nothing more came for "
                               f"{self._stall_s:.0f} s before the end of partitions "
                               f"{self._behind()}")

    def _usable(self, msg: Any) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            self.past_end.add(msg.partition())  # the start is past this partition's end
            self._done.add(msg.partition())
        elif error.code() != KafkaError._PARTITION_EOF:
            raise ComposeError(f"reading {self.source}: {error}")
        return False

    def _within(self, msg: Any) -> bool:
        partition, offset, stamped_ms = msg.partition(), msg.offset(), msg.timestamp()[1]
        self._reached[partition] = offset + 1
        to_offset = self.bounds.to_offset
        if to_offset is not None and offset >= to_offset:
            self._finish(partition)
            return False
        if self._reached[partition] > self.ends[partition] and stamped_ms >= self._started_ms:
            self._finish(partition)  # written after the read began: not part of it
            return False
        if to_offset is not None and self._reached[partition] >= to_offset:
            self._finish(partition)  # the last one asked for: yielded, nothing after it
        self.scanned += 1
        return self.bounds.stamped_within(stamped_ms)

    def _finish(self, partition: int) -> None:
        self._done.add(partition)
        self._consumer.pause([TopicPartition(self.source, partition)])


def replay(bootstrap: str, source: str, destination: str, *, from_offset: int | None,
           from_time: dt.datetime | None, report: Report, to_offset: int | None = None,
           to_time: dt.datetime | None = None, idle_s: float = IDLE_S_MAX,
           stall_s: float = STALL_S) -> int:
    """Copy records (key, value, headers, timestamp) from `source` into `destination`,
    partitioned by key: every partition from `from_offset` (default 0), or the records
    stamped at or after `from_time`, up to the end the topic had when the replay began (or
    before `to_offset` / `to_time`; see BoundedRead). Consumers are idempotent by
    deterministic ids, so a replay changes no balance."""
    if source == destination:
        raise ComposeError(f"replay {source} into itself would read its own copies: name "
                           "another destination")
    reading = BoundedRead(bootstrap, source, Bounds(from_offset, to_offset, from_time, to_time),
                          idle_s=idle_s, stall_s=stall_s)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    copied = 0
    try:
        for msg in reading.records():
            # The original timestamp travels along: it is the record's event time, which
            # the topologies use as `now` and to align their input topics.
            producer.produce(destination, key=msg.key(), value=msg.value(),
                             headers=msg.headers(), timestamp=msg.timestamp()[1])
            producer.poll(0)
            copied += 1
            if copied % PROGRESS_EVERY == 0:
                report(f"replayed {copied} records ...")
    finally:
        remaining = producer.flush(30)
    if remaining:
        raise ComposeError(f"replay to {destination}: {remaining} records not delivered")
    report(f"replayed {copied} records from {source} to {destination}"
           f"{_replay_note(reading, copied)}")
    return 0


def _replay_note(reading: BoundedRead, copied: int) -> str:
    """What the closing line adds: offsets past the end, or a time range that held nothing."""
    past_end, start, since = reading.past_end, reading.start, reading.bounds.from_time
    if reading.bounds.from_offset is not None and past_end == set(reading.ends) and not copied:
        raise ComposeError(f"replay {reading.source}: offset {start} is past the end of every "
                           f"partition (ends: {_describe_ends(reading.ends)}): nothing replayed")
    if past_end:
        return f"; offset {start} is past the end of partitions {sorted(past_end)}"
    if since is not None and not copied:
        return f"; no record at or after {since.isoformat()} ({reading.scanned} scanned)"
    return ""


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
