from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import msgspec

from connectors.runtime import Clock, Pause, Publish, Reject, Step, SystemClock, drive
from state.messages import DeadLetter, Quote
from state.topics import Topic, decode

NOW = dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC)


class Scripted:
    def steps(self, clock: Clock) -> Iterator[Step]:
        yield Publish("AAPL", Quote(symbol="AAPL", bid=Decimal(1), ask=Decimal(2),
                                    bid_size=Decimal(1), ask_size=Decimal(1), venue_time=NOW))
        yield Pause(clock.monotonic() + 0.01)
        yield Reject("AAPL", "crossed_quote", b"raw")
        yield Publish("AAPL", Quote(symbol="AAPL", bid=Decimal(1), ask=Decimal(2),
                                    bid_size=Decimal(1), ask_size=Decimal(1), venue_time=NOW))


def test_drive_publishes_good_and_dead_letters_bad() -> None:
    sent: list[tuple[str, str | None, bytes]] = []
    stats = drive(Scripted(), SystemClock(), lambda t, k, v: sent.append((t, k, v)),
                  "p.quotes", "p.dlq.quotes", lambda: True, "quotes", "test")
    assert (stats.published, stats.rejected) == (2, 1)
    assert [t for t, _, _ in sent] == ["p.quotes", "p.dlq.quotes", "p.quotes"]
    assert isinstance(decode(Topic.QUOTES, sent[0][2]), Quote)
    letter = msgspec.json.decode(sent[1][2], type=DeadLetter)
    assert (letter.error, letter.original, letter.key, letter.source_topic) == (
        "crossed_quote", b"raw", "AAPL", "quotes")


def test_drive_stops_when_asked() -> None:
    sent: list[object] = []
    flags = iter([True, False])
    drive(Scripted(), SystemClock(), lambda *a: sent.append(a), "q", "d",
          lambda: next(flags, False), "quotes", "test")
    assert len(sent) == 1
