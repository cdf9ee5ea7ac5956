"""/healthz stages and /metrics group gauges from the stage watch's verdicts."""

from __future__ import annotations

from gateways.http.health import GroupGauges, StageWatch, stage_checks
from state.liveness import Sample

Q0 = ("quotes", 0)


class Samples:
    """A broker stand-in that answers the samples of a scripted run."""

    def __init__(self) -> None:
        self.committed = 100

    def sample(self, now_s: float) -> dict[str, Sample]:
        return {"market-data": Sample(now_s, {Q0: self.committed}, {Q0: 100 + int(now_s)}),
                "accounts": Sample(now_s, {("orders.commands", 0): 7},
                                   {("orders.commands", 0): 7})}


def test_a_stuck_stage_is_named_with_its_partitions() -> None:
    broker = Samples()
    watch = StageWatch(lambda: broker, stall_s=30)
    for now_s in range(0, 41, 10):
        watch.sample_once(float(now_s))
    checks = stage_checks(watch.statuses())
    assert checks["stage:accounts"] == "ok"
    assert checks["stage:market-data"].startswith("stuck: quotes[0] 40 behind")


def test_gauges_expose_lag_movement_and_verdict_per_group() -> None:
    broker = Samples()
    watch = StageWatch(lambda: broker, stall_s=30)
    watch.sample_once(0.0)
    broker.committed = 105
    watch.sample_once(10.0)
    text = "\n".join(GroupGauges(watch).render())
    assert 'consumer_group_lag{group="market-data"} 5' in text
    assert 'consumer_group_committed_moved{group="market-data"} 5' in text
    assert 'consumer_group_stuck{group="accounts"} 0' in text


def test_groups_that_disappear_are_forgotten() -> None:
    broker = Samples()
    watch = StageWatch(lambda: broker, stall_s=30)
    watch.sample_once(0.0)
    broker.sample = lambda now_s: {}  # type: ignore[method-assign]
    watch.sample_once(10.0)
    assert watch.statuses() == []
