"""The market-data topology, keyed by symbol:

    {prefix}quotes -> latest quote per symbol to Redis (QuoteCache, conflated)
                   -> OHLCV + VWAP candles per interval to {prefix}candles
                   -> malformed payloads to {prefix}dlq.quotes

Candles are tumbling windows aligned to the epoch (a day is a UTC day), in event time (the
quote's venue time). A window closes when the symbol's first quote of a later window arrives.
Each quote contributes its reference price: the trade price when it carries a trade print
(`last_size`), otherwise the mid. Volume and VWAP count trade prints only; a window without a
trade has volume 0 and VWAP equal to its close.

Idempotence: per symbol the state keeps the venue time of the last quote folded in; a quote
that is not newer (a replay after a crash, a duplicate delivery) changes no candle, and the
quote cache only ever moves forward in venue time. So replaying `quotes` changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from quixstreams import Application, message_context
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.models import Topic as QuixTopic
from quixstreams.state import State

from state.exceptions import DecodeError, StoreError
from state.messages import Candle, Quote
from state.quote_cache import QuoteCache, epoch_us
from state.topics import Topic, dead_letter, decode, dlq_name, encode
from topologies.config import MarketDataConfig
from topologies.exceptions import TopologyError

log = logging.getLogger(__name__)

INTERVAL_SECONDS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
DEFAULT_INTERVALS = ("1m", "5m", "1h", "1d")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_STATE_KEY = "md"

CANDLE = "candle"
DEAD = "dead"
Output = tuple[str, bytes]  # (CANDLE | DEAD, encoded message)


# ---- candles: the pure core ------------------------------------------------------------


def window_start_us(venue_us: int, seconds: int) -> int:
    span = seconds * 1_000_000
    return venue_us - venue_us % span


def _from_us(epoch_microseconds: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=epoch_microseconds)


def reference_price(quote: Quote) -> Decimal:
    if quote.last is not None and quote.last_size is not None:
        return quote.last
    return (quote.bid + quote.ask) / 2


def _open_window(start_us: int, price: Decimal) -> dict[str, Any]:
    text = str(price)
    return {"s": start_us, "o": text, "h": text, "l": text, "c": text,
            "vol": "0", "pv": "0", "n": 0}


def _add(window: dict[str, Any], price: Decimal, quote: Quote) -> None:
    window["h"] = str(max(Decimal(window["h"]), price))
    window["l"] = str(min(Decimal(window["l"]), price))
    window["c"] = str(price)
    if quote.last is not None and quote.last_size is not None and quote.last_size > 0:
        window["vol"] = str(Decimal(window["vol"]) + quote.last_size)
        window["pv"] = str(Decimal(window["pv"]) + quote.last * quote.last_size)
        window["n"] += 1


def close_candle(symbol: str, interval: str, window: dict[str, Any]) -> Candle:
    seconds = INTERVAL_SECONDS[interval]
    volume = Decimal(window["vol"])
    close = Decimal(window["c"])
    vwap = Decimal(window["pv"]) / volume if volume else close
    return Candle(
        symbol=symbol, interval=interval, start=_from_us(window["s"]),
        end=_from_us(window["s"] + seconds * 1_000_000), open=Decimal(window["o"]),
        high=Decimal(window["h"]), low=Decimal(window["l"]), close=close, volume=volume,
        vwap=vwap.quantize(Decimal("0.000001")), trades=window["n"],
    )


def fold_quote(state: dict[str, Any] | None, quote: Quote, intervals: Sequence[str],
               ) -> tuple[dict[str, Any] | None, list[Candle]]:
    """Fold one quote into a symbol's candle state. Returns the new state (None: the quote
    was not newer than the last one folded in, nothing changes) and the candles it closed."""
    venue_us = epoch_us(quote.venue_time)
    state = dict(state or {"t": None, "w": {}})
    if state["t"] is not None and venue_us <= state["t"]:
        return None, []
    state["t"] = venue_us
    windows = dict(state["w"])
    price = reference_price(quote)
    closed: list[Candle] = []
    for interval in intervals:
        start_us = window_start_us(venue_us, INTERVAL_SECONDS[interval])
        window = windows.get(interval)
        if window is not None and window["s"] != start_us:
            closed.append(close_candle(quote.symbol, interval, window))
            window = None
        window = dict(window) if window is not None else _open_window(start_us, price)
        _add(window, price, quote)
        windows[interval] = window
    state["w"] = windows
    return state, closed


def open_candles(symbol: str, state: dict[str, Any] | None) -> list[Candle]:
    """The candles still open in a symbol's state (for charts of the current bar)."""
    if not state:
        return []
    return [close_candle(symbol, interval, window) for interval, window in state["w"].items()]


# ---- the quote cache writer ------------------------------------------------------------


class QuoteSink(Protocol):
    def put(self, quote: Quote) -> None: ...


class ConflatingQuoteWriter:
    """Keeps the newest quote per symbol in memory and writes them to Redis every
    `flush_interval_ms` from a thread, in one round trip: the topology never waits on Redis
    per quote, and a stalled Redis costs staleness, never the topology."""

    def __init__(self, cache: QuoteCache, flush_interval_ms: int) -> None:
        self._cache = cache
        self._interval_s = flush_interval_ms / 1000
        self._pending: dict[str, Quote] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="quote-cache-writer",
                                        daemon=True)
        self._failures = 0

    def start(self) -> ConflatingQuoteWriter:
        self._thread.start()
        return self

    def put(self, quote: Quote) -> None:
        with self._lock:
            held = self._pending.get(quote.symbol)
            if held is None or held.venue_time < quote.venue_time:
                self._pending[quote.symbol] = quote

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            self._cache.put_many(list(batch.values()))
            self._failures = 0
        except StoreError as error:
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 1000 == 0:
                log.warning("quote cache unavailable (%d failures): %s", self._failures, error)
            for quote in batch.values():  # keep them for the next try, unless newer arrived
                self.put(quote)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.flush()


# ---- the topology ----------------------------------------------------------------------


@dataclass(frozen=True)
class MarketDataTopics:
    quotes: QuixTopic
    candles: QuixTopic
    dlq: QuixTopic


def declare_topics(app: Application, prefix: str) -> MarketDataTopics:
    def topic(name: str) -> QuixTopic:
        return app.topic(prefix + name, key_serializer="str", value_serializer="bytes",
                         key_deserializer="str", value_deserializer="bytes")

    return MarketDataTopics(quotes=topic(Topic.QUOTES), candles=topic(Topic.CANDLES),
                            dlq=topic(dlq_name(Topic.QUOTES)))


class QuoteStep:
    """Per quote: decode (else a dead letter), offer to the cache, fold into the candles."""

    def __init__(self, sink: QuoteSink, intervals: Sequence[str], source_topic: str,
                 clock: Callable[[], dt.datetime]) -> None:
        unknown = [interval for interval in intervals if interval not in INTERVAL_SECONDS]
        if unknown:
            raise TopologyError(f"unknown candle intervals {unknown}; known "
                                f"{sorted(INTERVAL_SECONDS)}")
        self._sink = sink
        self._intervals = tuple(intervals)
        self._source_topic = source_topic
        self._clock = clock

    def __call__(self, raw: bytes | None, key: Any, _timestamp_ms: int, _headers: Any,
                 state: State) -> list[Output]:
        try:
            quote: Quote = decode(Topic.QUOTES, raw)
        except DecodeError as error:
            return [(DEAD, self._dead_letter(raw, key, str(error)))]
        self._sink.put(quote)
        folded, closed = fold_quote(state.get(_STATE_KEY), quote, self._intervals)
        if folded is not None:
            state.set(_STATE_KEY, folded)
        return [(CANDLE, encode(candle)) for candle in closed]

    def _dead_letter(self, raw: bytes | None, key: Any, error: str) -> bytes:
        context = message_context()
        return encode(dead_letter(self._source_topic, context.partition, context.offset,
                                  key if isinstance(key, str | bytes) else None, raw, error,
                                  self._clock()))


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_market_data(app: Application, topics: MarketDataTopics, cache: QuoteSink,
                      intervals: Sequence[str] = DEFAULT_INTERVALS,
                      clock: Callable[[], dt.datetime] = _utc_now) -> StreamingDataFrame:
    """quotes -> cache + candles + dead letters."""
    step = QuoteStep(cache, intervals, topics.quotes.name, clock)
    sdf = app.dataframe(topics.quotes).apply(step, stateful=True, metadata=True)
    # Most quotes close no candle: drop their empty output lists before fanning out.
    outputs = sdf.filter(bool).apply(_identity, expand=True)
    outputs.filter(_is(CANDLE)).apply(_payload).to_topic(topics.candles)
    outputs.filter(_is(DEAD)).apply(_payload).to_topic(topics.dlq)
    return outputs


def _identity(outputs: list[Output]) -> list[Output]:
    return outputs


def _is(kind: str) -> Callable[[Output], bool]:
    return lambda output: output[0] == kind


def _payload(output: Output) -> bytes:
    return output[1]


def build_app(config: MarketDataConfig) -> Application:
    kafka = config.kafka
    return Application(
        broker_address=kafka.bootstrap_servers,
        consumer_group=kafka.topic_prefix + config.consumer_group,
        state_dir=config.state_dir,
        processing_guarantee=config.processing_guarantee,  # type: ignore[arg-type]
        commit_interval=config.commit_interval_s,
        auto_offset_reset=config.auto_offset_reset,  # type: ignore[arg-type]
        consumer_extra_config={"session.timeout.ms": kafka.session_timeout_ms,
                               "fetch.wait.max.ms": config.fetch_wait_ms_max, **kafka.extra},
        producer_extra_config={"linger.ms": 5, **kafka.extra},
    )


def run(config: MarketDataConfig) -> None:
    """Run the market-data topology until SIGTERM or SIGINT."""
    key_prefix = config.kafka.topic_prefix if config.cache_key_prefix is None \
        else config.cache_key_prefix
    cache = QuoteCache(config.redis_url, key_prefix)
    writer = ConflatingQuoteWriter(cache, config.cache_flush_interval_ms).start()
    try:
        app = build_app(config)
        topics = declare_topics(app, config.kafka.topic_prefix)
        build_market_data(app, topics, writer, config.candle_intervals)
        app.run()
    finally:
        writer.close()
        cache.close()

