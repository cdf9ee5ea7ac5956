"""Fakes the topologies' tests share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeRecord:
    """A consumed record: what the topologies (and Quix's `Topic.row_deserialize`) read of a
    `confluent_kafka.Message`."""

    raw: bytes | None
    offset_: int
    partition_: int = 1
    key_: bytes | None = b"TSLA"
    topic_: str = ""
    timestamp_ms: int = 0  # the producer's (CreateTime)

    def value(self) -> bytes | None:
        return self.raw

    def key(self) -> bytes | None:
        return self.key_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def topic(self) -> str:
        return self.topic_

    def timestamp(self) -> tuple[int, int]:
        return 1, self.timestamp_ms  # TIMESTAMP_CREATE_TIME

    def headers(self) -> None:
        return None

    def leader_epoch(self) -> None:
        return None

    def error(self) -> None:
        return None

    def latency(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self.raw or b"")

