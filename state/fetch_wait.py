"""Fetch waits chosen by measurement, and widened when the broker starves a reader (issue 11).

The embedded broker (Tansu 0.6.0, memory engine) lists every batch object of a partition on
each fetch that finds new data, and answers empty once that listing outlasts the fetch wait;
between passes it sleeps half the wait left. Its partitions only grow (no retention), so a
reader with a short wait that falls behind a large partition gets nothing ever again, while
every empty answer still carries the partition's high watermark: 60,000 one-record batches
gave nothing in 6 s at 10 ms, the first record after 2.8 s at 40 ms and after 57 ms at 160 ms.
A short wait is what keeps the order path fast at the tail, so readers start short and widen
only when starved: behind (the high watermark past what they read) for `STARVED_S` without once
catching up, whether or not records came meanwhile. Given nothing is the plain case; fed
slower than the input grows is the other: a pass whose listing is cut short by the wait left
returns nothing, so a 10 ms reader of a partition the broker lists in 20-40 ms still got a
record now and then, never went 2 s without one, and never widened, while the broker spent
1.1 cores on listings it threw away (a loaded soak, 2026-12-04: POST p99 1.3 s at minute 38).
The new wait comes from a measurement: the time the broker takes to list the reader's largest
partition (a ListOffsets lists the same objects), times `LISTING_TO_WAIT`.
A reader need not wait to be starved, either: every `MEASURE_EVERY_S` it times the listing of
its largest partition and widens when that takes more than half its wait (`LISTING_WASTES`):
the pass that notices new data has half the wait left or less, so the broker would be cutting
that reader's listings short and throwing them away. Starvation is the later, surer sign;
this one comes minutes sooner as a partition grows (in both loaded soaks of 2026-12-04 the
events tail's listing passed half its 10 ms wait long before it widened).
A widened reader that has stayed at the tail for `NARROW_AFTER_S` measures again and narrows
when the listing allows, so a burst or a loaded moment does not slow the tail for good.
A Quix app cannot reopen its consumer: it measures its wait as it starts (`measured_wait_ms`),
and a `ListingWatch` tells it when two looks in a row found that wait outgrown, so that it
restarts with a wider one. Every listing is timed on a probe consumer of its own
(`probe_consumer` says why).
On Apache Kafka a fetch is answered from an index; a reader there is never starved this way
and keeps its wait.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

STARVED_S = 2.0
WAIT_MS_MAX = 2_000
# The pass that notices new data runs with half the wait left or less, and a loaded machine
# lists slower than the measurement did.
LISTING_TO_WAIT = 4
# An empty poll is judged (behind or not) at most this often: the judgement asks the client for
# every partition's position and watermark, which cost a reader polling every 10 ms 6 % of its
# CPU under load (issue 15), and starvation takes `STARVED_S` to matter anyway.
BEHIND_CHECK_S = 0.25
# A widened reader that has been at the tail this long measures the listing again and narrows
# when the broker lists faster than when it widened (a burst or a loaded machine is over):
# at the tail a wide wait costs up to half of it per record, since the broker checks for new
# data at about half of the wait left.
NARROW_AFTER_S = 30.0
# A narrowing by less than a quarter is not worth reopening the consumer for (seen: 20 ms to
# 18 ms, on a listing that had just widened it from 10 to 20).
NARROW_WORTH = 0.75
# How often a reader times the listing of its largest partition (one ListOffsets), and the
# share of its wait past which that listing is wasted: see the module's docstring.
MEASURE_EVERY_S = 30.0
LISTING_WASTES = 0.5

PartitionKey = tuple[str, int]

log = logging.getLogger(__name__)


class ReaderConsumer(Protocol):
    """What is used of confluent_kafka.Consumer."""

    def assignment(self) -> list[Any]: ...

    def position(self, partitions: list[Any]) -> list[Any]: ...

    def get_watermark_offsets(self, partition: Any, timeout: float = ...,
                              cached: bool = ...) -> tuple[int, int]: ...


def wider_wait(listing_ms: float, wait_ms: int, wait_ms_max: int = WAIT_MS_MAX) -> int:
    """The fetch wait for a reader starved at `wait_ms` when listing its largest partition
    takes `listing_ms`: room for the listing, at least twice the old wait (a measurement on
    a quiet moment can be short), at most `wait_ms_max`."""
    return int(min(max(LISTING_TO_WAIT * listing_ms, 2 * wait_ms), wait_ms_max))


def narrower_wait(listing_ms: float, wait_ms: int, first_wait_ms: int) -> int:
    """The fetch wait a widened reader at the tail goes back to: room for the listing as
    measured now, never below the wait it started with, never above the one it has."""
    return int(min(max(LISTING_TO_WAIT * listing_ms, first_wait_ms), wait_ms))


def probe_consumer(bootstrap_servers: str, extra: Mapping[str, Any] | None = None) -> Any:
    """A consumer that only times ListOffsets, on broker connections of its own. A reader's
    own connection has its fetch in flight, and the embedded broker answers a connection's
    requests in order, so a ListOffsets sent there first waits out that fetch: measured there,
    the "listing" grew with the wait it was meant to size (a loaded soak, 2026-12-04: 8 ms at a
    10 ms wait, 485 ms at 502 ms, on partitions that took a few ms to list)."""
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "fetch-wait-probe",
                     **(extra or {})})


def partitions_of(consumer: Any, topics: Iterable[str]) -> list[PartitionKey]:
    """Every partition of those of `topics` the broker has (one metadata request)."""
    found = consumer.list_topics(timeout=10).topics
    return [(topic, partition) for topic in topics if topic in found
            for partition in found[topic].partitions]


def measured_wait_ms(bootstrap_servers: str, topics: Iterable[str], wait_ms: int,
                     extra: Mapping[str, Any] | None = None) -> int:
    """The fetch wait for a reader that cannot reopen its consumer (a Quix app fixes its
    consumer's settings when it starts): `wait_ms`, or room for the broker's listing of the
    largest partition of `topics` when that is wider. A member its stall watch restarted
    (starved, it stood still behind its input) measures again and starts wider."""
    from confluent_kafka import KafkaException

    consumer = probe_consumer(bootstrap_servers, extra)
    try:
        listed_ms = smallest_listing_ms(consumer, partitions_of(consumer, topics))
    except KafkaException as error:  # the app's own start reports a broker it cannot reach
        log.warning("fetch wait not measured (%s): %d ms", error, wait_ms)
        return wait_ms
    finally:
        consumer.close()
    return int(min(max(wait_ms, LISTING_TO_WAIT * listed_ms), WAIT_MS_MAX))


def smallest_listing_ms(probe: Any, keys: Iterable[PartitionKey], samples: int = 3,
                        timeout_s: float = 10.0) -> float:
    """The broker's listing of the largest of `keys` (by high watermark), in ms: each is timed
    once, the largest again to `samples` in all, and the shortest of those is taken. A loaded
    machine only adds time to a sample, so the shortest is the listing's best estimate."""
    from confluent_kafka import KafkaException, TopicPartition

    def timed(key: PartitionKey) -> tuple[float, int]:
        started_s = time.monotonic()
        _low, high = probe.get_watermark_offsets(TopicPartition(*key), timeout=timeout_s,
                                                 cached=False)
        return (time.monotonic() - started_s) * 1000, high

    sizes: list[tuple[int, float, PartitionKey]] = []
    for key in keys:
        try:
            ms, high = timed(key)
        except KafkaException:
            continue  # no answer: measured again at the next look
        sizes.append((high, ms, key))
    if not sizes:
        return 0.0
    _high, best_ms, largest = max(sizes)
    for _ in range(samples - 1):
        with contextlib.suppress(KafkaException):
            best_ms = min(best_ms, timed(largest)[0])
    return best_ms


class ListingWatch:
    """For a reader that cannot reopen its consumer (a Quix app fixes its consumer's fetch wait
    when it starts): a thread that times the broker's listing of the largest partition of
    `topics` on `probe()` every `interval_s`, and calls `on_wasted(listing_ms)` once when two
    looks in a row found it longer than `LISTING_WASTES` of `wait_ms`: the reader's fetches
    are then cut short and their listings thrown away (module docstring). The account topology
    stops for its supervisor to start it again, and it measures its wait as it starts."""

    def __init__(self, probe: Callable[[], Any], topics: Iterable[str], wait_ms: int,
                 on_wasted: Callable[[float], None], *, interval_s: float = MEASURE_EVERY_S,
                 wait_ms_max: int = WAIT_MS_MAX,
                 measure: Callable[[Any, Iterable[PartitionKey]], float] = smallest_listing_ms
                 ) -> None:
        self._make_probe = probe
        self._probe: Any = None
        self._topics = list(topics)
        self.wait_ms = wait_ms
        self._on_wasted = on_wasted
        self._interval_s = interval_s
        self._wait_ms_max = wait_ms_max
        self._measure = measure
        self._wasted_looks = 0
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listing-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval_s) and not self.fired:
                try:
                    self.check()
                except Exception as error:  # noqa: BLE001 - the broker did not answer: next time
                    log.warning("listing watch: cannot time the listing: %s", error)
        finally:
            if self._probe is not None:
                self._probe.close()

    def check(self) -> None:
        if self.fired or self.wait_ms >= self._wait_ms_max:
            return
        if self._probe is None:
            self._probe = self._make_probe()
        listed_ms = self._measure(self._probe, partitions_of(self._probe, self._topics))
        self._wasted_looks = self._wasted_looks + 1 if listed_ms > LISTING_WASTES * self.wait_ms \
            else 0
        if self._wasted_looks >= 2:
            self.fired = True
            self._on_wasted(listed_ms)


@dataclass
class Starvation:
    """Behind its input for `starved_s` without once being caught up: the reader needs a
    wider wait. Records that came meanwhile do not count: a reader the broker feeds slower
    than its input grows is starved too."""

    starved_s: float = STARVED_S
    _since_s: float | None = None

    def observe(self, now_s: float, behind: bool) -> bool:
        if not behind:
            self._since_s = None
            return False
        if self._since_s is None:
            self._since_s = now_s
        if now_s - self._since_s < self.starved_s:
            return False
        self._since_s = None
        return True


def next_offsets(consumer: ReaderConsumer, starts: Mapping[PartitionKey, int]
                 ) -> dict[PartitionKey, int]:
    """Per assigned partition, the next offset to read: the consumer's position once it read
    something there, else where the reader started it (`starts`)."""
    found: dict[PartitionKey, int] = {}
    for tp in consumer.position(consumer.assignment()):
        key = (tp.topic, tp.partition)
        if tp.offset >= 0:
            found[key] = tp.offset
        elif key in starts:
            found[key] = starts[key]
    return found


def is_behind(consumer: ReaderConsumer, starts: Mapping[PartitionKey, int]) -> bool:
    """Some assigned partition's high watermark, as the last fetch answer gave it, is past
    the next offset to read. No broker request."""
    from confluent_kafka import TopicPartition

    for (topic, partition), offset in next_offsets(consumer, starts).items():
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                    cached=True)
        if high > offset:
            return True
    return False


class WideningReader:
    """A consumer that reads assigned partitions and, once starved (behind for `starved_s`
    without catching up) or once the broker's listing of its largest partition takes more than
    half its wait (timed every `measure_every_s` by `measure`), is closed and made again with a
    wider fetch wait at the offsets it would have read next. `make(wait_ms)` builds the
    consumer; `probe()` the consumer the listings are timed with (`probe_consumer`: not the
    reader's own, whose fetch in flight would be timed too); with `commit`, the old consumer's
    stored offsets are committed before it closes (readers that commit under a group)."""

    def __init__(self, name: str, make: Callable[[int], Any], wait_ms: int, *,
                 probe: Callable[[], Any], commit: bool = False, starved_s: float = STARVED_S,
                 wait_ms_max: int = WAIT_MS_MAX, narrow_after_s: float = NARROW_AFTER_S,
                 measure_every_s: float = MEASURE_EVERY_S,
                 measure: Callable[[Any, Iterable[PartitionKey]], float] = smallest_listing_ms
                 ) -> None:
        self.name = name
        self.wait_ms = wait_ms
        self._first_wait_ms = wait_ms
        self._narrow_after_s = narrow_after_s
        self._tail_since_s: float | None = None
        self._make = make
        self._commit = commit
        self._wait_ms_max = wait_ms_max
        self._starvation = Starvation(starved_s)
        self._next_check_s = 0.0
        self._measure_every_s = measure_every_s
        self._next_measure_s = 0.0
        self._measure = measure
        self._make_probe = probe
        self._probe: Any = None
        self._starts: dict[PartitionKey, int] = {}
        self.consumer = make(wait_ms)

    def assign(self, starts: Mapping[PartitionKey, int]) -> None:
        """Read each partition from its offset (a real offset, not a logical one: starvation
        is judged against it until the first record)."""
        from confluent_kafka import TopicPartition

        self._starts = dict(starts)
        self.consumer.assign([TopicPartition(topic, partition, offset)
                              for (topic, partition), offset in sorted(self._starts.items())])

    def after_poll(self, got_records: bool, now_s: float | None = None) -> bool:
        """Call after each poll; True when the reader was starved and now reads with a wider
        wait (a widened reader long at the tail may narrow again: False). A broker error while
        judging or reopening is logged; the reader goes on."""
        from confluent_kafka import KafkaException

        now_s = time.monotonic() if now_s is None else now_s
        try:
            if now_s >= self._next_measure_s:
                self._next_measure_s = now_s + self._measure_every_s
                if self._widen_if_listing_wasted():
                    return True
            if got_records:  # judged on empty polls: one that got records may still be behind
                return False
            if now_s < self._next_check_s:
                return False
            self._next_check_s = now_s + BEHIND_CHECK_S
            behind = is_behind(self.consumer, self._starts)
            if self._starvation.observe(now_s, behind):
                return self._widen()
            self._narrow_if_long_at_tail(now_s, behind)
            return False
        except KafkaException as error:
            log.warning("%s: could not judge or change the fetch wait: %s", self.name, error)
            return False

    def _widen(self) -> bool:
        """Starved: wider, whatever the listing takes."""
        return self._widen_after_listing(lambda listed_ms: (
            f"behind for {self._starvation.starved_s:.0f} s without catching up (the broker "
            f"lists a partition in {listed_ms:.0f} ms)"))

    def _listing_ms(self, keys: Iterable[PartitionKey]) -> float:
        if self._probe is None:
            self._probe = self._make_probe()
        return self._measure(self._probe, keys)

    def _widen_if_listing_wasted(self) -> bool:
        def wasted(listed_ms: float) -> str | None:
            if listed_ms <= LISTING_WASTES * self.wait_ms:
                return None
            return (f"the broker lists its largest partition in {listed_ms:.0f} ms, more than "
                    f"{LISTING_WASTES * 100:.0f} % of the {self.wait_ms} ms fetch wait")
        return self._widen_after_listing(wasted)

    def _widen_after_listing(self, why: Callable[[float], str | None]) -> bool:
        """Time the listing; when `why` gives a reason for it, reopen with a wider wait."""
        if self.wait_ms >= self._wait_ms_max:
            return False
        offsets = next_offsets(self.consumer, self._starts)
        listed_ms = self._listing_ms(offsets)
        reason = why(listed_ms)
        if reason is None:
            return False
        wait_ms = wider_wait(listed_ms, self.wait_ms, self._wait_ms_max)
        log.warning("%s: %s: reading with a %d ms fetch wait, was %d ms", self.name, reason,
                    wait_ms, self.wait_ms)
        self._reopen(offsets, wait_ms)
        return True

    def _narrow_if_long_at_tail(self, now_s: float, behind: bool) -> None:
        if behind or self.wait_ms <= self._first_wait_ms:
            self._tail_since_s = None
            return
        if self._tail_since_s is None:
            self._tail_since_s = now_s
        if now_s - self._tail_since_s < self._narrow_after_s:
            return
        self._tail_since_s = now_s  # measured now: the next look is as far off
        offsets = next_offsets(self.consumer, self._starts)
        listed_ms = self._listing_ms(offsets)
        wait_ms = narrower_wait(listed_ms, self.wait_ms, self._first_wait_ms)
        if wait_ms > NARROW_WORTH * self.wait_ms:
            return
        log.warning("%s: at the tail for %.0f s (the broker lists a partition in %.0f ms): "
                    "reading with a %d ms fetch wait, was %d ms", self.name,
                    self._narrow_after_s, listed_ms, wait_ms, self.wait_ms)
        self._reopen(offsets, wait_ms)

    def _reopen(self, offsets: dict[PartitionKey, int], wait_ms: int) -> None:
        from confluent_kafka import KafkaException

        if self._commit:
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException:
                pass  # nothing stored since the last commit: the group's offsets stand
        self.consumer.close()
        self.consumer = self._make(wait_ms)
        self.wait_ms = wait_ms
        self._tail_since_s = None  # time at the tail counts from the new wait on
        self.assign(offsets)

    def close(self) -> None:
        self.consumer.close()
        if self._probe is not None:
            self._probe.close()
