"""`brokerage up`: servers, topics, schemas, then the supervised services."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from compose.embedded import (
    EmbeddedServers,
    data_dir_lock,
    port_open,
    start_embedded_servers,
    wait_until,
)
from compose.exceptions import ServiceStartError
from compose.kafka import prepare_topics
from compose.renewal import next_renewal, time_of_day
from compose.services import Endpoints, feed_symbols, service_specs
from compose.stack import StackConfig
from compose.supervisor import ServerWatch, Supervisor, report_to_stderr
from state.exceptions import StoreError
from state.messages import Quote
from state.quote_cache import QuoteCache
from state.topics import topic_specs

HEALTH_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
# What carries a feed's quotes to an order: the feed, the topology that caches them (the HTTP
# gateway's reference prices) and the HTTP gateway itself. A stack without one of them has no
# quote-to-order path for `up` to wait on.
READY_PATH_SERVICES = frozenset({"connectors", "market-data", "http"})
# Each of these stops the stack cleanly: Ctrl-C, a service manager, the terminal closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Services stopped because the broker died are restarted anyway and everything durable
# survives SIGKILL: they get little time to go (one blocked on the dead broker uses it all).
BROKER_LOST_STOP_TIMEOUT_S = 5.0


def http_url(stack: StackConfig) -> str:
    """Where the HTTP gateway of the stack answers."""
    return f"http://{stack.http.host}:{stack.http.port}"


def _token_secret(stack: StackConfig) -> str:
    if stack.http.token_secret:
        return stack.http.token_secret
    path = stack.data_dir / "token_secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _embedded_servers(stack: StackConfig) -> EmbeddedServers:
    """Every server the stack file does not name is started embedded: the default needs none."""
    return start_embedded_servers(
        stack.data_dir, 0 if stack.postgres.shard_dsns else stack.stack.shards,
        broker=not stack.kafka.bootstrap_servers, redis=not stack.redis.url)


def _endpoints(stack: StackConfig, embedded: EmbeddedServers) -> Endpoints:
    return Endpoints(
        bootstrap_servers=stack.kafka.bootstrap_servers or embedded.bootstrap_servers,
        shard_dsns=stack.postgres.shard_dsns or tuple(embedded.shard_dsns),
        redis_url=stack.redis.url or embedded.redis_url,
        token_secret=_token_secret(stack),
    )


def _prepare_topics(stack: StackConfig, endpoints: Endpoints) -> str:
    """Every topic created where missing; returns the broker's epoch."""
    return prepare_topics(endpoints.bootstrap_servers, stack.stack.topic_prefix,
                          topic_specs(stack.stack.topic_prefix, stack.account_partitions,
                                      stack.stack.symbol_partitions))


def _drop_stream_state(stack: StackConfig) -> None:
    """Local stream state (RocksDB) made against a previous broker's changelogs matches no
    topic of an empty broker."""
    shutil.rmtree(stack.data_dir / "state", ignore_errors=True)


def _prepare(stack: StackConfig, endpoints: Endpoints) -> None:
    from state.shard_store import migrate

    _prepare_topics(stack, endpoints)
    for dsn in endpoints.shard_dsns:
        migrate(dsn)


def _check_ports(stack: StackConfig) -> None:
    """The ports the services will listen on, each on the host the stack file gives it."""
    wanted = []
    if "http" in stack.stack.services:
        wanted.append(("http", stack.http.host, stack.http.port))
    if "simulator" in stack.stack.services:
        wanted += [(f"simulator {mm.name}", mm.host, mm.port) for mm in stack.market_makers
                   if mm.simulator]
    for name, host, port in wanted:
        if port_open(port, host):
            raise ServiceStartError(f"{name}: port {host}:{port} is already in use")


def write_stack_file(path: Path, content: Mapping[str, Any]) -> None:
    """The stack file (`stack.json`), replaced whole: a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content))
    os.replace(partial, path)


@dataclass
class RunningStack:
    stack: StackConfig
    endpoints: Endpoints
    supervisor: Supervisor
    embedded: EmbeddedServers
    # What the stack file holds besides the process list (endpoints, pid of `up`, ...).
    stack_file: Path | None = None
    stack_file_content: dict[str, Any] = field(default_factory=dict)
    watch: ServerWatch = field(init=False)
    _recorded: dict[str, Any] | None = field(init=False, default=None)
    # When the embedded broker last started empty, and whether its renewal was asked for
    # (SIGUSR1): compose/renewal.py.
    broker_started_at: dt.datetime = field(init=False,
                                           default_factory=lambda: dt.datetime.now(dt.UTC))
    renewal_asked: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.watch = ServerWatch(self.embedded, self._server_died, self._server_started)
        self.record()

    def poll(self) -> None:
        """Restart what died: embedded servers first, then services; renew the embedded
        broker when it is due."""
        self.watch.poll()
        self.supervisor.poll()
        self.record()
        if self._renewal_due():
            self.renew_broker()

    @property
    def has_embedded_broker(self) -> bool:
        return any(child.name == "broker" for child in self.embedded.children)

    def next_broker_renewal(self) -> dt.datetime | None:
        if not self.has_embedded_broker:
            return None
        return next_renewal(self.broker_started_at,
                            time_of_day(self.stack.kafka.embedded_renew_at_utc))

    def _renewal_due(self) -> bool:
        if self.renewal_asked.is_set():
            self.renewal_asked.clear()
            if self.has_embedded_broker:
                return True
            report_to_stderr("no embedded broker to renew: kafka.bootstrap_servers names one")
            return False
        due = self.next_broker_renewal()
        return due is not None and dt.datetime.now(dt.UTC) >= due

    def renew_broker(self) -> None:
        """The services stopped cleanly, then the broker: the watch starts it again empty and
        `_server_started` makes the topics and starts the services (compose/renewal.py)."""
        report_to_stderr(f"renewing the embedded broker (it started "
                         f"{self.broker_started_at:%Y-%m-%d %H:%M} UTC): services stopped, "
                         "the broker started empty, topics made again, services started")
        self.supervisor.stop_all()
        broker = self.embedded.child("broker")
        broker.stop()
        self.broker_started_at = dt.datetime.now(dt.UTC)  # not again if the start fails
        self.watch.poll()  # seen dead: started again, then `_server_started`

    def processes(self) -> dict[str, list[dict[str, Any]]]:
        """Every process `up` supervises: pid, running, restarts, last error (`brokerage
        status` reads them from the stack file)."""
        services = [{"name": child.name, "pid": child.popen.pid if child.popen else None,
                     "running": child.alive(), "restarts": child.restarts,
                     "last_error": child.last_error}
                    for child in self.supervisor.children]
        servers = []
        for name, watched in self.watch.watched.items():
            server = self.embedded.child(name)
            servers.append({"name": name, "pid": server.popen.pid, "running": server.alive(),
                            "restarts": watched.restarts, "last_error": watched.last_error})
        return {"services": services, "servers": servers}

    def record(self) -> None:
        """The process list into the stack file, when it changed."""
        if self.stack_file is None:
            return
        processes = self.processes()
        if processes == self._recorded:
            return
        try:
            write_stack_file(self.stack_file, {**self.stack_file_content, **processes})
        except OSError as error:  # a full disk must not stop the supervision
            report_to_stderr(f"cannot write {self.stack_file}: {error}")
            return
        self._recorded = processes

    def _server_died(self, name: str) -> None:
        if name == "broker":
            # Stopped before a new broker listens: a service left running would meet an empty
            # broker with its old offsets, and could create topics it expects before ours.
            self.supervisor.stop_all(BROKER_LOST_STOP_TIMEOUT_S)

    def _server_started(self, name: str) -> None:
        """A new broker is a new epoch: topics created again (and the new epoch written),
        stream state dropped, every service started again. The durable edges (shards, FIX
        store, intake journal) replay into it. Redis and PostgreSQL need nothing: services
        reconnect by themselves."""
        if name != "broker":
            return
        self.broker_started_at = dt.datetime.now(dt.UTC)
        epoch = _prepare_topics(self.stack, self.endpoints)
        _drop_stream_state(self.stack)
        self.supervisor.start_all()
        report_to_stderr(f"broker epoch {epoch}: topics created, stream state dropped, "
                         f"{len(self.supervisor.children)} services started again")

    @property
    def http_url(self) -> str:
        return http_url(self.stack)

    def urls(self) -> dict[str, str]:
        urls = {"kafka": self.endpoints.bootstrap_servers, "redis": self.endpoints.redis_url}
        for shard, dsn in enumerate(self.endpoints.shard_dsns):
            urls[f"shard{shard}"] = dsn
        if "http" in self.stack.stack.services:
            urls["web page"] = self.http_url + "/"
            urls["http api"] = self.http_url + "/v1"
            urls["openapi"] = self.http_url + "/v1/openapi.json"
            urls["websocket"] = self.http_url.replace("http", "ws", 1) + "/v1/stream"
        for mm in self.stack.market_makers:
            urls[f"fix {mm.name}"] = f"{mm.host}:{mm.port} ({mm.sender_comp_id}->" \
                                     f"{mm.target_comp_id})"
        return urls

    def healthy(self) -> list[str]:
        """What is not healthy yet (empty when everything is)."""
        problems = [f"service {c.name} is not running" for c in self.supervisor.children
                    if not c.alive()]
        if "http" in self.stack.stack.services:
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=2) as answer:
                    if answer.status != 200:
                        problems.append(f"http /healthz answered {answer.status}")
            except OSError as error:
                problems.append(f"http /healthz: {error}")
        return problems


@contextlib.contextmanager
def running_stack(stack: StackConfig) -> Iterator[RunningStack]:
    """Everything up; on exit (or any failure while starting) everything stopped."""
    _check_ports(stack)
    with data_dir_lock(stack.data_dir):
        if not stack.kafka.bootstrap_servers:
            _drop_stream_state(stack)  # the embedded broker starts empty
        embedded = _embedded_servers(stack)
        supervisor: Supervisor | None = None
        try:
            endpoints = _endpoints(stack, embedded)
            _prepare(stack, endpoints)
            stack_file = stack.data_dir / "stack.json"
            content: dict[str, Any] = {
                "bootstrap_servers": endpoints.bootstrap_servers,
                "shard_dsns": list(endpoints.shard_dsns), "redis_url": endpoints.redis_url,
                "topic_prefix": stack.stack.topic_prefix, "pid": os.getpid()}
            if "http" in stack.stack.services:
                content["http_url"] = http_url(stack)
            write_stack_file(stack_file, content)
            supervisor = Supervisor(service_specs(stack, endpoints), stack.data_dir / "run",
                                    stack.data_dir / "logs")
            supervisor.start_all()
            yield RunningStack(stack, endpoints, supervisor, embedded, stack_file, content)
        finally:
            if supervisor is not None:
                supervisor.stop_all()
            embedded.stop()
            with contextlib.suppress(OSError):
                (stack.data_dir / "stack.json").unlink()


def wait_healthy(running: RunningStack, timeout_s: float = HEALTH_TIMEOUT_S) -> list[str]:
    deadline = time.monotonic() + timeout_s
    problems = running.healthy()
    while problems and time.monotonic() < deadline:
        time.sleep(0.25)
        problems = running.healthy()
    return problems


def ready_symbols(stack: StackConfig) -> tuple[str, ...]:
    """The symbols `up` waits to see quoted before it calls the stack ready (none: no wait)."""
    if not READY_PATH_SERVICES <= set(stack.stack.services):
        return ()
    return feed_symbols(stack)


def unquoted(quotes: Mapping[str, Quote], symbols: Sequence[str],
             since: dt.datetime) -> list[str]:
    """The symbols without a quote from `since` on. An older quote is one a persistent Redis
    kept from a previous run: the HTTP gateway would call it stale, and the market maker,
    reading a new broker's `quotes`, has never seen it."""
    return [symbol for symbol in symbols
            if (quote := quotes.get(symbol)) is None or quote.venue_time < since]


def _unquoted_now(cache: QuoteCache, symbols: Sequence[str], since: dt.datetime) -> list[str]:
    try:
        quotes = cache.get_many(symbols)
    except StoreError:
        quotes = {}  # Redis not answering yet counts as no quote: the wait goes on
    return unquoted(quotes, symbols, since)


def wait_ready(running: RunningStack, symbols: Sequence[str], since: dt.datetime,
               stop: threading.Event, timeout_s: float = READY_TIMEOUT_S) -> list[str]:
    """Wait (bounded, or until `stop`) until the quote cache holds a quote from `since` on for
    every symbol: then a market order for any of them passes the HTTP gateway (it needs a
    reference price) and finds a quote at the market maker. Returns the symbols still without
    one. The stack stays supervised meanwhile."""
    cache = QuoteCache(running.endpoints.redis_url, running.stack.stack.topic_prefix)
    try:
        deadline = time.monotonic() + timeout_s
        missing = _unquoted_now(cache, symbols, since)
        while missing and time.monotonic() < deadline and not stop.wait(0.25):
            running.poll()
            missing = _unquoted_now(cache, symbols, since)
        return missing
    finally:
        cache.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_stop_signals() -> None:
    """While the stack starts, every stop signal is a Ctrl-C: what started is stopped again
    and the stack file removed on the way out."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)


def stop_on_signals() -> threading.Event:
    """Once the stack is healthy a stop signal asks for the clean stop (exit 0), also while
    `up` still waits for quotes; a second one does not interrupt that stop."""
    stop = threading.Event()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop.set())
    return stop


def renew_on_sigusr1(running: RunningStack) -> None:
    """SIGUSR1 asks for the embedded broker's renewal now (compose/renewal.py)."""
    signal.signal(signal.SIGUSR1, lambda *_: running.renewal_asked.set())


def serve_until_signalled(running: RunningStack, stop: threading.Event) -> None:
    """Supervise until `stop` is set (by a stop signal)."""
    while not stop.wait(0.5):
        running.poll()


__all__ = ["interrupt_on_stop_signals", "ready_symbols", "running_stack", "wait_healthy",
           "wait_ready", "serve_until_signalled", "stop_on_signals", "wait_until",
           "renew_on_sigusr1"]
