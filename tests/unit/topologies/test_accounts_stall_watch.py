"""The account topology's stall watch: a group behind its input whose committed offsets stand
still is stopped once for a restart; a frozen process is judged afresh."""

from __future__ import annotations

from state.liveness import GroupStatus, Sample
from topologies.accounts import GroupStallWatch

GROUP = "accounts"
KEY = ("orders.commands", 0)


class FakeSampler:
    def __init__(self) -> None:
        self.committed = 10
        self.end = 10

    def sample(self, now_s: float) -> dict[str, Sample]:
        return {GROUP: Sample(now_s, {KEY: self.committed}, {KEY: self.end})}


def _watch(sampler: FakeSampler, fired: list[GroupStatus]) -> GroupStallWatch:
    return GroupStallWatch(lambda: sampler, GROUP, fired.append, stall_s=60, interval_s=10)


def test_a_group_that_keeps_up_is_left_alone() -> None:
    sampler, fired = FakeSampler(), []
    watch = _watch(sampler, fired)
    for step in range(20):
        sampler.end += 5
        sampler.committed += 5
        watch.check(step * 10.0)
    assert fired == []


def test_a_group_standing_still_behind_a_growing_input_is_stopped_once() -> None:
    sampler, fired = FakeSampler(), []
    watch = _watch(sampler, fired)
    for step in range(15):
        sampler.end += 3  # commands keep coming; nothing is committed
        watch.check(step * 10.0)
    assert len(fired) == 1 and fired[0].stuck and fired[0].stalled == (KEY,)
    assert fired[0].stalled_for_s >= 60


def test_a_frozen_process_is_judged_afresh() -> None:
    sampler, fired = FakeSampler(), []
    watch = _watch(sampler, fired)
    for step in range(5):
        sampler.end += 3
        watch.check(step * 10.0)
    sampler.end += 3
    watch.check(400.0)  # 360 s without a look: SIGSTOP, a paused VM
    sampler.committed = sampler.end  # it catches up once it runs again
    watch.check(410.0)
    assert fired == []
