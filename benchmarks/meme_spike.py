"""The meme spike: one symbol's traffic jumps `--factor` times within seconds while the others
trade on; prints one JSON object with the machine.

The whole embedded stack (`brokerage up` as a child, 2 shards) with the hot symbol (GME) given a
partition of `quotes` to itself (`[market_data] hot_symbols`, the connectors' partitioning) and
`--market-data-processes` market-data workers. The other symbols' quotes come from the stack's
own synthetic feed (a connectors dir with the example feed less GME, at `--hot-quotes-per-s`
per symbol: 10, the example's 50 a second over 5); GME's come from this script through the same
code (the feed's seeded random walk and checks, the connectors' drive loop, the hot-symbol
partitioner and linger), at `--hot-quotes-per-s`, then that x `--factor`.

Load: open loop (each order is due at its time, whatever the answers do; latencies count from
that time, so a backlog in the client is counted, not hidden). Market orders of 1 share (every
fifth a sell) at `--orders-per-s` per symbol over `--accounts` accounts of $1,000,000 (one user
each: the per-user and per-account limits of 10 orders/s are never reached), and GME's also over
`--small-accounts` accounts of `--small-deposit`, which run out of buying power in the spike
(the risk check must refuse them, never overdraw). Windows: `--warmup-s` (not counted), then
`--baseline-s`, then `--spike-s`, where GME's orders and quotes rise to x`--factor` over
`--ramp-s` and stay there. Then the load stops, the hot feed stops, and the script waits (at
most `--drain-timeout-s`) until every acknowledged order is final in its shard.

Printed, per window and symbol: orders sent / acknowledged (201, 202, or 422 refused by the
risk checks) / refused at intake (by HTTP status) / decided (final in the shard by the end) /
filled, risk refusals by reason, latency p50/p99 of the POST answer and of the fill (due time
until the `filled` event is read from `orders.events`, as the gateway's stream reads it), where
that time goes (intake: until the gateway produced the command; risk: until its first event was
read; to the fill report: until the FIX gateway produced the first fill; booking: until `filled`
was read), and the CPU cores of each service, of the whole machine and of what ran outside
this run (a shared machine); quotes produced (on the topic) and delivered (on
one WebSocket watching every symbol) with their age at delivery, and the age of the cached quote
(`GET /v1/quotes` every 0.5 s). Then: the other symbols' latency in the spike against the
baseline (the goal: p99 within 2x), and the correctness checks: dropped (acknowledged, not final
by the end: must be 0), negative balances in the shards and negative cash or buying power over
the API (must be none), the hot symbol's latest quote delivered (WebSocket and cache) and
`brokerage reconcile`.

    python -m benchmarks.meme_spike --baseline-s 60 --spike-s 60 --factor 7

Bounded: the load runs `--warmup-s + --baseline-s + --spike-s` (600 s at most), every wait
after it has its own limit, and the stack is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import msgspec  # noqa: E402
import psutil  # noqa: E402

from benchmarks.common import machine, percentile  # noqa: E402
from benchmarks.http_orders import CpuMeter  # noqa: E402
from compose.embedded import free_port  # noqa: E402
from connectors.partitioning import SymbolPartitioner  # noqa: E402
from connectors.runtime import Clock, Pause, Publish, Reject, Step, SystemClock, drive  # noqa: E402
from connectors.service import LINGER_MS  # noqa: E402
from connectors.synthetic import (  # noqa: E402
    PACE_INTERVAL_S,
    RandomWalk,
    SyntheticQuotesSettings,
)
from connectors.validation import ValidationSettings, check_quote  # noqa: E402
from state.ids import order_id_for  # noqa: E402
from state.topics import Topic, dlq_name, encode  # noqa: E402
from tests.integration.compose.stack_process import (  # noqa: E402
    StackProcess,
    start_stack,
    write_stack_file,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "connectors" / "examples"
HOT = "GME"
HOT_PARTITION = 3  # of the stack's 4 symbol partitions (the default `symbol_partitions`)
SYMBOLS = ("AAPL", "MSFT", "TSLA", "GME", "SPY")
OTHERS = tuple(s for s in SYMBOLS if s != HOT)
TERMINAL = frozenset({"filled", "cancelled", "rejected", "expired", "failed"})
REGULAR_DEPOSIT = "1000000.00"
SELL_EVERY = 5  # every fifth order of a symbol's stream is a sell of 1 share
IN_FLIGHT_MAX = 256  # requests open at once; an order past that waits (its latency counts)
TICK_S = 0.005  # the load's pacing step
CACHE_SAMPLE_S = 0.5
LOAD_S_MAX = 600.0  # the demo login's tokens live 900 s: the load and its waits stay inside
LATEST_QUOTE_WAIT_S = 20.0
HTTP_TIMEOUT_S = 15.0


# ---- the stack ------------------------------------------------------------------------------


def write_connectors(directory: Path, rate_per_symbol: float) -> None:
    """The stack's connectors: the example market-status feed, and the example quote feed less
    the hot symbol (this script feeds it), at `rate_per_symbol` quotes/s for each symbol."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "market_status.toml", directory / "market_status.toml")
    example = tomllib.loads((EXAMPLES / "synthetic.toml").read_text())
    settings = example["settings"]
    symbols = [s for s in settings["symbols"] if s != HOT]
    lines = [f"name = {json.dumps(example['name'])}", 'connector = "synthetic_quotes"',
             'topic = "quotes"', "", "[settings]", f"symbols = {json.dumps(symbols)}",
             f"rate_per_s = {rate_per_symbol * len(symbols)}", f"seed = {settings['seed']}",
             f"volatility_bps = {settings['volatility_bps']}",
             f"trade_probability = {settings['trade_probability']}", "",
             "[settings.start_prices]"]
    lines += [f"{s} = {json.dumps(p)}" for s, p in settings["start_prices"].items() if s != HOT]
    lines += ["", "[settings.validation]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.get("validation", {}).items()]
    (directory / "synthetic.toml").write_text("\n".join(lines) + "\n")


def start_spike_stack(root: Path, market_data_processes: int = 2,
                      feed_rate_per_symbol: float = 10.0) -> StackProcess:
    """`brokerage up` on `root`: the tests' stack file (2 shards x 2 partitions, the demo login,
    the simulator) with the hot symbol's partition and this script's connectors dir."""
    root.mkdir(parents=True, exist_ok=True)
    connectors = root / "connectors"
    write_connectors(connectors, feed_rate_per_symbol)
    stack_file = write_stack_file(root / "stack.toml", free_port())
    with stack_file.open("a") as out:
        out.write(f"\n[connectors]\ndir = {json.dumps(str(connectors))}\n"
                  f"\n[market_data]\nhot_symbols = {{ {HOT} = {HOT_PARTITION} }}\n"
                  f"processes = {market_data_processes}\n")
    return start_stack(root / "data", stack_file=stack_file)


# ---- the schedule ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Wall-clock instants (epoch seconds) of the windows, and the hot symbol's factor."""

    start: float
    baseline_at: float
    spike_at: float
    end: float
    ramp_s: float
    factor: float

    @classmethod
    def of(cls, args: argparse.Namespace, start: float) -> Schedule:
        baseline_at = start + args.warmup_s
        spike_at = baseline_at + args.baseline_s
        return cls(start, baseline_at, spike_at, spike_at + args.spike_s, args.ramp_s,
                   args.factor)

    def hot_factor(self, at: float) -> float:
        if at < self.spike_at:
            return 1.0
        risen = min(1.0, (at - self.spike_at) / self.ramp_s) if self.ramp_s > 0 else 1.0
        return 1.0 + (self.factor - 1.0) * risen

    def window(self, at: float) -> str | None:
        if self.baseline_at <= at < self.spike_at:
            return "baseline"
        if self.spike_at <= at < self.end:
            return "spike"
        return "warmup" if self.start <= at < self.baseline_at else None

    def seconds(self, window: str) -> float:
        return self.spike_at - self.baseline_at if window == "baseline" else \
            self.end - self.spike_at


WINDOWS = ("baseline", "spike")


# ---- the hot symbol's quote feed ------------------------------------------------------------


class HotQuotes:
    """A connector (connectors.runtime) of the hot symbol's quotes: the synthetic feed's random
    walk and checks at `rate(now)` quotes/s, the rate read every pacing step."""

    def __init__(self, settings: SyntheticQuotesSettings, rate: Callable[[float], float]) -> None:
        self.settings = settings
        self.rate = rate

    def steps(self, clock: Clock) -> Iterator[Step]:
        walk = RandomWalk(self.settings)
        known = frozenset(self.settings.symbols)
        symbol = self.settings.symbols[0]
        credit, last_s = 0.0, clock.monotonic()
        while True:
            now_s = clock.monotonic()
            credit += self.rate(clock.now().timestamp()) * (now_s - last_s)
            last_s = now_s
            while credit >= 1.0:
                credit -= 1.0
                now = clock.now()
                quote = walk.quote(symbol, now)
                reason = check_quote(quote, now, self.settings.validation, known)
                yield Publish(symbol, quote) if reason is None else \
                    Reject(symbol, reason, encode(quote))
            yield Pause(clock.monotonic() + PACE_INTERVAL_S)


class HotFeed:
    """Runs HotQuotes in a thread into `quotes` (the hot symbol's own partition, the feed's
    linger), counting what it produced and keeping the last quote."""

    def __init__(self, bootstrap: str, prefix: str, rate_per_s: float, schedule: Schedule
                 ) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient

        example = tomllib.loads((EXAMPLES / "synthetic.toml").read_text())["settings"]
        self.settings = SyntheticQuotesSettings(
            symbols=(HOT,), rate_per_s=rate_per_s, seed=int(example["seed"]) + 1,
            start_prices={HOT: Decimal(example["start_prices"][HOT])},
            volatility_bps=float(example["volatility_bps"]),
            trade_probability=float(example["trade_probability"]),
            validation=msgspec.convert(example.get("validation", {}), ValidationSettings))
        self.topic = prefix + Topic.QUOTES
        self.dlq_topic = prefix + dlq_name(Topic.QUOTES)
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(
            self.topic, timeout=10).topics[self.topic]
        self.partitioner = SymbolPartitioner(len(metadata.partitions), {HOT: HOT_PARTITION})
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": LINGER_MS})
        self.schedule = schedule
        self.base_rate = rate_per_s
        self.running = True
        self.produced = 0
        self.last_value: bytes | None = None
        self.stopped_at = 0.0
        self._thread = threading.Thread(target=self._run, name="hot-feed", daemon=True)

    def rate(self, at: float) -> float:
        return self.base_rate * self.schedule.hot_factor(at) if at < self.schedule.end \
            else self.base_rate

    def _produce(self, topic: str, key: str | None, value: bytes) -> None:
        partition = self.partitioner.partition(key) if key and topic == self.topic else None
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, key=key, value=value)
                else:
                    self.producer.produce(topic, key=key, value=value, partition=partition)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        if topic == self.topic:
            self.produced += 1
            self.last_value = value

    def _run(self) -> None:
        drive(HotQuotes(self.settings, self.rate), SystemClock(), self._produce, self.topic,
              self.dlq_topic, lambda: self.running, self.topic, "meme-hot-feed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any] | None:
        """Stop, deliver what is lingering; the last quote produced (as JSON), if any."""
        self.running = False
        if self._thread.is_alive():
            self._thread.join(10)
        self.producer.flush(10)
        self.stopped_at = time.time()
        return json.loads(self.last_value) if self.last_value else None


# ---- what the topics say --------------------------------------------------------------------


class _Record(msgspec.Struct):
    """The fields this script reads of any record of the topics it tails."""

    type: str
    account_id: str | None = None
    order_id: str | None = None
    idempotency_key: str | None = None
    state: str | None = None
    reason: str | None = None
    exec_type: str | None = None
    symbol: str | None = None
    venue_time: dt.datetime | None = None


_DECODER = msgspec.json.Decoder(_Record)


@dataclass
class TopicRecord:
    """Per order: when the gateway produced its command (broker CreateTime), when this tail
    read its first event and its final one, when the FIX gateway produced its first fill;
    per symbol: the venue times of the quotes on the topic."""

    command_at: dict[str, float] = field(default_factory=dict)
    first_event_seen: dict[str, float] = field(default_factory=dict)
    final: dict[str, tuple[str, str | None, float]] = field(default_factory=dict)
    fill_report_at: dict[str, float] = field(default_factory=dict)
    quote_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class Tail:
    """Two consumers (groups of their own, nothing committed) reading from the start while the
    load runs, each with the fetch wait of the gateway's tail of its topics: `orders.commands`,
    `orders.events` and `executions` at 10 ms (a read time is measured: the gateway's event
    tail's wait), `quotes` at 100 ms (only counted; a short wait starves on a large topic)."""

    READERS = (((Topic.ORDERS_COMMANDS, Topic.ORDERS_EVENTS, Topic.EXECUTIONS), 10),
               ((Topic.QUOTES,), 100))

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.record = TopicRecord()
        self.lock = threading.Lock()
        self.running = True
        self.errors = 0
        self._threads = [threading.Thread(target=self._run, args=reader, daemon=True,
                                          name=f"tail-{index}")
                         for index, reader in enumerate(self.READERS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.running = False
        for thread in self._threads:
            if thread.is_alive():
                thread.join(10)

    def _run(self, topics: tuple[Topic, ...], fetch_wait_ms: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"meme-tail-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms})
        families = {self.prefix + t: t for t in topics}
        try:
            assignment = []
            for name in families:
                partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
                assignment += [TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions]
            consumer.assign(assignment)
            while self.running:
                # poll, then what else is already here: consume(n, t) would wait for n
                # records up to t, and a read time is what this tail measures.
                first = consumer.poll(0.05)
                seen = time.time()
                batch = [] if first is None else [first, *consumer.consume(999, 0)]
                with self.lock:
                    for message in batch:
                        if message.error() is not None:
                            continue
                        try:
                            self._add(families[message.topic()], message, seen)
                        except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
                            self.errors += 1
        finally:
            consumer.close()

    def _add(self, family: str, message: Any, seen: float) -> None:
        value = _DECODER.decode(message.value())
        record = self.record
        if family == Topic.QUOTES:
            if value.type == "quote" and value.symbol and value.venue_time:
                record.quote_times[value.symbol].append(value.venue_time.timestamp())
            return
        created = message.timestamp()[1] / 1000
        if family == Topic.ORDERS_COMMANDS:
            if value.type == "place_order" and value.account_id and value.idempotency_key:
                record.command_at.setdefault(
                    order_id_for(value.account_id, value.idempotency_key), created)
        elif family == Topic.EXECUTIONS:
            if value.exec_type == "trade" and value.order_id:
                record.fill_report_at.setdefault(value.order_id, created)
        elif value.type in ("order_event", "command_rejected"):
            order_id = value.order_id
            if order_id is None and value.account_id and value.idempotency_key:
                order_id = order_id_for(value.account_id, value.idempotency_key)
            if order_id is None:
                return
            record.first_event_seen.setdefault(order_id, seen)
            state = value.state or "rejected"
            if state in TERMINAL:
                record.final.setdefault(order_id, (state, value.reason, seen))


# ---- the client -----------------------------------------------------------------------------


@dataclass
class Account:
    account_id: str
    shard: int
    auth: dict[str, str]
    small: bool


@dataclass
class Order:
    symbol: str
    window: str | None
    account: Account
    key: str
    side: str
    due: float
    answered: float | None = None
    status: int | None = None
    reason: str | None = None  # a 422's risk reason, or an intake refusal's code

    @property
    def order_id(self) -> str:
        return order_id_for(self.account.account_id, self.key)

    @property
    def acknowledged(self) -> bool:
        """The gateway took it in (journaled and produced): 201, 202, or the risk checks'
        refusal (422 order_rejected)."""
        return self.status in (201, 202) or (self.status == 422 and self.reason is not None
                                             and self.reason != "validation")


@dataclass
class QuoteSeen:
    symbol: str
    venue_time: float
    at: float


class Client:
    """The load, the WebSocket watcher and the cache sampler, on one asyncio loop."""

    def __init__(self, base: str, args: argparse.Namespace) -> None:
        self.base = base
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.accounts: list[Account] = []
        self.orders: list[Order] = []
        self.ws_quotes: list[QuoteSeen] = []
        self.ws_latest: dict[str, dict[str, Any]] = {}
        self.cache_ages: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.watcher: dict[str, str] = {}
        self.stop_watching = asyncio.Event()
        self.ws_errors: list[str] = []

    # -- set-up --

    async def _json(self, session: aiohttp.ClientSession, method: str, path: str,
                    body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with session.request(method, self.base + path, json=body,
                                   headers=headers or {}) as response:
            return response.status, await response.json(content_type=None)

    async def _user(self, session: aiohttp.ClientSession, name: str) -> dict[str, str]:
        status, token = await self._json(session, "POST", "/v1/auth/token", {"user_id": name})
        assert status in (200, 201), token
        return {"Authorization": f"Bearer {token['token']}"}

    async def _account(self, session: aiohttp.ClientSession, index: int, small: bool
                       ) -> Account:
        name = f"meme-{self.run_id}-{'s' if small else 'r'}{index}"
        auth = await self._user(session, name)
        status, body = await self._json(session, "POST", "/v1/accounts", {},
                                        {**auth, "Idempotency-Key": f"{name}-account"})
        assert status in (200, 201), body
        account = Account(body["account_id"], body["shard"], auth, small)
        amount = self.args.small_deposit if small else REGULAR_DEPOSIT
        status, body = await self._json(
            session, "POST", f"/v1/accounts/{account.account_id}/deposits", {"amount": amount},
            {**auth, "Idempotency-Key": f"{name}-deposit"})
        assert status in (200, 201, 202), body
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # booked: the orders must not beat the deposit
            status, body = await self._json(
                session, "GET", f"/v1/portfolio?account_id={account.account_id}", None, auth)
            if status == 200 and Decimal(body["cash"]) >= Decimal(amount):
                return account
            await asyncio.sleep(0.3)
        raise RuntimeError(f"deposit to {account.account_id} not booked within 60 s")

    async def set_up(self) -> None:
        async with aiohttp.ClientSession() as session:
            gate = asyncio.Semaphore(16)

            async def one(index: int, small: bool) -> Account:
                async with gate:
                    return await self._account(session, index, small)

            made = await asyncio.gather(
                *(one(i, False) for i in range(self.args.accounts)),
                *(one(i, True) for i in range(self.args.small_accounts)))
            self.accounts = list(made)
            self.watcher = await self._user(session, f"meme-{self.run_id}-watcher")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # a market buy needs its reference quote
                status, body = await self._json(
                    session, "GET", f"/v1/quotes?symbols={','.join(SYMBOLS)}", None,
                    self.watcher)
                if status == 200 and len(body["quotes"]) == len(SYMBOLS):
                    return
                await asyncio.sleep(0.5)
            raise RuntimeError(f"no quote for every one of {SYMBOLS} within 60 s: {body}")

    # -- the load --

    async def load(self, schedule: Schedule) -> None:
        regular = [a for a in self.accounts if not a.small]
        hot_accounts = _interleave(regular, [a for a in self.accounts if a.small])
        connector = aiohttp.TCPConnector(limit=IN_FLIGHT_MAX)
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        gate = asyncio.Semaphore(IN_FLIGHT_MAX)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def place(order: Order) -> None:
                body = {"account_id": order.account.account_id, "symbol": order.symbol,
                        "side": order.side, "order_type": "market", "quantity": "1",
                        "time_in_force": "day"}
                async with gate:
                    try:
                        async with session.post(f"{self.base}/v1/orders", json=body, headers={
                                **order.account.auth, "Idempotency-Key": order.key}) as answer:
                            order.status = answer.status
                            content = await answer.json(content_type=None)
                    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
                        order.reason = type(error).__name__
                        return
                    finally:
                        order.answered = time.time()
                if order.status not in (201, 202):
                    content = content if isinstance(content, dict) else {}
                    order.reason = content.get("reason") or content.get("code")
                    if order.status == 422 and content.get("code") != "order_rejected":
                        order.reason = "validation"

            async def stream(symbol: str, accounts: list[Account]) -> None:
                # Each stream starts at another account, so the symbols do not reach one
                # account at the same instant; an account's every SELL_EVERY-th order of the
                # stream is a sell (of what its earlier buys got).
                offset = SYMBOLS.index(symbol) * len(accounts) // len(SYMBOLS)
                n = 0
                credit, last = 0.0, time.time()
                while True:
                    now = time.time()
                    if now >= schedule.end:
                        return
                    rate = self.args.orders_per_s * (schedule.hot_factor(now) if symbol == HOT
                                                     else 1.0)
                    credit += rate * (now - last)
                    last = now
                    while credit >= 1.0:
                        credit -= 1.0
                        turn = (n + offset) // len(accounts)
                        order = Order(symbol, schedule.window(now),
                                      accounts[(n + offset) % len(accounts)],
                                      f"meme-{self.run_id}-{symbol}-{n}",
                                      "sell" if turn % SELL_EVERY == SELL_EVERY - 1 else "buy",
                                      now)
                        n += 1
                        self.orders.append(order)
                        task = asyncio.create_task(place(order))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    await asyncio.sleep(TICK_S)

            await asyncio.sleep(max(0.0, schedule.start - time.time()))
            await asyncio.gather(*(stream(s, hot_accounts if s == HOT else regular)
                                   for s in SYMBOLS))
            if tasks:  # every request answered or timed out (HTTP_TIMEOUT_S)
                await asyncio.wait(tasks, timeout=HTTP_TIMEOUT_S + 5)

    # -- quotes, as a user sees them --

    async def watch(self) -> None:
        """One WebSocket watching every symbol: each quote frame's venue time and arrival."""
        url = self.base.replace("http://", "ws://") + "/v1/stream"
        token = self.watcher["Authorization"].split(" ", 1)[1]
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                await ws.send_json({"op": "auth", "token": token})
                await ws.send_json({"op": "subscribe", "quotes": list(SYMBOLS)})
                reader = asyncio.ensure_future(self._frames(ws))
                await self.stop_watching.wait()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        except (aiohttp.ClientError, OSError) as error:
            self.ws_errors.append(repr(error))

    async def _frames(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            at = time.time()
            frame = json.loads(message.data)
            if frame.get("type") == "quote":
                quote = frame["quote"]
                self.ws_quotes.append(QuoteSeen(quote["symbol"],
                                                _instant(quote["venue_time"]), at))
                self.ws_latest[quote["symbol"]] = quote
            elif frame.get("type") == "error":
                self.ws_errors.append(message.data)

    async def sample_cache(self) -> None:
        """GET /v1/quotes every CACHE_SAMPLE_S: the age of each symbol's cached quote."""
        async with aiohttp.ClientSession() as session:
            while not self.stop_watching.is_set():
                try:
                    status, body = await self._json(
                        session, "GET", f"/v1/quotes?symbols={','.join(SYMBOLS)}", None,
                        self.watcher)
                except (aiohttp.ClientError, ValueError):
                    status, body = 0, None
                now = time.time()
                if status == 200:
                    for quote in body["quotes"]:
                        self.cache_ages[quote["symbol"]].append(
                            (now, now - _instant(quote["venue_time"])))
                try:
                    await asyncio.wait_for(self.stop_watching.wait(), CACHE_SAMPLE_S)
                except TimeoutError:
                    pass

    async def cached_quote(self, symbol: str) -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as session:
            status, body = await self._json(session, "GET", f"/v1/quotes?symbols={symbol}",
                                            None, self.watcher)
        return body["quotes"][0] if status == 200 and body["quotes"] else None

    async def portfolios(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            gate = asyncio.Semaphore(16)

            async def one(account: Account) -> dict[str, Any]:
                async with gate:
                    status, body = await self._json(
                        session, "GET", f"/v1/portfolio?account_id={account.account_id}", None,
                        account.auth)
                return {"account_id": account.account_id, "status": status, "body": body}

            return list(await asyncio.gather(*(one(a) for a in self.accounts)))


def _interleave(first: list[Account], second: list[Account]) -> list[Account]:
    """Every account of both lists, alternating while both last."""
    out: list[Account] = []
    for index in range(max(len(first), len(second))):
        out += [lst[index] for lst in (first, second) if index < len(lst)]
    return out


def _instant(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---- the shards -----------------------------------------------------------------------------


def shard_rows(shard_dsns: list[str], order_ids: list[str]) -> dict[str, Any]:
    """Each order's state and reason as its shard records it, and every user ledger balance
    below zero (cash, held cash, shares of any bucket), with the lowest cash balance."""
    import psycopg

    orders: dict[str, tuple[str, str | None]] = {}
    negative: list[dict[str, str]] = []
    lowest_cash: Decimal | None = None
    for dsn in shard_dsns:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            for order_id, state, reason in conn.execute(
                    "SELECT order_id, state, reason FROM orders WHERE order_id = ANY(%s)",
                    (order_ids,)):
                orders[order_id] = (state, reason)
            for account, asset, balance in conn.execute(
                    "SELECT ledger_account, asset, balance FROM account_balances"
                    " WHERE ledger_account LIKE 'user:%%' AND balance < 0"):
                negative.append({"ledger_account": account, "asset": asset,
                                 "balance": str(balance)})
            row = conn.execute("SELECT min(balance) FROM account_balances"
                               " WHERE ledger_account LIKE 'user:%%:cash'").fetchone()
            if row and row[0] is not None:
                lowest_cash = row[0] if lowest_cash is None else min(lowest_cash, row[0])
    return {"orders": orders, "negative": negative, "lowest_cash": lowest_cash}


# ---- the figures ----------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None}
    return {"n": len(values), "p50": round(percentile(values, 0.50) * 1000, 1),
            "p99": round(percentile(values, 0.99) * 1000, 1)}


def order_figures(orders: list[Order], record: TopicRecord,
                  final: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """The figures of a set of orders (one symbol in one window, or several)."""
    intake_refused: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    post: list[float] = []
    fill: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)
    acknowledged = decided = filled = unanswered = 0
    for order in orders:
        if order.status is None:
            unanswered += 1
        elif not order.acknowledged:
            intake_refused[f"{order.status}:{order.reason}"] += 1
        if not order.acknowledged:
            continue
        if order.answered is not None:
            post.append(order.answered - order.due)
        acknowledged += 1
        order_id = order.order_id
        state, reason = final.get(order_id, (None, None))
        if state in TERMINAL:
            decided += 1
        if state == "filled":
            filled += 1
        elif state == "rejected":
            refusals[reason or "unknown"] += 1
        command_at = record.command_at.get(order_id)
        first_seen = record.first_event_seen.get(order_id)
        if command_at is not None:
            stages["intake"].append(command_at - order.due)
            if first_seen is not None:
                stages["risk"].append(first_seen - command_at)
        seen_final = record.final.get(order_id)
        if seen_final is not None and seen_final[0] == "filled":
            fill.append(seen_final[2] - order.due)
            report_at = record.fill_report_at.get(order_id)
            if report_at is not None and command_at is not None:
                stages["to_fill_report"].append(report_at - command_at)
                stages["booking"].append(seen_final[2] - report_at)
    return {"sent": len(orders), "acknowledged": acknowledged,
            "refused_at_intake": dict(intake_refused), "unanswered": unanswered,
            "decided": decided, "filled": filled, "risk_refusals": dict(refusals),
            "post_ms": _ms(post), "fill_ms": _ms(fill),
            "stages_ms": {name: _ms(values) for name, values in stages.items()}}


def quote_figures(symbol: str, window: str, schedule: Schedule, record: TopicRecord,
                  ws_quotes: list[QuoteSeen], cache_ages: list[tuple[float, float]]
                  ) -> dict[str, Any]:
    start, end = (schedule.baseline_at, schedule.spike_at) if window == "baseline" else \
        (schedule.spike_at, schedule.end)
    produced = sum(1 for t in record.quote_times.get(symbol, []) if start <= t < end)
    seen = [q for q in ws_quotes if q.symbol == symbol and start <= q.venue_time < end]
    ages = [q.at - q.venue_time for q in seen]
    cached = [age for at, age in cache_ages if start <= at < end]
    return {"produced": produced, "delivered_ws": len(seen),
            "delivered_share": round(len(seen) / produced, 3) if produced else None,
            "produced_per_s": round(produced / (end - start), 1),
            "ws_age_ms": {**_ms(ages), "max": round(max(ages) * 1000, 1) if ages else None},
            "cache_age_ms": {**_ms(cached),
                             "max": round(max(cached) * 1000, 1) if cached else None}}


def _ratio(spike: float | None, baseline: float | None) -> float | None:
    return round(spike / baseline, 2) if spike is not None and baseline else None


# ---- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-s", type=float, default=60.0)
    parser.add_argument("--spike-s", type=float, default=60.0)
    parser.add_argument("--factor", type=float, default=7.0,
                        help="the hot symbol's orders and quotes in the spike, x baseline")
    parser.add_argument("--ramp-s", type=float, default=2.0,
                        help="the spike rises to --factor over this many seconds")
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--orders-per-s", type=float, default=4.0,
                        help="market orders per second per symbol at baseline")
    parser.add_argument("--hot-quotes-per-s", type=float, default=10.0,
                        help="the hot symbol's quotes per second at baseline (the other "
                             "symbols' feed runs at this rate per symbol throughout)")
    parser.add_argument("--accounts", type=int, default=40,
                        help="accounts of $1,000,000 trading every symbol")
    parser.add_argument("--small-accounts", type=int, default=20,
                        help="accounts of --small-deposit trading the hot symbol only")
    parser.add_argument("--small-deposit", default="150.00")
    parser.add_argument("--market-data-processes", type=int, default=2)
    parser.add_argument("--drain-timeout-s", type=float, default=90.0)
    parser.add_argument("--no-reconcile", dest="reconcile", action="store_false",
                        help="skip `brokerage reconcile` at the end")
    args = parser.parse_args(argv)
    loaded = args.warmup_s + args.baseline_s + args.spike_s
    if loaded > LOAD_S_MAX:
        parser.error(f"--warmup-s + --baseline-s + --spike-s is {loaded:.0f} s; at most "
                     f"{LOAD_S_MAX:.0f} (the tokens' lifetime bounds the run)")
    if min(args.baseline_s, args.spike_s, args.orders_per_s, args.factor) <= 0 or \
            args.accounts < 1:
        parser.error("windows, rates, --factor and --accounts must be positive")
    return args


def run(stack: StackProcess, args: argparse.Namespace) -> dict[str, Any]:
    """The spike on a started stack; returns the figures."""
    stack.read_until("healthy")
    endpoints = stack.endpoints()
    bootstrap = endpoints["bootstrap_servers"]
    prefix = endpoints.get("topic_prefix", "")
    client = Client(stack.base_url, args)
    tail = Tail(bootstrap, prefix)
    # The hot feed first, at its baseline rate: the set-up waits for every symbol's quote.
    feed = HotFeed(bootstrap, prefix, args.hot_quotes_per_s, Schedule.of(args, float("inf")))
    loop = asyncio.new_event_loop()
    try:
        feed.start()
        setup_started = time.monotonic()
        loop.run_until_complete(client.set_up())
        setup_s = time.monotonic() - setup_started
        tail.start()
        schedule = feed.schedule = Schedule.of(args, time.time() + 1.0)
        cpu: dict[str, dict[str, Any]] = {}
        latest = loop.run_until_complete(_load_and_watch(client, feed, schedule, stack, cpu))
        drain = _drain(client, endpoints["shard_dsns"], args.drain_timeout_s)
        tail.stop()
        portfolios = loop.run_until_complete(client.portfolios())
    finally:
        if feed.running:
            feed.stop()
        tail.stop()
        loop.close()
    reconcile: dict[str, Any] | None = None
    if args.reconcile:
        from tests.integration.compose.auditor import run_reconcile

        code, text = run_reconcile({"BROKERAGE_DATA_DIR": str(stack.data_dir),
                                    "BROKERAGE_STACK": str(stack.stack_file)})
        reconcile = {"exit_code": code, "last_lines": text.splitlines()[-3:]}
    return _figures(args, schedule, client, tail, drain, portfolios, cpu, latest, reconcile,
                    setup_s, feed)


async def _load_and_watch(client: Client, feed: HotFeed, schedule: Schedule,
                          stack: StackProcess, cpu: dict[str, dict[str, Any]]
                          ) -> dict[str, Any]:
    """The load with the WebSocket watcher and the cache sampler beside it and each window's
    CPU per service metered; then the hot feed stops and its last quote is looked for."""
    watchers = [asyncio.ensure_future(client.watch()),
                asyncio.ensure_future(client.sample_cache())]

    async def meter() -> None:
        for window, at, until in (("baseline", schedule.baseline_at, schedule.spike_at),
                                  ("spike", schedule.spike_at, schedule.end)):
            await asyncio.sleep(max(0.0, at - time.time()))
            gauge = CpuMeter(stack)
            gauge.start()
            busy_before, load_before = _machine_busy_s(), os.getloadavg()[0]
            await asyncio.sleep(max(0.0, until - time.time()))
            used, elapsed = gauge.stop()
            busy = (_machine_busy_s() - busy_before) / elapsed
            cores = {name: round(s / elapsed, 3) for name, s in
                     sorted(used.items(), key=lambda item: -item[1]) if s > 0.005}
            ours = sum(used.values()) / elapsed
            cpu[window] = {
                "per_service": cores, "stack_and_load_generator": round(ours, 2),
                "machine_busy": round(busy, 2),
                "outside_this_run": round(max(busy - ours, 0.0), 2),
                "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}

    try:
        await asyncio.gather(client.load(schedule), meter())
        last = await asyncio.get_running_loop().run_in_executor(None, feed.stop)
        return await _latest_delivered(client, last)
    finally:
        client.stop_watching.set()
        await asyncio.gather(*watchers, return_exceptions=True)


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every core; /proc/stat)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


async def _latest_delivered(client: Client, latest: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the hot symbol's last quote produced reached the WebSocket and the cache, and
    how long after the feed stopped (bounded: LATEST_QUOTE_WAIT_S)."""
    if latest is None:
        return {"produced": None, "ws_delivered": False, "cache_delivered": False}
    wanted = _instant(latest["venue_time"])
    stopped = time.time()
    found: dict[str, float | None] = {"ws": None, "cache": None}
    deadline = time.monotonic() + LATEST_QUOTE_WAIT_S
    while time.monotonic() < deadline and None in found.values():
        now = time.time()
        seen = client.ws_latest.get(HOT)
        if found["ws"] is None and seen and _instant(seen["venue_time"]) == wanted:
            found["ws"] = now - stopped
        if found["cache"] is None:
            cached = await client.cached_quote(HOT)
            if cached and _instant(cached["venue_time"]) == wanted:
                found["cache"] = time.time() - stopped
        await asyncio.sleep(0.1)
    seen = client.ws_latest.get(HOT) or {}
    return {"produced": {k: latest.get(k) for k in ("venue_time", "bid", "ask")},
            "ws_delivered": found["ws"] is not None,
            "ws_last_seen_venue_time": seen.get("venue_time"),
            "cache_delivered": found["cache"] is not None,
            "ws_after_feed_stop_s": None if found["ws"] is None else round(found["ws"], 2),
            "cache_after_feed_stop_s": None if found["cache"] is None
            else round(found["cache"], 2)}


@dataclass
class Drain:
    seconds: float
    final: dict[str, tuple[str, str | None]]
    negative: list[dict[str, str]]
    lowest_cash: Decimal | None


def _drain(client: Client, shard_dsns: list[str], timeout_s: float) -> Drain:
    """Wait (bounded) until every acknowledged order is final in its shard; the shards'
    answers at the end."""
    wanted = [o.order_id for o in client.orders if o.acknowledged or o.status is None]
    acknowledged = {o.order_id for o in client.orders if o.acknowledged}
    started = time.monotonic()
    while True:
        rows = shard_rows(shard_dsns, wanted)
        final = {k: v for k, v in rows["orders"].items() if v[0] in TERMINAL}
        if acknowledged <= final.keys() or time.monotonic() - started > timeout_s:
            return Drain(round(time.monotonic() - started, 1), rows["orders"], rows["negative"],
                         rows["lowest_cash"])
        time.sleep(1.0)


def _figures(args: argparse.Namespace, schedule: Schedule, client: Client, tail: Tail,
             drain: Drain, portfolios: list[dict[str, Any]], cpu: dict[str, dict[str, Any]],
             latest: dict[str, Any], reconcile: dict[str, Any] | None, setup_s: float,
             feed: HotFeed) -> dict[str, Any]:
    record = tail.record
    windows: dict[str, Any] = {}
    for window in WINDOWS:
        in_window = [o for o in client.orders if o.window == window]
        others = [o for o in in_window if o.symbol != HOT]
        windows[window] = {
            "seconds": round(schedule.seconds(window), 1),
            "orders": {s: order_figures([o for o in in_window if o.symbol == s], record,
                                        drain.final) for s in SYMBOLS},
            "others": order_figures(others, record, drain.final),
            "quotes": {s: quote_figures(s, window, schedule, record, client.ws_quotes,
                                        client.cache_ages[s]) for s in SYMBOLS},
            "cpu_cores": cpu.get(window, {}),
        }
    goal = {}
    for measure in ("post_ms", "fill_ms"):
        before = windows["baseline"]["others"][measure]
        during = windows["spike"]["others"][measure]
        goal[measure] = {"baseline": before, "spike": during,
                         "ratio_p50": _ratio(during["p50"], before["p50"]),
                         "ratio_p99": _ratio(during["p99"], before["p99"])}
    ratios = [goal[m]["ratio_p99"] for m in goal]
    acknowledged = [o for o in client.orders if o.acknowledged]
    not_final = [o.order_id for o in acknowledged
                 if drain.final.get(o.order_id, ("missing", None))[0] not in TERMINAL]
    unanswered = [o for o in client.orders if o.status is None]
    negative_api = []
    for answer in portfolios:
        body = answer["body"] or {}
        bad = {k: body.get(k) for k in ("cash", "cash_held", "buying_power")
               if answer["status"] != 200 or Decimal(body.get(k) or "-1") < 0}
        if bad:
            negative_api.append({"account_id": answer["account_id"],
                                 "status": answer["status"], **bad})
    shards = Counter(a.shard for a in client.accounts)
    return {
        "benchmark": "meme_spike", "machine": machine(),
        "setup": {
            "stack": "brokerage up, embedded servers, every service; 2 shards x 2 partitions, "
                     f"4 symbol partitions, hot_symbols {{{HOT} = {HOT_PARTITION}}}, "
                     f"{args.market_data_processes} market-data processes",
            "hot_symbol": HOT, "factor": args.factor, "ramp_s": args.ramp_s,
            "warmup_s": args.warmup_s, "baseline_s": args.baseline_s, "spike_s": args.spike_s,
            "orders_per_s_per_symbol": args.orders_per_s,
            "orders": "market, 1 share, day; every 5th of a symbol's stream a sell",
            "quotes_per_s_per_symbol": args.hot_quotes_per_s,
            "accounts": {"regular": args.accounts, "regular_deposit_usd": REGULAR_DEPOSIT,
                         "small_hot_only": args.small_accounts,
                         "small_deposit_usd": args.small_deposit,
                         "per_shard": {str(k): v for k, v in sorted(shards.items())}},
            "users_setup_s": round(setup_s, 1),
            "latency": "from each order's due time (open loop): post = its HTTP answer; "
                       "fill = its `filled` event read from orders.events",
            "hot_quotes_produced": feed.produced,
        },
        "windows": windows,
        "others_latency": {**goal, "goal": "the other symbols' p99 in the spike within 2x "
                                           "of the baseline's",
                           "met": all(r is not None and r <= 2.0 for r in ratios)},
        "correctness": {
            "orders_sent": len(client.orders), "acknowledged": len(acknowledged),
            "decided": len(acknowledged) - len(not_final), "dropped": len(not_final),
            "dropped_orders": not_final[:10],
            "unanswered": len(unanswered),
            "unanswered_in_shard": sum(1 for o in unanswered if o.order_id in drain.final),
            "drain_s": drain.seconds,
            "negative_balances_in_shards": drain.negative[:10],
            "lowest_cash_in_shards": None if drain.lowest_cash is None
            else str(drain.lowest_cash),
            "accounts_checked_over_api": len(portfolios),
            "negative_over_api": negative_api[:10],
            "latest_hot_quote": latest,
            "websocket_errors": client.ws_errors[:5],
            "tail_decode_errors": tail.errors,
            "reconcile": reconcile,
        },
    }


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="meme-spike-"))
    stack = start_spike_stack(root, args.market_data_processes, args.hot_quotes_per_s)
    try:
        figures = run(stack, args)
        print(json.dumps(figures, indent=2), flush=True)
    finally:
        code = stack.stop()
        if code != 0:
            print(f"brokerage up exited {code}:\n{''.join(stack.output)[-3000:]}",
                  file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
