"""Which of a shard's partitions `brokerage reconcile` compares with the broker's log: only
offsets stored under the broker's current epoch refer to it."""

from __future__ import annotations

from state.shard_store import Landed, plan_stream_comparison


def test_a_shard_of_the_current_epoch_only_compares_whole() -> None:
    plan = plan_stream_comparison([0, 1, 2], {0: Landed(7, "e2"), 1: Landed(3, "e2")}, ["e2"],
                                  "e2")
    assert plan.compared == {0: 7, 1: 3}  # partition 2 landed nothing: nothing to compare
    assert plan.earlier == {} and plan.earlier_epochs == ()
    assert plan.whole_shard


def test_partitions_of_an_earlier_epoch_are_not_compared() -> None:
    # the broker restarted: partition 0 has landed again since, partition 1 not yet
    plan = plan_stream_comparison([0, 1], {0: Landed(2, "e2"), 1: Landed(900, "e1")},
                                  ["e1", "e2"], "e2")
    assert plan.compared == {0: 2}
    assert plan.earlier == {1: "e1"}
    assert plan.earlier_epochs == ("e1",) and not plan.whole_shard


def test_a_shard_with_earlier_records_never_compares_whole() -> None:
    # every partition landed again since the restart, but the balances still hold e1's records
    plan = plan_stream_comparison([0, 1], {0: Landed(2, "e2"), 1: Landed(5, "e2")},
                                  ["e1", "e2"], "e2")
    assert plan.compared == {0: 2, 1: 5} and plan.earlier == {}
    assert plan.earlier_epochs == ("e1",) and not plan.whole_shard


def test_records_from_before_epochs_or_without_a_broker_epoch_compare_with_nothing() -> None:
    legacy = plan_stream_comparison([0], {0: Landed(40, "")}, [""], "e2")
    assert legacy.compared == {} and legacy.earlier == {0: ""} and not legacy.whole_shard
    no_epoch = plan_stream_comparison([0], {0: Landed(4, "e2")}, ["e2"], None)
    assert no_epoch.compared == {} and no_epoch.earlier == {0: "e2"}
    assert not no_epoch.whole_shard
