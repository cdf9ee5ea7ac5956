"""The one frozen config object of the topologies folder."""

from __future__ import annotations

from decimal import Decimal

import msgspec


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(_Config, frozen=True, kw_only=True):
    bootstrap_servers: str
    topic_prefix: str = ""
    session_timeout_ms: int = 3000
    # The broker holds a fetch up to this long waiting for data: it bounds per-hop latency.
    fetch_wait_ms_max: int = 10
    # Extra librdkafka settings (security, etc.) for a real cluster.
    extra: dict[str, str] = {}


class AccountTopologyConfig(_Config, frozen=True, kw_only=True):
    kafka: KafkaSettings
    state_dir: str
    account_partitions: int
    consumer_group: str = "accounts"
    processing_guarantee: str = "exactly-once"
    commit_interval_s: float = 0.05
    poll_timeout_s: float = 0.01
    market_collar_pct: Decimal = Decimal("0.05")
    notional_usd_max: Decimal = Decimal("1000000")
    quantity_max: Decimal = Decimal("100000")
    order_rate_per_s_max: int = 10
    quote_age_ms_max: int = 60_000


class MarketDataConfig(_Config, frozen=True, kw_only=True):
    kafka: KafkaSettings
    state_dir: str
    redis_url: str
    consumer_group: str = "market-data"
    processing_guarantee: str = "at-least-once"
    commit_interval_s: float = 0.5
    candle_intervals: tuple[str, ...] = ("1m", "5m", "1h", "1d")
    # Where a new consumer group starts: quotes are replayable (candles and the cache are
    # idempotent by venue time), so from the earliest retained quote.
    auto_offset_reset: str = "earliest"
    # Redis keys of the quote cache are namespaced by this prefix; None: the topic prefix.
    cache_key_prefix: str | None = None
    # The cache holds the newest quote per symbol and writes them in one round trip this often.
    cache_flush_interval_ms: int = 10
    # How long the broker may hold a fetch waiting for data: librdkafka's 500 ms default put
    # p99 feed->Redis quote age near 280 ms on the embedded broker; 10 ms brought it to ~20 ms.
    fetch_wait_ms_max: int = 10


def convert(kind: type[_Config], data: object) -> _Config:
    """Build a config from plain data, refusing unknown fields with a clear message."""
    return msgspec.convert(data, kind)
