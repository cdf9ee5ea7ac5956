"""Durable executions and orders in flight across a broker reset (issue 10 items 3 and 4),
with every real component: account topology, shard sink, PostgreSQL shards, the FIX gateway
and the simulator over QuickFIX on a real socket.

A reset is played as the embedded broker's restart looks to the stack: the topics are gone
(a fresh prefix, prepared as `brokerage up` does, so a new broker epoch), the topology's local
state is gone (a new state dir: accounts are rebuilt from the shards), and the shards, the FIX
gateway's store and the simulator's store outlive it."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from compose.embedded import free_port
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig
from gateways.fix.harness import ServiceProcess, TopicReader, launch, produce, quote
from gateways.simulator.config import SimulatorConfig
from sinks.config import SinkConfig
from state.ids import account_id_for, cl_ord_id_for, order_id_for
from state.messages import (
    Deposit,
    ExecType,
    OrderType,
    PlaceOrder,
    RouteNewOrder,
    Side,
    TimeInForce,
)
from state.shard_store import migrate
from state.topics import Topic
from topologies.config import AccountTopologyConfig, KafkaSettings

pytestmark = pytest.mark.integration

T0 = dt.datetime.now(dt.UTC)


def _run_topology(config: AccountTopologyConfig) -> None:
    from topologies.accounts import run

    run(config)


def new_prefix(services) -> str:  # noqa: ANN001
    """Every topic again, empty, under a new broker epoch: the broker forgot its log."""
    from compose.kafka import prepare_topics
    from state.topics import topic_specs

    prefix = f"t{uuid.uuid4().hex[:8]}."
    prepare_topics(services.bootstrap_servers, prefix,
                   topic_specs(prefix, services.account_partitions, 2))
    return prefix


def eventually(check: Callable[[], Any], timeout_s: float, what: str,
               logs: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}\n{logs()}")


class Stack:
    """The services of one broker epoch (one topic prefix) on the shared shards and stores."""

    def __init__(self, services, dsns: tuple[str, ...], tmp: Path, sim_port: int) -> None:  # noqa: ANN001
        self.services, self.dsns, self.tmp, self.sim_port = services, dsns, tmp, sim_port
        self.topology: Any = None
        self.sink: subprocess.Popen[bytes] | None = None
        self.sim: ServiceProcess | None = None
        self.gateway: ServiceProcess | None = None
        self.prefix = ""
        self.round = 0

    # -- services --------------------------------------------------------------------------

    def start_core(self, prefix: str) -> None:
        """Account topology (fresh local state) and shard sink on `prefix`."""
        self.prefix, self.round = prefix, self.round + 1
        config = AccountTopologyConfig(
            kafka=KafkaSettings(bootstrap_servers=self.services.bootstrap_servers,
                                topic_prefix=prefix),
            state_dir=str(self.tmp / f"state{self.round}"),
            account_partitions=self.services.account_partitions, shard_dsns=self.dsns,
            partitions_per_shard=self.services.partitions_per_shard,
            consumer_group=prefix + "accounts")
        self.topology = multiprocessing.get_context("spawn").Process(
            target=_run_topology, args=(config,))
        self.topology.start()
        sink = SinkConfig(bootstrap_servers=self.services.bootstrap_servers,
                          topic_prefix=prefix, shard_dsns=self.dsns,
                          partitions_per_shard=self.services.partitions_per_shard,
                          commit_interval_s=0.2)
        self.sink = launch("sinks.service", sink, self.tmp / f"sink{self.round}.log").popen

    def stop_core(self) -> None:
        if self.topology is not None:
            self.topology.terminate()
            self.topology.join(20)
            if self.topology.is_alive():
                self.topology.kill()
                self.topology.join(5)
            self.topology = None
        if self.sink is not None:
            self.sink.send_signal(signal.SIGTERM)
            try:
                self.sink.wait(20)
            except subprocess.TimeoutExpired:
                self.sink.kill()
                self.sink.wait(5)
            self.sink = None

    def start_fix(self, *, silent: bool = False, **gateway: Any) -> None:
        sim = SimulatorConfig(bootstrap_servers=self.services.bootstrap_servers,
                              topic_prefix=self.prefix, port=self.sim_port,
                              store_dir=str(self.tmp / "sim"), sender_comp_id="SIM1",
                              silent=silent)
        self.sim = launch("gateways.simulator", sim, self.tmp / f"sim{self.round}.log")
        config = FixGatewayConfig(
            bootstrap_servers=self.services.bootstrap_servers, topic_prefix=self.prefix,
            store_dir=str(self.tmp / "gw"),
            market_makers=(MarketMakerConfig(name="sim1", host="127.0.0.1", port=self.sim_port,
                                             sender_comp_id="BROKER", target_comp_id="SIM1"),),
            shard_dsns=self.dsns, partitions_per_shard=self.services.partitions_per_shard,
            booking_check_interval_ms=300, reforward_after_ms=60_000,
            stuck_order_timeout_ms=600_000, **gateway)
        self.gateway = launch("gateways.fix", config, self.tmp / f"gw{self.round}.log")

    def stop_fix(self) -> None:
        codes = [p.stop() for p in (self.gateway, self.sim) if p is not None]
        self.gateway = self.sim = None
        assert codes == [0] * len(codes), self.logs()

    def stop(self) -> None:
        for process in (self.gateway, self.sim):
            if process is not None:
                process.stop()
        self.stop_core()

    def logs(self) -> str:
        parts = [p.log_tail(40) for p in (self.gateway, self.sim) if p is not None]
        for log in sorted(self.tmp.glob("gw*.log")):
            parts.append(f"{log.name}:\n" + "\n".join(log.read_text().splitlines()[-40:]))
        return "\n---\n".join(parts)

    # -- what the tests do -----------------------------------------------------------------

    def quote(self, bid: str, ask: str) -> None:
        produce(self.services.bootstrap_servers, self.prefix + Topic.QUOTES,
                [("GME", quote("GME", bid, ask))])

    def open_account(self, seed: str) -> str:
        """An account with a row in its shard (the topology takes orders of opened accounts
        only) and cash deposited."""
        shard = 0
        account = account_id_for(seed, shard, len(self.dsns), self.services.partitions_per_shard)
        with psycopg.connect(self.dsns[shard], autocommit=True) as conn:
            conn.execute("INSERT INTO accounts (account_id, user_id, shard) VALUES (%s, %s, %s)"
                         " ON CONFLICT DO NOTHING", (account, f"user-{seed}", shard))
        produce(self.services.bootstrap_servers, self.prefix + Topic.ORDERS_COMMANDS,
                [(account, Deposit(account_id=account, idempotency_key="dep-1",
                                   amount=Decimal("10000.00"), submitted_at=T0))])
        return account

    def place(self, account: str, key: str, order_type: OrderType = OrderType.MARKET,
              limit_price: str | None = None, reference: str = "20.00") -> str:
        produce(self.services.bootstrap_servers, self.prefix + Topic.ORDERS_COMMANDS, [
            (account, PlaceOrder(account_id=account, idempotency_key=key, symbol="GME",
                                 side=Side.BUY, order_type=order_type, quantity=Decimal(10),
                                 limit_price=Decimal(limit_price) if limit_price else None,
                                 submitted_at=dt.datetime.now(dt.UTC),
                                 reference_price=Decimal(reference),
                                 reference_time=dt.datetime.now(dt.UTC)))])
        return order_id_for(account, key)

    def shard_rows(self, query: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsns[0], autocommit=True) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def order_state(self, order_id: str) -> str | None:
        rows = self.shard_rows("SELECT state FROM orders WHERE order_id = %s", (order_id,))
        return rows[0][0] if rows else None

    def cash_held(self, account: str) -> Decimal:
        rows = self.shard_rows("SELECT balance FROM account_balances WHERE account_id = %s"
                               " AND ledger_account = %s AND asset = 'USD'",
                               (account, f"user:{account}:cash_held"))
        return rows[0][0] if rows else Decimal(0)

    def unbooked_in_store(self) -> int:
        with sqlite3.connect(self.tmp / "gw" / "gateway.sqlite") as db:
            return int(db.execute("SELECT count(*) FROM forwarded WHERE booked = 0")
                       .fetchone()[0])

    def sent_by_gateway(self, kind: str, cl_ord_id: str) -> int:
        """FIX messages of this type (35=) for this ClOrdID the gateway sent, by its log."""
        sent = "".join(p.read_text() for p in (self.tmp / "gw" / "log").glob("*messages*"))
        return sum(1 for line in sent.splitlines()
                   if f"\x0135={kind}\x01" in line and f"\x0111={cl_ord_id}\x01" in line
                   and "\x0149=BROKER\x01" in line)


@pytest.fixture
def shards(services) -> Iterator[tuple[str, ...]]:  # noqa: ANN001
    import psycopg as pg

    name = f"t_{uuid.uuid4().hex[:10]}"
    created: list[str] = []
    for dsn in services.shard_dsns:
        with pg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(dsn.rsplit("/", 1)[0] + f"/{name}")
    for dsn in created:
        migrate(dsn)
    try:
        yield tuple(created)
    finally:
        for dsn in services.shard_dsns:
            with pg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack(services, shards, topics, tmp_path: Path) -> Iterator[Stack]:  # noqa: ANN001
    running = Stack(services, shards, tmp_path, free_port())
    running.prefix = topics
    try:
        yield running
    finally:
        running.stop()


def test_a_fill_lost_with_the_broker_is_forwarded_again_and_booked_once(
        stack: Stack, services, topics: str) -> None:  # noqa: ANN001
    stack.start_core(topics)
    stack.quote("20.40", "20.50")
    stack.start_fix()
    account = stack.open_account("durable-a")
    # A limit buy below the market rests at the market maker.
    order_id = stack.place(account, "buy-1", OrderType.LIMIT, limit_price="20.00",
                           reference="20.50")
    eventually(lambda: stack.order_state(order_id) == "routed", 60, "order routed",
               stack.logs)
    eventually(lambda: stack.sent_by_gateway("D", order_id) == 1, 30, "order sent", stack.logs)
    # The account topology stops: the fill it is about to get will be lost with the broker.
    stack.stop_core()
    executions = TopicReader(services.bootstrap_servers, topics + Topic.EXECUTIONS)
    try:
        stack.quote("19.90", "20.00")
        fills = eventually(lambda: [r for r in executions.executions(100, 0.5)
                                    if r.exec_type is ExecType.TRADE], 30, "fill forwarded",
                           stack.logs)
    finally:
        executions.close()
    assert [f.order_id for f in fills] == [order_id]
    stack.stop_fix()
    assert stack.order_state(order_id) == "routed"

    # The broker forgets everything; the shards and the gateway's store live on.
    stack.start_core(new_prefix(services))
    stack.start_fix()
    eventually(lambda: stack.order_state(order_id) == "filled", 90, "fill booked",
               stack.logs)
    eventually(lambda: stack.unbooked_in_store() == 0, 30, "store settled", stack.logs)
    def fills_booked() -> int:
        return int(stack.shard_rows(
            "SELECT count(*) FROM ledger_transactions WHERE order_id = %s AND kind = 'fill'",
            (order_id,))[0][0])

    eventually(lambda: fills_booked() == 1, 30, "fill in the ledger", stack.logs)
    eventually(lambda: stack.cash_held(account) == 0, 30, "hold released", stack.logs)
    # Booked once, even with the report forwarded again (a later pass changes nothing).
    time.sleep(1.0)
    assert fills_booked() == 1


def test_an_open_order_never_sent_is_ended_after_a_reset_and_never_sent_later(
        stack: Stack, services, topics: str) -> None:  # noqa: ANN001
    stack.start_core(topics)
    account = stack.open_account("durable-b")
    order_id = stack.place(account, "buy-1")
    eventually(lambda: stack.order_state(order_id) == "routed", 60, "order routed")
    eventually(lambda: stack.cash_held(account) > 0, 30, "funds held")
    stack.stop_core()  # the route request is lost with the broker: no gateway read it

    prefix = new_prefix(services)
    stack.start_core(prefix)
    stack.quote("19.90", "20.00")
    stack.start_fix()
    eventually(lambda: stack.order_state(order_id) == "rejected", 90, "order ended",
               stack.logs)
    eventually(lambda: stack.cash_held(account) == 0, 30, "hold released", stack.logs)
    details = stack.shard_rows("SELECT detail FROM order_events WHERE order_id = %s AND "
                               "state = 'rejected'", (order_id,))
    assert details == [("not_routed_before_reset",)]
    # The same route request published again (a command re-decided) is not sent.
    produce(services.bootstrap_servers, prefix + Topic.ORDERS_ROUTE, [(account, RouteNewOrder(
        account_id=account, order_id=order_id, cl_ord_id=cl_ord_id_for(order_id), symbol="GME",
        side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal(10),
        time_in_force=TimeInForce.DAY, routed_at=dt.datetime.now(dt.UTC)))])
    eventually(lambda: "already sent; replayed route record ignored" in (
        stack.gateway.log_tail(200) if stack.gateway else ""), 30, "replay ignored",
        stack.logs)
    assert stack.sent_by_gateway("D", order_id) == 0


def test_a_sent_open_order_is_asked_about_and_ended_when_the_market_maker_lost_it(
        stack: Stack, services, topics: str) -> None:  # noqa: ANN001
    stack.start_core(topics)
    stack.quote("19.90", "20.00")
    # The market maker takes the order and answers nothing.
    stack.start_fix(silent=True)
    account = stack.open_account("durable-c")
    order_id = stack.place(account, "buy-1")
    eventually(lambda: stack.sent_by_gateway("D", order_id) == 1, 60, "order sent", stack.logs)
    eventually(lambda: stack.order_state(order_id) == "routed", 60, "order routed")
    stack.stop_fix()
    stack.stop_core()
    # The market maker lost its book (it does not know the order); its session goes on.
    (stack.tmp / "sim" / "book.sqlite").unlink()

    stack.start_core(new_prefix(services))
    stack.start_fix()
    eventually(lambda: stack.order_state(order_id) == "rejected", 90, "order ended",
               stack.logs)
    assert stack.sent_by_gateway("H", order_id) >= 1  # an OrderStatusRequest went out
    eventually(lambda: stack.cash_held(account) == 0, 30, "hold released", stack.logs)
    details = stack.shard_rows("SELECT detail FROM order_events WHERE order_id = %s AND "
                               "state = 'rejected'", (order_id,))
    assert len(details) == 1 and details[0][0].startswith("not_known_to_market_maker")
