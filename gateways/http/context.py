"""What every handler reaches through the application: the stores, the Kafka clients, the
request/reply book, the limits and the metrics. Built by `app.create_app`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from gateways.http.auth import TokenVerifier
from gateways.http.config import HttpConfig
from gateways.http.metrics import Metrics
from gateways.http.replies import ReplyBook
from state.messages import Message


class Producer(Protocol):
    async def produce(self, topic: str, key: str, message: Message) -> None: ...

    def broker_reachable(self, timeout_s: float) -> bool: ...


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Gateway:
    """Built empty by `create_app`, filled by its startup context (the stores and clients
    need the running loop), emptied again at cleanup."""

    config: HttpConfig
    reader: Any = None  # state.shard_reader.ShardReader
    router: Any = None  # state.router.ShardRouter
    quotes: Any = None  # state.quote_cache.AsyncQuoteCache
    redis: Any = None  # redis.asyncio.Redis
    producer: Any = None  # a Producer
    # gateways.http.journal.ShardJournal: every command is journaled before it is produced;
    # None (test doubles only): not journaled.
    journal: Any = None
    limiter: Any = None  # RateLimiter
    idempotency: Any = None  # IdempotencyRecords
    # limits.OrderAdmission: an order's budget, key claim and quote in one Redis round trip;
    # None: one call each through limiter, idempotency and quotes.
    admission: Any = None
    breaker: Any = None  # limits.RedisBreaker: whether Redis is being skipped (degraded)
    hub: Any = None  # gateways.http.websocket.StreamHub
    replies: ReplyBook = field(default_factory=ReplyBook)
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], dt.datetime] = utc_now
    tokens: TokenVerifier = field(init=False)
    # account_id -> user_id: ownership never changes, so it is safe to remember.
    owners: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = TokenVerifier(self.config)

    def topic(self, name: str) -> str:
        return self.config.topic_prefix + name


GATEWAY = web.AppKey("gateway", Gateway)


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY]
