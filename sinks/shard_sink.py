"""A Quix Streams batching sink that lands one shard's postings and account events.

Each shard has its own sink (and its own consumer group, in its own process), so that a shard
that is down pauses only its own reading: the sink raises `SinkBackpressureError`, Quix pauses
the consumer and seeks back to the last committed offsets, and the same records are written
again once the shard answers. Writes are idempotent by txn_id / event_id, so nothing is lost
and nothing is written twice.

Records of accounts that belong to other shards are skipped before they are decoded.
Malformed records go to `dlq.<topic>` and processing continues.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Producer
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from sinks.exceptions import DeadLetterFailed
from state import topics as t
from state.exceptions import DecodeError
from state.messages import AccountEvent, LedgerTransaction
from state.router import ShardRouter
from state.shard_store import Source, connect, migrate, write_batch

log = logging.getLogger(__name__)
DLQ_FLUSH_TIMEOUT_S = 10.0


@dataclass
class SinkStats:
    records: int = 0
    postings: int = 0
    entries: int = 0
    events: int = 0
    dead_letters: int = 0
    backpressures: int = 0
    write_seconds: float = 0.0
    batches: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass
class _Decoded:
    postings: list[LedgerTransaction] = field(default_factory=list)
    events: list[AccountEvent] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)
    entries: int = 0

    def size(self) -> int:
        return len(self.postings) + len(self.events)


class ShardSink(BatchingSink):
    def __init__(
        self, *, shard: int, dsn: str, router: ShardRouter, topic_prefix: str,
        dlq_producer: Producer, batch_size_max: int = 5000, retry_after_s: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        super().__init__()
        self._shard = shard
        self._dsn = dsn
        self._router = router
        self._prefix = topic_prefix
        self._dlq = dlq_producer
        self._batch_size_max = batch_size_max
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._shard_of_key: dict[bytes, int] = {}
        self.stats = SinkStats()

    # -- Quix hooks ------------------------------------------------------------------------

    def setup(self) -> None:
        # A shard that is down at start is not fatal: its writes back off until it answers.
        try:
            self._connection()
        except psycopg.OperationalError as error:
            log.warning("shard %d unreachable at start: %s", self._shard, error)

    def add(self, value: Any, key: Any, timestamp: int, headers: Any, topic: str,
            partition: int, offset: int) -> None:
        if isinstance(key, bytes | str) and self._owner(key) != self._shard:
            return
        super().add(value, key, timestamp, headers, topic, partition, offset)

    def write(self, batch: SinkBatch) -> None:
        """One topic partition's batch (Quix's unit); `flush` lands all of them at once."""
        self._land([batch])

    def flush(self) -> None:
        # Every partition's batch of this checkpoint in one database transaction (chunked by
        # batch_size_max), rather than one transaction per partition.
        try:
            self._land(list(self._batches.values()))
        finally:
            self._batches.clear()

    def _land(self, batches: list[SinkBatch]) -> None:
        decoded = self._decode(batches)
        if decoded.size():
            self._write(decoded)
        self._flush_dead_letters()

    # -- routing and decoding ----------------------------------------------------------------

    def _owner(self, key: bytes | str) -> int:
        raw = key.encode() if isinstance(key, str) else key
        shard = self._shard_of_key.get(raw)
        if shard is None:
            if len(self._shard_of_key) > 1_000_000:  # bounded: accounts are many but finite
                self._shard_of_key.clear()
            shard = self._router.shard_of_account(raw.decode("utf-8", "replace"))
            self._shard_of_key[raw] = shard
        return shard

    def _decode(self, batches: list[SinkBatch]) -> _Decoded:
        decoded = _Decoded()
        for batch in batches:
            topic, partition = batch.topic, batch.partition
            family = t.Topic(topic.removeprefix(self._prefix))
            for item in batch:
                self.stats.records += 1
                try:
                    message = t.decode(family, item.value)
                    owner = self._router.shard_of_account(message.account_id)
                except (DecodeError, ValueError) as error:
                    self._dead_letter(topic, partition, item.offset, item.key, item.value,
                                      str(error))
                    continue
                if owner != self._shard:
                    if item.key is None:
                        continue  # keyless: every shard's sink decodes it, its owner keeps it
                    self._dead_letter(topic, partition, item.offset, item.key, item.value,
                                      f"key and account_id {message.account_id} disagree: "
                                      f"the account belongs to shard {owner}")
                    continue
                source = Source(topic, partition, item.offset)
                if isinstance(message, LedgerTransaction):
                    decoded.postings.append(message)
                    decoded.sources[message.txn_id] = source
                    decoded.entries += len(message.entries)
                else:
                    decoded.events.append(message)
                    decoded.sources[message.event_id] = source
        return decoded

    # -- writing -----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            migrate(self._dsn)  # a fresh (or rebuilt) shard gets its schema first
            self._conn = connect(self._dsn)
        return self._conn

    def _write(self, decoded: _Decoded) -> None:
        started = time.perf_counter()
        step = self._batch_size_max
        try:
            conn = self._connection()
            for first in range(0, max(len(decoded.postings), len(decoded.events)), step):
                self._write_or_split(conn, decoded.postings[first:first + step],
                                     decoded.events[first:first + step], decoded.sources)
        except psycopg.OperationalError as error:
            self._drop_connection()
            self.stats.backpressures += 1
            log.warning("shard %d unavailable, pausing for %.1f s: %s", self._shard,
                        self._retry_after_s, error)
            raise SinkBackpressureError(retry_after=self._retry_after_s) from error
        self.stats.write_seconds += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.postings += len(decoded.postings)
        self.stats.entries += decoded.entries
        self.stats.events += len(decoded.events)

    def _write_or_split(self, conn: psycopg.Connection, postings: list[LedgerTransaction],
                        events: list[AccountEvent], sources: dict[str, Source]) -> None:
        """A record the database refuses (a NUL in a text, a constraint) must not block its
        partition forever: halve the batch until the refused record is alone, then send it
        to the dead-letter topic with the database's reason."""
        try:
            write_batch(conn, postings, events, sources)
            return
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as error:
            if len(postings) + len(events) == 1:
                message: LedgerTransaction | AccountEvent = (postings or events)[0]
                key = (message.txn_id if isinstance(message, LedgerTransaction)
                       else message.event_id)
                source = sources[key]
                self._dead_letter(source.topic, source.partition, source.offset,
                                  message.account_id, t.encode(message),
                                  f"refused by shard {self._shard}: {error}")
                return
        if postings and events:
            halves = [(postings, []), ([], events)]
        else:
            half = max(len(postings), len(events)) // 2
            halves = [(postings[:half], events[:half]), (postings[half:], events[half:])]
        for part_postings, part_events in halves:
            self._write_or_split(conn, part_postings, part_events, sources)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        self._drop_connection()

    # -- dead letters ------------------------------------------------------------------------

    def _dead_letter(self, topic: str, partition: int, offset: int, key: Any, raw: Any,
                     error: str) -> None:
        raw_bytes = raw if isinstance(raw, bytes) else (str(raw).encode() if raw else None)
        key_out = key if isinstance(key, bytes | str) or key is None else str(key)
        letter = t.dead_letter(topic, partition, offset, key_out, raw_bytes, error, self._clock())
        name = self._prefix + t.dlq_name(topic.removeprefix(self._prefix))
        self._dlq.produce(name, key=key_out, value=t.encode(letter))
        self.stats.dead_letters += 1
        log.warning("dead letter %s[%d]@%d: %s", topic, partition, offset, error)

    def _flush_dead_letters(self) -> None:
        # Before the offsets commit: a dead letter is never lost (it may repeat on a replay).
        if self._dlq.flush(DLQ_FLUSH_TIMEOUT_S) != 0:
            raise DeadLetterFailed(f"dead letters not delivered in {DLQ_FLUSH_TIMEOUT_S} s")
