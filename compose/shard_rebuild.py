"""`brokerage shard rebuild N` and the stream side of `brokerage reconcile`.

A rebuild reads shard N's partitions of `{prefix}ledger.postings` and `{prefix}orders.events`
from offset 0 into a fresh database next to the live one (same server), landing them with the
sink's own code path (`state.shard_store.write_chunked`: same decoding, same idempotent
`write_batch`, same handling of records the database refuses), then compares the two with
`compare_shards`.

The end of a topic: the broker's high watermark can be below the real end (PLATFORM.md), so it
is only a lower bound. Reading goes on until every partition has reached both that bound and
the offsets the live shard says it has landed (`sink_offsets`), and then until nothing new has
come for `idle_s`. A partition that stops short of an offset it should reach (nothing more for
`stall_s`) is an error naming it, never a wait.

Broker epochs (state/epoch.py): stored offsets count only in the broker log (epoch) they were
read from. A rebuild reads the broker's current log, so it can reproduce a shard only when the
shard holds nothing landed under another epoch; otherwise it refuses, saying why, before it
creates anything. Reconcile compares with the stream only what was landed under the current
epoch (`reconcile_shard_with_stream`) and says which partitions it could not compare.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import conninfo, sql

from compose.exceptions import ComposeError
from state import topics as t
from state.domain import ledger
from state.epoch import read_epoch
from state.exceptions import DecodeError, EpochUnavailable
from state.messages import LedgerTransaction
from state.router import ShardRouter
from state.shard_store import (
    Refused,
    ShardBatch,
    ShardMessage,
    Source,
    StreamPlan,
    balance_differences,
    compare_shards,
    connect,
    decode_for_shard,
    landed_epochs,
    landed_offsets,
    migrate,
    plan_stream_comparison,
    reconcile_stream_transactions,
    stream_comparison_snapshot,
    write_chunked,
)

Report = Callable[[str], None]
INPUT_TOPICS = (t.Topic.LEDGER_POSTINGS, t.Topic.ORDERS_EVENTS)
IDLE_S = 2.0
BATCH_RECORDS = 5000
PROGRESS_EVERY = 10_000
READ_TIMEOUT_S = 600.0
STALL_S = 30.0  # no record and no position change for this long: the partition ends there
RECONCILE_STALL_S = 10.0
DATABASE_NAME_MAX = 63  # PostgreSQL's identifier limit


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# ---- reading partitions to their end ---------------------------------------------------------


def _consumer(bootstrap_servers: str, purpose: str) -> Consumer:
    # assign() only: the group id is never joined nor committed to, but librdkafka wants one.
    return Consumer({"bootstrap.servers": bootstrap_servers,
                     "group.id": f"brokerage-{purpose}-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": False,
                     "auto.offset.reset": "earliest"})


def _check_partitions(consumer: Consumer, topics: Sequence[str], partitions: Iterable[int]
                      ) -> None:
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ComposeError(f"topic {topic} does not exist")
        missing = sorted(set(partitions) - set(metadata.partitions))
        if missing:
            raise ComposeError(f"topic {topic} has no partitions {missing}: is "
                               "partitions_per_shard the one the topics were created with?")


def _ends_at_least(consumer: Consumer, topics: Sequence[str], partitions: Iterable[int],
                   landed: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """The offset each partition must be read to, at least: its high watermark (which may be
    below the real end, never above) and one past what the live shard has landed."""
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        for partition in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                     timeout=10)
            ends[(topic, partition)] = max(high, landed.get((topic, partition), -1) + 1, 0)
    return ends


def read_to_end(bootstrap_servers: str, topics: Sequence[str], partitions: Iterable[int], *,
                landed: Mapping[tuple[str, int], int] | None = None, idle_s: float = IDLE_S,
                batch_records: int = BATCH_RECORDS, timeout_s: float = READ_TIMEOUT_S,
                stall_s: float = STALL_S, purpose: str = "reader") -> Iterator[list[Record]]:
    """Every record of `partitions` of `topics` from offset 0, in batches; per partition in
    offset order. Stops once every partition is past its lower bound (see `_ends_at_least`)
    and nothing new came for `idle_s`. Raises ComposeError when a partition short of its
    bound yields nothing more for `stall_s` (it ends before the offset it should reach), or
    when the bound is not reached within `timeout_s`. `landed` must count in the broker's
    current log (epoch): offsets of another log say nothing about this one."""
    partitions = list(partitions)
    consumer = _consumer(bootstrap_servers, purpose)
    try:
        _check_partitions(consumer, topics, partitions)
        pending = {key: end for key, end in
                   _ends_at_least(consumer, topics, partitions, landed or {}).items() if end > 0}
        reached: dict[tuple[str, int], int] = {}
        consumer.assign([TopicPartition(topic, partition, 0)
                         for topic in topics for partition in partitions])
        deadline = time.monotonic() + timeout_s
        last_record_at = last_progress_at = time.monotonic()
        while pending or time.monotonic() - last_record_at < idle_s:
            now = time.monotonic()
            if now > deadline:
                raise ComposeError(f"read stopped after {timeout_s} s before the end of "
                                   f"{sorted(pending)} (offsets {pending})")
            if pending and now - last_progress_at > stall_s:
                short = ", ".join(f"{key[0]}[{key[1]}] reached {reached.get(key, 0)} of {end}"
                                  for key, end in sorted(pending.items()))
                raise ComposeError(f"nothing more came for {stall_s:.0f} s: {short}; the topics "
                                   "end before the offsets they should reach")
            messages = consumer.consume(batch_records, timeout=0.2)
            batch = []
            for msg in messages:
                if msg.error():
                    continue
                key = (msg.topic(), msg.partition())
                reached[key] = msg.offset() + 1
                if key in pending and msg.offset() + 1 >= pending[key]:
                    del pending[key]
                batch.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                    msg.value()))
            if pending:
                # Transaction markers take offsets no record has: the consumer's position
                # moves past them, the last record's offset does not.
                for position in consumer.position([TopicPartition(topic, partition)
                                                   for topic, partition in list(pending)]):
                    key = (position.topic, position.partition)
                    if position.offset > reached.get(key, 0):
                        reached[key] = position.offset
                        last_progress_at = time.monotonic()
                    if position.offset >= 0 and position.offset >= pending[key]:
                        del pending[key]
            if batch:
                last_record_at = last_progress_at = time.monotonic()
                yield batch
    finally:
        consumer.close()


# ---- broker epochs -------------------------------------------------------------------------------


def current_epoch(bootstrap_servers: str, topic_prefix: str) -> str | None:
    """The broker's epoch (None: it has none, its topics were not prepared)."""
    try:
        return read_epoch(bootstrap_servers, topic_prefix)
    except EpochUnavailable as error:
        raise ComposeError(f"cannot read the broker's epoch: {error}") from error


def describe_epochs(epochs: Iterable[str]) -> str:
    return ", ".join(f"epoch {epoch}" if epoch else "before epochs were recorded"
                     for epoch in epochs)


def describe_current(current: str | None) -> str:
    return (f"epoch {current}" if current else
            "no epoch record: not prepared by `brokerage up` or `brokerage init`")


# ---- rebuild ---------------------------------------------------------------------------------


def _database_name(live_dsn: str) -> str:
    name = conninfo.conninfo_to_dict(live_dsn).get("dbname") or "postgres"
    return str(name)


def rebuilt_database_name(live_dsn: str, shard: int, now: dt.datetime) -> str:
    suffix = f"_rebuild_{shard}_{now.strftime('%Y%m%dT%H%M%S')}"
    return _database_name(live_dsn)[:DATABASE_NAME_MAX - len(suffix)] + suffix


def _with_database(dsn: str, name: str) -> str:
    params = conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    if dsn.startswith(("postgresql://", "postgres://")):
        # keep the URI form (it is what the stack and the logs show)
        base, _, rest = dsn.partition("?")
        return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{rest}" if rest else "")
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def create_database(live_dsn: str, name: str) -> str:
    """A new empty database on the live shard's server; its DSN."""
    with connect(live_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(live_dsn, name)


def drop_database(live_dsn: str, name: str) -> None:
    assert name != _database_name(live_dsn), f"refusing to drop the live database {name}"
    with connect(live_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@dataclass
class _Counts:
    records: int = 0
    landed: int = 0
    refused: int = 0  # malformed, misrouted or refused by the database (dead letters live)


def _land(conn: psycopg.Connection, records: list[Record], prefix: str, router: ShardRouter,
          shard: int, counts: _Counts, report: Report, epoch: str | None) -> None:
    batch = ShardBatch()
    for record in records:
        family = t.Topic(record.topic.removeprefix(prefix))
        message = decode_for_shard(family, record.value, router, shard)
        if isinstance(message, Refused):
            counts.refused += 1
            report(f"  refused {record.topic}[{record.partition}]@{record.offset}: "
                   f"{message.reason}")
        else:
            batch.add(message, Source(record.topic, record.partition, record.offset))

    def refused(message: ShardMessage, source: Source | None, reason: str) -> None:
        counts.refused += 1
        where = f"{source.topic}[{source.partition}]@{source.offset}" if source else "?"
        report(f"  refused by the database {where}: {reason}")

    write_chunked(conn, batch, BATCH_RECORDS, refused, epoch=epoch or "")
    counts.landed += batch.size()


def rebuild_shard(bootstrap_servers: str, topic_prefix: str, live_dsn: str, shard: int,
                  shards: int, partitions_per_shard: int, report: Callable[[str], None], *,
                  progress_every: int = PROGRESS_EVERY, idle_s: float = IDLE_S,
                  keep_rebuilt: bool | None = None,
                  clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                  ) -> list[str]:
    """Rebuild shard `shard` from the topics into a fresh database on the live shard's server
    and compare it with the live one. Returns the differences (empty: equal).

    `keep_rebuilt`: None keeps the rebuilt database only when it differs (for inspection; its
    DSN is reported), True always, False never."""
    router = ShardRouter(shards, partitions_per_shard)
    partitions = router.partitions_of_shard(shard)
    topics = [topic_prefix + family for family in INPUT_TOPICS]
    current = current_epoch(bootstrap_servers, topic_prefix)
    landed_rows = {key: row for key, row in landed_offsets(live_dsn).items() if key[0] in topics}
    earlier = sorted({epoch for epoch in landed_epochs(live_dsn) if epoch != current}
                     | {row.epoch for row in landed_rows.values() if row.epoch != current})
    if earlier:
        raise ComposeError(
            f"shard {shard} holds records landed under an earlier broker epoch "
            f"({describe_epochs(earlier)}) that the broker's topics ({describe_current(current)}) "
            "no longer hold, so a rebuild from the topics cannot reproduce it: nothing rebuilt "
            "(the shard is the record; `brokerage reconcile` still checks its ledger)")
    name = rebuilt_database_name(live_dsn, shard, clock())
    rebuilt_dsn = create_database(live_dsn, name)
    report(f"shard {shard}: rebuilding partitions {list(partitions)} into database {name}")
    differences: list[str] = []
    try:
        migrate(rebuilt_dsn)
        landed = {key: row.offset for key, row in landed_rows.items()}
        counts = _Counts()
        next_report = progress_every
        with connect(rebuilt_dsn) as conn:
            for records in read_to_end(bootstrap_servers, topics, partitions, landed=landed,
                                       idle_s=idle_s, purpose=f"rebuild-{shard}"):
                counts.records += len(records)
                _land(conn, records, topic_prefix, router, shard, counts, report, current)
                if counts.records >= next_report:
                    report(f"shard {shard}: {counts.records} records read, "
                           f"{counts.landed} landed")
                    next_report = (counts.records // progress_every + 1) * progress_every
        report(f"shard {shard}: read {counts.records} records: {counts.landed} landed, "
               f"{counts.refused} refused; comparing")
        differences = compare_shards(live_dsn, rebuilt_dsn)
        report(f"shard {shard}: " + ("rebuilt copy equals the live shard" if not differences
                                      else f"{len(differences)} differences"))
        return differences
    finally:
        keep = bool(differences) if keep_rebuilt is None else keep_rebuilt
        if keep:
            report(f"shard {shard}: rebuilt database kept: {rebuilt_dsn}")
        else:
            drop_database(live_dsn, name)


# ---- the stream side of reconcile --------------------------------------------------------------


def stream_postings(bootstrap_servers: str, topic_prefix: str, partitions: Iterable[int], *,
                    offsets_max: Mapping[int, int] | None = None, idle_s: float = IDLE_S,
                    stall_s: float = STALL_S) -> list[tuple[LedgerTransaction, Source]]:
    """The postings of `{prefix}ledger.postings` of `partitions`, each txn_id once (the topic
    may hold duplicates; the first is kept, with where it was read), malformed records skipped
    (the sinks dead-letter them). With `offsets_max` (partition -> highest offset, e.g. the
    shard's `sink_offsets` of the current epoch), only records up to those offsets count, so
    that a sink still catching up is not reported as a difference."""
    topic = topic_prefix + t.Topic.LEDGER_POSTINGS
    seen: set[str] = set()
    postings: list[tuple[LedgerTransaction, Source]] = []
    landed = ({(topic, p): offset for p, offset in offsets_max.items()}
              if offsets_max is not None else None)
    for records in read_to_end(bootstrap_servers, [topic], partitions, landed=landed,
                               idle_s=idle_s, stall_s=stall_s, purpose="reconcile"):
        for record in records:
            if offsets_max is not None and record.offset > offsets_max.get(record.partition, -1):
                continue
            try:
                posting = t.decode(t.Topic.LEDGER_POSTINGS, record.value)
            except DecodeError:
                continue
            if posting.txn_id not in seen:
                seen.add(posting.txn_id)
                postings.append((posting, Source(record.topic, record.partition,
                                                 record.offset)))
    return postings


def stream_balances(bootstrap_servers: str, topic_prefix: str, partitions: Iterable[int], *,
                    offsets_max: Mapping[int, int] | None = None, idle_s: float = IDLE_S,
                    stall_s: float = STALL_S) -> dict[tuple[str, str], Decimal]:
    """Balances (ledger_account, asset) -> amount folded from `stream_postings`."""
    return ledger.balances([posting for posting, _ in stream_postings(
        bootstrap_servers, topic_prefix, partitions, offsets_max=offsets_max, idle_s=idle_s,
        stall_s=stall_s)])


@dataclass(frozen=True, slots=True)
class StreamReconciliation:
    plan: StreamPlan
    differences: list[str]
    notes: list[str]


def reconcile_shard_with_stream(bootstrap_servers: str, topic_prefix: str, dsn: str,
                                partitions: Iterable[int], current: str | None, *,
                                idle_s: float = IDLE_S, stall_s: float = RECONCILE_STALL_S
                                ) -> StreamReconciliation:
    """One shard against the broker's current log (epoch `current`).

    A shard that holds only records of the current epoch: its materialised balances against
    those its partitions' postings imply, cut at what it has landed. A shard that also holds
    records of an earlier epoch (a log the broker no longer has): its balances cannot be
    implied by the stream, so only the postings of partitions landed under the current epoch
    are checked, each in the shard with the same legs; partitions of an earlier epoch are
    named and not read (their offsets mean nothing in this log). Never waits for an offset of
    another epoch."""
    postings_topic = topic_prefix + t.Topic.LEDGER_POSTINGS
    # Balances and offsets of one moment; the stream is then read up to those offsets.
    snapshot = stream_comparison_snapshot(dsn)
    landed = {partition: row for (topic, partition), row in snapshot.landed.items()
              if topic == postings_topic}
    plan = plan_stream_comparison(partitions, landed, snapshot.epochs, current)
    notes: list[str] = []
    differences: list[str] = []
    if plan.whole_shard:
        streamed = stream_balances(bootstrap_servers, topic_prefix, sorted(plan.compared),
                                   offsets_max=plan.compared, idle_s=idle_s,
                                   stall_s=stall_s) if plan.compared else {}
        differences = balance_differences(snapshot.balances, streamed)
        return StreamReconciliation(plan, differences, notes)
    if current is None:
        notes.append(f"the broker has {describe_current(current)}; no stored offset refers "
                     "to its log, so nothing was compared with the stream")
    if plan.compared:
        read = stream_postings(bootstrap_servers, topic_prefix, sorted(plan.compared),
                               offsets_max=plan.compared, idle_s=idle_s, stall_s=stall_s)
        differences = reconcile_stream_transactions(dsn, read)
        notes.append(f"partitions {sorted(plan.compared)} landed under the current broker "
                     f"epoch: {len(read)} stream transactions checked against the shard's "
                     "ledger")
    if plan.earlier and current is not None:
        notes.append(f"partitions {sorted(plan.earlier)} were landed under an earlier broker "
                     f"epoch ({describe_epochs(sorted(set(plan.earlier.values())))}) and cannot "
                     "be compared with the stream")
    if plan.earlier_epochs:
        notes.append(f"the shard holds records landed under an earlier broker epoch "
                     f"({describe_epochs(plan.earlier_epochs)}): its balances are checked "
                     "against its own entries, not against the stream")
    return StreamReconciliation(plan, differences, notes)
