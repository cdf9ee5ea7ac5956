"""Progress of consumer groups judged from (committed, end) samples: lag growing while the
committed offset stands still is stuck; idle and progressing groups are not."""

from __future__ import annotations

from state.liveness import Sample, Tracker, assess

Q0, Q1 = ("quotes", 0), ("quotes", 1)


def sample(at_s: float, committed: dict, ends: dict) -> Sample:
    return Sample(at_s, committed, ends)


def test_no_samples_is_not_stuck() -> None:
    status = assess("g", [], stall_s=30)
    assert not status.stuck and status.lag == 0


def test_progressing_group_is_not_stuck() -> None:
    samples = [sample(t, {Q0: 100 * t}, {Q0: 100 * t + 20}) for t in range(0, 61, 10)]
    status = assess("g", samples, stall_s=30)
    assert not status.stuck
    assert status.lag == 20 and status.committed_moved == 1000


def test_idle_caught_up_group_is_not_stuck() -> None:
    samples = [sample(t, {Q0: 500}, {Q0: 500}) for t in range(0, 121, 10)]
    assert not assess("g", samples, stall_s=30).stuck


def test_committed_still_while_input_grows_is_stuck_after_the_window() -> None:
    samples = [sample(t, {Q0: 500, Q1: 10 * t}, {Q0: 500 + 10 * t, Q1: 10 * t})
               for t in range(0, 41, 10)]
    status = assess("g", samples[:3], stall_s=30)  # 20 s of standing still: not yet
    assert not status.stuck
    status = assess("g", samples, stall_s=30)
    assert status.stuck and status.stalled == (Q0,)
    assert status.stalled_for_s == 30 and status.lag == 400


def test_the_stall_starts_when_the_partition_fell_behind() -> None:
    # Caught up until t=20, then its input grows and it never commits again.
    samples = [sample(t, {Q0: 200}, {Q0: 200 if t <= 20 else 200 + t}) for t in range(0, 61, 10)]
    status = assess("g", samples, stall_s=30)
    assert status.stuck and status.stalled_for_s == 30  # behind from t=30 to t=60
    assert not assess("g", samples[:-1], stall_s=30).stuck


def test_a_commit_ends_the_stall() -> None:
    samples = [sample(t, {Q0: 500}, {Q0: 500 + t}) for t in range(0, 41, 10)]
    samples.append(sample(50, {Q0: 530}, {Q0: 550}))
    assert not assess("g", samples, stall_s=30).stuck


def test_behind_on_a_quiet_input_is_stuck_from_lag_min() -> None:
    # The load stopped; the group is 300 behind and commits nothing.
    samples = [sample(t, {Q0: 700}, {Q0: 1000}) for t in range(0, 41, 10)]
    assert assess("g", samples, stall_s=30).stuck


def test_a_commit_marker_lag_of_one_is_not_stuck() -> None:
    # A transactional input ends with a commit marker the consumer never commits past.
    samples = [sample(t, {Q0: 700}, {Q0: 701}) for t in range(0, 121, 10)]
    assert not assess("g", samples, stall_s=30).stuck


def test_end_reported_below_committed_counts_as_no_lag() -> None:
    # The embedded broker's latest offset is the last batch's base + 1.
    samples = [sample(t, {Q0: 800}, {Q0: 795}) for t in range(0, 121, 10)]
    status = assess("g", samples, stall_s=30)
    assert not status.stuck and status.lag == 0


def test_tracker_keeps_enough_history_and_forgets_groups() -> None:
    tracker = Tracker(stall_s=30)
    for t in range(0, 301, 10):
        tracker.add("md", sample(t, {Q0: 500}, {Q0: 500 + t}))
        tracker.add("other", sample(t, {Q0: t}, {Q0: t}))
    assert len(tracker.history["md"]) <= 8
    statuses = {s.group: s for s in tracker.statuses()}
    assert statuses["md"].stuck and not statuses["other"].stuck
    tracker.forget_except(["md"])
    assert [s.group for s in tracker.statuses()] == ["md"]


def test_status_to_builtins_names_the_stalled_partitions() -> None:
    samples = [sample(t, {Q0: 5}, {Q0: 5 + t}) for t in range(0, 41, 10)]
    data = assess("g", samples, stall_s=30).to_builtins()
    assert data["stalled"] == ["quotes[0]"] and data["stuck"] is True
