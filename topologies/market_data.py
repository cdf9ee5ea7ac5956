"""The market-data topology, keyed by symbol:

    {prefix}quotes -> latest quote per symbol to Redis (QuoteCache, conflated)
                   -> OHLCV + VWAP candles per interval to {prefix}candles and to Redis (charts)
                   -> malformed payloads to {prefix}dlq.quotes

Why a plain batched consumer loop and not a Quix Streams dataframe: the read path must take
50,000 quotes/s on two shared cores, and Quix's per-message pipeline (row objects, a state
transaction get/set with serialisation per message) capped it at 17,000-30,000/s in
benchmarks/market_data.py while the work itself (decode, fold, conflate) does about 200,000/s
on one core; this loop ingests about 87,000/s there, as fast as the feed produces.
Here one `consume(num_messages=...)` call yields a batch; each record is decoded
with one reused msgspec decoder and folded into in-memory candle state; the newest quote per
symbol and the touched candles go to a writer thread that writes Redis in one pipelined round
trip, so a slow or absent Redis never stalls the loop (it only makes quotes stale).

State that must survive a restart (the open candles of each symbol) lives in memory and in a
changelog topic `{prefix}{consumer_group}-changelog` (compacted, keyed by symbol, partitioned
like `quotes`). Every `commit_interval_s` the states changed since the last checkpoint are
written there, the producer is flushed, and only then are the quote offsets committed. When
partitions are assigned their states are read back from the changelog up to a sentinel record
we write (the embedded broker's high watermark cannot be trusted, PLATFORM.md).

Candles are tumbling windows aligned to the epoch (a day is a UTC day), in event time (the
quote's venue time). A window closes when the symbol's first quote of a later window arrives.
Each quote contributes its reference price: the trade price when it carries a trade print
(`last_size`), otherwise the mid. Volume and VWAP count trade prints only; a window without a
trade has volume 0 and VWAP equal to its close.

Idempotence: per symbol the state keeps the venue time of the last quote folded in; a quote
that is not newer (a replay after a crash, a duplicate delivery) changes no candle, and the
quote cache only ever moves forward in venue time. So replaying `quotes` changes nothing; a
crash between a checkpoint and the next may publish a closed candle again, identical.

Rebalances (a session that timed out under load, a new worker joining) are ordinary: revoked
partitions are checkpointed (a commit refused because the group moved on is logged, not fatal)
and their state dropped; assigned ones are restored.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from state.exceptions import StoreError
from state.liveness import Sample, Tracker
from state.member_id import stable_member_id
from state.messages import Candle, Quote
from state.quote_cache import QuoteCache, epoch_us
from state.topics import PAYLOAD_BYTES_MAX, Topic, dead_letter, dlq_name, encode
from topologies.config import MarketDataConfig
from topologies.exceptions import TopologyError

log = logging.getLogger(__name__)

INTERVAL_SECONDS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
DEFAULT_INTERVALS = ("1m", "5m", "1h", "1d")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_VWAP_QUANTUM = Decimal("0.000001")
_ZERO = Decimal(0)
_SENTINEL_KEY = b"\x00restore-sentinel"
RESTORE_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 10.0
# The broker holds a fetch this long for data. Measured on the embedded broker with 10,000
# one-record batches per partition: a fresh consumer took 5.8 s for its first 200 records at
# 10 ms and 0.7 s at 100 ms; at the feed's rate it adds at most this much to a quote's age.
FETCH_WAIT_MS_MAX = 100
# The watchdog: how often it looks, how long a partition may stand still behind its input (or
# the worker hold no partition) before the worker exits for the supervisor to restart it, and
# how long one loop iteration may take (a call that never returns) before it exits at once.
WATCH_INTERVAL_S = 5.0
STALL_S = 60.0
LOOP_STALL_S = 120.0


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


class Window:
    """One open candle, mutable: folding a quote must not allocate much."""

    __slots__ = ("start_us", "open", "high", "low", "close", "volume", "pv", "trades")

    def __init__(self, start_us: int, price: Decimal, volume: Decimal = _ZERO,
                 pv: Decimal = _ZERO, trades: int = 0) -> None:
        self.start_us = start_us
        self.open = self.high = self.low = self.close = price
        self.volume, self.pv, self.trades = volume, pv, trades

    def to_builtins(self) -> dict[str, Any]:
        return {"s": self.start_us, "o": str(self.open), "h": str(self.high),
                "l": str(self.low), "c": str(self.close), "vol": str(self.volume),
                "pv": str(self.pv), "n": self.trades}

    @classmethod
    def from_builtins(cls, data: dict[str, Any]) -> Window:
        window = cls(int(data["s"]), Decimal(data["o"]), Decimal(data["vol"]),
                     Decimal(data["pv"]), int(data["n"]))
        window.high, window.low = Decimal(data["h"]), Decimal(data["l"])
        window.close = Decimal(data["c"])
        return window


def close_candle(symbol: str, interval: str, window: Window) -> Candle:
    seconds = INTERVAL_SECONDS[interval]
    vwap = window.pv / window.volume if window.volume else window.close
    return Candle(
        symbol=symbol, interval=interval, start=_from_us(window.start_us),
        end=_from_us(window.start_us + seconds * 1_000_000), open=window.open,
        high=window.high, low=window.low, close=window.close, volume=window.volume,
        vwap=vwap.quantize(_VWAP_QUANTUM), trades=window.trades,
    )


class SymbolCandles:
    """The open windows of one symbol and the venue time of the last quote folded in."""

    __slots__ = ("symbol", "last_us", "windows")

    def __init__(self, symbol: str, last_us: int | None = None,
                 windows: dict[str, Window] | None = None) -> None:
        self.symbol = symbol
        self.last_us = last_us
        self.windows: dict[str, Window] = windows if windows is not None else {}

    def fold(self, quote: Quote, intervals: Sequence[str]) -> list[Candle] | None:
        """Fold a quote in; the candles it closed, or None when it was not newer."""
        venue_us = epoch_us(quote.venue_time)
        if self.last_us is not None and venue_us <= self.last_us:
            return None
        self.last_us = venue_us
        price = reference_price(quote)
        size = quote.last_size
        traded = quote.last is not None and size is not None and size > 0
        closed: list[Candle] = []
        windows = self.windows
        for interval in intervals:
            start_us = venue_us - venue_us % (INTERVAL_SECONDS[interval] * 1_000_000)
            window = windows.get(interval)
            if window is not None and window.start_us != start_us:
                closed.append(close_candle(self.symbol, interval, window))
                window = None
            if window is None:
                window = windows[interval] = Window(start_us, price)
            else:
                if price > window.high:
                    window.high = price
                elif price < window.low:
                    window.low = price
                window.close = price
            if traded:
                assert quote.last is not None and size is not None
                window.volume += size
                window.pv += quote.last * size
                window.trades += 1
        return closed

    def open_candles(self) -> list[Candle]:
        return [close_candle(self.symbol, interval, window)
                for interval, window in self.windows.items()]

    def to_json(self) -> bytes:
        return msgspec.json.encode({"t": self.last_us, "w": {
            interval: window.to_builtins() for interval, window in self.windows.items()}})

    @classmethod
    def from_json(cls, symbol: str, raw: bytes) -> SymbolCandles:
        data = msgspec.json.decode(raw)
        return cls(symbol, data["t"], {interval: Window.from_builtins(window)
                                       for interval, window in data["w"].items()})


def fold_quote(state: SymbolCandles | None, quote: Quote, intervals: Sequence[str],
               ) -> tuple[SymbolCandles | None, list[Candle]]:
    """Fold one quote into a symbol's candle state (updated in place). Returns the state
    (None: the quote was not newer than the last one folded in, nothing changed) and the
    candles it closed."""
    state = state if state is not None else SymbolCandles(quote.symbol)
    closed = state.fold(quote, intervals)
    return (None, []) if closed is None else (state, closed)


def open_candles(symbol: str, state: SymbolCandles | None) -> list[Candle]:
    """The candles still open in a symbol's state (for charts of the current bar)."""
    return [] if state is None else state.open_candles()


# ---- one batch of records: decode, conflate, fold (no I/O) ------------------------------


class Record(Protocol):
    """What the step reads of a consumed record (confluent_kafka.Message has these)."""

    def value(self) -> bytes | None: ...

    def key(self) -> bytes | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...


@dataclass
class BatchOutput:
    quotes: dict[str, Quote] = field(default_factory=dict)  # the newest per symbol
    closed: list[tuple[int, Candle]] = field(default_factory=list)  # (source partition, ...)
    dead_letters: list[bytes] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # symbols whose open candles changed
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset + 1


_QUOTE_DECODER = msgspec.json.Decoder(Quote)


class QuoteBatchStep:
    """The whole per-record work of the topology, on a batch, with the candle state of every
    symbol of the assigned partitions."""

    def __init__(self, intervals: Sequence[str], source_topic: str,
                 clock: Callable[[], dt.datetime]) -> None:
        unknown = [interval for interval in intervals if interval not in INTERVAL_SECONDS]
        if unknown:
            raise TopologyError(f"unknown candle intervals {unknown}; known "
                                f"{sorted(INTERVAL_SECONDS)}")
        self.intervals = tuple(intervals)
        self._source_topic = source_topic
        self._clock = clock
        self.states: dict[str, SymbolCandles] = {}
        self._partition_of: dict[str, int] = {}
        self._dirty: set[str] = set()

    def process(self, records: Iterable[Record]) -> BatchOutput:
        out = BatchOutput()
        states, intervals, decode = self.states, self.intervals, _QUOTE_DECODER.decode
        for record in records:
            raw, partition = record.value(), record.partition() or 0
            out.next_offsets[partition] = (record.offset() or 0) + 1
            try:
                if raw is None or len(raw) > PAYLOAD_BYTES_MAX:
                    raise ValueError("empty payload (tombstone)" if raw is None
                                     else f"payload of {len(raw)} bytes exceeds limit")
                quote: Quote = decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
                out.dead_letters.append(self._dead_letter(record, str(error)))
                continue
            symbol = quote.symbol
            state = states.get(symbol)
            if state is None:
                state = states[symbol] = SymbolCandles(symbol)
                self._partition_of[symbol] = partition
            closed = state.fold(quote, intervals)
            if closed is None:
                continue  # not newer: a replay or a duplicate changes nothing
            out.quotes[symbol] = quote
            out.touched.add(symbol)
            for candle in closed:
                out.closed.append((partition, candle))
        self._dirty |= out.touched
        return out

    def _dead_letter(self, record: Record, error: str) -> bytes:
        return encode(dead_letter(self._source_topic, record.partition() or 0,
                                  record.offset() or 0, record.key(), record.value(), error,
                                  self._clock()))

    def open_candles(self, symbols: Iterable[str]) -> list[Candle]:
        return [candle for symbol in symbols for candle in self.states[symbol].open_candles()]

    def checkpoint(self) -> list[tuple[int, str, bytes]]:
        """(partition, symbol, state) of every symbol changed since the last checkpoint."""
        changed = [(self._partition_of[symbol], symbol, self.states[symbol].to_json())
                   for symbol in sorted(self._dirty) if symbol in self.states]
        self._dirty.clear()
        return changed

    def restore(self, partition: int, symbol: str, raw: bytes) -> None:
        self.states[symbol] = SymbolCandles.from_json(symbol, raw)
        self._partition_of[symbol] = partition

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the state of revoked partitions: their new owner restores it."""
        gone = set(partitions)
        for symbol in [s for s, p in self._partition_of.items() if p in gone]:
            del self.states[symbol], self._partition_of[symbol]
            self._dirty.discard(symbol)


# ---- the Redis writer --------------------------------------------------------------------


class CacheStore(Protocol):
    def write(self, quotes: Sequence[Quote], candles: Sequence[Candle]) -> None: ...


class ConflatingQuoteWriter:
    """Keeps the newest quote per symbol and the newest version of each candle in memory and
    writes them to Redis every `flush_interval_ms` from a thread, in one round trip: the loop
    never waits on Redis, and a stalled Redis costs staleness, never the topology."""

    def __init__(self, cache: CacheStore, flush_interval_ms: int) -> None:
        self._cache = cache
        self._interval_s = flush_interval_ms / 1000
        self._quotes: dict[str, Quote] = {}
        self._candles: dict[tuple[str, str, dt.datetime], Candle] = {}
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
            self._put_quote(quote)

    def put_batch(self, quotes: Iterable[Quote], candles: Iterable[Candle]) -> None:
        with self._lock:
            for quote in quotes:
                self._put_quote(quote)
            for candle in candles:
                self._candles[(candle.symbol, candle.interval, candle.start)] = candle

    def _put_quote(self, quote: Quote) -> None:
        held = self._quotes.get(quote.symbol)
        if held is None or held.venue_time < quote.venue_time:
            self._quotes[quote.symbol] = quote

    def flush(self) -> None:
        with self._lock:
            quotes, self._quotes = self._quotes, {}
            candles, self._candles = self._candles, {}
        if not quotes and not candles:
            return
        try:
            self._cache.write(list(quotes.values()), list(candles.values()))
            self._failures = 0
        except StoreError as error:
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 1000 == 0:
                log.warning("quote cache unavailable (%d failures): %s", self._failures, error)
            with self._lock:  # keep them for the next try, unless newer arrived meanwhile
                for quote in quotes.values():
                    self._put_quote(quote)
                for key, candle in candles.items():
                    self._candles.setdefault(key, candle)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.flush()


# ---- the consumer loop -----------------------------------------------------------------


@dataclass(frozen=True)
class TopicNames:
    quotes: str
    candles: str
    dlq: str
    changelog: str


def topic_names(config: MarketDataConfig) -> TopicNames:
    prefix = config.kafka.topic_prefix
    return TopicNames(quotes=prefix + Topic.QUOTES, candles=prefix + Topic.CANDLES,
                      dlq=prefix + dlq_name(Topic.QUOTES),
                      changelog=f"{prefix}{config.consumer_group}-changelog")


def consumer_settings(config: MarketDataConfig, worker: int = 0) -> dict[str, Any]:
    kafka = config.kafka
    session_ms = config.session_timeout_ms or kafka.session_timeout_ms
    group = kafka.topic_prefix + config.consumer_group
    settings: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
        "enable.auto.commit": False, "auto.offset.reset": config.auto_offset_reset,
        "session.timeout.ms": session_ms, "heartbeat.interval.ms": max(session_ms // 3, 100),
        "fetch.wait.max.ms": max(kafka.fetch_wait_ms_max, FETCH_WAIT_MS_MAX)}
    # A lone worker restarted is the same static member (state.member_id); workers of a group
    # of several join as dynamic members, which the broker expels when their session times
    # out (Tansu 0.6 never expels a static one: state.member_id).
    if config.state_dir and config.processes == 1:
        settings["group.instance.id"] = stable_member_id(
            str(Path(config.state_dir) / f"worker{worker}"), group)
    return {**settings, **kafka.extra}


def producer_settings(config: MarketDataConfig) -> dict[str, Any]:
    return {"bootstrap.servers": config.kafka.bootstrap_servers, "linger.ms": 5,
            **config.kafka.extra}


def _partition_counts(admin: AdminClient, names: Sequence[str]) -> dict[str, int]:
    metadata = admin.list_topics(timeout=10).topics
    return {name: len(metadata[name].partitions) for name in names
            if name in metadata and metadata[name].error is None}


def ensure_changelog(config: MarketDataConfig, names: TopicNames) -> dict[str, int]:
    """Create the changelog topic (partitioned like quotes) when missing; the partition
    counts of quotes, candles and the changelog."""
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers,
                         **config.kafka.extra})
    counts = _partition_counts(admin, (names.quotes, names.candles, names.changelog))
    if names.quotes not in counts:
        raise TopologyError(f"topic {names.quotes} does not exist")
    if names.changelog not in counts:
        spec = NewTopic(names.changelog, num_partitions=counts[names.quotes],
                        replication_factor=-1,
                        config={"cleanup.policy": "compact", "retention.ms": "-1",
                                "retention.bytes": "-1"})
        for future in admin.create_topics([spec]).values():
            try:
                future.result(15)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        counts = _partition_counts(admin, (names.quotes, names.candles, names.changelog))
    if counts.get(names.changelog) != counts[names.quotes]:
        raise TopologyError(f"{names.changelog} has {counts.get(names.changelog)} partitions, "
                            f"{names.quotes} {counts[names.quotes]}: they must match")
    return counts


class MarketDataWorker:
    """One consumer of the group: the loop, its checkpoints and its rebalance callbacks."""

    def __init__(self, config: MarketDataConfig, cache: CacheStore,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 worker: int = 0) -> None:
        self.config = config
        self.names = topic_names(config)
        counts = ensure_changelog(config, self.names)
        # Closed candles go to the quote's partition when the counts match, so a hot symbol's
        # candles stay in its dedicated partition too.
        self._same_partitions = counts.get(self.names.candles) == counts[self.names.quotes]
        self.step = QuoteBatchStep(config.candle_intervals, self.names.quotes, clock)
        self.writer = ConflatingQuoteWriter(cache, config.cache_flush_interval_ms)
        self.producer = Producer(producer_settings(config))
        self.consumer = Consumer({**consumer_settings(config, worker),
                                  "on_commit": self._on_commit})
        self._offsets: dict[int, int] = {}
        self.stopping = threading.Event()
        self.watchdog = Watchdog(self, STALL_S, LOOP_STALL_S)

    def run(self) -> None:
        self.writer.start()
        self.consumer.subscribe([self.names.quotes], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        next_checkpoint = time.monotonic() + self.config.commit_interval_s
        wait_s = self.config.batch_wait_ms / 1000
        self.watchdog.start()
        try:
            while not self.stopping.is_set():
                self.watchdog.beat()
                if self.watchdog.wedged is not None:
                    raise TopologyError(f"market data wedged: {self.watchdog.wedged}; exiting "
                                        f"so that the supervisor restarts a fresh member")
                records = self.consumer.consume(self.config.batch_size_max, wait_s)
                if records:
                    self._handle(records)
                self.producer.poll(0)
                if time.monotonic() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.monotonic() + self.config.commit_interval_s
            self.checkpoint()
        finally:
            self.watchdog.stop()
            self.writer.close()
            self.consumer.close()
            self.producer.flush(FLUSH_TIMEOUT_S)

    def _handle(self, records: list[Any]) -> None:
        good = [r for r in records if r.error() is None]
        for record in records:
            error = record.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                if error.fatal():
                    raise TopologyError(f"consumer failed: {error}")
                log.warning("consumer: %s", error)
        out = self.step.process(good)
        self._offsets.update(out.next_offsets)
        self.writer.put_batch(out.quotes.values(), self.step.open_candles(out.touched))
        for partition, candle in out.closed:
            self._produce(self.names.candles, candle.symbol, encode(candle),
                          partition if self._same_partitions else None)
        self.writer.put_batch((), (candle for _, candle in out.closed))
        for letter in out.dead_letters:
            self._produce(self.names.dlq, None, letter, None)

    def _produce(self, topic: str, key: str | bytes | None, value: bytes,
                 partition: int | None) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, **extra)
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self.producer.poll(0.05)

    def checkpoint(self, partitions: Iterable[int] | None = None) -> None:
        """Changed candle states to the changelog, delivered, then the offsets committed."""
        for partition, symbol, raw in self.step.checkpoint():
            self._produce(self.names.changelog, symbol, raw, partition)
        if self.producer.flush(FLUSH_TIMEOUT_S):
            log.warning("checkpoint: changelog not delivered in %.0f s; offsets not committed",
                        FLUSH_TIMEOUT_S)
            return
        wanted = set(partitions) if partitions is not None else set(self._offsets)
        offsets = [TopicPartition(self.names.quotes, p, o) for p, o in self._offsets.items()
                   if p in wanted]
        if not offsets:
            return
        try:
            # Asynchronous: a synchronous commit waits for the group coordinator with no bound,
            # and a worker blocked there while its session timed out was seen to stall quotes
            # for good (issue 11). The outcome arrives in _on_commit; a lost commit costs a
            # replay from the previous one, which changes nothing.
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            # The group moved on (a session timed out, a rebalance is under way): the next
            # owner replays from the last commit, which changes nothing.
            log.warning("checkpoint: commit refused: %s", error)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log.warning("checkpoint: commit failed: %s", error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        log.info("market data: assigned %s", numbers)
        for symbol_partition, symbol, raw in read_changelog(self.config, self.names.changelog,
                                                            numbers, self.producer):
            self.step.restore(symbol_partition, symbol, raw)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        log.info("market data: revoked %s", numbers)
        self.writer.flush()
        self.checkpoint(numbers)
        self._drop(numbers)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        log.warning("market data: lost %s (session timed out); their state is dropped", numbers)
        self._drop(numbers)

    def _drop(self, numbers: list[int]) -> None:
        self.step.forget(numbers)
        for number in numbers:
            self._offsets.pop(number, None)


class Watchdog:
    """Exits a wedged worker so that the supervisor restarts it: a thread that samples the
    worker's own progress (offsets processed per assigned partition against the partition's
    end) and judges it with state.liveness. Stuck (behind, nothing processed for `stall_s`),
    or holding no partition for `stall_s` while each worker should hold one: the loop is told
    to raise. A loop iteration that has not come back in `loop_stall_s` (a call that never
    returns): the process exits at once."""

    def __init__(self, worker: MarketDataWorker, stall_s: float, loop_stall_s: float) -> None:
        self._worker = worker
        self._tracker = Tracker(stall_s=stall_s)
        self._stall_s = stall_s
        self._loop_stall_s = loop_stall_s
        self._beat_s = time.monotonic()
        self._unassigned_since_s: float | None = None
        self._checked_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="market-data-watchdog",
                                        daemon=True)
        self.wedged: str | None = None

    def start(self) -> None:
        self._beat_s = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        self._beat_s = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.check(time.monotonic())
            except KafkaException as error:  # the broker did not answer: judge next time
                log.warning("watchdog: cannot sample: %s", error)

    def check(self, now_s: float) -> None:
        if self._checked_s is not None and now_s - self._checked_s > 3 * WATCH_INTERVAL_S:
            # The whole process stood still (SIGSTOP, a paused VM, swap): what was seen before
            # says nothing about the loop or the consumer; judge afresh from now.
            self._tracker.history.clear()
            self._beat_s = max(self._beat_s, now_s)
            self._unassigned_since_s = None
        self._checked_s = now_s
        if now_s - self._beat_s > self._loop_stall_s:
            log.critical("market data: the loop has not come back for %.0f s; exiting",
                         now_s - self._beat_s)
            logging.shutdown()
            os._exit(70)
        worker = self._worker
        assigned = [tp.partition for tp in worker.consumer.assignment()]
        self._judge_assignment(assigned, now_s)
        if not assigned:
            return
        topic = worker.names.quotes
        processed = dict(worker._offsets)
        ends = {}
        for partition in assigned:
            _, high = worker.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=5, cached=False)
            ends[(topic, partition)] = high
        # A partition with nothing processed since it was assigned (caught up, quiet) counts
        # from the consumer's position, else from the group's committed offset.
        quiet = [TopicPartition(topic, p) for p in assigned if p not in processed]
        if quiet:
            for tp in worker.consumer.position(quiet):
                if tp.offset < 0:
                    tp.offset = next(iter(worker.consumer.committed([tp], timeout=5))).offset
                if tp.offset >= 0:
                    processed[tp.partition] = tp.offset
        committed = {(topic, p): o for p, o in processed.items() if p in assigned}
        self._tracker.add("self", Sample(now_s, committed, ends))
        status = self._tracker.statuses()[0]
        if status.stuck:
            self.wedged = (f"partitions {list(status.stalled)} {status.lag} records behind, "
                           f"nothing processed for {status.stalled_for_s:.0f} s")

    def _judge_assignment(self, assigned: list[int], now_s: float) -> None:
        if assigned or self._worker.config.processes > 1:
            self._unassigned_since_s = None
            return
        if self._unassigned_since_s is None:
            self._unassigned_since_s = now_s
        elif now_s - self._unassigned_since_s >= self._stall_s:
            self.wedged = f"no partition assigned for {now_s - self._unassigned_since_s:.0f} s"


def read_changelog(config: MarketDataConfig, changelog: str, partitions: Sequence[int],
                   producer: Producer) -> list[tuple[int, str, bytes]]:
    """The latest state per symbol in `partitions` of the changelog: read from the beginning
    up to a sentinel written now (watermarks are unreliable on the embedded broker)."""
    if not partitions:
        return []
    nonce = uuid.uuid4().hex.encode()
    for partition in partitions:
        producer.produce(changelog, key=_SENTINEL_KEY, value=nonce, partition=partition)
    if producer.flush(FLUSH_TIMEOUT_S):
        raise TopologyError(f"cannot write restore sentinels to {changelog}")
    reader = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers,
                       "group.id": f"{config.kafka.topic_prefix}{config.consumer_group}-restore",
                       "enable.auto.commit": False, **config.kafka.extra})
    latest: dict[str, tuple[int, bytes]] = {}
    waiting = set(partitions)
    deadline = time.monotonic() + RESTORE_TIMEOUT_S
    try:
        reader.assign([TopicPartition(changelog, p, OFFSET_BEGINNING) for p in partitions])
        while waiting:
            if time.monotonic() > deadline:
                raise TopologyError(f"restore of {changelog} {sorted(waiting)} timed out")
            for record in reader.consume(1000, 0.2):
                if record.error() is not None:
                    continue
                key, value = record.key(), record.value()
                if key == _SENTINEL_KEY:
                    if value == nonce:
                        waiting.discard(record.partition())
                elif key is not None and value is not None:
                    latest[key.decode()] = (record.partition(), value)
    finally:
        reader.close()
    return [(partition, symbol, raw) for symbol, (partition, raw) in latest.items()]


def _install_stop(stop: Callable[[], None]) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop())


def run_worker(config: MarketDataConfig, worker: int = 0) -> None:
    """One worker (`worker` of `config.processes`): the consumer loop until SIGTERM or
    SIGINT."""
    key_prefix = config.kafka.topic_prefix if config.cache_key_prefix is None \
        else config.cache_key_prefix
    cache = QuoteCache(config.redis_url, key_prefix, candles_max=config.candles_max)
    try:
        member = MarketDataWorker(config, cache, worker=worker)
        _install_stop(member.stopping.set)
        member.run()
    finally:
        cache.close()


def run(config: MarketDataConfig) -> None:
    """Run the market-data topology (`processes` workers in one consumer group) until
    SIGTERM or SIGINT."""
    if config.processes == 1:
        run_worker(config)
        return
    stopped = threading.Event()
    _install_stop(stopped.set)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=run_worker, args=(config, n), name=f"market-data-{n}")
               for n in range(config.processes)]
    for worker in workers:
        worker.start()
    try:
        while not stopped.wait(0.2):
            dead = [w for w in workers if not w.is_alive()]
            if dead:
                raise TopologyError(f"market-data worker {dead[0].name} exited with "
                                    f"{dead[0].exitcode}")
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: each worker checkpoints and stops
        for worker in workers:
            worker.join(20)
            if worker.is_alive():
                worker.kill()
