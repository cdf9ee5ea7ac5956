"""A Quix Streams batching sink that lands one shard's postings and account events.

Each shard has its own sink (and its own consumer group, in its own process), so that a shard
that is down pauses only its own reading: the sink raises `SinkBackpressureError`, Quix pauses
the consumer and seeks back to the last committed offsets, and the same records are written
again once the shard answers. Writes are idempotent by txn_id / event_id, so nothing is lost
and nothing is written twice.

Writes overlap reading: each record is decoded as it is added (straight into this shard's
batch: no per-record SinkItem is kept), and every `batch_size_max` records the batch is handed
to one writer thread, which lands them while Quix goes on reading (the database
works while this process decodes, and the other way round). `flush`, at each checkpoint,
hands off the rest and waits for every write to finish before Quix commits the offsets, so
no offset is committed for a record that has not landed. One thread writes, in hand-off
order, so each partition's records land in offset order.

The worker is assigned only its shard's partitions (`sinks.service.OwnPartitionsApplication`).
Malformed records, and records whose account is not this shard's (their producer did not
partition by account), go to `dlq.<topic>` and processing continues.

The sink is told the broker's epoch (state/epoch.py) when it is built: the offsets it records
in `sink_offsets` count in that broker log, and say so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Producer
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from sinks.exceptions import DeadLetterFailed
from state import topics as t
from state.router import ShardRouter
from state.shard_store import (
    Refused,
    ShardBatch,
    ShardMessage,
    Source,
    connect,
    decode_for_shard,
    migrate,
    write_chunked,
)

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


class ShardSink(BatchingSink):
    def __init__(
        self, *, shard: int, dsn: str, router: ShardRouter, topic_prefix: str,
        dlq_producer: Producer, epoch: str, batch_size_max: int = 5000,
        retry_after_s: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        super().__init__()
        self._shard = shard
        self._epoch = epoch
        self._dsn = dsn
        self._router = router
        self._prefix = topic_prefix
        self._dlq = dlq_producer
        self._batch_size_max = batch_size_max
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._partitions = frozenset(router.partitions_of_shard(shard))
        self._pending = ShardBatch()  # decoded, not yet handed to the writer
        self._added = 0  # records in self._pending (dead letters included)
        self._families: dict[str, t.Topic] = {}
        self._writer = ThreadPoolExecutor(max_workers=1,
                                          thread_name_prefix=f"shard{shard}-writer")
        self._writes: list[Future[None]] = []
        self._write_failed = False  # a write of this checkpoint failed: skip the others
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
        if partition not in self._partitions:
            return  # not assigned to this worker (see OwnPartitionsApplication): never here
        self._add(topic, partition, offset, key, value, self._pending)
        self._added += 1
        if self._added >= self._batch_size_max:
            self._hand_off()

    def write(self, batch: SinkBatch) -> None:
        """One topic partition's batch, landed now: BatchingSink's interface. Quix does not
        call it here (`add` decodes each record into the pending batch, `flush` lands it)."""
        decoded = ShardBatch()
        for item in batch:
            self._add(batch.topic, batch.partition, item.offset, item.key, item.value, decoded)
        if decoded.size():
            self._write(decoded)
        self._flush_dead_letters()

    def flush(self) -> None:
        """Hand off what is left and wait for every write of this checkpoint: Quix commits
        the offsets when this returns. A failed write (SinkBackpressureError for a shard that
        is down) is raised here; Quix then seeks back to the committed offsets and the
        records come again (the writes are idempotent)."""
        try:
            self._hand_off()
            self._wait_for_writes()
        finally:
            self._drop_pending()
        self._flush_dead_letters()

    def on_paused(self) -> None:
        super().on_paused()
        self._drop_pending()
        with contextlib.suppress(Exception):  # already reported by flush
            self._wait_for_writes()

    def _hand_off(self) -> None:
        decoded = self._pending
        self._drop_pending()
        if decoded.size():
            self._writes.append(self._writer.submit(self._write_unless_failed, decoded))

    def _drop_pending(self) -> None:
        self._pending = ShardBatch()
        self._added = 0

    def _wait_for_writes(self) -> None:
        writes, self._writes = self._writes, []
        failure: BaseException | None = None
        for write in writes:
            try:
                write.result()
            except BaseException as error:  # noqa: BLE001 - the first one is raised below
                failure = failure or error
        self._write_failed = False
        if failure is not None:
            raise failure

    # -- routing and decoding ----------------------------------------------------------------

    def _add(self, topic: str, partition: int, offset: int, key: Any, value: Any,
             decoded: ShardBatch) -> None:
        family = self._families.get(topic)
        if family is None:
            family = self._families[topic] = t.Topic(topic.removeprefix(self._prefix))
        self.stats.records += 1
        message = decode_for_shard(family, value, self._router, self._shard)
        if isinstance(message, Refused):
            self._dead_letter(topic, partition, offset, key, value, message.reason)
        else:
            decoded.add(message, Source(topic, partition, offset))

    # -- writing -----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            migrate(self._dsn)  # a fresh (or rebuilt) shard gets its schema first
            self._conn = connect(self._dsn)
        return self._conn

    def _write_unless_failed(self, decoded: ShardBatch) -> None:
        """In the writer thread. After a failure the rest of the checkpoint's records are
        skipped: they come again after Quix seeks back."""
        if self._write_failed:
            return
        try:
            self._write(decoded)
        except BaseException:
            self._write_failed = True
            raise

    def _write(self, decoded: ShardBatch) -> None:
        started = time.perf_counter()
        try:
            write_chunked(self._connection(), decoded, self._batch_size_max, self._refused,
                          epoch=self._epoch)
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

    def _refused(self, message: ShardMessage, source: Source | None, reason: str) -> None:
        assert source is not None, f"no source for a refused {type(message).__name__}"
        self._dead_letter(source.topic, source.partition, source.offset, message.account_id,
                          t.encode(message), f"refused by shard {self._shard}: {reason}")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # stopping: the offsets of these never commit
            self._wait_for_writes()
        self._writer.shutdown(wait=True)
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
