"""`brokerage topics replay`: bounded by the topic as it was when the replay began; an offset
past the end or a time after the last record answers at once, never a wait."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from confluent_kafka import Producer

from compose.exceptions import ComposeError
from compose.topics_cli import replay
from tests.integration.sinks.helpers import read_topic

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 27, 15, 0, tzinfo=dt.UTC)


def _produce(bootstrap: str, topic: str, count: int, first: int = 0) -> None:
    """`count` records, one per batch, to partition 0, stamped T0 + i seconds."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(first, first + count):
        producer.produce(topic, key=b"k", value=f"r{i}".encode(), partition=0,
                         timestamp=int((T0 + dt.timedelta(seconds=i)).timestamp() * 1000))
        producer.flush(10)
    assert producer.flush(10) == 0


def _replay(services, source: str, destination: str, **start) -> tuple[list[str], float]:
    lines: list[str] = []
    started = time.monotonic()
    replay(services.bootstrap_servers, source, destination, report=lines.append,
           from_offset=start.get("from_offset"), from_time=start.get("from_time"),
           to_offset=start.get("to_offset"), to_time=start.get("to_time"))
    return lines, time.monotonic() - started


def test_replay_from_an_offset_or_a_time_copies_what_follows(services, topics) -> None:
    source, copies = topics + "quotes", topics + "market.status"
    _produce(services.bootstrap_servers, source, 6)
    lines, _ = _replay(services, source, copies, from_offset=4)
    # the other partition holds nothing: offset 4 is past its end, and it says so
    assert lines[-1] == (f"replayed 2 records from {source} to {copies}; offset 4 is past the "
                         "end of partitions [1]")
    lines, _ = _replay(services, source, copies, from_time=T0 + dt.timedelta(seconds=3))
    assert lines[-1] == f"replayed 3 records from {source} to {copies}"
    assert sorted(read_topic(services.bootstrap_servers, copies, 5)) == [
        b"r3", b"r4", b"r4", b"r5", b"r5"]


def test_replay_stops_before_an_offset_or_a_time(services, topics) -> None:
    source, copies = topics + "quotes", topics + "market.status"
    _produce(services.bootstrap_servers, source, 6)
    lines, _ = _replay(services, source, copies, from_offset=1, to_offset=3)
    assert lines[-1] == (f"replayed 2 records from {source} to {copies}; offset 1 is past the "
                         "end of partitions [1]")
    lines, _ = _replay(services, source, copies, to_time=T0 + dt.timedelta(seconds=1))
    assert lines[-1] == f"replayed 1 records from {source} to {copies}"
    assert sorted(read_topic(services.bootstrap_servers, copies, 3)) == [b"r0", b"r1", b"r2"]
    with pytest.raises(ComposeError, match="--to-offset 2 leaves nothing after --from-offset 2"):
        _replay(services, source, copies, from_offset=2, to_offset=2)


def test_past_the_end_answers_at_once(services, topics) -> None:
    source, copies = topics + "quotes", topics + "market.status"
    _produce(services.bootstrap_servers, source, 3)
    with pytest.raises(ComposeError, match="offset 50 is past the end of every partition"):
        _replay(services, source, copies, from_offset=50)
    lines, took_s = _replay(services, source, copies, from_time=T0 + dt.timedelta(days=1))
    assert lines[-1].startswith(f"replayed 0 records from {source} to {copies}; no record "
                                "at or after 2026-11-28T15:00:00+00:00")
    assert took_s < 20
    with pytest.raises(ComposeError, match="into itself"):
        _replay(services, source, source)


def test_a_topic_written_all_the_time_still_ends(services, topics) -> None:
    source, copies = topics + "quotes", topics + "market.status"
    _produce(services.bootstrap_servers, source, 3)
    stop = threading.Event()

    def keep_writing() -> None:
        producer = Producer({"bootstrap.servers": services.bootstrap_servers})
        while not stop.is_set():
            producer.produce(source, key=b"k", value=b"live", partition=0)
            producer.flush(5)
            stop.wait(0.05)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        lines, took_s = _replay(services, source, copies, from_offset=0)
    finally:
        stop.set()
        writer.join(10)
    assert lines[-1].startswith("replayed ")
    assert took_s < 30
