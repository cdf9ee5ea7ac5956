"""Is every consumer group making progress? "Input lag grows while committed offsets stand
still" is the one symptom shared by every wedge seen so far (issue 11: a member idle in
`consume` after a failed rejoin, a worker blocked in a synchronous commit, partitions that no
member owns), whatever the cause. So progress is judged from the outside, per group, from
samples of (committed offset, end offset) per partition:

- a partition is *stalled* when, for the last `stall_s`, it has been behind (lag > 0) and its
  committed offset has not moved, while its input grew or it was at least `lag_min` behind
  (a consumer with work to do commits within its commit interval);
- a group is *stuck* when any of its partitions is stalled.

A partition that is caught up is idle, never stuck: an idle stack is healthy. The
embedded broker under-reports the end offset when the last batch held several records
(PLATFORM.md); lag is clamped at 0, so that error can hide a little lag but never invent it.

`assess` and `Tracker` are pure (no clock, no I/O): the caller samples and passes the time.
`GroupSampler` reads the samples from a broker with an AdminClient.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TopicPartitionKey = tuple[str, int]  # (topic, partition)

STALL_S_DEFAULT = 30.0
# A partition that does not grow counts as stalled only from this lag on (see _stalled_since).
LAG_MIN_DEFAULT = 2


@dataclass(frozen=True)
class Sample:
    """One group's offsets at one instant (monotonic seconds)."""

    at_s: float
    committed: Mapping[TopicPartitionKey, int]
    ends: Mapping[TopicPartitionKey, int]

    def lag(self, key: TopicPartitionKey) -> int:
        end, committed = self.ends.get(key), self.committed.get(key)
        if end is None:
            return 0
        return max(end - (committed if committed is not None and committed >= 0 else 0), 0)


@dataclass(frozen=True)
class GroupStatus:
    group: str
    stuck: bool
    lag: int  # records, summed over the group's partitions, at the newest sample
    committed_moved: int  # records committed over the last sampling interval
    stalled: tuple[TopicPartitionKey, ...] = ()  # the partitions that stand still behind
    stalled_for_s: float = 0.0  # how long the oldest stalled partition has stood still

    def to_builtins(self) -> dict[str, Any]:
        return {"group": self.group, "stuck": self.stuck, "lag": self.lag,
                "committed_moved": self.committed_moved,
                "stalled": [f"{topic}[{partition}]" for topic, partition in self.stalled],
                "stalled_for_s": round(self.stalled_for_s, 1)}


def assess(group: str, samples: Sequence[Sample], stall_s: float,
           lag_min: int = LAG_MIN_DEFAULT) -> GroupStatus:
    """The status of one group from its samples (oldest first)."""
    if not samples:
        return GroupStatus(group, stuck=False, lag=0, committed_moved=0)
    newest = samples[-1]
    keys = set(newest.ends) | set(newest.committed)
    lag = sum(newest.lag(key) for key in keys)
    previous = samples[-2] if len(samples) > 1 else newest
    moved = sum(max(newest.committed.get(key, 0) - previous.committed.get(key, 0), 0)
                for key in keys if key in previous.committed)
    stalled: list[TopicPartitionKey] = []
    longest = 0.0
    for key in sorted(keys):
        since = _stalled_since(samples, key, lag_min)
        if since is not None and newest.at_s - since >= stall_s:
            stalled.append(key)
            longest = max(longest, newest.at_s - since)
    return GroupStatus(group, stuck=bool(stalled), lag=lag, committed_moved=moved,
                       stalled=tuple(stalled), stalled_for_s=longest)


def _stalled_since(samples: Sequence[Sample], key: TopicPartitionKey,
                   lag_min: int) -> float | None:
    """When `key` began to stand still behind its input (the oldest sample of the run, up to
    the newest, in which its committed offset did not move and it was behind); None when it
    is not behind now, or when the run does not count: its input did not grow and it was
    never more than `lag_min - 1` behind (a transactional input's commit marker leaves a lag
    of 1 behind a consumer that is done)."""
    newest = samples[-1]
    committed_now = newest.committed.get(key)
    end_now = newest.ends.get(key)
    if end_now is None or newest.lag(key) == 0:
        return None
    start = newest
    for sample in reversed(samples[:-1]):
        if sample.committed.get(key) != committed_now or sample.lag(key) == 0:
            break
        start = sample
    if start is newest:
        return None
    grew = start.ends.get(key, end_now) < end_now
    behind = min(s.lag(key) for s in samples if s.at_s >= start.at_s) >= lag_min
    return start.at_s if grew or behind else None


@dataclass
class Tracker:
    """Keeps each group's recent samples (enough to cover `stall_s`) and judges them."""

    stall_s: float = STALL_S_DEFAULT
    lag_min: int = LAG_MIN_DEFAULT
    history: dict[str, deque[Sample]] = field(default_factory=dict)

    def add(self, group: str, sample: Sample) -> None:
        samples = self.history.setdefault(group, deque())
        samples.append(sample)
        # Keep one sample older than the window, so a stall of exactly stall_s is seen.
        while len(samples) > 2 and samples[1].at_s <= sample.at_s - self.stall_s * 2:
            samples.popleft()

    def forget_except(self, groups: Iterable[str]) -> None:
        keep = set(groups)
        for group in [g for g in self.history if g not in keep]:
            del self.history[group]

    def statuses(self) -> list[GroupStatus]:
        return [assess(group, list(samples), self.stall_s, self.lag_min)
                for group, samples in sorted(self.history.items())]


# ---- sampling a broker -----------------------------------------------------------------


class GroupSampler:
    """Committed and end offsets of consumer groups, read with one AdminClient. Groups are
    those named, or else every group the broker lists that has committed offsets (groups
    that only assign, never commit, have nothing to judge)."""

    def __init__(self, bootstrap_servers: str, groups: Sequence[str] = (),
                 extra: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 topic_prefix: str = "") -> None:
        from confluent_kafka.admin import AdminClient

        self._admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(extra or {})})
        self._groups = tuple(groups)
        self._timeout_s = timeout_s
        # Only groups that read this stack's topics: others sharing the broker (another
        # stack, a group of the past) are not this stack's stages.
        self._topic_prefix = topic_prefix

    def groups(self) -> list[str]:
        if self._groups:
            return list(self._groups)
        listed = self._admin.list_consumer_groups(request_timeout=self._timeout_s)
        return sorted(g.group_id for g in listed.result(self._timeout_s).valid)

    def committed(self, group: str) -> dict[TopicPartitionKey, int]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        futures = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=self._timeout_s)
        result = futures[group].result(self._timeout_s)
        return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or ()
                if tp.error is None and tp.offset >= 0
                and tp.topic.startswith(self._topic_prefix)}

    def ends(self, keys: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        wanted = {TopicPartition(topic, partition): OffsetSpec.latest()
                  for topic, partition in keys}
        if not wanted:
            return {}
        futures = self._admin.list_offsets(wanted, request_timeout=self._timeout_s)
        ends: dict[TopicPartitionKey, int] = {}
        for tp, future in futures.items():
            try:
                ends[(tp.topic, tp.partition)] = future.result(self._timeout_s).offset
            except Exception:  # noqa: BLE001 - one partition's answer missing: judge the rest
                continue
        return ends

    def sample(self, now_s: float) -> dict[str, Sample]:
        """One sample per group that has committed offsets."""
        committed = {group: self.committed(group) for group in self.groups()}
        committed = {group: offsets for group, offsets in committed.items() if offsets}
        ends = self.ends({key for offsets in committed.values() for key in offsets})
        return {group: Sample(now_s, offsets, {k: ends[k] for k in offsets if k in ends})
                for group, offsets in committed.items()}
