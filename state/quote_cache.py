"""The latest quote per symbol, in Redis: written by the market-data topology, read by the
gateways (quotes API, WebSocket fan-out, market-order reference prices).

Layout (every key under `key_prefix`, by convention the topic prefix):
- `{prefix}quotes`: hash symbol -> the quote as encoded on the `quotes` topic;
- `{prefix}quote-times`: hash symbol -> venue time of that quote in epoch microseconds;
- `{prefix}candles:{symbol}:{interval}`: sorted set of the last `candles_max` candles of a symbol
  and interval (the newest may still be open), scored by window start in epoch microseconds;
  a candle replaces the one stored with the same start, so rewriting a candle (the open bar
  growing, a replay) never duplicates it.

A write replaces the stored quote only when its venue time is newer (a Lua script, so the check
and the write are one step): replaying the topic, or two consumers during a rebalance, never
moves a symbol's quote backwards.

Reads never hang: every call is bounded by the socket timeouts (one retry at most) and a Redis
that is down or stalled raises `StoreError`, so callers (the gateways) answer 503 or degrade.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from state.exceptions import StoreError
from state.messages import Candle, Quote

_QUOTE_DECODER = msgspec.json.Decoder(Quote)
_CANDLE_DECODER = msgspec.json.Decoder(Candle)
CANDLES_MAX = 1000  # kept per symbol and interval: the HTTP API serves up to 1000
SOCKET_TIMEOUT_S = 1.0
# redis-py retries 3 times with up to 10 s backoff by default: a stalled Redis would hold a
# reader for most of a minute. One quick retry rides over a dropped connection.
_RETRIES = 1
_RETRY_BACKOFF_S = 0.05
_ENCODER = msgspec.json.Encoder()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# KEYS[1] quotes hash, KEYS[2] times hash; ARGV: symbol, venue time (us), payload, repeated.
_PUT_IF_NEWER = """
local written = 0
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if (not current) or tonumber(current) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    written = written + 1
  end
end
return written
"""


def epoch_us(moment: dt.datetime) -> int:
    """Microseconds since the epoch, exact (no float)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def quote_age_ms(quote: Quote, now: dt.datetime) -> float:
    """How old a quote is at `now`, by its venue time."""
    return (epoch_us(now) - epoch_us(quote.venue_time)) / 1000


def quotes_key(key_prefix: str) -> str:
    """The hash of latest quotes (symbol -> the quote as on `quotes`), for a caller that reads
    it inside its own Redis script."""
    return f"{key_prefix}quotes"


def _keys(key_prefix: str) -> tuple[str, str]:
    return quotes_key(key_prefix), f"{key_prefix}quote-times"


def candles_key(key_prefix: str, symbol: str, interval: str) -> str:
    return f"{key_prefix}candles:{symbol}:{interval}"


def _connection_options(socket_timeout_s: float) -> dict[str, Any]:
    return {"socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s,
            "retry": Retry(ConstantBackoff(_RETRY_BACKOFF_S), _RETRIES)}


def _decode_candles(raws: Sequence[Any]) -> list[Candle]:
    return [_CANDLE_DECODER.decode(raw) for raw in raws]


def _put_args(quotes: Sequence[Quote]) -> list[str | bytes | int]:
    newest: dict[str, Quote] = {}
    for quote in quotes:  # conflate: only the newest quote per symbol is sent
        held = newest.get(quote.symbol)
        if held is None or held.venue_time < quote.venue_time:
            newest[quote.symbol] = quote
    args: list[str | bytes | int] = []
    for quote in newest.values():
        args += [quote.symbol, epoch_us(quote.venue_time), _ENCODER.encode(quote)]
    return args


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_many(symbols: Sequence[str], raws: Sequence[Any]) -> dict[str, Quote]:
    found: dict[str, Quote] = {}
    for symbol, raw in zip(symbols, raws, strict=True):
        if raw is not None:
            found[symbol] = _QUOTE_DECODER.decode(raw)
    return found


class QuoteCache:
    """Synchronous access, for the market-data topology and tools."""

    def __init__(self, redis_url: str, key_prefix: str = "", *,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S, candles_max: int = CANDLES_MAX,
                 ) -> None:
        self._redis = redis.Redis.from_url(redis_url, **_connection_options(socket_timeout_s))
        self._prefix = key_prefix
        self._quotes_key, self._times_key = _keys(key_prefix)
        self._put_script = self._redis.register_script(_PUT_IF_NEWER)
        self._candles_max = candles_max

    def put(self, quote: Quote) -> None:
        self.put_many([quote])

    def put_many(self, quotes: Sequence[Quote]) -> None:
        """Store each symbol's newest quote unless Redis already holds a newer one."""
        args = _put_args(quotes)
        if not args:
            return
        try:
            self._put_script(keys=[self._quotes_key, self._times_key], args=args)
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot write {len(args) // 3} quotes: {error}") \
                from error

    def get(self, symbol: str) -> Quote | None:
        return self.get_many([symbol]).get(symbol)

    def get_many(self, symbols: Sequence[str]) -> dict[str, Quote]:
        if not symbols:
            return {}
        try:
            raws = self._redis.hmget(self._quotes_key, list(symbols))
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot read quotes: {error}") from error
        return _decode_many(symbols, raws)

    def venue_times_us(self) -> dict[str, int]:
        """Venue time (epoch us) of the stored quote of every symbol: staleness per symbol."""
        try:
            raw = self._redis.hgetall(self._times_key)
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot read quote times: {error}") from error
        return {_text(symbol): int(value) for symbol, value in raw.items()}

    def stale_symbols(self, now: dt.datetime, age_ms_max: int) -> dict[str, float]:
        """Every symbol whose latest quote is older than `age_ms_max`, with its age in ms."""
        now_us = epoch_us(now)
        ages = {symbol: (now_us - venue_us) / 1000
                for symbol, venue_us in self.venue_times_us().items()}
        return {symbol: age for symbol, age in sorted(ages.items()) if age > age_ms_max}

    def write(self, quotes: Sequence[Quote], candles: Sequence[Candle]) -> None:
        """Quotes (newest per symbol, never backwards) and candles in one round trip."""
        args = _put_args(quotes)
        pipe = self._redis.pipeline(transaction=False)
        if args:
            self._put_script(keys=[self._quotes_key, self._times_key], args=args, client=pipe)
        for candle in candles:
            key = candles_key(self._prefix, candle.symbol, candle.interval)
            start_us = epoch_us(candle.start)
            pipe.zremrangebyscore(key, start_us, start_us)
            pipe.zadd(key, {_ENCODER.encode(candle): start_us})
            pipe.zremrangebyrank(key, 0, -self._candles_max - 1)
        if not len(pipe):
            return
        try:
            pipe.execute()
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot write {len(args) // 3} quotes and "
                             f"{len(candles)} candles: {error}") from error

    def put_candles(self, candles: Sequence[Candle]) -> None:
        self.write((), candles)

    def candles(self, symbol: str, interval: str, limit: int) -> list[Candle]:
        """The last `limit` candles of a symbol and interval, oldest first; the last one may
        still be open (its `end` is after the latest quote)."""
        try:
            raws = self._redis.zrange(candles_key(self._prefix, symbol, interval), -limit, -1)
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot read candles: {error}") from error
        return _decode_candles(raws)

    def clear(self) -> None:
        """Forget every quote and candle under this prefix (tests, resets)."""
        candle_keys = list(self._redis.scan_iter(match=candles_key(self._prefix, "*", "*")))
        self._redis.delete(self._quotes_key, self._times_key, *candle_keys)

    def close(self) -> None:
        self._redis.close()


class AsyncQuoteCache:
    """Asynchronous reads, for the HTTP and WebSocket gateways."""

    def __init__(self, redis_url: str, key_prefix: str = "", *,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        options = _connection_options(socket_timeout_s)
        options["retry"] = AsyncRetry(ConstantBackoff(_RETRY_BACKOFF_S), _RETRIES)
        self._redis = aioredis.Redis.from_url(redis_url, **options)
        self._prefix = key_prefix
        self._quotes_key, self._times_key = _keys(key_prefix)

    async def get_many(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """The latest quote of each symbol that has one; symbols without a quote are absent."""
        if not symbols:
            return {}
        try:
            raws = await self._redis.hmget(self._quotes_key, list(symbols))
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot read quotes: {error}") from error
        return _decode_many(symbols, raws)

    async def get(self, symbol: str) -> Quote | None:
        return (await self.get_many([symbol])).get(symbol)

    async def candles(self, symbol: str, interval: str, limit: int) -> list[Candle]:
        """The last `limit` candles of a symbol and interval, oldest first (see QuoteCache)."""
        try:
            raws = await self._redis.zrange(candles_key(self._prefix, symbol, interval),
                                            -limit, -1)
        except redis.RedisError as error:
            raise StoreError(f"quote cache: cannot read candles: {error}") from error
        return _decode_candles(raws)

    async def close(self) -> None:
        await self._redis.aclose()
