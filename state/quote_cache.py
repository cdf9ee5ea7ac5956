"""The latest quote per symbol, in Redis: written by the market-data topology, read by the
gateways (quotes API, WebSocket fan-out, market-order reference prices).

Layout (every key under `key_prefix`, by convention the topic prefix):
- `{prefix}quotes`: hash symbol -> the quote as encoded on the `quotes` topic;
- `{prefix}quote-times`: hash symbol -> venue time of that quote in epoch microseconds.

A write replaces the stored quote only when its venue time is newer (a Lua script, so the check
and the write are one step): replaying the topic, or two consumers during a rebalance, never
moves a symbol's quote backwards.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis

from state.exceptions import StoreError
from state.messages import Quote

_QUOTE_DECODER = msgspec.json.Decoder(Quote)
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


def _keys(key_prefix: str) -> tuple[str, str]:
    return f"{key_prefix}quotes", f"{key_prefix}quote-times"


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

    def __init__(self, redis_url: str, key_prefix: str = "") -> None:
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._quotes_key, self._times_key = _keys(key_prefix)
        self._put_script = self._redis.register_script(_PUT_IF_NEWER)

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

    def clear(self) -> None:
        """Forget every quote under this prefix (tests, `shard rebuild` style resets)."""
        self._redis.delete(self._quotes_key, self._times_key)

    def close(self) -> None:
        self._redis.close()


class AsyncQuoteCache:
    """Asynchronous reads, for the HTTP and WebSocket gateways."""

    def __init__(self, redis_url: str, key_prefix: str = "") -> None:
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=5,
                                              socket_connect_timeout=5)
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

    async def close(self) -> None:
        await self._redis.aclose()
