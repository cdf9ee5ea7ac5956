"""The one frozen config object of the shard sink service."""

from __future__ import annotations

import msgspec


class SinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bootstrap_servers: str
    topic_prefix: str = ""
    shard_dsns: tuple[str, ...]
    partitions_per_shard: int
    consumer_group: str = "shard-sink"
    session_timeout_ms: int = 3000
    # Records land at each checkpoint, and the embedded broker notices new records at about
    # half the fetch wait: together most of "fill booked in the shard" when orders are few
    # (0.5 s and 500 ms: booking p50 0.7 s at 200 orders/s; 50 ms and 50 ms: 0.15 s). But the
    # broker lists every stored batch of a partition on each fetch that finds data, so ten
    # times the fetches made its CPU climb four times as fast under steady orders (0.18 to
    # 0.51 cores in 20 minutes, against 0.16 to 0.32 in 40): a stack that stays up for hours
    # comes first (issues 11 and 15).
    commit_interval_s: float = 0.5
    fetch_wait_ms: int = 500
    # Records handed to the writer thread at a time while reading, and postings per database
    # transaction.
    batch_size_max: int = 5000
    # None: run one worker process per shard (a shard's outage or crash stays its own);
    # a number: run only that shard's worker, in this process.
    shard: int | None = None
    # How long a down shard's worker pauses before it tries the shard again.
    retry_after_s: float = 1.0
    # At start a worker waits for the broker's epoch (state/epoch.py), asking again after
    # 0.5 s, 1 s, ... up to this long between two attempts.
    epoch_retry_s_max: float = 5.0
    # Where each shard worker keeps its group member id (state.member_id: a restarted worker
    # is the same static member); "" joins as a new dynamic member on each start. Two sinks
    # processes sharing the groups need dirs of their own.
    member_dir: str = ""
    # A worker whose group has no other process joins as a static member (its member id as
    # group.instance.id); with several sinks processes sharing the groups each joins as a
    # dynamic member, which the broker expels once its session times out, so that the
    # others take its partitions over (state.member_id says why).
    static_membership: bool = True
    # Extra librdkafka settings (security, etc.) for a real cluster.
    kafka_extra: dict[str, str] = {}
