"""When a reader's fetch wait widens (state.fetch_wait): starved means behind for the whole
starvation time without once catching up, whether or not records came meanwhile; the new wait
leaves room for the broker's listing. A widened reader long at the tail narrows again when the
listing allows."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from state.fetch_wait import (
    LISTING_TO_WAIT,
    WAIT_MS_MAX,
    ListingWatch,
    Starvation,
    WideningReader,
    narrower_wait,
    smallest_listing_ms,
    wider_wait,
)


def test_starved_only_after_the_whole_time_behind() -> None:
    starvation = Starvation(starved_s=2.0)
    assert not starvation.observe(0.0, behind=True)
    assert not starvation.observe(1.9, behind=True)
    assert starvation.observe(2.0, behind=True)
    # Judged again from scratch after a verdict.
    assert not starvation.observe(2.1, behind=True)
    assert starvation.observe(4.5, behind=True)


def test_being_caught_up_starts_the_clock_again() -> None:
    starvation = Starvation(starved_s=2.0)
    starvation.observe(0.0, behind=True)
    starvation.observe(1.5, behind=False)  # at the tail: nothing to get
    assert not starvation.observe(3.0, behind=True)
    assert not starvation.observe(4.9, behind=True)
    assert starvation.observe(5.0, behind=True)


def test_idle_at_the_tail_is_never_starved() -> None:
    starvation = Starvation(starved_s=2.0)
    assert not any(starvation.observe(float(t), behind=False) for t in range(100))


@given(st.floats(0, 10_000, allow_nan=False), st.integers(1, WAIT_MS_MAX))
def test_a_wider_wait_leaves_room_for_the_listing_and_at_least_doubles(
        listing_ms: float, wait_ms: int) -> None:
    wider = wider_wait(listing_ms, wait_ms)
    assert wider <= WAIT_MS_MAX
    assert wider >= min(2 * wait_ms, WAIT_MS_MAX)
    assert wider >= min(int(LISTING_TO_WAIT * listing_ms), WAIT_MS_MAX)


@given(st.floats(0, 10_000, allow_nan=False), st.integers(1, 100),
       st.integers(1, WAIT_MS_MAX))
def test_a_narrower_wait_stays_between_the_first_wait_and_the_current_one(
        listing_ms: float, first_wait_ms: int, wait_ms: int) -> None:
    narrower = narrower_wait(listing_ms, max(wait_ms, first_wait_ms), first_wait_ms)
    assert first_wait_ms <= narrower <= max(wait_ms, first_wait_ms)
    if LISTING_TO_WAIT * listing_ms <= first_wait_ms:
        assert narrower == first_wait_ms


class _Partition:
    """One partition as a consumer sees it: where the reader is and the high watermark."""

    def __init__(self) -> None:
        self.position = 100
        self.high = 100


class _FakeConsumer:
    """The part of a confluent_kafka.Consumer a WideningReader uses, over one partition; it
    answers at once, so a listing measures about 0 ms."""

    def __init__(self, partition: _Partition, wait_ms: int, made: list[int]) -> None:
        self._partition = partition
        made.append(wait_ms)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._partition.position = partitions[0].offset

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", 0)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition("t", 0, self._partition.position)]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = 1.0,
                              cached: bool = False) -> tuple[int, int]:
        return 0, self._partition.high

    def commit(self, asynchronous: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _poll_empty(reader: WideningReader, since_s: float, until_s: float) -> float:
    now_s = since_s
    while now_s < until_s:
        reader.after_poll(False, now_s)
        now_s += 0.1
    return now_s


def test_a_widened_reader_long_at_the_tail_narrows_back_to_its_first_wait() -> None:
    partition, made = _Partition(), []
    reader = WideningReader("t", lambda wait_ms: _FakeConsumer(partition, wait_ms, made), 10,
                            probe=lambda: _FakeConsumer(partition, 0, []),
                            narrow_after_s=30.0)
    reader.assign({("t", 0): 100})
    partition.high = 200  # behind, and given nothing
    now_s = _poll_empty(reader, 0.0, 2.5)
    assert reader.wait_ms == 20 and made == [10, 20]
    partition.position = 200  # caught up: at the tail
    now_s = _poll_empty(reader, now_s, now_s + 29.0)
    assert reader.wait_ms == 20, "narrowed before NARROW_AFTER_S at the tail"
    partition.high = 250  # behind again for a moment: the time at the tail starts over
    now_s = _poll_empty(reader, now_s, now_s + 0.5)
    partition.position = 250
    now_s = _poll_empty(reader, now_s, now_s + 29.0)
    assert reader.wait_ms == 20
    _poll_empty(reader, now_s, now_s + 2.0)
    assert reader.wait_ms == 10 and made == [10, 20, 10]
    assert partition.position == 250, "reopened where it would have read next"


def test_a_reader_fed_now_and_then_but_never_caught_up_widens() -> None:
    """A record every 0.5 s while the input grows faster: never 2 s without a record (the old
    rule never widened it; the broker spent 1.1 cores on listings it threw away), yet behind
    the whole time."""
    partition, made = _Partition(), []
    reader = WideningReader("t", lambda wait_ms: _FakeConsumer(partition, wait_ms, made), 10,
                            probe=lambda: _FakeConsumer(partition, 0, []))
    reader.assign({("t", 0): 100})
    now_s = 0.0
    while now_s < 2.6:
        partition.high += 3  # the input grows
        partition.position += 1  # a record arrives, fewer than came in
        reader.after_poll(True, now_s)
        now_s = _poll_empty(reader, now_s + 0.1, now_s + 0.5)
    assert reader.wait_ms == 20 and made == [10, 20]


def test_a_reader_that_keeps_up_under_load_keeps_its_wait() -> None:
    partition, made = _Partition(), []
    reader = WideningReader("t", lambda wait_ms: _FakeConsumer(partition, wait_ms, made), 10,
                            probe=lambda: _FakeConsumer(partition, 0, []))
    reader.assign({("t", 0): 100})
    now_s = 0.0
    while now_s < 10.0:
        partition.high += 3
        partition.position = partition.high  # it reads all there is
        reader.after_poll(True, now_s)
        now_s = _poll_empty(reader, now_s + 0.1, now_s + 0.3)
    assert reader.wait_ms == 10 and made == [10]


class _Listing:
    """The broker's listing time as a reader measures it, set by the test; counts the
    measurements and the partitions they asked for."""

    def __init__(self, listing_ms: float) -> None:
        self.listing_ms = listing_ms
        self.asked: list[list[tuple[str, int]]] = []
        self.timed_on: list[object] = []

    def __call__(self, consumer: object, keys: object) -> float:
        self.asked.append(list(keys))  # type: ignore[call-overload]
        self.timed_on.append(consumer)
        return self.listing_ms


def _measured_reader(partition: _Partition, made: list[int], listing: _Listing
                     ) -> WideningReader:
    """A reader over `partition` at offset 100, starting at a 10 ms wait, whose listings
    `listing` times; each consumer it makes is noted in `made` by its wait."""
    reader = WideningReader("t", lambda wait_ms: _FakeConsumer(partition, wait_ms, made), 10,
                            probe=lambda: _FakeConsumer(partition, 0, []), measure=listing)
    reader.assign({("t", 0): 100})
    return reader


def test_a_reader_whose_listing_outgrows_half_its_wait_widens_before_it_is_starved() -> None:
    """At the tail, never behind for long: the starvation rule would never widen it, while
    the broker cut the listings of its fetches short (a pass that notices new data has half
    the wait left or less)."""
    partition, made, listing = _Partition(), [], _Listing(4.0)
    probes: list[_FakeConsumer] = []

    def probe() -> _FakeConsumer:
        probes.append(_FakeConsumer(partition, 0, []))
        return probes[-1]

    reader = WideningReader("t", lambda wait_ms: _FakeConsumer(partition, wait_ms, made), 10,
                            probe=probe, measure=listing)
    reader.assign({("t", 0): 100})
    now_s = _poll_empty(reader, 0.0, 31.0)
    assert reader.wait_ms == 10, "widened at a listing under half the wait"
    assert len(listing.asked) == 2 and listing.asked[0] == [("t", 0)], \
        "measured more often than every MEASURE_EVERY_S, or not its partitions"
    listing.listing_ms = 6.0
    now_s = _poll_empty(reader, now_s, now_s + 30.0)
    assert reader.wait_ms == 24 and made == [10, 24], "not widened to 4x the listing"
    assert partition.position == 100, "reopened elsewhere than where it would have read next"
    # Half of 24 ms is room enough for 6 ms, and narrowing wants a listing under a quarter.
    now_s = _poll_empty(reader, now_s, now_s + 95.0)
    assert reader.wait_ms == 24 and made == [10, 24]
    listing.listing_ms = 1.0  # the loaded moment is over
    _poll_empty(reader, now_s, now_s + 31.0)
    assert reader.wait_ms == 10 and made == [10, 24, 10]
    # Timed on a connection of its own: the reader's has a fetch in flight, which the broker
    # answers first.
    assert len(probes) == 1 and all(on is probes[0] for on in listing.timed_on)


def test_a_reader_widened_to_the_widest_wait_stays_there() -> None:
    partition, made, listing = _Partition(), [], _Listing(5_000.0)
    reader = WideningReader("t", lambda wait_ms: _FakeConsumer(partition, wait_ms, made), 10,
                            probe=lambda: _FakeConsumer(partition, 0, []),
                            measure=listing)
    reader.assign({("t", 0): 100})
    _poll_empty(reader, 0.0, 200.0)
    assert made == [10, WAIT_MS_MAX]


class _Metadata:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = {name: type("T", (), {"partitions": dict.fromkeys(range(count))})()
                       for name, count in topics.items()}


class _Probe:
    """A probe consumer: topics' metadata and watermarks; records what it was asked."""

    def __init__(self, topics: dict[str, int], highs: dict[tuple[str, int], int]) -> None:
        self._metadata = _Metadata(topics)
        self._highs = highs
        self.asked: list[tuple[str, int]] = []
        self.closed = False

    def list_topics(self, timeout: float = 1.0) -> _Metadata:
        return self._metadata

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = 1.0,
                              cached: bool = False) -> tuple[int, int]:
        assert not cached, "a probe's cached watermarks say nothing"
        key = (partition.topic, partition.partition)
        self.asked.append(key)
        return 0, self._highs[key]

    def close(self) -> None:
        self.closed = True


def test_the_listing_is_sampled_again_on_the_largest_partition_only() -> None:
    probe = _Probe({"a": 2, "b": 1}, {("a", 0): 5, ("a", 1): 700, ("b", 0): 30})
    listed_ms = smallest_listing_ms(probe, [("a", 0), ("a", 1), ("b", 0)], samples=3)
    assert listed_ms >= 0
    assert probe.asked == [("a", 0), ("a", 1), ("b", 0), ("a", 1), ("a", 1)]


def _watch(listings: list[float], wait_ms: int, fired: list[float]) -> tuple[ListingWatch,
                                                                              _Probe]:
    probe = _Probe({"in": 2, "other": 1}, {})
    keys_seen: list[list[tuple[str, int]]] = []

    def measure(consumer: object, keys: object) -> float:
        assert consumer is probe
        keys_seen.append(list(keys))  # type: ignore[call-overload]
        assert keys_seen[-1] == [("in", 0), ("in", 1)], "timed partitions of other topics"
        return listings.pop(0)

    return ListingWatch(lambda: probe, ["in"], wait_ms, fired.append, measure=measure), probe


def test_a_reader_that_cannot_reopen_is_told_when_two_looks_find_its_wait_outgrown() -> None:
    fired: list[float] = []
    watch, _probe = _watch([4.0, 6.0, 4.0, 6.0, 7.0, 9.0], 10, fired)
    for _ in range(4):
        watch.check()
    assert fired == [], "told after one look over half the wait (a loaded moment)"
    watch.check()
    assert fired == [7.0] and watch.fired
    watch.check()  # told once: the restart measures again
    assert fired == [7.0]


def test_a_reader_at_the_widest_wait_is_not_told() -> None:
    fired: list[float] = []
    watch, _probe = _watch([5_000.0] * 3, WAIT_MS_MAX, fired)
    for _ in range(3):
        watch.check()
    assert fired == []


def test_a_reader_does_not_reopen_to_narrow_by_a_little() -> None:
    partition, made, listing = _Partition(), [], _Listing(5.5)
    reader = _measured_reader(partition, made, listing)
    now_s = _poll_empty(reader, 0.0, 1.0)
    assert made == [10, 22]
    listing.listing_ms = 4.5  # room for 18 ms: not a quarter narrower
    now_s = _poll_empty(reader, now_s, now_s + 65.0)
    assert made == [10, 22]
    listing.listing_ms = 1.0
    _poll_empty(reader, now_s, now_s + 31.0)
    assert made == [10, 22, 10]


def test_time_at_the_tail_counts_from_the_widening_on() -> None:
    """A widened reader at the tail for 30 s and widened again then: narrowing waits 30 s
    more, not none (a soak narrowed 17 s after a widening, on the listing of a quieter
    moment)."""
    partition, made, listing = _Partition(), [], _Listing(5.5)
    reader = _measured_reader(partition, made, listing)
    now_s = _poll_empty(reader, 0.0, 29.95)
    assert made == [10, 22]
    listing.listing_ms = 12.0
    now_s = _poll_empty(reader, now_s, 30.05)  # the look at 30 s widens again
    assert made == [10, 22, 48]
    listing.listing_ms = 1.0
    now_s = _poll_empty(reader, now_s, 59.5)  # 29 s at the tail since the widening
    assert made == [10, 22, 48]
    _poll_empty(reader, now_s, 61.0)
    assert made == [10, 22, 48, 10]
