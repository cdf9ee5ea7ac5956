"""A reader starved by the embedded broker widens its fetch wait and reads on (issue 11).

Tansu lists every batch object of a partition on each fetch that finds data and answers empty
once the listing outlasts the fetch wait. 40,000 one-record batches take tens of ms to list on
any machine (about 0.5-2 us an object), so a reader behind them with a 1 ms wait gets nothing;
the WideningReader notices (behind, nothing for the starvation time), measures the listing,
reopens with a wider wait at the offsets it would have read next, and reads every record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from state.fetch_wait import (
    LISTING_TO_WAIT,
    LISTING_WASTES,
    ListingWatch,
    WideningReader,
    measured_wait_ms,
    probe_consumer,
)

pytestmark = pytest.mark.integration

BATCHES = 40_000
TAIL = 50  # the records the reader is behind by
START_WAIT_MS = 1
READ_TIMEOUT_S = 90.0


def _produce_one_record_batches(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                         "batch.num.messages": 1})
    for n in range(count):
        while True:
            try:
                producer.produce(topic, str(n).encode())
                break
            except BufferError:
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


@pytest.fixture(scope="module")
def big_topic(services):  # type: ignore[no-untyped-def]
    """A partition of `BATCHES` one-record batches, values 0.. in order."""
    bootstrap = services.bootstrap_servers
    topic = f"fw{uuid.uuid4().hex[:8]}.big"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"retention.ms": "-1"})])[topic].result()
    try:
        _produce_one_record_batches(bootstrap, topic, BATCHES)
        yield topic
    finally:
        admin.delete_topics([topic])[topic].result()


def _consumer_maker(bootstrap: str, topic: str) -> Callable[[int], Consumer]:
    def make(wait_ms: int) -> Consumer:
        return Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": wait_ms})
    return make


def test_a_reader_starved_behind_a_large_partition_widens_its_wait_and_reads_on(
        services, big_topic) -> None:  # type: ignore[no-untyped-def]
    bootstrap, topic = services.bootstrap_servers, big_topic
    reader = WideningReader(topic, _consumer_maker(bootstrap, topic), START_WAIT_MS,
                            starved_s=1.0, probe=lambda: probe_consumer(bootstrap))
    reader.assign({(topic, 0): BATCHES - TAIL})
    values: list[int] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while len(values) < TAIL and time.monotonic() < deadline:
            records = reader.consumer.consume(num_messages=100, timeout=0.1)
            values += [int(r.value()) for r in records if r.error() is None]
            reader.after_poll(bool(records))
        assert values == list(range(BATCHES - TAIL, BATCHES)), values[:5]
        assert reader.wait_ms > START_WAIT_MS  # it was starved, and widened
    finally:
        reader.close()
    # A reader that cannot reopen (a Quix app) measures at start: past the listing.
    assert measured_wait_ms(bootstrap, [topic], START_WAIT_MS) > LISTING_TO_WAIT
    assert measured_wait_ms(bootstrap, [f"{topic}.none"], 25) == 25


def test_a_reader_at_the_tail_of_a_large_partition_widens_before_it_is_starved(
        services, big_topic) -> None:  # type: ignore[no-untyped-def]
    """At the tail the broker does not list (nothing to get), so the reader is never behind
    for long; but each record that comes is a listing its 1 ms wait cuts short. It times the
    listing, widens, and reads what comes next."""
    bootstrap, topic = services.bootstrap_servers, big_topic
    reader = WideningReader(topic, _consumer_maker(bootstrap, topic), START_WAIT_MS,
                            starved_s=READ_TIMEOUT_S, measure_every_s=0.5,
                            probe=lambda: probe_consumer(bootstrap))
    reader.assign({(topic, 0): BATCHES})
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while reader.wait_ms == START_WAIT_MS and time.monotonic() < deadline:
            records = reader.consumer.consume(num_messages=100, timeout=0.1)
            assert not records, "read past the tail"
            reader.after_poll(False)
        assert reader.wait_ms > 2 * START_WAIT_MS, "did not widen at the tail"
        _produce_one_record_batches(bootstrap, topic, 1)  # value 0, at offset BATCHES
        got: list[int] = []
        while not got and time.monotonic() < deadline:
            got = [r.offset() for r in reader.consumer.consume(num_messages=10, timeout=0.1)
                   if r.error() is None]
            reader.after_poll(bool(got))
        assert got == [BATCHES], got
    finally:
        reader.close()


def test_a_reader_that_cannot_reopen_is_told_its_wait_is_outgrown(
        services, big_topic) -> None:  # type: ignore[no-untyped-def]
    """The account topology's case (Quix fixes its consumer's wait at start): the watch times
    the broker's listing of the largest input partition on a probe and tells it to restart."""
    bootstrap = services.bootstrap_servers
    told: list[float] = []
    watch = ListingWatch(lambda: probe_consumer(bootstrap), [big_topic], START_WAIT_MS,
                         told.append, interval_s=0.2)
    watch.start()
    try:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while not told and time.monotonic() < deadline:
            time.sleep(0.05)
        assert told and told[0] > START_WAIT_MS * LISTING_WASTES, told
    finally:
        watch.stop()
