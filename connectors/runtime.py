"""What every connector yields, and the loop that drives a connector into Kafka.

A connector is a generator of `Publish` (a good message for its topic), `Reject` (a bad tick
for the dead-letter topic) and `Pause` (wait until a monotonic instant). It reads time only
through the `Clock` it is given, so tests drive it with a fake clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from connectors.validation import RejectCounter
from state.messages import Message
from state.topics import dead_letter, encode

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Publish:
    key: str
    message: Message


@dataclass(frozen=True, slots=True)
class Reject:
    key: str | None
    reason: str
    original: bytes


@dataclass(frozen=True, slots=True)
class Pause:
    until_monotonic_s: float


Step = Publish | Reject | Pause


class Clock(Protocol):
    def now(self) -> dt.datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class Connector(Protocol):
    def steps(self, clock: Clock) -> Iterator[Step]: ...


ProduceFn = Callable[[str, str | None, bytes], None]  # topic, key, value


@dataclass
class DriveStats:
    published: int = 0
    rejected: int = 0


def drive(connector: Connector, clock: Clock, produce: ProduceFn, topic: str, dlq_topic: str,
          running: Callable[[], bool], source_topic: str, name: str) -> DriveStats:
    """Run a connector until it ends or `running()` turns false. Bad ticks go to `dlq_topic`
    as dead letters with their reason, and are counted by reason."""
    stats = DriveStats()
    rejects = RejectCounter()
    next_report_s = clock.monotonic() + REPORT_INTERVAL_S
    for step in connector.steps(clock):
        if not running():
            break
        if isinstance(step, Publish):
            produce(topic, step.key, encode(step.message))
            stats.published += 1
        elif isinstance(step, Reject):
            letter = dead_letter(source_topic, -1, -1, step.key, step.original, step.reason,
                                 clock.now())
            produce(dlq_topic, step.key, encode(letter))
            rejects.count(step.reason)
            stats.rejected += 1
        else:
            _sleep_until(step.until_monotonic_s, clock, running)
            if clock.monotonic() >= next_report_s:
                _report(name, stats, rejects)
                next_report_s = clock.monotonic() + REPORT_INTERVAL_S
    _report(name, stats, rejects)
    return stats


def _sleep_until(until_s: float, clock: Clock, running: Callable[[], bool]) -> None:
    # Short naps so that a stop request is honoured quickly even during a long pause.
    while running():
        remaining = until_s - clock.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, 0.1))


def _report(name: str, stats: DriveStats, rejects: RejectCounter) -> None:
    log.info("connector %s: published %d, rejected %d %s", name, stats.published,
             stats.rejected, dict(rejects.by_reason))
