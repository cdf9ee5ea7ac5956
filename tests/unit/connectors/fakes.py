"""A fake clock and a runner that plays a connector's steps against it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from connectors.runtime import Connector, Pause, Publish, Reject

T0 = dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self, start: dt.datetime = T0) -> None:
        self.start = start
        self.elapsed_s = 0.0

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.elapsed_s)

    def monotonic(self) -> float:
        return self.elapsed_s


def play(connector: Connector, clock: FakeClock, until_s: float = 3600.0,
         ) -> Iterator[tuple[float, Publish | Reject]]:
    """Every Publish/Reject with the fake time it happened at; pauses advance the clock."""
    for step in connector.steps(clock):
        if isinstance(step, Pause):
            clock.elapsed_s = max(clock.elapsed_s, step.until_monotonic_s)
            if clock.elapsed_s > until_s:
                return
            continue
        yield clock.elapsed_s, step
