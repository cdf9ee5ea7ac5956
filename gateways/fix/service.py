"""The FIX execution gateway process: `orders.route` -> FIX 4.4 initiator -> `executions`.

Threads: the main thread consumes `orders.route`, sends requests, runs the stuck-order and
breaker checks and writes the durable record; the QuickFIX thread turns every inbound report
into an `executions` record (produced straight away, for latency) and updates the in-memory
bookkeeping under one lock.

Delivery: an inbound sequence number counts as delivered once the record it produced is
acknowledged by the broker; on restart the session expects the first undelivered one, so the
market maker resends it (ResendRequest) and nothing received-but-unproduced is lost. ExecIDs
already forwarded are kept durable and dropped when they come again (PossDup resends,
duplicate reports). A crash after the broker acknowledged a record and before its ExecID was
committed here is covered at the next start: the gateway reads `executions` from the offsets
the store committed to the end before logging on (gateways.fix.recovery). The account topology
still treats exec_id as idempotent (by contract), a second line for a record a crash left
in flight and the broker appended after that read.

Durable executions and orders in flight at a reset (gateways.fix.durable): the store keeps
each forwarded report's payload until its shard shows it booked; a bounded pass every
`booking_check_interval_ms` (shard reads and the broker epoch read on a worker thread, store
writes and records on the main thread) drops what is booked and forwards again what is not,
and ends the orders open in the shards that no market maker ever got. Requests are recorded
as sent before they go out (one store transaction per batch of route records), so "never
sent" is exact; a replayed route record of a ClOrdID already sent (or ended) is not sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import quickfix as fix
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage

from gateways.exceptions import GatewayError
from gateways.fix import fixmsg
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig
from gateways.fix.durable import (
    OrderAction,
    StoredExecution,
    alert_due,
    concluded_report,
    is_settled,
    may_forward_again,
    not_routed_report,
    reconcile_order,
    reforward_due,
    status_conclusion,
)
from gateways.fix.recovery import read_tail
from gateways.fix.runtime import stop_on_signals
from gateways.fix.session import (
    SessionSpec,
    initiator_settings_text,
    load_settings,
    session_comp_ids,
    session_key,
)
from gateways.fix.store import Forwarded, GatewayStore
from gateways.fix.tracking import (
    TERMINAL_EXEC_TYPES,
    CircuitBreaker,
    ExecutionStats,
    OpenOrder,
    Router,
    SeqTracker,
    StuckAction,
    price_improvement,
    stuck_action,
)
from state.epoch import BrokerEpoch, read_epoch_record
from state.exceptions import DecodeError, EpochUnavailable, ShardUnavailable
from state.execution_booking import BookingReader, ExecutionRef, ShardOrder
from state.fetch_wait import WideningReader, probe_consumer
from state.ids import cl_ord_id_for, order_id_of_cl_ord_id
from state.member_id import stable_member_id
from state.messages import (
    Alert,
    ExecType,
    ExecutionReport,
    RouteCancel,
    RouteNewOrder,
    RouteReplace,
    RouteRequest,
    RouteStatusRequest,
)
from state.topics import Topic, dead_letter, decode, dlq_name, encode

log = logging.getLogger(__name__)

TICK_S = 0.002  # how long the main loop waits for route records before its housekeeping
HOUSEKEEPING_S = 0.1
PERSIST_S = 0.01  # how often the main loop commits the store (and then the route offsets)
PRUNE_EVERY_S = 3600.0
DAY_MS = 86_400_000
# BusinessRejectReason (380) 3: unsupported message type.
UNSUPPORTED_MESSAGE_TYPE = "3"


def run(config: FixGatewayConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    serve(config, stop_on_signals())


def serve(config: FixGatewayConfig, stop: threading.Event,
          ready: threading.Event | None = None) -> None:
    """Serve until `stop` is set (for callers that own the signals)."""
    gateway = FixGateway(config)
    gateway.start()
    if ready is not None:
        ready.set()
    try:
        gateway.loop(stop)
    finally:
        gateway.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class GatewayApplication(fix.Application):  # type: ignore[misc]
    """QuickFIX callbacks, handed to the gateway; nothing may raise into the engine."""

    def __init__(self, gateway: FixGateway) -> None:
        super().__init__()
        self.gateway = gateway

    def onCreate(self, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def onLogon(self, session_id: fix.SessionID) -> None:  # noqa: N802
        self.gateway.on_logon(session_key(session_id))

    def onLogout(self, session_id: fix.SessionID) -> None:  # noqa: N802
        self.gateway.on_logout(session_key(session_id))

    def toAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        if fixmsg.msg_type(message) == fixmsg.MSG_REJECT:
            # The engine refused an inbound message (malformed, invalid field, bad
            # sequence...): say which and why in our log, not only in the FIX event log.
            self.gateway.guarded(self.gateway.on_own_session_reject, message, session_id)

    def fromAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        if fixmsg.msg_type(message) == fixmsg.MSG_REJECT:
            self.gateway.guarded(self.gateway.on_session_reject, message, session_id)

    def toApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        self.gateway.guarded(self.gateway.on_outbound, message, session_id)

    def fromApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        self.gateway.guarded(self.gateway.on_inbound, message, session_id)


class FixGateway:
    def __init__(self, config: FixGatewayConfig) -> None:
        self.config = config
        self.store_dir = Path(config.store_dir)
        self.store = GatewayStore(self.store_dir)
        self.lock = threading.RLock()
        # Durable state, loaded; the dirty parts are written by the main thread.
        self.forwarded = self.store.forwarded_exec_ids()
        self.sent = self.store.sent_cl_ord_ids()
        self.routed_orders = {order_id_of_cl_ord_id(c) for c in self.sent}
        self.orders = self.store.open_orders()
        self.stats = self.store.stats()
        self.retention_ms = config.closed_order_retention_days * DAY_MS
        delivered = self.store.delivered_seqs()
        self._persisted_delivered: dict[str, int] = {}
        self._dirty_exec_ids: list[Forwarded] = []
        self._dirty_reforwarded: list[tuple[str, str | None]] = []
        self._dirty_sent: list[tuple[str, str]] = []
        self._dirty_orders: dict[str, OpenOrder] = {}
        self._dirty_stats = False
        self._dirty_tail: dict[int, int] = {}  # executions partition -> next offset acked
        self.fatal: str | None = None
        # Requests of a batch of route records wait here until the store says they were sent.
        self._outbox: list[tuple[fix.Message, str]] | None = None
        # Durable executions and orders in flight (gateways.fix.durable).
        self.epoch: str | None = None  # the broker epoch reports are forwarded under
        self.epoch_started_at: dt.datetime | None = None
        self.booking = (BookingReader(config.shard_dsns, config.partitions_per_shard)
                        if config.shard_dsns else None)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fix-booking")
        self._pass: Future[Findings] | None = None
        self._next_pass = 0.0
        self._next_epoch_read = 0.0
        self._next_open_orders = 0.0
        self._watching_since = utc_now()
        # Sessions.
        self.specs: dict[str, SessionSpec] = {}
        self.mm_of_session: dict[str, str] = {}
        sessions_by_mm: dict[str, list[str]] = {}
        for mm in config.market_makers:
            for spec in _session_specs(mm):
                self.specs[spec.key] = spec
                self.mm_of_session[spec.key] = mm.name
                sessions_by_mm.setdefault(mm.name, []).append(spec.key)
            self.stats.setdefault(mm.name, ExecutionStats())
        self.session_ids = {key: fix.SessionID(s.begin_string, s.sender_comp_id,
                                               s.target_comp_id)
                            for key, s in self.specs.items()}
        self.trackers = {key: SeqTracker(delivered.get(key, 0)) for key in self.specs}
        self.breakers = {mm.name: CircuitBreaker(config.breaker_timeout_ms)
                         for mm in config.market_makers}
        self.router = Router(config.routing_policy, sessions_by_mm)
        # Per session, the open orders awaiting an answer to a request (the send window).
        self.in_flight: dict[str, set[str]] = {key: set() for key in self.specs}
        for open_order in self.orders.values():
            if open_order.awaiting_since_ms is not None and open_order.stuck_stage < 3 \
                    and open_order.session in self.in_flight:
                self.in_flight[open_order.session].add(open_order.order_id)
        self.logged_on: set[str] = set()
        self._logons: list[str] = []
        # Per session, since when it is down: orders sent after that wait in QuickFIX's store
        # and go out at logon, so only older ones are asked about then.
        self._down_since_ms = dict.fromkeys(self.specs, now_ms())
        self._outbound: dict[tuple[str, int], tuple[str, str]] = {}
        self._cancel_attempts: dict[str, int] = {}
        # Inbound (session, seq) whose executions record the broker has not acknowledged.
        self._awaiting_delivery: set[tuple[str, int]] = set()
        # Kafka.
        prefix = config.topic_prefix
        self.route_topic = prefix + Topic.ORDERS_ROUTE
        self.executions_topic = prefix + Topic.EXECUTIONS
        self.events_topic = prefix + Topic.ORDERS_EVENTS
        self.producer = Producer({
            "bootstrap.servers": config.bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 1,
            "acks": "all",
        })
        # Starts at the configured wait and widens when the broker starves it (issue 11).
        self.route_reader = WideningReader(
            self.route_topic, self._route_consumer, config.route_fetch_wait_ms, commit=True,
            probe=functools.partial(probe_consumer, config.bootstrap_servers))
        settings = load_settings(
            initiator_settings_text(self.specs.values(), self.store_dir, config.heartbeat_s,
                                    config.validate_messages),
            self.store_dir / "gateway.cfg")
        self.app = GatewayApplication(self)
        # The engine keeps raw pointers to these: they live as long as the initiator.
        self.settings = settings
        self.store_factory = fix.FileStoreFactory(settings)
        self.log_factory = fix.FileLogFactory(settings)
        self.initiator = fix.SocketInitiator(self.app, self.store_factory, settings,
                                             self.log_factory)
        self._resume_from_delivered(delivered)
        self.prune(now_ms())
        self._next_prune = time.monotonic() + PRUNE_EVERY_S

    @property
    def consumer(self) -> Consumer:
        return self.route_reader.consumer

    def _route_consumer(self, wait_ms: int) -> Consumer:
        group = self.config.topic_prefix + self.config.consumer_group
        return Consumer({
            "bootstrap.servers": self.config.bootstrap_servers,
            "group.id": group,
            "session.timeout.ms": self.config.session_timeout_ms,
            # librdkafka beats every 3 s by default: a 3 s session would lapse between beats.
            "heartbeat.interval.ms": max(self.config.session_timeout_ms // 3, 100),
            # A restarted gateway is the same static member (state.member_id says why).
            "group.instance.id": stable_member_id(str(self.store_dir), group),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 200,
            # The broker answers a fetch when data arrives or after this wait (or, on Tansu,
            # only after it): the default (500 ms) would put that much on an order's way out.
            "fetch.wait.max.ms": wait_ms,
        })

    def _route_starts(self, partitions: list[int]) -> dict[tuple[str, int], int]:
        """Where reading `orders.route` resumes: the group's committed offset, else the start
        of the partition (what auto.offset.reset=earliest would do)."""
        wanted = [TopicPartition(self.route_topic, partition) for partition in partitions]
        starts = {}
        for tp in self.consumer.committed(wanted, timeout=10):
            if tp.offset < 0:
                tp.offset = self.consumer.get_watermark_offsets(tp, timeout=10)[0]
            starts[(tp.topic, tp.partition)] = tp.offset
        return starts

    def _resume_from_delivered(self, delivered: dict[str, int]) -> None:
        """Expect the first inbound message not yet on the topic, so the market maker
        resends whatever a crash caught between FIX receipt and broker acknowledgement."""
        for key, session_id in self.session_ids.items():
            session = fix.Session.lookupSession(session_id)
            expected = session.getExpectedTargetNum()
            resume = delivered.get(key, 0) + 1
            if resume < expected:
                log.warning("session %s: resuming inbound at %d (store had %d)", key, resume,
                            expected)
                session.setNextTargetMsgSeqNum(resume)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Every partition, assigned rather than subscribed: a FIX session is a singleton (one
        # logon per CompID pair), so one gateway owns the whole topic and a group rebalance
        # could only stall orders (on Tansu a missed heartbeat under load held orders back
        # for seconds). Offsets are still committed under the consumer group's name.
        metadata = self.consumer.list_topics(self.route_topic, timeout=10).topics
        partitions = metadata[self.route_topic].partitions
        if not partitions:
            raise GatewayError(f"topic {self.route_topic} does not exist")
        self.route_reader.assign(self._route_starts(sorted(partitions)))
        self._read_epoch_now()
        self._recover_forwarded()
        self.initiator.start()
        log.info("FIX gateway started: %s", ", ".join(self.specs))

    def _recover_forwarded(self) -> None:
        """Count as forwarded what reached `executions` after the store's last commit (a
        kill -9 between the broker's ack and that commit), before any session resends it."""
        stored_epoch = self.store.executions_tail_epoch()
        recreated = (stored_epoch is not None and self.epoch is not None
                     and stored_epoch != self.epoch)
        if recreated:
            log.warning("%s offsets of the store count in broker epoch %s, the broker is at "
                        "%s: the topic is another log, read from its beginning",
                        self.executions_topic, stored_epoch, self.epoch)
        tail = read_tail(self.config.bootstrap_servers, self.executions_topic,
                         self.store.executions_tail(), self.forwarded, recreated=recreated)
        if tail.reset:
            log.warning("%s partitions %s were recreated since the store's offsets (a broker "
                        "that forgot its topics): read from their beginning",
                        self.executions_topic, sorted(tail.reset))
        unknown = sorted(tail.exec_ids - self.forwarded)
        if unknown:
            log.warning("%d ExecIDs found on %s beyond the store's record: kept as forwarded",
                        len(unknown), self.executions_topic)
        self.forwarded |= tail.exec_ids
        found: list[str | Forwarded] = []
        for exec_id in unknown:
            kept = self._forwarded_from_payload(tail.payloads.get(exec_id))
            found.append(kept if kept is not None else exec_id)
        self.store.restart_tail(tail.next_offsets, found, now_ms(), self.epoch)

    def _forwarded_from_payload(self, payload: bytes | None) -> Forwarded | None:
        """A report read back from `executions`, kept like one forwarded now."""
        try:
            report = decode(Topic.EXECUTIONS, payload)
        except DecodeError:
            return None
        if not isinstance(report, ExecutionReport) or payload is None:
            return None
        return Forwarded(report.exec_id, report.order_id, report.account_id, report.exec_type,
                         report.market_maker, payload, self.epoch)

    def _read_epoch_now(self) -> None:
        """The broker's epoch at start (None when it has none: reports are then re-checked
        by age only, and the next read that finds one forwards them again)."""
        try:
            record = read_epoch_record(self.config.bootstrap_servers, self.config.topic_prefix)
        except EpochUnavailable as error:
            log.warning("broker epoch not readable at start: %s", error)
            return
        self._adopt_epoch(record)

    def _adopt_epoch(self, record: BrokerEpoch | None) -> bool:
        """Take the broker's epoch; True when it is another one than the gateway had."""
        if record is None or record.epoch == self.epoch:
            return False
        previous, self.epoch = self.epoch, record.epoch
        self.epoch_started_at = record.created_at
        log.warning("broker epoch %s (since %s; was %s)", record.epoch,
                    record.created_at.isoformat(), previous)
        return previous is not None

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self.initiator.stop()
        self.producer.flush(10)
        self.producer.poll(0)
        self._persist(with_stats=True)  # a clean stop keeps every best-execution figure
        self.consumer.close()
        self.store.close()
        log.info("FIX gateway stopped")

    def loop(self, stop: threading.Event) -> None:
        next_housekeeping = 0.0
        next_persist = 0.0
        handled: list[KafkaMessage] = []  # route records whose offsets wait for the store
        while not stop.is_set():
            room = self._window_room()
            if room:
                records = self.consumer.consume(num_messages=min(200, room), timeout=TICK_S)
                self._handle_route_batch(records)
                handled += records
                self.route_reader.after_poll(bool(records))
            else:
                time.sleep(TICK_S)  # every window full: the backlog waits in Kafka
            self.producer.poll(0)
            # One store transaction every PERSIST_S: what was sent (before its offsets are
            # stored) and the ExecIDs the broker acknowledged. An order's row changes three
            # times in a few ms (routed, acked, filled): written once per interval, it is
            # mostly written once. A crash inside the interval re-reads those route records
            # (a resent ClOrdID is refused by the market maker as a duplicate) and leaves
            # ExecIDs that the restart reads back from `executions` (`_recover_forwarded`).
            if time.monotonic() >= next_persist:
                self._persist()
                self._store_offsets(handled)
                handled = []
                next_persist = time.monotonic() + PERSIST_S
            if self.fatal:
                raise GatewayError(self.fatal)
            if time.monotonic() >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        self._persist()  # a clean stop leaves nothing handled to read again
        self._store_offsets(handled)

    def _window_room(self) -> int:
        """How many more orders the sessions' send windows take now."""
        limit = self.config.max_in_flight_per_session
        with self.lock:
            return sum(max(0, limit - len(orders)) for orders in self.in_flight.values())

    def _full_sessions(self) -> set[str]:
        limit = self.config.max_in_flight_per_session
        return {key for key, orders in self.in_flight.items() if len(orders) >= limit}

    def _await_answer(self, order: OpenOrder, now: int) -> None:
        """The order has a request out (lock held)."""
        if order.awaiting_since_ms is None:
            order.awaiting_since_ms = now
        self.in_flight[order.session].add(order.order_id)

    def guarded(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception as error:  # noqa: BLE001 - never raise into the FIX engine
            log.exception("FIX callback failed")
            self.fatal = self.fatal or f"FIX callback failed: {error!r}"

    # ---- orders.route -> FIX -------------------------------------------------------------

    def _handle_route_batch(self, records: list[KafkaMessage]) -> None:
        """Route a batch: what it sends is recorded as sent (one store transaction) before
        any of it goes out, so a ClOrdID the store does not hold was never sent."""
        self._outbox = []
        try:
            self._route_records(records)
            if self._outbox:
                self._persist()
        finally:
            outbox, self._outbox = self._outbox, None
        for message, session in outbox:
            self._send(message, session)

    def _route_records(self, records: list[KafkaMessage]) -> None:
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("orders.route consumer: %s", error)
                continue
            try:
                request = decode(Topic.ORDERS_ROUTE, record.value())
            except DecodeError as decode_error:
                self._dead_letter(record, str(decode_error))
            else:
                self._route(request)

    def _store_offsets(self, records: list[KafkaMessage]) -> None:
        """After `_persist`: the durable record of what was sent goes first."""
        for record in records:
            if record.error() is None:
                self.consumer.store_offsets(message=record)

    def _dead_letter(self, record: KafkaMessage, reason: str) -> None:
        letter = dead_letter(record.topic() or self.route_topic, record.partition() or 0,
                             record.offset() or 0, record.key(), record.value(), reason,
                             utc_now())
        self.producer.produce(self.config.topic_prefix + dlq_name(Topic.ORDERS_ROUTE),
                              key=record.key(), value=encode(letter))
        log.warning("orders.route offset %s to the DLQ: %s", record.offset(), reason)

    def _route(self, request: RouteRequest) -> None:
        if isinstance(request, RouteNewOrder):
            self._new_order(request)
        elif isinstance(request, RouteCancel):
            self._cancel(request)
        elif isinstance(request, RouteReplace):
            self._replace(request)
        else:
            self._status(request)

    def _new_order(self, order: RouteNewOrder) -> None:
        if order.cl_ord_id in self.sent or order.order_id in self.routed_orders:
            # A replay, or a command re-decided after a reset (same deterministic ClOrdID):
            # the market maker has it already (or it was ended here); never twice.
            log.info("order %s already sent; replayed route record ignored", order.cl_ord_id)
            return
        now = now_ms()
        routed_ms = int(order.routed_at.timestamp() * 1000)
        if now - routed_ms > self.retention_ms:
            # Older than what the store remembers: it may have been sent and forgotten, and
            # sending it again could execute it twice. An operator decides.
            self._alert(order.account_id, "stale_route", order.order_id, None,
                        f"route record of {order.order_id} from {order.routed_at.isoformat()} "
                        f"is older than the {self.config.closed_order_retention_days}-day "
                        f"retention; not sent", event_id=f"alert:stale_route:{order.order_id}")
            return
        with self.lock:
            open_breakers = {mm for mm, b in self.breakers.items() if b.is_open(now)}
            # A session with a full window counts as busy: others take the order if they can.
            mm, session = self.router.choose(set(self.logged_on) - self._full_sessions(),
                                             open_breakers, self.stats)
            open_order = OpenOrder(
                order_id=order.order_id, cl_ord_id=order.cl_ord_id,
                account_id=order.account_id, symbol=order.symbol, side=order.side,
                quantity=order.quantity, market_maker=mm, session=session,
                routed_at_ms=now, reference_price=order.reference_price)
            self._await_answer(open_order, now)
            self.orders[order.order_id] = open_order
            self.routed_orders.add(order.order_id)
            self._dirty_orders[order.order_id] = open_order
            self.stats[mm].orders += 1
            self._dirty_stats = True
            self.breakers[mm].on_request(now)
        self._send(fixmsg.new_order_single(order, utc_now()), session)
        self.sent.add(order.cl_ord_id)
        self._dirty_sent.append((order.cl_ord_id, "new"))

    def _cancel(self, cancel: RouteCancel) -> None:
        if cancel.cl_ord_id in self.sent:
            return
        order = self.orders.get(cancel.order_id)
        if order is None:
            self._reject_here(cancel)
            return
        # The market maker knows the order by its latest confirmed ClOrdID, which the
        # topology may not have seen yet.
        current = msgspec.structs.replace(cancel, orig_cl_ord_id=order.current_cl_ord_id)
        self._send_request(order, fixmsg.order_cancel_request(current, utc_now()))
        self.sent.add(cancel.cl_ord_id)
        self._dirty_sent.append((cancel.cl_ord_id, "cancel"))

    def _replace(self, replace: RouteReplace) -> None:
        if replace.cl_ord_id in self.sent:
            log.info("replace %s already sent; replayed route record ignored",
                     replace.cl_ord_id)
            return
        order = self.orders.get(replace.order_id)
        if order is None:
            self._reject_here(replace)
            return
        self._send_request(order, fixmsg.order_cancel_replace_request(
            replace, order.current_cl_ord_id, utc_now()))
        self.sent.add(replace.cl_ord_id)
        self._dirty_sent.append((replace.cl_ord_id, "replace"))

    def _status(self, request: RouteStatusRequest) -> None:
        order = self.orders.get(request.order_id)
        if order is None:
            log.info("status request for %s, which is not open here; ignored", request.order_id)
            return
        current = msgspec.structs.replace(request, cl_ord_id=order.current_cl_ord_id)
        self._send_request(order, fixmsg.order_status_request(current))

    def _send_request(self, order: OpenOrder, message: fix.Message) -> None:
        now = now_ms()
        with self.lock:
            self._await_answer(order, now)
            self._dirty_orders[order.order_id] = order
            self.breakers[order.market_maker].on_request(now)
        self._send(message, order.session)

    def _reject_here(self, request: RouteCancel | RouteReplace) -> None:
        """A cancel or replace for an order that is not open at any market maker: answered
        here, so the account topology is not left waiting."""
        report = ExecutionReport(
            account_id=request.account_id, exec_id=f"gateway:cxlrej:{request.cl_ord_id}",
            order_id=request.order_id, cl_ord_id=request.cl_ord_id,
            exec_type=ExecType.CANCEL_REJECTED, symbol=request.symbol, side=request.side,
            last_qty=Decimal(0), last_px=Decimal(0), cum_qty=Decimal(0),
            leaves_qty=Decimal(0), transact_time=utc_now(), market_maker="",
            orig_cl_ord_id=request.orig_cl_ord_id, text="order not open at the gateway")
        self._forward(report, None)

    def _send(self, message: fix.Message, session: str) -> None:
        if self._outbox is not None:
            self._outbox.append((message, session))  # sent once the store has it
            return
        # QuickFIX stores the message under its sequence number even when the session is
        # down, and sends it when the session is back: sendToTarget may say False then.
        if not fix.Session.sendToTarget(message, self.session_ids[session]):
            log.warning("session %s is down; %s queued in its store", session,
                        fixmsg.msg_type(message))

    # ---- FIX -> executions -------------------------------------------------------------

    def on_logon(self, key: str) -> None:
        log.info("logon %s", key)
        with self.lock:
            self.logged_on.add(key)
            self._logons.append(key)

    def on_logout(self, key: str) -> None:
        log.info("logout %s", key)
        with self.lock:
            self.logged_on.discard(key)
            self._down_since_ms[key] = now_ms()

    def on_outbound(self, message: fix.Message, session_id: fix.SessionID) -> None:
        """Remember which ClOrdID each outbound sequence number carried, so a session-level
        Reject (which names only the sequence number) can be tied to its order."""
        cl_ord_id = fixmsg.optional_field(message, fixmsg.CL_ORD_ID)
        if cl_ord_id is None:
            return
        key = (session_key(session_id), fixmsg.seq_num(message))
        with self.lock:
            self._outbound[key] = (cl_ord_id, fixmsg.msg_type(message))
            if len(self._outbound) > 100_000:
                for stale in list(self._outbound)[:50_000]:
                    del self._outbound[stale]

    def on_own_session_reject(self, message: fix.Message, session_id: fix.SessionID) -> None:
        log.warning("inbound message seq %s on %s rejected by the session: %s (tag %s, "
                    "SessionRejectReason %s)", fixmsg.optional_field(message, fixmsg.REF_SEQ_NUM),
                    session_key(session_id), fixmsg.optional_field(message, fixmsg.TEXT),
                    fixmsg.optional_field(message, fixmsg.REF_TAG_ID),
                    fixmsg.optional_field(message, fixmsg.SESSION_REJECT_REASON))

    def on_session_reject(self, message: fix.Message, session_id: fix.SessionID) -> None:
        key = session_key(session_id)
        ref_seq = fixmsg.optional_field(message, fixmsg.REF_SEQ_NUM)
        log.warning("session Reject on %s: %s", key, message.toString().replace("\x01", "|"))
        with self.lock:
            target = self._outbound.get((key, int(ref_seq))) if ref_seq else None
        if target is not None:
            self._request_rejected(message, key, *target)

    def on_inbound(self, message: fix.Message, session_id: fix.SessionID) -> None:
        key = session_key(session_id)
        seq = fixmsg.seq_num(message)
        tracker = self.trackers[key]
        with self.lock:
            tracker.begin(seq)
        try:
            self._inbound(message, key, seq)
        finally:
            with self.lock:
                if (key, seq) not in self._awaiting_delivery:
                    tracker.complete(seq)

    def _inbound(self, message: fix.Message, key: str, seq: int) -> None:
        kind = fixmsg.msg_type(message)
        mm = self.mm_of_session[key]
        if kind == fixmsg.MSG_BUSINESS_MESSAGE_REJECT:
            ref = fixmsg.optional_field(message, fixmsg.BUSINESS_REJECT_REF_ID)
            ref_type = fixmsg.optional_field(message, fixmsg.REF_MSG_TYPE) or ""
            log.warning("BusinessMessageReject on %s: %s", key,
                        message.toString().replace("\x01", "|"))
            if ref:
                self._request_rejected(message, key, ref, ref_type, seq)
            return
        if kind not in (fixmsg.MSG_EXECUTION_REPORT, fixmsg.MSG_ORDER_CANCEL_REJECT):
            log.warning("unexpected %s message on %s rejected (BusinessMessageReject): %s",
                        kind, key, message.toString().replace("\x01", "|"))
            fix.Session.sendToTarget(fixmsg.business_message_reject(
                message, UNSUPPORTED_MESSAGE_TYPE, f"unsupported message type {kind}"),
                self.session_ids[key])
            return
        if kind == fixmsg.MSG_EXECUTION_REPORT and self._seen_before(message, mm):
            return
        cl_ord_id = fixmsg.optional_field(message, fixmsg.CL_ORD_ID) or ""
        known = self._known(order_id_of_cl_ord_id(cl_ord_id))
        if kind == fixmsg.MSG_ORDER_CANCEL_REJECT and known is None and self._closed_here(
                cl_ord_id):
            # A cancel or replace that met the order's last fill: "too late" is the market
            # maker's true answer, and the order it names is already final here and in the
            # account, so nothing is left to refuse (not an unusable report).
            log.info("OrderCancelReject of %s on %s: its order is already closed here",
                     cl_ord_id, key)
            return
        received = utc_now()
        ord_status: str | None = None
        try:
            if kind == fixmsg.MSG_EXECUTION_REPORT:
                if (fixmsg.optional_field(message, fixmsg.ORD_REJ_REASON)
                        == fixmsg.ORD_REJ_DUPLICATE_ORDER):
                    # Our resend of an order the market maker already has: the original
                    # lives on, so this reject must not end it.
                    log.warning("duplicate-ClOrdID reject of %s on %s not forwarded",
                                cl_ord_id, key)
                    return
                report = fixmsg.execution_report_from_fix(message, mm, known, received)
                ord_status = fixmsg.optional_field(message, fixmsg.ORD_STATUS)
            else:
                report = fixmsg.cancel_reject_from_fix(message, mm, known, received)
        except fixmsg.FixFieldError as error:
            self._alert_unusable(message, key, str(error), seq)
            return
        self._accept_report(report, key, seq)
        if report.exec_type is ExecType.ORDER_STATUS:
            self._conclude_status(report, ord_status, key)

    def _seen_before(self, message: fix.Message, mm: str) -> bool:
        """A resend of a report already forwarded is quiet, even once its order is closed here
        (the report could no longer be read against its order: no alert for a duplicate)."""
        raw_exec_id = fixmsg.optional_field(message, fixmsg.EXEC_ID)
        if raw_exec_id is None:
            return False
        exec_id = fixmsg.exec_id_of(mm, raw_exec_id)
        with self.lock:
            seen = exec_id in self.forwarded
        if seen:
            log.info("duplicate ExecID %s dropped", exec_id)
        return seen

    def _conclude_status(self, status: ExecutionReport, ord_status: str | None,
                         key: str) -> None:
        """A status answer that says the order is over at the market maker (it does not know
        it, refused it, or cancelled it with every fill here) ends it here too."""
        with self.lock:
            order = self.orders.get(status.order_id)
            booked_cum_qty = order.cum_qty if order is not None else None
        if booked_cum_qty is None:
            return
        outcome = status_conclusion(ord_status, status.cum_qty, booked_cum_qty)
        if outcome is None:
            return
        exec_type, reason = outcome
        log.warning("order %s: %s answers OrdStatus %s: ended here (%s)", status.order_id,
                    status.market_maker, ord_status, reason)
        self._accept_report(concluded_report(status, exec_type, reason, booked_cum_qty),
                            key, None)

    def _request_rejected(self, message: fix.Message, key: str, cl_ord_id: str,
                          ref_type: str, seq: int | None = None) -> None:
        """A BusinessMessageReject or session Reject of one of our requests."""
        if ref_type == fixmsg.MSG_ORDER_STATUS_REQUEST:
            return  # nothing changes for the order; the stuck-order check asks again
        known = self._known(order_id_of_cl_ord_id(cl_ord_id))
        try:
            report = fixmsg.business_reject_from_fix(
                message, self.mm_of_session[key], known, cl_ord_id, utc_now(), key)
        except fixmsg.FixFieldError as error:
            self._alert_unusable(message, key, str(error), seq)
            return
        if ref_type in (fixmsg.MSG_ORDER_CANCEL_REQUEST,
                        fixmsg.MSG_ORDER_CANCEL_REPLACE_REQUEST):
            # A refused cancel or replace leaves the order as it was.
            report = replace_exec_type(report, ExecType.CANCEL_REJECTED)
        self._accept_report(report, key, seq)

    def _closed_here(self, cl_ord_id: str) -> bool:
        order_id = order_id_of_cl_ord_id(cl_ord_id)
        with self.lock:
            return order_id in self.routed_orders and order_id not in self.orders

    def _known(self, order_id: str) -> fixmsg.KnownOrder | None:
        order = self.orders.get(order_id)
        if order is None:
            return None
        return fixmsg.KnownOrder(order.account_id, order.symbol, order.side, order.quantity,
                                 order.cum_qty, order.current_cl_ord_id)

    def _accept_report(self, report: ExecutionReport, key: str, seq: int | None) -> None:
        with self.lock:
            if report.exec_id in self.forwarded:
                log.info("duplicate ExecID %s (poss_dup=%s) dropped", report.exec_id,
                         report.poss_dup)
                return
            self.forwarded.add(report.exec_id)
            self._book(report, key)
        if report.order_id not in self.routed_orders:
            self._alert(report.account_id, "unknown_order", report.order_id, report.exec_id,
                        f"execution report {report.exec_id} ({report.exec_type}) for an "
                        f"order this gateway never routed: {report.cl_ord_id}")
        self._forward(report, (key, seq) if seq is not None else None)

    def _book(self, report: ExecutionReport, key: str) -> None:
        """In-memory bookkeeping of a new report (lock held)."""
        mm = self.mm_of_session[key]
        self.breakers[mm].on_answer()
        order = self.orders.get(report.order_id)
        if order is None:
            return
        now = now_ms()
        order.awaiting_since_ms = None
        order.stuck_stage = 0
        self.in_flight[order.session].discard(order.order_id)
        stats = self.stats[order.market_maker]
        if report.exec_type is ExecType.TRADE:
            order.cum_qty += report.last_qty
            stats.filled_qty += report.last_qty
            if order.reference_price is not None:
                stats.improvement_usd += price_improvement(
                    order.side, order.reference_price, report.last_px, report.last_qty)
                stats.improved_qty += report.last_qty
        if report.exec_type is ExecType.REJECTED:
            stats.rejected += 1
        if report.exec_type is ExecType.REPLACED:
            order.on_replaced(report.cl_ord_id, report.cum_qty, report.leaves_qty)
        filled = order.cum_qty >= order.quantity
        if filled and report.exec_type is ExecType.TRADE:
            stats.filled += 1
            stats.fill_ms_total += now - order.routed_at_ms
            stats.fill_ms.append(now - order.routed_at_ms)
            del stats.fill_ms[:-1000]
        if filled or report.exec_type in TERMINAL_EXEC_TYPES:
            order.terminal = True
            order.closed_at_ms = now
            del self.orders[report.order_id]
        self._dirty_orders[order.order_id] = order
        self._dirty_stats = True

    def _forward(self, report: ExecutionReport, origin: tuple[str, int] | None) -> None:
        if origin is not None:
            with self.lock:
                self._awaiting_delivery.add(origin)

        value = encode(report)
        kept = Forwarded(report.exec_id, report.order_id, report.account_id, report.exec_type,
                         report.market_maker, value, self.epoch)

        def delivered(error: KafkaError | None, record: KafkaMessage) -> None:
            if error is not None:
                self.fatal = f"executions record {report.exec_id} not delivered: {error}"
                return
            with self.lock:
                self._dirty_exec_ids.append(kept)
                partition, next_offset = record.partition(), record.offset() + 1
                if next_offset > self._dirty_tail.get(partition, 0):
                    self._dirty_tail[partition] = next_offset
                if origin is not None:
                    self._awaiting_delivery.discard(origin)
                    self.trackers[origin[0]].complete(origin[1])

        self.producer.produce(self.executions_topic, key=report.account_id.encode(),
                              value=value, on_delivery=delivered)

    def _reforward(self, entry: StoredExecution) -> None:
        """The stored payload again, same key (the account topology drops a copy it booked
        by ExecID)."""
        epoch = self.epoch

        def delivered(error: KafkaError | None, record: KafkaMessage) -> None:
            if error is not None:
                self.fatal = f"executions record {entry.exec_id} not delivered again: {error}"
                return
            with self.lock:
                self._dirty_reforwarded.append((entry.exec_id, epoch))

        self.producer.produce(self.executions_topic, key=entry.account_id.encode(),
                              value=entry.payload, on_delivery=delivered)

    def _publish_own(self, report: ExecutionReport) -> None:
        """A report the gateway makes itself (deterministic ExecID), forwarded once."""
        with self.lock:
            if report.exec_id in self.forwarded:
                return
            self.forwarded.add(report.exec_id)
        self._forward(report, None)

    def _alert_unusable(self, message: fix.Message, key: str, reason: str,
                        seq: int | None) -> None:
        """A report we cannot turn into an `executions` record: an alert, never a crash.
        One for an order never routed here says so (unknown_order)."""
        account = fixmsg.optional_field(message, fixmsg.ACCOUNT) or "unknown"
        cl_ord_id = fixmsg.optional_field(message, fixmsg.CL_ORD_ID)
        order_id = order_id_of_cl_ord_id(cl_ord_id) if cl_ord_id else None
        code = ("unknown_order" if order_id is not None and order_id not in self.routed_orders
                else "unusable_report")
        exec_id = fixmsg.optional_field(message, fixmsg.EXEC_ID)
        mm = self.mm_of_session[key]
        self._alert(account, code, order_id, f"{mm}:{exec_id}" if exec_id else None,
                    f"{key} seq {seq}: {reason}: {message.toString().replace(chr(1), '|')}",
                    event_id=f"alert:{code}:{key}:{seq}" if seq else None)

    def _alert(self, account_id: str, code: str, order_id: str | None, exec_id: str | None,
               detail: str, event_id: str | None = None) -> None:
        now = utc_now()
        alert = Alert(event_id=event_id or f"alert:{code}:{exec_id or order_id or now_ms()}",
                      account_id=account_id, severity="critical", code=code,
                      detail=detail[:2000], occurred_at=now, order_id=order_id,
                      exec_id=exec_id)
        log.error("ALERT %s: %s", code, detail)
        self.producer.produce(self.events_topic, key=account_id.encode(), value=encode(alert))

    # ---- housekeeping ------------------------------------------------------------------

    def _housekeeping(self) -> None:
        with self.lock:
            logons, self._logons = self._logons, []
        for key in logons:
            self._reconcile(key)
        self._check_stuck()
        self._durable_pass()
        self._persist(with_stats=True)
        if time.monotonic() >= self._next_prune:
            self.prune(now_ms())
            self._next_prune = time.monotonic() + PRUNE_EVERY_S

    def _reconcile(self, key: str) -> None:
        """A session back on: ask the status of every order still open on it that was sent
        before it went down (or before this process started)."""
        with self.lock:
            down_since = self._down_since_ms.get(key, now_ms())
        for order in [o for o in list(self.orders.values())
                      if o.session == key and o.routed_at_ms < down_since]:
            self._ask_status(order)

    def _ask_status(self, order: OpenOrder) -> None:
        request = RouteStatusRequest(account_id=order.account_id, order_id=order.order_id,
                                     cl_ord_id=order.current_cl_ord_id, symbol=order.symbol,
                                     side=order.side, routed_at=utc_now())
        self._send_request(order, fixmsg.order_status_request(request))

    def _check_stuck(self) -> None:
        now = now_ms()
        timeout = self.config.stuck_order_timeout_ms
        for order in list(self.orders.values()):
            action = stuck_action(order, now, timeout)
            if action is None:
                continue
            with self.lock:
                order.stuck_stage += 1
                order.awaiting_since_ms = now
                if action == StuckAction.ALERT:
                    # Given up on an answer (an operator's matter now): it stops holding
                    # a place in the session's window.
                    self.in_flight[order.session].discard(order.order_id)
                self._dirty_orders[order.order_id] = order
            if action == StuckAction.STATUS:
                log.warning("order %s stuck at %s: asking its status", order.order_id,
                            order.market_maker)
                self._ask_status(order)
            elif action == StuckAction.CANCEL:
                log.warning("order %s still stuck: cancelling it", order.order_id)
                self._cancel_stuck(order)
            else:
                self._alert(order.account_id, "stuck_order", order.order_id, None,
                            f"order {order.order_id} at {order.market_maker} answered neither "
                            f"a status request nor a cancel; funds stay held",
                            event_id=f"alert:stuck_order:{order.order_id}")

    def _cancel_stuck(self, order: OpenOrder) -> None:
        attempt = self._cancel_attempts.get(order.order_id, 0) + 1
        self._cancel_attempts[order.order_id] = attempt
        cancel = RouteCancel(account_id=order.account_id, order_id=order.order_id,
                             cl_ord_id=f"{order.order_id}.gw{attempt}",
                             orig_cl_ord_id=order.current_cl_ord_id, symbol=order.symbol,
                             side=order.side, quantity=order.quantity, routed_at=utc_now())
        self._send_request(order, fixmsg.order_cancel_request(cancel, utc_now()))
        self._report_pending_cancel(order, cancel)

    def _report_pending_cancel(self, order: OpenOrder, cancel: RouteCancel) -> None:
        """Tell the account topology the order now waits for a cancel we asked for, so it
        shows as pending_cancel (funds still held) rather than routed forever."""
        report = pending_cancel_report(order, cancel, utc_now())
        with self.lock:
            if report.exec_id in self.forwarded:
                return  # a later stuck round: the order is pending_cancel already
            self.forwarded.add(report.exec_id)
        self._forward(report, None)

    # ---- durable executions and orders in flight (gateways.fix.durable) -------------------

    def _durable_pass(self) -> None:
        """Start a pass on the worker when one is due; apply the last one when it is done.
        The worker only reads (broker epoch, shards); everything here is the main thread's."""
        if self._pass is not None:
            if not self._pass.done():
                return
            finished, self._pass = self._pass, None
            try:
                findings = finished.result()
            except Exception:  # noqa: BLE001 - a failed look-up is tried again next pass
                log.exception("booking pass failed")
            else:
                self._apply(findings)
        now = time.monotonic()
        if now < self._next_pass:
            return
        config = self.config
        self._next_pass = now + config.booking_check_interval_ms / 1000
        read_epoch = now >= self._next_epoch_read
        if read_epoch:
            self._next_epoch_read = now + config.epoch_check_interval_ms / 1000
        open_orders = self.booking is not None and now >= self._next_open_orders
        if open_orders:
            self._next_open_orders = now + config.open_order_check_interval_ms / 1000
        self._persist()  # what was forwarded so far is in the store before it is read
        entries = self.store.unbooked(config.booking_check_batch_max) if self.booking else []
        self._pass = self._worker.submit(
            look_up, self.booking, entries, open_orders,
            (config.bootstrap_servers, config.topic_prefix) if read_epoch else None)

    def _apply(self, findings: Findings) -> None:
        if findings.epoch is not None and self._adopt_epoch(findings.epoch):
            # Another log: everything not booked goes again now, and every open order is
            # reconciled at the next pass (open orders here are asked about now).
            self._next_pass = 0.0
            self._next_open_orders = 0.0
            for order in list(self.orders.values()):
                if order.awaiting_since_ms is None:
                    self._ask_status(order)
        now = now_ms()
        settled: list[str] = []
        waiting: list[str] = []
        for entry in findings.entries:
            shard_order = findings.orders.get(entry.order_id)
            if is_settled(entry, entry.exec_id in findings.booked, shard_order):
                settled.append(entry.exec_id)
                continue
            waiting.append(entry.exec_id)
            if not reforward_due(entry, self.epoch, now, self.config.reforward_after_ms):
                continue
            if not may_forward_again(entry, shard_order, now, self.config.orphan_after_ms):
                continue
            log.info("%s of %s not booked (epoch %s, now %s): forwarded again",
                     entry.exec_id, entry.order_id, entry.epoch, self.epoch)
            self._reforward(entry)
            if alert_due(entry):
                self._alert(entry.account_id, "execution_not_booked", entry.order_id,
                            entry.exec_id, f"{entry.exec_type} report {entry.exec_id} of "
                            f"{entry.order_id} forwarded {entry.attempts + 2} times and not "
                            "booked yet; kept in the FIX gateway's store",
                            event_id=f"alert:execution_not_booked:{entry.exec_id}")
        if settled or waiting:
            self.store.settle(settled, waiting, now)
        if findings.open_orders is not None:
            self._reconcile_open(findings.open_orders)

    def _reconcile_open(self, open_orders: list[ShardOrder]) -> None:
        """Orders open in the shards: end those no market maker ever got."""
        now = utc_now()
        # The unrouted timeout counts while this gateway runs (a backlog of `orders.route`
        # after a long stop is read first).
        since = self._watching_since
        for shard_order in open_orders:
            with self.lock:
                sent = shard_order.order_id in self.routed_orders
                open_here = shard_order.order_id in self.orders
            action, reason = reconcile_order(
                shard_order, sent=sent, open_here=open_here,
                epoch_started_at=self.epoch_started_at, now=now,
                unrouted_order_timeout_ms=self.config.unrouted_order_timeout_ms)
            if action is OrderAction.END and reason is not None and (
                    reason != "not_routed_in_time" or now - since >= dt.timedelta(
                        milliseconds=self.config.unrouted_order_timeout_ms)):
                log.warning("order %s of %s open in its shard and never sent here: ended "
                            "(%s)", shard_order.order_id, shard_order.account_id, reason)
                cl_ord_id = cl_ord_id_for(shard_order.order_id)
                with self.lock:
                    # A route request that comes after this is never sent.
                    self.sent.add(cl_ord_id)
                    self.routed_orders.add(shard_order.order_id)
                    self._dirty_sent.append((cl_ord_id, "ended"))
                self._persist()
                self._publish_own(not_routed_report(shard_order, reason, now))

    def _persist(self, with_stats: bool = False) -> None:
        """One store transaction with what changed. Best-execution figures only go with
        the housekeeping (every HOUSEKEEPING_S): encoding them on every call was a fifth of
        the main thread's time, and a kill -9 loses at most that much of them."""
        with self.lock:
            exec_ids, self._dirty_exec_ids = self._dirty_exec_ids, []
            reforwarded, self._dirty_reforwarded = self._dirty_reforwarded, []
            sent, self._dirty_sent = self._dirty_sent, []
            tail, self._dirty_tail = self._dirty_tail, {}
            orders = list(self._dirty_orders.values())
            self._dirty_orders = {}
            stats: dict[str, ExecutionStats] = {}
            if with_stats and self._dirty_stats:
                stats = {mm: copy_stats(s) for mm, s in self.stats.items()}
                self._dirty_stats = False
            delivered = {key: tracker.delivered for key, tracker in self.trackers.items()}
        if delivered == self._persisted_delivered:
            delivered = {}
        else:
            self._persisted_delivered = delivered
        if not (exec_ids or delivered or sent or orders or stats or tail or reforwarded):
            return
        self.store.record(exec_ids=exec_ids, delivered=delivered, sent=sent, orders=orders,
                          stats=stats, tail=tail, now_ms=now_ms(), tail_epoch=self.epoch,
                          reforwarded=reforwarded)

    def prune(self, now: int) -> None:
        """Forget orders closed more than the retention ago, in the store and here."""
        self._persist()
        pruned = self.store.prune(now - self.retention_ms, now)
        if not (pruned.order_ids or pruned.exec_ids or pruned.cl_ord_ids):
            return
        with self.lock:
            self.forwarded -= pruned.exec_ids
            self.sent -= pruned.cl_ord_ids
            self.routed_orders -= pruned.order_ids
        log.info("pruned %d closed orders, %d ClOrdIDs, %d ExecIDs older than %d days",
                 len(pruned.order_ids), len(pruned.cl_ord_ids), len(pruned.exec_ids),
                 self.config.closed_order_retention_days)

    def best_execution(self) -> dict[str, ExecutionStats]:
        with self.lock:
            return dict(self.stats)


@dataclasses.dataclass
class Findings:
    """What the worker read for one pass."""

    entries: list[StoredExecution]
    booked: set[str]  # ExecIDs found booked
    orders: dict[str, ShardOrder]  # the entries' orders the shards hold
    open_orders: list[ShardOrder] | None  # None: not read this pass
    epoch: BrokerEpoch | None  # None: not read (or the broker has none)


def look_up(reader: BookingReader | None, entries: list[StoredExecution], open_orders: bool,
            broker: tuple[str, str] | None) -> Findings:
    """The worker's reads. Entries of a shard that does not answer are left out (checked
    again at a later pass), and so are its open orders."""
    epoch: BrokerEpoch | None = None
    if broker is not None:
        try:
            epoch = read_epoch_record(*broker, timeout_s=5.0)
        except EpochUnavailable as error:
            log.warning("broker epoch not readable: %s", error)
    checked: list[StoredExecution] = []
    booked: set[str] = set()
    orders: dict[str, ShardOrder] = {}
    found_open: list[ShardOrder] | None = [] if open_orders else None
    if reader is None:
        return Findings([], booked, orders, None, epoch)
    by_account = {e.exec_id: e for e in entries}
    refs = [ExecutionRef(e.account_id, e.order_id, e.exec_id, e.market_maker,
                         is_fill=e.exec_type is ExecType.TRADE) for e in entries]
    for shard, shard_refs in reader.by_shard(refs).items():
        try:
            booked |= reader.booked(shard, shard_refs)
            orders.update(reader.orders(shard, [r.order_id for r in shard_refs]))
        except ShardUnavailable as error:
            log.warning("booking check: %s", error)
            continue
        checked += [by_account[r.exec_id] for r in shard_refs]
    if found_open is not None:
        for shard in range(len(reader.shard_dsns)):
            try:
                found_open += reader.open_orders(shard)
            except ShardUnavailable as error:
                log.warning("open orders: %s", error)
    return Findings(checked, booked, orders, found_open, epoch)


def pending_cancel_report(order: OpenOrder, cancel: RouteCancel,
                          now: dt.datetime) -> ExecutionReport:
    """The gateway's own `pending_cancel` report of a stuck order it asked to cancel. One per
    order (deterministic id), whatever the number of cancel attempts."""
    return ExecutionReport(
        account_id=order.account_id, exec_id=f"gateway:pending_cancel:{order.order_id}",
        order_id=order.order_id, cl_ord_id=cancel.cl_ord_id,
        exec_type=ExecType.PENDING_CANCEL, symbol=order.symbol, side=order.side,
        last_qty=Decimal(0), last_px=Decimal(0), cum_qty=order.cum_qty,
        leaves_qty=max(order.quantity - order.cum_qty, Decimal(0)), transact_time=now,
        market_maker=order.market_maker, orig_cl_ord_id=cancel.orig_cl_ord_id,
        text=f"no answer from {order.market_maker}; cancel requested")


def copy_stats(stats: ExecutionStats) -> ExecutionStats:
    """A snapshot the store can encode outside the lock."""
    return dataclasses.replace(stats, fill_ms=list(stats.fill_ms))


def replace_exec_type(report: ExecutionReport, exec_type: ExecType) -> ExecutionReport:
    return msgspec.structs.replace(report, exec_type=exec_type)


def _session_specs(mm: MarketMakerConfig) -> list[SessionSpec]:
    return [SessionSpec(mm.fix_version, sender, mm.target_comp_id, mm.host, mm.port)
            for sender in session_comp_ids(mm.sender_comp_id, mm.sessions)]


__all__ = ["FixGateway", "run", "serve"]
