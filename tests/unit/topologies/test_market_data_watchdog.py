"""The market-data watchdog: a worker standing still behind its input, or holding no
partition, is told to exit; a process that was itself frozen is judged afresh."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from confluent_kafka import TopicPartition

import topologies.market_data as md
from topologies.market_data import Watchdog


@dataclass
class FakeConsumer:
    partitions: list[int]
    ends: dict[int, int] = field(default_factory=dict)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("quotes", p) for p in self.partitions]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float,
                              cached: bool) -> tuple[int, int]:
        return 0, self.ends.get(tp.partition, 0)

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]


def worker(consumer: FakeConsumer, processed: dict[int, int], processes: int = 1) -> object:
    return SimpleNamespace(consumer=consumer, _offsets=processed,
                           names=SimpleNamespace(quotes="quotes"),
                           config=SimpleNamespace(processes=processes))


def test_standing_still_behind_a_growing_input_is_wedged() -> None:
    consumer = FakeConsumer([0])
    dog = Watchdog(worker(consumer, {0: 100}), stall_s=60, loop_stall_s=120)  # type: ignore[arg-type]
    for now_s in range(0, 66, 5):  # behind from t=5: wedged once 60 s have passed
        dog._beat_s = float(now_s)
        consumer.ends[0] = 100 + 10 * now_s
        dog.check(float(now_s))
        if now_s < 65:
            assert dog.wedged is None
    assert dog.wedged is not None and "quotes" in dog.wedged


def test_a_progressing_worker_is_not_wedged() -> None:
    consumer = FakeConsumer([0])
    processed = {0: 0}
    dog = Watchdog(worker(consumer, processed), stall_s=60, loop_stall_s=120)  # type: ignore[arg-type]
    for now_s in range(0, 200, 5):
        dog._beat_s = float(now_s)
        consumer.ends[0] = 10 * now_s + 5
        processed[0] = 10 * now_s
        dog.check(float(now_s))
    assert dog.wedged is None


def test_no_partition_for_the_stall_is_wedged_unless_workers_share() -> None:
    for processes, expected in ((1, True), (3, False)):
        dog = Watchdog(worker(FakeConsumer([]), {}, processes), stall_s=60,  # type: ignore[arg-type]
                       loop_stall_s=120)
        for now_s in range(0, 66, 5):
            dog._beat_s = float(now_s)
            dog.check(float(now_s))
        assert (dog.wedged is not None) is expected


def test_a_frozen_process_is_judged_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(md.os, "_exit", exits.append)
    consumer = FakeConsumer([0], {0: 500})
    dog = Watchdog(worker(consumer, {0: 100}), stall_s=60, loop_stall_s=120)  # type: ignore[arg-type]
    dog._beat_s = 0.0
    dog.check(0.0)
    consumer.ends[0] = 5000
    dog.check(300.0)  # the process was stopped for 300 s: no verdict from before the gap
    assert dog.wedged is None and exits == []


def test_a_loop_that_does_not_come_back_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(md.os, "_exit", exits.append)
    dog = Watchdog(worker(FakeConsumer([]), {}), stall_s=60, loop_stall_s=120)  # type: ignore[arg-type]
    dog._beat_s = 0.0
    for now_s in range(0, 126, 5):
        dog.check(float(now_s))
    assert exits == [70]
