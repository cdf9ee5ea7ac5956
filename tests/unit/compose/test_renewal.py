"""When the embedded broker is renewed: daily at the stack file's hour (UTC), never for a
broker under an hour old, never with "" (compose.renewal)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compose.renewal import MIN_AGE, next_renewal, time_of_day

UTC = dt.UTC


def test_the_hour_is_hh_mm_utc_or_never() -> None:
    assert time_of_day("22:00") == dt.time(22, 0, tzinfo=UTC)
    assert time_of_day("06:30") == dt.time(6, 30, tzinfo=UTC)
    assert time_of_day("") is None
    for bad in ("22", "22:0", "25:00", "22:61", "10pm", "22:00:00"):
        with pytest.raises(ValueError):
            time_of_day(bad)


def test_a_broker_started_in_the_morning_is_renewed_that_night() -> None:
    started = dt.datetime(2026, 12, 4, 9, 45, tzinfo=UTC)
    assert next_renewal(started, time_of_day("22:00")) == \
        dt.datetime(2026, 12, 4, 22, 0, tzinfo=UTC)


def test_a_broker_started_just_before_the_hour_waits_for_the_next_day() -> None:
    started = dt.datetime(2026, 12, 4, 21, 30, tzinfo=UTC)
    assert next_renewal(started, time_of_day("22:00")) == \
        dt.datetime(2026, 12, 5, 22, 0, tzinfo=UTC)


def test_never_means_never() -> None:
    assert next_renewal(dt.datetime(2026, 12, 4, tzinfo=UTC), None) is None


@given(st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2040, 1, 1),
                    timezones=st.just(UTC)),
       st.integers(0, 23), st.integers(0, 59))
def test_the_renewal_is_the_first_hour_once_the_broker_is_old_enough(
        started: dt.datetime, hour: int, minute: int) -> None:
    renew_at = dt.time(hour, minute, tzinfo=UTC)
    due = next_renewal(started, renew_at)
    assert due is not None
    assert due.timetz() == renew_at
    assert started + MIN_AGE <= due < started + MIN_AGE + dt.timedelta(days=1)
