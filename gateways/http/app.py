"""The aiohttp application: routes, middlewares, and the startup/cleanup context that opens and
closes every store and Kafka client."""

from __future__ import annotations

import asyncio
import functools
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from gateways.http.bus import CommandProducer, TopicTail
from gateways.http.config import HttpConfig
from gateways.http.context import GATEWAY, Gateway
from gateways.http.limits import IdempotencyRecords, RateLimiter
from gateways.http.openapi import openapi_document
from gateways.http.problems import Handler, problem_middleware
from gateways.http.routes import ROUTES, json_response
from gateways.http.websocket import StreamHub, stream
from state.exceptions import StoreError
from state.topics import Topic

_START_TIMEOUT_S = 15.0
# Redis is one thread: more connections than this add no throughput, only the chance of
# redis-py's "Too many connections" (a 503) under a burst. Past it a request waits its turn.
REDIS_CONNECTIONS_MAX = 64
_REDIS_WAIT_S = 2.0
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
        gateway.redis = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            config.redis_url, max_connections=REDIS_CONNECTIONS_MAX, timeout=_REDIS_WAIT_S,
            socket_timeout=2, socket_connect_timeout=2))
        closers.append(gateway.redis.aclose)
        gateway.limiter = RateLimiter(gateway.redis, config.redis_key_prefix)
        gateway.idempotency = IdempotencyRecords(gateway.redis, config.redis_key_prefix,
                                                 config.idempotency_ttl_s)
        quote_cache = AsyncQuoteCache(config.redis_url, config.redis_key_prefix)
        closers.append(quote_cache.close)
        gateway.quotes = BoundedQuotes(quote_cache, REDIS_CONNECTIONS_MAX)
        gateway.router = ShardRouter(len(config.shard_dsns), config.partitions_per_shard)
        reader = ShardReader(config.shard_dsns, config.partitions_per_shard)
        await reader.open()
        gateway.reader = reader
        closers.append(reader.close)
        producer = CommandProducer(config.bootstrap_servers, config.delivery_timeout_ms)
        gateway.producer = producer
        closers.append(lambda: loop.run_in_executor(None, producer.close))
        gateway.hub = StreamHub()
        closers.append(gateway.hub.close)
        events_tail = TopicTail(
            config.bootstrap_servers, config.topic_prefix + Topic.ORDERS_EVENTS,
            Topic.ORDERS_EVENTS, gateway.replies.deliver, loop, config.session_timeout_ms)
        # The fan-out conflates per symbol anyway: only each symbol's newest quote of a batch
        # is decoded and handed over (see websocket.QUOTE_FLUSH_INTERVAL_S).
        quotes_tail = TopicTail(
            config.bootstrap_servers, config.topic_prefix + Topic.QUOTES, Topic.QUOTES,
            gateway.hub.publish_quotes, loop, config.session_timeout_ms, latest_per_key=True,
            batch_wait_s=QUOTES_BATCH_WAIT_S)
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
    read past its size rather than queueing it, and a burst of orders must queue, not fail."""

    def __init__(self, cache: Any, concurrency: int) -> None:
        self._cache = cache
        self._gate = asyncio.Semaphore(concurrency)

    async def get_many(self, symbols: Any) -> Any:
        async with self._gate:
            return await self._cache.get_many(symbols)

    async def get(self, symbol: str) -> Any:
        async with self._gate:
            return await self._cache.get(symbol)

    async def candles(self, symbol: str, interval: str, limit: int) -> Any:
        async with self._gate:
            return await self._cache.candles(symbol, interval, limit)


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


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def web_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


def create_app(config: HttpConfig, *, backends: Backends | None = None) -> web.Application:
    """The gateway application. `backends` replaces the real stores and clients (tests)."""
    app = web.Application(
        client_max_size=config.body_bytes_max,
        middlewares=[metrics_middleware, problem_middleware, store_errors_middleware],
    )
    app[GATEWAY] = Gateway(config)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/", web_page)
    app.router.add_static("/static/", STATIC_DIR)
    app.cleanup_ctx.append(backends or open_backends)
    return app
