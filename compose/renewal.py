"""When `brokerage up` renews the embedded broker (issue 11).

The embedded broker (Tansu 0.6.0, memory storage) keeps every batch it was given and lists
all of a partition's batches on each fetch that finds data: its memory and its CPU grow with
what it holds, and it trims nothing (no retention; DeleteRecords is not implemented). Nothing
of record lives only there: the shards, the FIX store and the intake journal are the durable
edges, and they replay into a new, empty broker (`brokerage up` does it when its broker dies).
So the stack renews it once a day at a quiet hour: the services stopped cleanly, the broker
stopped and started empty, topics made again, the services started. What it holds is then at
most one day of records. A broker younger than `MIN_AGE` is left alone, so a stack started
shortly before the hour (a test, a demo) is not renewed at once.
"""

from __future__ import annotations

import datetime as dt

MIN_AGE = dt.timedelta(hours=1)


def time_of_day(text: str) -> dt.time | None:
    """`HH:MM` (UTC) as a time, or None for "" (never). Raises ValueError otherwise."""
    if not text:
        return None
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"{text!r}: expected HH:MM (UTC), or \"\" for never")
    return dt.time(int(hours), int(minutes), tzinfo=dt.UTC)


def next_renewal(broker_started: dt.datetime, renew_at: dt.time | None,
                 min_age: dt.timedelta = MIN_AGE) -> dt.datetime | None:
    """The first `renew_at` once the broker started at `broker_started` is `min_age` old."""
    if renew_at is None:
        return None
    old_enough = broker_started + min_age
    due = dt.datetime.combine(old_enough.date(), renew_at)
    return due if due >= old_enough else due + dt.timedelta(days=1)
