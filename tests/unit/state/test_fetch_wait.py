"""When a reader's fetch wait widens (state.fetch_wait): starved means behind and given
nothing for the whole starvation time; the new wait leaves room for the broker's listing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from state.fetch_wait import LISTING_TO_WAIT, WAIT_MS_MAX, Starvation, wider_wait


def test_starved_only_after_the_whole_time_behind_with_nothing() -> None:
    starvation = Starvation(starved_s=2.0)
    assert not starvation.observe(0.0, got_records=False, behind=True)
    assert not starvation.observe(1.9, got_records=False, behind=True)
    assert starvation.observe(2.0, got_records=False, behind=True)
    # Judged again from scratch after a verdict.
    assert not starvation.observe(2.1, got_records=False, behind=True)
    assert starvation.observe(4.5, got_records=False, behind=True)


def test_a_record_or_being_caught_up_starts_the_clock_again() -> None:
    starvation = Starvation(starved_s=2.0)
    starvation.observe(0.0, got_records=False, behind=True)
    starvation.observe(1.5, got_records=True, behind=False)
    assert not starvation.observe(3.0, got_records=False, behind=True)
    assert not starvation.observe(4.9, got_records=False, behind=True)
    starvation.observe(5.0, got_records=False, behind=False)  # at the tail: nothing to get
    assert not starvation.observe(6.0, got_records=False, behind=True)
    assert starvation.observe(8.0, got_records=False, behind=True)


def test_idle_at_the_tail_is_never_starved() -> None:
    starvation = Starvation(starved_s=2.0)
    assert not any(starvation.observe(float(t), got_records=False, behind=False)
                   for t in range(100))


@given(st.floats(0, 10_000, allow_nan=False), st.integers(1, WAIT_MS_MAX))
def test_a_wider_wait_leaves_room_for_the_listing_and_at_least_doubles(
        listing_ms: float, wait_ms: int) -> None:
    wider = wider_wait(listing_ms, wait_ms)
    assert wider <= WAIT_MS_MAX
    assert wider >= min(2 * wait_ms, WAIT_MS_MAX)
    assert wider >= min(int(LISTING_TO_WAIT * listing_ms), WAIT_MS_MAX)
