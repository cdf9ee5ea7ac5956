"""The aiohttp application: routes, middlewares, and the startup/cleanup context that opens and
closes every store and Kafka client."""

from __future__ import annotations

import asyncio
import functools
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateways.http.asyncapi import asyncapi
from gateways.http.bus import CommandProducer, TopicTail
from gateways.http.config import HttpConfig
from gateways.http.context import GATEWAY, Gateway
from gateways.http.health import STAGES, open_stage_watch, stages_middleware, watch_for
from gateways.http.journal import REPLAYER, JournalReplayer, ShardJournal, run_replayer
from gateways.http.limits import (
    IdempotencyRecords,
    OrderAdmission,
    RateLimiter,
    RedisBreaker,
)
from gateways.http.openapi import openapi_document
from gateways.http.problems import Handler, problem_middleware
from gateways.http.routes import ROUTES, json_response
from gateways.http.websocket import StreamHub, stream
from state.exceptions import StoreError
from state.topics import Topic

T = TypeVar("T")
_START_TIMEOUT_S = 15.0
# Redis is one thread: more connections than this add no throughput, only the chance of
# redis-py's "Too many connections" under a burst. Past it a request waits its turn, for at
# most config.redis_timeout_ms; then it degrades as if Redis were down (limits.py).
REDIS_CONNECTIONS_MAX = 64
# A quotes batch may gather this long: far below the fan-out's flush interval.
QUOTES_BATCH_WAIT_S = 0.01
# The single-page web app (plain HTML, CSS and JS modules, no build step). Served at / and
# /static/; not API surface, so not in the route table nor the OpenAPI document.
STATIC_DIR = pathlib.Path(__file__).parent / "static"
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
Backends = Callable[[web.Application], AsyncIterator[None]]


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[GATEWAY].metrics
        metrics.requests.inc(route=route, method=request.method, status=str(status))
        metrics.latency.observe(time.perf_counter() - started, route=route)


@web.middleware
async def store_errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A shard or cache that cannot answer is a 503, not a 500."""
    from gateways.http.problems import Problem

    try:
        return await handler(request)
    except StoreError as error:
        raise Problem(503, "store_unavailable", str(error), headers={"Retry-After": "1"}) \
            from error


async def open_backends(app: web.Application) -> AsyncIterator[None]:
    """The real stores and clients, opened on startup and closed on cleanup."""
    from state.quote_cache import AsyncQuoteCache
    from state.router import ShardRouter
    from state.shard_reader import ShardReader

    gateway = app[GATEWAY]
    config = gateway.config
    loop = asyncio.get_running_loop()
    closers: list[Callable[[], Any]] = []
    try:
        redis_timeout_s = config.redis_timeout_ms / 1000
        # No retries: a timed-out call falls back at once (limits.py) rather than waiting
        # again; the waits for a pooled connection and for each reply are both bounded.
        gateway.redis = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            config.redis_url, max_connections=REDIS_CONNECTIONS_MAX, timeout=redis_timeout_s,
            socket_timeout=redis_timeout_s, socket_connect_timeout=redis_timeout_s,
            retry=Retry(NoBackoff(), 0)))
        closers.append(gateway.redis.aclose)
        breaker = RedisBreaker(config.redis_retry_after_ms / 1000)
        gateway.breaker = breaker
        fallbacks = gateway.metrics.redis_fallbacks
        gateway.limiter = RateLimiter(gateway.redis, config.redis_key_prefix, breaker, fallbacks)
        gateway.idempotency = IdempotencyRecords(gateway.redis, config.redis_key_prefix,
                                                 config.idempotency_ttl_s, breaker, fallbacks)
        gateway.admission = OrderAdmission(gateway.redis, config.redis_key_prefix,
                                           gateway.limiter, gateway.idempotency, breaker,
                                           fallbacks)
        quote_cache = AsyncQuoteCache(config.redis_url, config.redis_key_prefix,
                                      socket_timeout_s=redis_timeout_s)
        closers.append(quote_cache.close)
        gateway.quotes = BoundedQuotes(quote_cache, REDIS_CONNECTIONS_MAX, breaker)
        gateway.router = ShardRouter(len(config.shard_dsns), config.partitions_per_shard)
        reader = ShardReader(config.shard_dsns, config.partitions_per_shard)
        await reader.open()
        gateway.reader = reader
        closers.append(reader.close)
        journal = ShardJournal(config.shard_dsns, config.partitions_per_shard)
        await journal.open()
        closers.append(journal.close)
        producer = CommandProducer(config.bootstrap_servers, config.delivery_timeout_ms,
                                   config.produce_linger_ms)
        gateway.producer = producer
        closers.append(lambda: loop.run_in_executor(None, producer.close))
        replayer = app[REPLAYER]
        # New entries carry the epoch they are produced under: read it before serving
        # (None, broker down: the first replay pass re-publishes them, harmlessly).
        journal.epoch = await replayer.read_epoch()
        replayer.journal, replayer.producer = journal, producer
        gateway.journal = journal
        gateway.hub = StreamHub(metrics=gateway.metrics)
        closers.append(gateway.hub.close)
        events_tail = TopicTail(
            config.bootstrap_servers, config.topic_prefix + Topic.ORDERS_EVENTS,
            Topic.ORDERS_EVENTS, gateway.replies.deliver, loop, config.session_timeout_ms)
        # The fan-out conflates per symbol anyway: only each symbol's newest quote of a batch
        # is decoded and handed over (see websocket.QUOTE_FLUSH_INTERVAL_S).
        quotes_tail = TopicTail(
            config.bootstrap_servers, config.topic_prefix + Topic.QUOTES, Topic.QUOTES,
            gateway.hub.publish_quotes, loop, config.session_timeout_ms, latest_per_key=True,
            batch_wait_s=QUOTES_BATCH_WAIT_S, fetch_wait_ms=QUOTES_FETCH_WAIT_MS)
        for tail in (events_tail, quotes_tail):
            closers.append(functools.partial(loop.run_in_executor, None, tail.close))
            await loop.run_in_executor(None, tail.start, _START_TIMEOUT_S)
        _register_gauges(gateway, quotes_tail)
        yield
    finally:
        for close in reversed(closers):
            result = close()
            if asyncio.isfuture(result) or asyncio.iscoroutine(result):
                await result


class BoundedQuotes:
    """The quote cache with at most `concurrency` reads in flight: its connection pool fails a
    read past its size rather than queueing it, and a burst of orders must queue, not fail.
    While the breaker skips Redis a read fails at once (StoreError) instead of waiting for a
    timeout; a read that fails opens the breaker."""

    def __init__(self, cache: Any, concurrency: int, breaker: RedisBreaker) -> None:
        self._cache = cache
        self._gate = asyncio.Semaphore(concurrency)
        self._breaker = breaker

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._gate:
            # Checked once through the gate: a read queued behind stalled ones skips too.
            if not self._breaker.available():
                raise StoreError(f"quote cache skipped after: {self._breaker.last_error}")
            try:
                result = await call()
            except StoreError as error:
                self._breaker.failed(error)
                raise
        self._breaker.succeeded()
        return result

    async def get_many(self, symbols: Any) -> Any:
        return await self._read(lambda: self._cache.get_many(symbols))

    async def get(self, symbol: str) -> Any:
        return await self._read(lambda: self._cache.get(symbol))

    async def candles(self, symbol: str, interval: str, limit: int) -> Any:
        return await self._read(lambda: self._cache.candles(symbol, interval, limit))


def _register_gauges(gateway: Gateway, quotes_tail: TopicTail) -> None:
    metrics = gateway.metrics
    metrics.gauges.clear()
    metrics.gauge("gateway_ws_connections", "open WebSocket connections",
                  lambda: len(gateway.hub.connections))
    metrics.gauge("gateway_ws_symbols", "symbols with at least one subscriber",
                  lambda: len(gateway.hub.subscribers))
    metrics.gauge("gateway_events_seen_total", "orders.events records read",
                  lambda: gateway.replies.events_seen)
    metrics.gauge("gateway_quotes_received_total", "quotes records read",
                  lambda: quotes_tail.records_read)
    metrics.gauge("gateway_redis_degraded", "1 while Redis fails and is skipped, else 0",
                  lambda: int(gateway.breaker.degraded))


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def api_index(request: web.Request) -> web.Response:
    """The API base answers with where things are (a newcomer's first request)."""
    return json_response({
        "api": "/v1", "openapi": "/v1/openapi.json", "web_page": "/",
        "stream": "/v1/stream", "asyncapi": "/v1/asyncapi.json", "health": "/healthz",
        "metrics": "/metrics",
        "paths": sorted({route.path for route in ROUTES}),
    })


async def web_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


# A quotes reader asking the broker every 10 ms starved on a large `quotes` topic (nothing in
# 15 s from 15,000 one-record batches per partition, 0.8 s at 100 ms: the embedded broker lists
# a partition's batches on each fetch). Replies to orders keep the short wait.
QUOTES_FETCH_WAIT_MS = 100


def create_app(config: HttpConfig, *, backends: Backends | None = None) -> web.Application:
    """The gateway application. `backends` replaces the real stores and clients (tests)."""
    app = web.Application(
        client_max_size=config.body_bytes_max,
        middlewares=[metrics_middleware, problem_middleware, stages_middleware,
                     store_errors_middleware],
    )
    app[GATEWAY] = Gateway(config)
    app[STAGES] = watch_for(config.bootstrap_servers, config.topic_prefix)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/asyncapi.json", asyncapi)
    app.router.add_get("/v1/asyncapi.json", asyncapi)
    app.router.add_get("/v1", api_index)
    app.router.add_get("/v1/", api_index)
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/", web_page)
    app.router.add_static("/static/", STATIC_DIR)
    app[REPLAYER] = JournalReplayer(config)
    app.cleanup_ctx.append(backends or open_backends)
    app.cleanup_ctx.append(run_replayer)
    if backends is None:  # the stage watch reads the broker's consumer groups
        app.cleanup_ctx.append(open_stage_watch)
    return app
