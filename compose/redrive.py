"""`brokerage topics redrive DLQ`: dead letters produced again, unwrapped, once their cause is
fixed.

Each envelope of the dead-letter topic (`state.dead_letters`) gives back the original key and
value bytes; they go to the topic the envelope names (or `--to`), on the partition Kafka's
murmur2 gives the key (the account topology dead-letters a command on any other partition
again, as `wrong_partition`). Envelopes keep no headers and no timestamp: the record is
produced without headers and stamped now, which is when it is decided. Deciding twice is not a
risk: every command carries its idempotency key and the account topology decides a key once
(a re-driven duplicate has no effect), so re-driving twice is harmless.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from compose.exceptions import ComposeError
from compose.topics_cli import IDLE_S_MAX, PROGRESS_EVERY, STALL_S, BoundedRead, Bounds, Report
from state.dead_letters import Unwrapped, unwrap
from state.exceptions import NotRedrivable
from state.ids import partition_for_key

UNKNOWN_TOPIC = "unknown_topic"
INTO_ITSELF = "into_itself"
UNASKED = "unasked:"  # + the reason of an envelope that --reason leaves out


@dataclass(frozen=True)
class Target:
    topic: str
    partition: int | None  # None: no key, the producer spreads it as it would the original


@dataclass
class PartitionTally:
    read: int = 0
    redriven: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: PartitionTally) -> None:
        self.read += other.read
        self.redriven += other.redriven
        self.skipped.update(other.skipped)


@dataclass
class Tally:
    """What a re-drive read, per source partition, and what it produced, per reason and per
    target partition."""

    partitions: dict[int, PartitionTally] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    targets: Counter[str] = field(default_factory=Counter)

    def of(self, partition: int) -> PartitionTally:
        return self.partitions.setdefault(partition, PartitionTally())

    def redriven(self, partition: int, letter: Unwrapped, target: Target) -> None:
        self.of(partition).redriven += 1
        self.reasons[letter.reason] += 1
        where = "" if target.partition is None else f"[{target.partition}]"
        self.targets[f"{target.topic}{where}"] += 1


class Targets:
    """Where each unwrapped record goes: its topic's partition count is read once per run."""

    def __init__(self, partitions: dict[str, int], dlq: str, destination: str | None) -> None:
        self._partitions = partitions
        self._dlq = dlq
        self._destination = destination

    @classmethod
    def read(cls, bootstrap: str, dlq: str, destination: str | None) -> Targets:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        return cls({name: len(topic.partitions)
                    for name, topic in metadata.topics.items() if topic.error is None},
                   dlq, destination)

    def of(self, letter: Unwrapped) -> Target | str:
        """The target, or why there is none."""
        topic = self._destination or letter.topic
        if topic == self._dlq:
            return INTO_ITSELF
        partitions = self._partitions.get(topic)
        if not partitions:
            return UNKNOWN_TOPIC
        if letter.key is None:
            return Target(topic, None)
        return Target(topic, partition_for_key(letter.key, partitions))


def redrive(bootstrap: str, dlq: str, *, destination: str | None, reason: str | None,
            dry_run: bool, bounds: Bounds, report: Report, idle_s: float = IDLE_S_MAX,
            stall_s: float = STALL_S) -> int:
    """Re-drive the dead letters of `dlq` within `bounds` (each with `reason`, when given);
    with `dry_run` only count. Envelopes that cannot be unwrapped are counted, never produced;
    the only errors are a topic that cannot be read and records not delivered."""
    if destination == dlq:
        raise ComposeError(f"redrive {dlq} into itself would dead-letter nothing: name the "
                           "topic the records belong to")
    targets = Targets.read(bootstrap, dlq, destination)
    reading = BoundedRead(bootstrap, dlq, bounds, idle_s=idle_s, stall_s=stall_s)
    sender = None if dry_run else Producer({"bootstrap.servers": bootstrap,
                                            "partitioner": "murmur2_random",
                                            "enable.idempotence": True})
    tally = Tally(partitions={partition: PartitionTally() for partition in reading.ends})
    try:
        for msg in reading.records():
            _one(msg, targets, reason, sender, tally)
            _progress(tally, report)
    finally:
        remaining = sender.flush(30) if sender is not None else 0
    if remaining:
        raise ComposeError(f"redrive {dlq}: {remaining} records not delivered")
    for line in summary(dlq, tally, dry_run):
        report(line)
    return 0


def _one(msg: Any, targets: Targets, reason: str | None, sender: Producer | None,
         tally: Tally) -> None:
    partition = tally.of(msg.partition())
    partition.read += 1
    try:
        letter = unwrap(msg.value())
    except NotRedrivable as error:
        partition.skipped[error.reason] += 1
        return
    if reason is not None and letter.reason != reason:
        partition.skipped[UNASKED + letter.reason] += 1
        return
    target = targets.of(letter)
    if isinstance(target, str):
        partition.skipped[target] += 1
        return
    if sender is not None:
        _produce(sender, target, letter)
    tally.redriven(msg.partition(), letter, target)


def _produce(sender: Producer, target: Target, letter: Unwrapped) -> None:
    key = letter.key.encode() if letter.key is not None else None
    extra = {} if target.partition is None else {"partition": target.partition}
    sender.produce(target.topic, key=key, value=letter.value, **extra)
    sender.poll(0)


def _progress(tally: Tally, report: Report) -> None:
    read = sum(p.read for p in tally.partitions.values())
    if read % PROGRESS_EVERY == 0:
        redriven = sum(p.redriven for p in tally.partitions.values())
        report(f"read {read} dead letters, {redriven} re-driven so far ...")


def summary(dlq: str, tally: Tally, dry_run: bool) -> list[str]:
    """By reason and by target, then one line per source partition and the total (last)."""
    verb = "would re-drive" if dry_run else "re-driven"
    lines = [f"{verb} by reason: {_counts(tally.reasons)}",
             f"{verb} by target partition: {_counts(tally.targets)}"]
    total = PartitionTally()
    for partition, counts in sorted(tally.partitions.items()):
        lines.append(f"{dlq}[{partition}]: {_line(counts, verb)}")
        total.add(counts)
    lines.append(f"total: {_line(total, verb)}")
    return lines


def _line(counts: PartitionTally, verb: str) -> str:
    skipped = sum(counts.skipped.values())
    detail = f" ({_counts(counts.skipped)})" if skipped else ""
    return f"read {counts.read}, {verb} {counts.redriven}, skipped {skipped}{detail}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "none"
