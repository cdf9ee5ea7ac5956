"""The market-maker simulator process: a QuickFIX acceptor that fills against `quotes`."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import quickfix as fix
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from gateways.exceptions import BindHostError
from gateways.fix.runtime import stop_on_signals
from gateways.fix.session import acceptor_settings_text, load_settings, session_comp_ids
from gateways.simulator import bind_host
from gateways.simulator.application import SimulatorApplication
from gateways.simulator.book import Book
from gateways.simulator.config import SimulatorConfig
from gateways.simulator.faults import FaultSwitch
from gateways.simulator.store import BookStore
from state.exceptions import DecodeError
from state.messages import MarketStatus, Quote
from state.topics import Topic, decode

log = logging.getLogger(__name__)


def run(config: SimulatorConfig) -> None:
    """Serve until SIGTERM/SIGINT. A listener that cannot bind where the config says ends the
    process with one line (exit 2)."""
    try:
        serve(config, stop_on_signals())
    except BindHostError as error:
        log.critical("simulator %s: %s", config.sender_comp_id, error)
        raise SystemExit(2) from None


def serve(config: SimulatorConfig, stop: threading.Event,
          ready: threading.Event | None = None) -> None:
    """Serve until `stop` is set (for callers that own the signals, e.g. tests in a thread).

    The QuickFIX acceptor binds every interface: it listens on `config.host` only through the
    bind-host shim preloaded into this process (see `bind_host`), and without it refuses to
    start (BindHostError) rather than listen everywhere."""
    bind_host.require(config.host)
    store_dir = Path(config.store_dir)
    book = Book(config.price_improvement_bps, config.partial_fill_qty_min, config.known_symbols,
                config.quote_wait_s)
    store = BookStore(store_dir)
    book.load(store.load())
    app = SimulatorApplication(config, book, store)
    switch = FaultSwitch(Path(config.faults_file) if config.faults_file else None, app.faults)
    settings = load_settings(
        acceptor_settings_text("FIX.4.4", config.sender_comp_id,
                               session_comp_ids(config.target_comp_id, config.sessions),
                               config.host, config.port, store_dir, config.heartbeat_s,
                               config.validate_messages),
        store_dir / "simulator.cfg")
    consumer = _market_data_consumer(config)
    # The engine keeps raw pointers to the factories: they must outlive the acceptor, or its
    # stop() frees sessions through freed memory.
    store_factory = fix.FileStoreFactory(settings)
    log_factory = fix.FileLogFactory(settings)
    # ThreadedSocketAcceptor: SocketAcceptor.stop() of QuickFIX 1.16 closes its socket map
    # while the engine thread may still change it, and crashed (SIGSEGV) after clients left.
    acceptor = fix.ThreadedSocketAcceptor(app, store_factory, settings, log_factory)
    _catch_up(app, consumer)
    app.sender.start()
    acceptor.start()
    log.info("simulator %s listening on %s:%d", config.sender_comp_id, config.host, config.port)
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            for record in consumer.consume(num_messages=500, timeout=0.05):
                _on_market_data(app, record)
            _expire_held(app)
            switched = switch.poll()
            if switched is not None:
                app.set_faults(*switched)
    finally:
        acceptor.stop()
        app.sender.stop()
        consumer.close()
        del acceptor, store_factory, log_factory
        store.close()
        log.info("simulator stopped")


def _catch_up(app: SimulatorApplication, consumer: Consumer, idle_s: float = 0.5,
              limit_s: float = 10.0) -> None:
    """Read the market data already on the topics before taking orders, so a restarted
    simulator does not reject orders for want of a quote. The end is when the topic has
    been quiet for `idle_s` (high watermarks are not reliable on every broker)."""
    deadline = time.monotonic() + limit_s
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s and time.monotonic() < deadline:
        records = consumer.consume(num_messages=500, timeout=0.05)
        for record in records:
            _on_market_data(app, record)
        if any(record.error() is None for record in records):
            quiet_since = time.monotonic()


def _log_first_quote(book: Book, symbol: str) -> None:
    """Once per symbol: when the market maker could first price it (a stack's first orders
    may have waited for this)."""
    held = sum(order.request.symbol == symbol for order in book.held.values())
    log.info("first quote for %s; %d orders were waiting for it", symbol, held)


def _expire_held(app: SimulatorApplication) -> None:
    """Reject the orders that waited too long for a first quote. Checked on the market-data
    loop, which turns at least every 50 ms: the wait is tens of seconds."""
    with app.lock:
        reports = app.book.expire_held(dt.datetime.now(dt.UTC)) if app.book.held else []
    if reports:
        app.deliver_to_orders(reports)


def _market_data_consumer(config: SimulatorConfig) -> Consumer:
    """Reads every partition of `quotes` and `market.status` from the start: the simulator
    needs the whole NBBO, not a share of it, so it takes no part in a consumer group."""
    consumer = Consumer({
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": f"{config.topic_prefix}simulator-{config.sender_comp_id}",
        "enable.auto.commit": False,
        "session.timeout.ms": 3000,
        # The embedded broker lists a partition's batches on each fetch: a 10 ms wait starved
        # on a large `quotes` topic; 100 ms adds at most that much to a resting order's trigger.
        "fetch.wait.max.ms": 100,
    })
    assignment = []
    for topic in (Topic.QUOTES, Topic.MARKET_STATUS):
        name = config.topic_prefix + topic
        metadata = consumer.list_topics(name, timeout=10).topics[name]
        assignment += [TopicPartition(name, partition, OFFSET_BEGINNING)
                       for partition in metadata.partitions]
    consumer.assign(assignment)
    return consumer


def _on_market_data(app: SimulatorApplication, record: Message) -> None:
    error = record.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("market data consumer: %s", error)
        return
    topic = record.topic() or ""
    kind = Topic.QUOTES if topic.endswith(Topic.QUOTES) else Topic.MARKET_STATUS
    try:
        message = decode(kind, record.value())
    except DecodeError as error:
        # Not ours to dead-letter: the market-data topology owns the quotes' DLQ.
        log.warning("skipping undecodable %s record at offset %s: %s", topic,
                    record.offset(), error)
        return
    with app.lock:
        if isinstance(message, Quote):
            if message.symbol not in app.book.nbbo:
                _log_first_quote(app.book, message.symbol)
            reports = app.book.on_quote(message.symbol, message.bid, message.ask,
                                        message.venue_time)
        else:
            assert isinstance(message, MarketStatus)
            app.book.on_status(message.symbol, message.status)
            reports = []
    if reports:
        app.deliver_to_orders(reports)
