"""The one frozen config object of the topologies folder."""

from __future__ import annotations

from decimal import Decimal

import msgspec


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(_Config, kw_only=True):
    bootstrap_servers: str
    topic_prefix: str = ""
    session_timeout_ms: int = 3000
    # Extra librdkafka settings (security, etc.) for a real cluster.
    extra: dict[str, str] = {}


class AccountTopologyConfig(_Config, kw_only=True):
    kafka: KafkaSettings
    state_dir: str
    account_partitions: int
    consumer_group: str = "accounts"
    processing_guarantee: str = "exactly-once"
    commit_interval_s: float = 0.05
    market_collar_pct: Decimal = Decimal("0.05")
    notional_usd_max: Decimal = Decimal("1000000")
    quantity_max: Decimal = Decimal("100000")
    order_rate_per_s_max: int = 10
    quote_age_ms_max: int = 60_000


class MarketDataConfig(_Config, kw_only=True):
    kafka: KafkaSettings
    state_dir: str
    redis_url: str
    consumer_group: str = "market-data"
    processing_guarantee: str = "at-least-once"
    commit_interval_s: float = 0.5
    candle_intervals: tuple[str, ...] = ("1m", "5m", "1h", "1d")


def convert(kind: type[_Config], data: object) -> _Config:
    """Build a config from plain data, refusing unknown fields with a clear message."""
    return msgspec.convert(data, kind)
