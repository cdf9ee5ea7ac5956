"""The account topology: one state per account across `orders.commands` and `executions`.

A short declaration around `state.domain.account.decide`: decode (malformed -> dlq), decide,
encode each output to its topic. `now` is the record's timestamp, so replaying the input topics
into empty state reproduces the same outputs, ids and balances.

The account is stored in parts (`state.account_parts`: a core, a ring of idempotency records,
a ring of closed orders, a small meta value), so a message writes what it changed, not the
whole account. The decoded account is kept in memory beside the meta it was stored under
(`StateCache`) and used while the store still holds exactly that meta, so steady-state
processing decodes nothing. A state that does come from the store (restart, rebalance,
changelog recovery) is reassembled and gets the whole invariant check once; `decide` checks
what each message changes. An account stored as one value (before parts) is read as such and
written in parts by its next message.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from quixstreams import Application, State, message_context
from quixstreams.models import Deserializer, SerializationContext, Serializer, Topic, TopicConfig
from quixstreams.state.rocksdb import RocksDBOptions
from quixstreams.utils.json import dumps as json_dumps

from state import account_parts as parts
from state import topics as t
from state.account_parts import Stored
from state.domain.account import (
    AccountState,
    MarketContext,
    RiskLimits,
    check_invariants,
    decide,
    state_from_bytes,
)
from state.domain.hydrate import AccountSnapshot, forgotten_records, state_or_hydrated
from state.domain.risk import Reason
from state.exceptions import DecodeError, ShardUnavailable, StoreError
from state.fetch_wait import LISTING_WASTES, ListingWatch, measured_wait_ms, probe_consumer
from state.liveness import GroupSampler, GroupStatus, Tracker
from state.member_id import MemberLock, peer_down, read_member_id, stable_member_id
from state.messages import Alert, CommandRejected, ExecutionReport, MarketStatus
from state.router import ShardRouter, account_partition
from state.shard_store import account_is_open, load_account_snapshot
from topologies.config import AccountTopologyConfig, KafkaSettings

log = logging.getLogger(__name__)
_ALL_OPEN = MarketContext(symbol_status={})  # no market.status view: every symbol open


class Output(NamedTuple):
    topic: str
    payload: bytes


class _OutputSerializer(Serializer):
    """Outputs are encoded by `state.topics`; the producer writes their bytes as they are."""

    def __call__(self, value: Output, ctx: Any) -> bytes:
        return value.payload


class _KeyDeserializer(Deserializer):
    """An input record's key: the account id as UTF-8 text (as Quix's "str" reads it), or, when
    the bytes are not UTF-8, the bytes themselves. Raising here would stop the topology on the
    record, and again on every restart; a bytes key is never an account id, so the step
    dead-letters the record."""

    def __call__(self, value: bytes, ctx: SerializationContext) -> str | bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value


class _KeySerializer(Serializer):
    """An output's key: the input record's key again, text as UTF-8, bytes as they came."""

    def __call__(self, value: str | bytes, ctx: SerializationContext) -> bytes:
        return value if isinstance(value, bytes) else value.encode("utf-8")


def input_serdes() -> dict[str, Any]:
    """How the account topology reads `orders.commands` and `executions`."""
    return {"value_deserializer": "bytes", "key_deserializer": _KeyDeserializer()}


def output_serdes() -> dict[str, Any]:
    """How the account topology writes its outputs (`Output`s, keyed as their input)."""
    return {"value_serializer": _OutputSerializer(), "key_serializer": _KeySerializer()}


@dataclass(frozen=True)
class AccountTopics:
    commands: Topic
    executions: Topic
    outputs: dict[str, Topic]

    def select(self, value: Output, key: Any, timestamp: int, headers: Any) -> Topic:
        return self.outputs[value.topic]


def declare_topics(app: Application, prefix: str, partitions: int) -> AccountTopics:
    specs = {spec.name: spec for spec in t.topic_specs(prefix, partitions, 1)}

    def topic(name: str, **serdes: Any) -> Topic:
        spec = specs[name]
        return app.topic(name, config=TopicConfig(num_partitions=spec.partitions,
                                                  replication_factor=1,
                                                  extra_config=spec.config), **serdes)

    output_names = [prefix + name for name in (t.Topic.ORDERS_ROUTE, t.Topic.ORDERS_EVENTS,
                                               t.Topic.LEDGER_POSTINGS)]
    output_names += [prefix + t.dlq_name(name) for name in (t.Topic.ORDERS_COMMANDS,
                                                           t.Topic.EXECUTIONS)]
    return AccountTopics(
        commands=topic(prefix + t.Topic.ORDERS_COMMANDS, **input_serdes()),
        executions=topic(prefix + t.Topic.EXECUTIONS, **input_serdes()),
        outputs={name: topic(name, **output_serdes()) for name in output_names},
    )


class MarketStatusView:
    """The latest status per symbol, read from the compacted `market.status` topic by a
    background consumer. Missing symbols are open."""

    def __init__(self, kafka: KafkaSettings) -> None:
        # Replaced whole on each update (never changed in place): the processing thread reads
        # it on every message without a copy or a lock.
        self._context = MarketContext(symbol_status={})
        self._topic = kafka.topic_prefix + t.Topic.MARKET_STATUS
        self._consumer = Consumer({
            "bootstrap.servers": kafka.bootstrap_servers, "group.id": "unused-market-status",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", **kafka.extra})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="market-status", daemon=True)

    def context(self) -> MarketContext:
        return self._context

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()

    def _follow(self) -> None:
        from confluent_kafka import TopicPartition

        metadata = self._consumer.list_topics(self._topic, timeout=10)
        partitions = metadata.topics[self._topic].partitions
        self._consumer.assign([TopicPartition(self._topic, p, 0) for p in partitions])
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                continue
            try:
                status = t.decode(t.Topic.MARKET_STATUS, msg.value())
            except DecodeError as error:
                log.warning("market.status offset %s skipped: %s", msg.offset(), error)
                continue
            assert isinstance(status, MarketStatus)
            statuses = {**self._context.symbol_status, status.symbol: status.status}
            self._context = MarketContext(symbol_status=statuses)


_T = TypeVar("_T")


class StateCache(Generic[_T]):
    """Decoded account states, each kept with the exact meta bytes it was stored under.

    Reading an account from the store is the step's largest cost and grows with the
    account's history. A cached state is used only when the store still holds exactly the
    meta it was written with (unique per write: `state.account_parts.Meta`), so it is the state
    the store would reassemble (states round-trip exactly, which the property tests check):
    after an aborted checkpoint, a rebalance or a restart the store holds another meta (or
    the cache is empty) and the account is read again."""

    def __init__(self, accounts_max: int) -> None:
        self._accounts_max = accounts_max
        self._entries: OrderedDict[str, tuple[bytes, _T]] = OrderedDict()

    def get(self, account_id: str, stored: bytes) -> _T | None:
        entry = self._entries.get(account_id)
        if entry is None or entry[0] != stored:
            return None
        self._entries.move_to_end(account_id)
        return entry[1]

    def put(self, account_id: str, stored: bytes, account: _T) -> None:
        self._entries[account_id] = (stored, account)
        self._entries.move_to_end(account_id)
        if len(self._entries) > self._accounts_max:
            self._entries.popitem(last=False)


class _Loaded(NamedTuple):
    """An account as read, and how the store holds it."""

    account: AccountState
    stored: Stored | None  # None: nothing stored in parts (new, rebuilt, or one value)
    single_value: bool  # stored as one value (before parts): that key goes once it is in parts


# A record's time is set by its producer (CreateTime) and is the step's `now`. One outside these
# bounds is a producer's mistake, and one a datetime cannot hold would stop the topology on the
# record again after every restart (the intake property test found year 10000).
RECORD_TIME_MIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
RECORD_TIME_MAX = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


_RECORD_TIME_MIN_MS = int(RECORD_TIME_MIN.timestamp() * 1000)
_RECORD_TIME_MAX_MS = int(RECORD_TIME_MAX.timestamp() * 1000)


def record_time(timestamp_ms: int) -> dt.datetime | None:
    """The record's time, or None when it is outside RECORD_TIME_MIN..RECORD_TIME_MAX."""
    if not _RECORD_TIME_MIN_MS <= timestamp_ms < _RECORD_TIME_MAX_MS:
        return None
    return dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)


class AccountStep:
    """The stateful step: raw record in, encoded outputs out. `cached_accounts_max` bounds the
    decoded accounts kept (the busiest; a long-retained account is a few hundred kB decoded)."""

    def __init__(self, prefix: str, market: MarketStatusView | None, limits: RiskLimits,
                 cached_accounts_max: int = 2048,
                 snapshot_loader: SnapshotLoader | None = None,
                 account_partitions: int | None = None,
                 account_is_open: Callable[[str], bool] | None = None) -> None:
        self._prefix = prefix
        self._is_open = account_is_open or (lambda account_id: True)
        self._account_partitions = account_partitions
        self._market = market
        self._limits = limits
        self._snapshot_loader = snapshot_loader
        self._kinds = {prefix + t.Topic.ORDERS_COMMANDS: t.Topic.ORDERS_COMMANDS,
                       prefix + t.Topic.EXECUTIONS: t.Topic.EXECUTIONS}
        self._cache: StateCache[Stored] = StateCache(cached_accounts_max)
        # A write's stamp: this step's random id and its count of writes, so a stamp is never
        # written twice (not by a restarted process, not by another member after a rebalance)
        # and equal meta bytes mean the write the cache holds.
        self._writer_id = os.urandom(8)
        self._write_count = itertools.count()

    def __call__(self, raw: bytes | None, key: str | bytes | None, timestamp_ms: int,
                 headers: Any, state: State) -> list[Output]:
        context = message_context()
        kind = self._kinds[context.topic]
        now = record_time(timestamp_ms)
        if now is None:
            return self._dead_letter(kind, key, raw, RECORD_TIME_MIN,
                                     f"record timestamp {timestamp_ms} ms is outside "
                                     f"{RECORD_TIME_MIN:%Y-%m-%d}..{RECORD_TIME_MAX:%Y-%m-%d}")
        try:
            message = t.decode(kind, raw)
            if message.account_id != key:
                raise DecodeError(f"key {key!r} is not the payload's account_id")
            self._require_account_partition(message.account_id, context.partition)
        except DecodeError as error:
            return self._dead_letter(kind, key, raw, now, str(error))
        try:
            loaded = self._load(message.account_id, state, now)
        except StoreError as error:
            if isinstance(message, ExecutionReport):
                raise  # never booked against a guessed state: retried once the shard is back
            return [Output(self._prefix + t.topic_for(refusal), t.encode(refusal))
                    for refusal in [_unavailable(message, now, error)]]
        if loaded is None:  # never opened: nothing is stored, so opening it later works
            refusal = _refused_unknown(message, now)
            return [Output(self._prefix + t.topic_for(refusal), t.encode(refusal))]
        market = self._market.context() if self._market else _ALL_OPEN
        forgotten = None
        if not isinstance(message, ExecutionReport) and \
                message.idempotency_key not in loaded.account.commands:
            forgotten = parts.forgotten(state.get, message.idempotency_key)
        account, outputs = decide(loaded.account, message, now, market, self._limits,
                                  forgotten)
        self._store(message.account_id, state, loaded, account)
        return [Output(self._prefix + t.topic_for(out), t.encode(out)) for out in outputs]

    def _dead_letter(self, kind: str, key: str | bytes | None, raw: bytes | None,
                     at: dt.datetime, error: str) -> list[Output]:
        """The record, never decided, to its topic's DLQ with the reason."""
        context = message_context()
        letter = t.dead_letter(context.topic, context.partition, context.offset, key, raw,
                               error, at)
        return [Output(self._prefix + t.dlq_name(kind), t.encode(letter))]

    def _require_account_partition(self, account_id: str, partition: int) -> None:
        """An account's records live on one partition, or two states of one account would
        each decide against half of its money: a record elsewhere (a producer that kept
        another partitioner) is never decided."""
        partitions = self._account_partitions
        if partitions is None:
            return
        expected = account_partition(account_id, partitions)
        if partition != expected:
            raise DecodeError(
                f"record on partition {partition}, but account {account_id!r} lives on "
                f"partition {expected} of {partitions}: partition by murmur2 of the key "
                "(librdkafka partitioner=murmur2_random, the Java client's default)")

    def _load(self, account_id: str, state: State, now: dt.datetime) -> _Loaded | None:
        """The account's state; None for an account that was never opened."""
        meta = state.get(parts.META_KEY)
        if meta is not None:
            stored = self._cache.get(account_id, meta)
            if stored is None:
                stored = parts.load(meta, state.get)
                # `decide` checks what each message changes; a state from the store (a
                # restart, a rebalance, changelog recovery) gets the whole check once.
                check_invariants(stored.state)
            return _Loaded(stored.state, stored, single_value=False)
        single = state.get(parts.SINGLE_VALUE_KEY)
        if single is not None:
            account = state_from_bytes(single)
            check_invariants(account)
            return _Loaded(account, None, single_value=True)
        # No stream state: a new account, or state the broker lost (the embedded broker keeps
        # topics in memory only): the account's shard, the durable record, decides.
        loader = self._snapshot_loader
        if loader is None:
            return _Loaded(AccountState.empty(account_id), None, single_value=False)
        snapshot = loader(account_id)
        if snapshot is None and not self._is_open(account_id):
            return None
        account = state_or_hydrated(None, lambda: snapshot, account_id, now)
        if snapshot is not None:  # keys the rebuilt state does not keep still name commands
            records = forgotten_records(snapshot, account)
            for key, value in parts.forgotten_sets(records, list(records)):
                state.set(key, value)
        return _Loaded(account, None, single_value=False)

    def _store(self, account_id: str, state: State, loaded: _Loaded,
               account: AccountState) -> None:
        """Write the parts of `account` that changed (all of them when none is stored yet)."""
        stamp = self._writer_id + next(self._write_count).to_bytes(8, "big")
        plan = parts.plan(loaded.stored, account, stamp)
        if plan is None:  # the store holds the account as it is: nothing to write
            assert loaded.stored is not None, "an account never stored in parts not written"
            self._cache.put(account_id, loaded.stored.meta_bytes, loaded.stored)
            return
        for key, value in plan.sets:
            state.set(key, value)
        for key in plan.deletes:
            state.delete(key)
        if loaded.single_value:
            state.delete(parts.SINGLE_VALUE_KEY)
        self._cache.put(account_id, plan.stored.meta_bytes, plan.stored)


SnapshotLoader = Callable[[str], AccountSnapshot | None]


def shard_account_check(shard_dsns: tuple[str, ...],
                        partitions_per_shard: int) -> Callable[[str], bool]:
    router = ShardRouter(len(shard_dsns), partitions_per_shard)

    def is_open(account_id: str) -> bool:
        try:
            return account_is_open(shard_dsns[router.shard_of_account(account_id)], account_id)
        except psycopg.Error as error:
            raise ShardUnavailable(f"shard of {account_id}: {error}") from error

    return is_open


def _refused_unknown(message: Any, now: dt.datetime) -> CommandRejected | Alert:
    """A command for an account that was never opened is refused; an execution report for one
    (no order of ours can have led to it) is raised to an operator, not booked."""
    if isinstance(message, ExecutionReport):
        return Alert(event_id=f"alert:{message.account_id}:{message.exec_id}:unknown_account",
                     account_id=message.account_id, code=Reason.UNKNOWN_ACCOUNT,
                     severity="critical", occurred_at=now, order_id=message.order_id,
                     exec_id=message.exec_id,
                     detail=f"execution {message.exec_id} for an account never opened")
    return CommandRejected(
        event_id=f"cmd:{message.account_id}:{message.idempotency_key}:unknown_account",
        account_id=message.account_id, idempotency_key=message.idempotency_key,
        command_type=type(message).__struct_config__.tag, reason=Reason.UNKNOWN_ACCOUNT,
        occurred_at=now, detail="no such account: open it with POST /v1/accounts first")


def _unavailable(command: Any, now: dt.datetime, error: Exception) -> CommandRejected:
    """A command for an account whose shard cannot be read, while the stream has no state for
    it: refused with a stable reason, nothing stored; other accounts go on."""
    return CommandRejected(
        event_id=f"cmd:{command.account_id}:{command.idempotency_key}:account_unavailable",
        account_id=command.account_id, idempotency_key=command.idempotency_key,
        command_type=type(command).__struct_config__.tag, reason="account_unavailable",
        occurred_at=now, detail=f"the account's shard cannot be read: {error}")


def shard_snapshot_loader(shard_dsns: tuple[str, ...],
                          partitions_per_shard: int) -> SnapshotLoader:
    router = ShardRouter(len(shard_dsns), partitions_per_shard)

    def load(account_id: str) -> AccountSnapshot | None:
        dsn = shard_dsns[router.shard_of_account(account_id)]
        try:
            return load_account_snapshot(dsn, account_id)
        except psycopg.Error as error:
            raise ShardUnavailable(f"shard of {account_id}: {error}") from error

    return load


def build_accounts(app: Application, topics: AccountTopics, step: AccountStep) -> None:
    commands = app.dataframe(topics.commands)
    stream = commands.concat(app.dataframe(topics.executions))
    stream = stream.apply(step, stateful=True, expand=True, metadata=True)
    stream.to_topic(topics.select)


# The account topology's group standing still behind its input this long is wedged (seen on
# the embedded broker: a member idle in `consume` while orders.commands grew, for good).
STALL_S = 60.0
WATCH_INTERVAL_S = 10.0
STOP_GRACE_S = 30.0


class GroupStallWatch:
    """A thread that samples one consumer group's committed offsets against its inputs' ends
    every `interval_s` and calls `on_stuck` once when the group stood still behind its input
    for `stall_s` (state.liveness judges). A gap in its own sampling (the process was frozen)
    clears what it saw: it judges afresh."""

    def __init__(self, sampler: Callable[[], Any], group: str,
                 on_stuck: Callable[[GroupStatus], None], stall_s: float = STALL_S,
                 interval_s: float = WATCH_INTERVAL_S) -> None:
        self._make_sampler = sampler
        self._sampler: Any = None
        self._group = group
        self._on_stuck = on_stuck
        self._interval_s = interval_s
        self._tracker = Tracker(stall_s=stall_s)
        self._checked_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="group-stall-watch",
                                        daemon=True)
        self.fired: GroupStatus | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check(time.monotonic())
            except Exception as error:  # noqa: BLE001 - the broker did not answer: next time
                log.warning("stall watch: cannot sample %s: %s", self._group, error)

    def check(self, now_s: float) -> None:
        if self._checked_s is not None and now_s - self._checked_s > 3 * self._interval_s:
            self._tracker.history.clear()
        self._checked_s = now_s
        if self._sampler is None:
            self._sampler = self._make_sampler()
        sample = self._sampler.sample(now_s).get(self._group)
        if sample is None or self.fired is not None:
            return
        self._tracker.add(self._group, sample)
        [status] = self._tracker.statuses()
        if status.stuck:
            self.fired = status
            self._on_stuck(status)


def _stop_for_restart(app: Application) -> None:
    """Stop the application (the supervisor starts the process again, which rejoins the group
    afresh and measures its fetch wait again); if its loop does not come back to stop, exit
    the process."""
    app.stop()
    timer = threading.Timer(STOP_GRACE_S, _exit_unstopped)
    timer.daemon = True
    timer.start()


def _stop_wedged(app: Application) -> Callable[[GroupStatus], None]:
    def stop(status: GroupStatus) -> None:
        log.critical("account topology wedged: %s; stopping for a restart", status.to_builtins())
        _stop_for_restart(app)

    return stop


def _stop_to_widen(app: Application, wait_ms: int) -> Callable[[float], None]:
    def stop(listing_ms: float) -> None:
        log.warning("the broker lists an input partition in %.0f ms, more than %d %% of the "
                    "%d ms fetch wait: stopping to start again with a wider one", listing_ms,
                    LISTING_WASTES * 100, wait_ms)
        _stop_for_restart(app)

    return stop


def _exit_unstopped() -> None:
    log.critical("account topology did not stop in %.0f s; exiting", STOP_GRACE_S)
    logging.shutdown()
    os._exit(70)


def risk_limits(config: AccountTopologyConfig) -> RiskLimits:
    return RiskLimits(
        market_collar_pct=config.market_collar_pct,
        notional_usd_max=config.notional_usd_max,
        quantity_max=config.quantity_max,
        order_rate_per_s_max=config.order_rate_per_s_max,
        quote_age_ms_max=config.quote_age_ms_max,
    )


def _store_dumps(value: Any) -> bytes:
    """Account parts are stored as the bytes `state.account_parts` made; anything else (keys,
    Quix's own records) as Quix's JSON."""
    return value if isinstance(value, bytes) else json_dumps(value)


def _store_loads(raw: bytes) -> bytes:
    return raw


FENCE_TIMEOUT_S = 10.0


def fence_transactional_id(kafka: KafkaSettings, transactional_id: str) -> None:
    """Abort what a dead producer under `transactional_id` left open: a producer initialised
    under the same id bumps the id's epoch, and the broker aborts the old epoch's transaction
    (it would otherwise hold the last stable offset of every partition it wrote to)."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "transactional.id": transactional_id, **kafka.extra})
    producer.init_transactions(FENCE_TIMEOUT_S)


class PeerFence:
    """Fences the transactional id of each process of the group that is down (its member lock
    is free), holding its lock meanwhile so that a restarting incarnation waits for it."""

    def __init__(self, config: AccountTopologyConfig) -> None:
        self._config = config

    def fence_down_peers(self) -> list[str]:
        fenced = []
        for peer_dir in self._config.peer_state_dirs:
            with peer_down(peer_dir) as down:
                member = read_member_id(peer_dir, self._config.consumer_group)
                if not down or member is None:
                    continue
                try:
                    fence_transactional_id(self._config.kafka, member)
                except KafkaException as error:
                    log.warning("cannot fence %s, a process of the group that is down: %s",
                                member, error)
                    continue
                fenced.append(member)
        return fenced


class AccountsApplication(Application):
    """Quix's application, told of each assignment: it logs what the member holds, and when
    the member gains partitions it first fences the group's processes that are down (their
    open transaction would hold back those partitions' outputs and changelog)."""

    def __init__(self, *, member: str, commands_topic: str, fence: PeerFence | None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._member = member
        self._commands_topic = commands_topic
        self._fence = fence
        self._held: set[int] = set()

    def _on_assign(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        partitions = {tp.partition for tp in topic_partitions
                      if tp.topic == self._commands_topic}
        if partitions:
            gained = sorted(partitions - self._held)
            fenced = self._fence.fence_down_peers() if gained and self._fence else []
            log.info("account topology member %s: assigned partitions %s (gained %s)%s",
                     self._member, sorted(partitions), gained,
                     f"; fenced processes that are down: {fenced}" if fenced else "")
            self._held = partitions
        super()._on_assign(consumer, topic_partitions)

    def _on_revoke(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        self._log_dropped("revoked", topic_partitions)
        super()._on_revoke(consumer, topic_partitions)

    def _on_lost(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        self._log_dropped("lost", topic_partitions)
        super()._on_lost(consumer, topic_partitions)

    def _log_dropped(self, how: str, topic_partitions: list[TopicPartition]) -> None:
        partitions = sorted({tp.partition for tp in topic_partitions
                             if tp.topic == self._commands_topic})
        if partitions:
            log.info("account topology member %s: partitions %s %s", self._member,
                     partitions, how)


def member_id(config: AccountTopologyConfig) -> str:
    """This process's member id (state.member_id), or a name for a member without a state
    dir (tests)."""
    if config.state_dir:
        return stable_member_id(config.state_dir, config.consumer_group)
    return f"{config.consumer_group}-{os.getpid()}"


def exactly_once_linger_ms(commit_interval_s: float) -> int:
    """How long the producer may hold an output under exactly-once: until the checkpoint.
    Nothing it writes is readable before its transaction commits, and Quix flushes the
    producer before every commit, so holding records until then delays nothing, and each
    checkpoint writes one batch per partition instead of one per 5 ms (librdkafka's default):
    measured at saturation, 355 produce requests/s became 197 and the broker's CPU per order
    fell a fifth (issue 15). Each batch is also one object the embedded broker lists on every
    fetch of its partition (issue 11)."""
    return max(5, round(commit_interval_s * 1000))


def input_topics(config: AccountTopologyConfig) -> list[str]:
    prefix = config.kafka.topic_prefix
    return [prefix + t.Topic.ORDERS_COMMANDS, prefix + t.Topic.EXECUTIONS]


def fetch_wait_ms(config: AccountTopologyConfig) -> int:
    """Measured: a broker that lists a partition's batches on each fetch starves a wait
    shorter than that listing (state.fetch_wait; issue 11)."""
    kafka = config.kafka
    return measured_wait_ms(kafka.bootstrap_servers, input_topics(config),
                            kafka.fetch_wait_ms_max, kafka.extra)


def create_application(config: AccountTopologyConfig, wait_ms: int | None = None
                       ) -> Application:
    kafka = config.kafka
    consumer_extra: dict[str, Any] = {
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(kafka.session_timeout_ms // 3, 100),
        "fetch.wait.max.ms": fetch_wait_ms(config) if wait_ms is None else wait_ms}
    producer_extra: dict[str, Any] = {"partitioner": "murmur2_random"}
    if config.processing_guarantee == "exactly-once":
        producer_extra["linger.ms"] = exactly_once_linger_ms(config.commit_interval_s)
    member = member_id(config)
    if config.state_dir:
        if config.static_membership:
            consumer_extra["group.instance.id"] = member
        if config.processing_guarantee == "exactly-once":
            producer_extra["transactional.id"] = member
    fence = PeerFence(config) if config.peer_state_dirs and \
        config.processing_guarantee == "exactly-once" else None
    return AccountsApplication(
        member=member,
        commands_topic=kafka.topic_prefix + t.Topic.ORDERS_COMMANDS,
        fence=fence,
        broker_address=kafka.bootstrap_servers,
        consumer_group=config.consumer_group,
        auto_offset_reset="earliest",
        processing_guarantee=config.processing_guarantee,  # type: ignore[arg-type]
        commit_interval=config.commit_interval_s,
        # Records of two topics wait in Quix's time-alignment buffer until the sibling
        # partition is known idle; a long poll would hold them for up to that long.
        consumer_poll_timeout=config.poll_timeout_s,
        state_dir=config.state_dir,
        rocksdb_options=RocksDBOptions(dumps=_store_dumps, loads=_store_loads),
        consumer_extra_config={**consumer_extra, **kafka.extra},
        producer_extra_config={**producer_extra, **kafka.extra},
        auto_create_topics=True,
        loglevel="WARNING",
    )


def run(config: AccountTopologyConfig) -> None:
    """Run the account topology until SIGTERM/SIGINT (Quix handles both)."""
    # Held for the process's life: siblings on this data dir tell by it that it is alive.
    lock = MemberLock(config.state_dir) if config.state_dir else None
    if config.state_dir and config.processing_guarantee == "exactly-once":
        # What the previous incarnation left open is aborted now, not at the first
        # transaction after the group assigned partitions: readers of its partitions wait
        # behind it meanwhile. (Quix's own producer does it at its first transaction anyway.)
        try:
            fence_transactional_id(config.kafka, member_id(config))
        except KafkaException as error:
            log.warning("could not abort what this member's previous run left open: %s", error)
    wait_ms = fetch_wait_ms(config)
    app = create_application(config, wait_ms)
    market = MarketStatusView(config.kafka)
    market.start()
    try:
        topics = declare_topics(app, config.kafka.topic_prefix, config.account_partitions)
        loader = is_open = None
        if config.shard_dsns:
            loader = shard_snapshot_loader(config.shard_dsns, config.partitions_per_shard)
            is_open = shard_account_check(config.shard_dsns, config.partitions_per_shard)
        step = AccountStep(config.kafka.topic_prefix, market, risk_limits(config),
                           snapshot_loader=loader, account_partitions=config.account_partitions,
                           account_is_open=is_open)
        build_accounts(app, topics, step)
        watch = GroupStallWatch(
            lambda: GroupSampler(config.kafka.bootstrap_servers, [config.consumer_group],
                                 extra=config.kafka.extra),
            config.consumer_group, _stop_wedged(app))
        watch.start()
        # Quix fixes the consumer's fetch wait at start: outgrown, it is widened by a restart.
        listings = ListingWatch(
            functools.partial(probe_consumer, config.kafka.bootstrap_servers, config.kafka.extra),
            input_topics(config), wait_ms, _stop_to_widen(app, wait_ms))
        listings.start()
        try:
            app.run()
        finally:
            watch.stop()
            listings.stop()
    finally:
        market.stop()
        if lock is not None:
            lock.release()
