"""The one frozen config object of the topologies folder."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from state.domain.risk import QUOTE_AGE_MS_MAX


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(_Config, frozen=True, kw_only=True):
    bootstrap_servers: str
    topic_prefix: str = ""
    session_timeout_ms: int = 3000
    # The broker holds a fetch up to this long waiting for data: it bounds per-hop latency
    # (librdkafka's 500 ms default put p99 feed->Redis quote age near 280 ms on the embedded
    # broker; 10 ms brought it to ~20 ms).
    fetch_wait_ms_max: int = 10
    # Extra librdkafka settings (security, etc.) for a real cluster.
    extra: dict[str, str] = {}


class AccountTopologyConfig(_Config, frozen=True, kw_only=True):
    kafka: KafkaSettings
    state_dir: str
    account_partitions: int
    # The shards, to rebuild the state of an account the stream has none for (the embedded
    # broker keeps topics in memory only); empty: no rebuild, a new state is empty.
    shard_dsns: tuple[str, ...] = ()
    partitions_per_shard: int = 1
    consumer_group: str = "accounts"
    # The group's only process joins as a static member (its member id as group.instance.id:
    # a restart takes its own place back); each of several processes sharing the group joins
    # as a dynamic member, which the broker expels once its session times out, so that the
    # others take its partitions over (state.member_id says why).
    static_membership: bool = True
    # The state dirs of the group's other processes on this data dir. A member assigned
    # partitions fences the transactional id of each one that is down (state.member_id's
    # lock tells), which aborts the transaction it died in: a broker that never times
    # transactions out would otherwise hold those partitions' last stable offset, and every
    # read_committed reader behind it (this member's changelog recovery included), until the
    # dead process came back.
    peer_state_dirs: tuple[str, ...] = ()
    processing_guarantee: str = "exactly-once"
    commit_interval_s: float = 0.05
    poll_timeout_s: float = 0.01
    market_collar_pct: Decimal = Decimal("0.05")
    notional_usd_max: Decimal = Decimal("1000000")
    quantity_max: Decimal = Decimal("100000")
    order_rate_per_s_max: int = 10
    quote_age_ms_max: int = QUOTE_AGE_MS_MAX


class MarketDataConfig(_Config, frozen=True, kw_only=True):
    kafka: KafkaSettings
    redis_url: str
    # The batch loop keeps its candle state in memory and in a changelog topic, not on disk;
    # the field stays so that stack files written for the Quix version still load.
    state_dir: str = ""
    consumer_group: str = "market-data"
    # Only at-least-once: candles and the cache are idempotent by venue time.
    processing_guarantee: str = "at-least-once"
    # Candle state to the changelog, then offsets committed, this often: a crash replays at
    # most this much of `quotes` (which changes nothing, by venue time).
    commit_interval_s: float = 1.0
    candle_intervals: tuple[str, ...] = ("1m", "5m", "1h", "1d")
    # Where a new consumer group starts: quotes are replayable (candles and the cache are
    # idempotent by venue time), so from the earliest retained quote.
    auto_offset_reset: str = "earliest"
    # Redis keys of the quote cache are namespaced by this prefix; None: the topic prefix.
    cache_key_prefix: str | None = None
    # The cache holds the newest quote per symbol and writes them in one round trip this often.
    cache_flush_interval_ms: int = 10
    # Candles kept in Redis per symbol and interval for charts.
    candles_max: int = 1000
    # Records taken from the consumer per batch, and how long to wait to fill one: one decode
    # loop, one conflated Redis write and no per-record framework overhead per batch.
    batch_size_max: int = 5000
    batch_wait_ms: int = 20
    # This topology's consumer-group session (heartbeats every third of it); None: the stack's
    # kafka.session_timeout_ms. 3 s timed out under load on 2 cores and forced rebalances.
    session_timeout_ms: int | None = 10_000
    # Worker processes in one consumer group: more quote partitions can be read in parallel
    # (a hot symbol with its own partition gets a consumer of its own).
    processes: int = 1

    def __post_init__(self) -> None:
        if self.processing_guarantee != "at-least-once":
            raise ValueError("market data supports processing_guarantee 'at-least-once' only")
        if self.processes < 1 or self.batch_size_max < 1 or self.candles_max < 1:
            raise ValueError("processes, batch_size_max and candles_max must be at least 1")


def convert(kind: type[_Config], data: object) -> _Config:
    """Build a config from plain data, refusing unknown fields with a clear message."""
    return msgspec.convert(data, kind)
