"""Faults around the FIX link: kill -9 and restart of either side, silence (stuck orders),
a silent market maker among two (breaker), duplicate and out-of-order reports."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from msgspec.structs import replace

from compose.embedded import free_port
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig
from gateways.fix.harness import ServiceProcess, TopicReader, launch, produce, quote
from gateways.simulator.config import SimulatorConfig
from state.ids import account_id_for
from state.messages import Alert, ExecType, ExecutionReport, OrderType, RouteNewOrder, Side
from state.topics import Topic, decode
from tests.integration.gateways.test_fix_roundtrip import new_order
from tests.integration.kafka_io import read_topic

pytestmark = pytest.mark.integration


class Link:
    """A gateway and its simulators on the test's topics, restartable."""

    def __init__(self, services, topics: str, tmp_path: Path,  # noqa: ANN001
                 sims: dict[str, dict[str, object]], **gateway: object) -> None:
        self.services, self.topics, self.tmp = services, topics, tmp_path
        self.sim_configs = {
            name: SimulatorConfig(bootstrap_servers=services.bootstrap_servers,
                                  topic_prefix=topics, port=free_port(),
                                  store_dir=str(tmp_path / name),
                                  sender_comp_id=name.upper(), **settings)  # type: ignore[arg-type]
            for name, settings in sims.items()}
        self.gw_config = FixGatewayConfig(
            bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
            store_dir=str(tmp_path / "gw"),
            market_makers=tuple(
                MarketMakerConfig(name=name, host="127.0.0.1", port=config.port,
                                  sender_comp_id="BROKER", target_comp_id=config.sender_comp_id)
                for name, config in self.sim_configs.items()),
            **gateway)  # type: ignore[arg-type]
        self.sims: dict[str, ServiceProcess] = {}
        self.gateway: ServiceProcess | None = None
        self.reader = TopicReader(services.bootstrap_servers, topics + Topic.EXECUTIONS)
        self.reports: list[ExecutionReport] = []

    def start_sim(self, name: str) -> None:
        self.sims[name] = launch("gateways.simulator", self.sim_configs[name],
                                 self.tmp / f"{name}.log")

    def start_gateway(self) -> None:
        self.gateway = launch("gateways.fix", self.gw_config, self.tmp / "gw.log")

    def start(self) -> None:
        for name in self.sim_configs:
            self.start_sim(name)
        self.start_gateway()

    def wait_logged_on(self, sessions: int, timeout_s: float = 15) -> None:
        """Until the gateway's log shows this many logons."""
        assert self.gateway is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.gateway.log_tail(500).count(" logon FIX") >= sessions:
                return
            time.sleep(0.05)
        raise AssertionError(f"not logged on: {self.logs()}")

    def send(self, orders: list[RouteNewOrder]) -> None:
        produce(self.services.bootstrap_servers, self.topics + Topic.ORDERS_ROUTE,
                [(order.account_id, order) for order in orders])

    def collect(self, done, timeout_s: float = 30) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while not done(self.reports) and time.monotonic() < deadline:
            self.reports += self.reader.executions(until=10_000, timeout_s=0.1)

    def logs(self) -> str:
        parts = [p.log_tail() for p in (self.gateway, *self.sims.values()) if p]
        return "\n---\n".join(parts)

    def stop(self) -> None:
        self.reader.close()
        codes = [self.gateway.stop() if self.gateway else 0]
        codes += [sim.stop() for sim in self.sims.values()]
        assert codes == [0] * len(codes), self.logs()


def filled_quantities(reports: list[ExecutionReport]) -> dict[str, Decimal]:
    """Per order, the filled quantity as an idempotent consumer books it (by exec_id)."""
    unique = {r.exec_id: r for r in reports if r.exec_type is ExecType.TRADE}
    totals: dict[str, Decimal] = {}
    for report in unique.values():
        totals[report.order_id] = totals.get(report.order_id, Decimal(0)) + report.last_qty
    return totals


def all_filled(orders: list[RouteNewOrder]):  # noqa: ANN201
    def done(reports: list[ExecutionReport]) -> bool:
        filled = filled_quantities(reports)
        return all(filled.get(o.order_id) == o.quantity for o in orders)
    return done


def orders_for(tag: str, count: int, services) -> list[RouteNewOrder]:  # noqa: ANN001
    accounts = [account_id_for(f"{tag}{i}", i % services.shards, services.shards,
                               services.partitions_per_shard) for i in range(4)]
    return [new_order(accounts[i % 4], f"{tag}-{i}", "1000" if i % 3 == 0 else "7",
                      side=Side.BUY if i % 2 else Side.SELL) for i in range(count)]


def quote_aapl(link: Link) -> None:
    produce(link.services.bootstrap_servers, link.topics + Topic.QUOTES,
            [("AAPL", quote("AAPL", "209.90", "210.00"))])


@pytest.mark.parametrize("victim", ["gateway", "simulator", "session_drops"])
def test_kill9_and_restart_loses_no_report(services, topics, tmp_path: Path,
                                           victim: str) -> None:
    """Either side killed mid-stream (or the simulator dropping the session every few
    reports): every order still fills exactly, and no ExecID reaches the topic twice."""
    settings: dict[str, object] = (
        {"drop_session_every_reports": 20} if victim == "session_drops" else {})
    link = Link(services, topics, tmp_path, {"sim1": settings})
    quote_aapl(link)
    link.start()
    try:
        first = orders_for("a", 30, services)
        link.send(first)
        link.collect(lambda reports: len(reports) >= 10)
        if victim == "gateway":
            assert link.gateway is not None
            link.gateway.kill()
        elif victim == "simulator":
            link.sims["sim1"].kill()
        second = orders_for("b", 30, services)
        link.send(second)  # while one side is down
        time.sleep(0.5)
        if victim == "gateway":
            link.start_gateway()
        elif victim == "simulator":
            link.start_sim("sim1")
        everything = first + second
        link.collect(all_filled(everything), timeout_s=40)
        filled = filled_quantities(link.reports)
        missing = [o.order_id for o in everything if filled.get(o.order_id) != o.quantity]
        assert not missing, (missing, link.logs())
        duplicates = [e for e, n in Counter(r.exec_id for r in link.reports).items() if n > 1]
        assert not duplicates, duplicates
    finally:
        link.stop()


def test_silent_market_maker_leads_to_status_cancel_and_alert(services, topics,
                                                               tmp_path: Path) -> None:
    link = Link(services, topics, tmp_path, {"mute": {"silent": True}},
                stuck_order_timeout_ms=400)
    quote_aapl(link)
    events = TopicReader(services.bootstrap_servers, topics + Topic.ORDERS_EVENTS)
    link.start()
    try:
        # Logged on first: an order routed before logon waits in QuickFIX's store and goes
        # out as a resend after the logon's status requests (the market maker still reads it
        # first, by sequence number), which would put 35=D after 35=H in the log below.
        link.wait_logged_on(1, timeout_s=60)
        [order] = orders_for("s", 1, services)
        link.send([order])
        alerts: list[Alert] = []
        deadline = time.monotonic() + 30
        while not alerts and time.monotonic() < deadline:
            alerts = [decode(Topic.ORDERS_EVENTS, v) for _, v in events.poll(0.2)]
        assert alerts, link.logs()
        assert alerts[0].code == "stuck_order" and alerts[0].order_id == order.order_id
    finally:
        events.close()
        link.stop()
    sent = "".join(p.read_text() for p in (tmp_path / "gw" / "log").glob("*messages*"))
    # NewOrderSingle, then OrderStatusRequest, then OrderCancelRequest, in this order.
    kinds = [part for part in ("35=D", "35=H", "35=F") if part in sent]
    assert kinds == ["35=D", "35=H", "35=F"]
    assert sent.index("35=D") < sent.index("35=H") < sent.index("35=F")


def test_silent_market_maker_trips_the_breaker(services, topics, tmp_path: Path) -> None:
    link = Link(services, topics, tmp_path,
                {"good": {"duplicate_reports": True, "out_of_order_reports": True},
                 "mute": {"silent": True}},
                breaker_timeout_ms=300, stuck_order_timeout_ms=60_000)
    quote_aapl(link)
    link.start()
    try:
        link.wait_logged_on(2)
        warm = orders_for("w", 2, services)  # round robin: one to each market maker
        link.send(warm)
        link.collect(lambda reports: any(r.exec_type is ExecType.TRADE for r in reports))
        time.sleep(0.6)  # the mute one's breaker opens
        later = orders_for("l", 6, services)
        link.send(later)
        link.collect(all_filled(later))
        filled = filled_quantities(link.reports)
        assert all(filled.get(o.order_id) == o.quantity for o in later), link.logs()
        assert {r.market_maker for r in link.reports} == {"good"}
        assert len([o for o in warm if o.order_id in filled]) == 1
        # Duplicated reports reached the topic once; reversed partial fills all arrived.
        counts = Counter(r.exec_id for r in link.reports)
        assert max(counts.values()) == 1
        large = later[0]
        parts = [r.last_qty for r in link.reports
                 if r.order_id == large.order_id and r.exec_type is ExecType.TRADE]
        assert sorted(parts) == [300, 300, 400]
    finally:
        link.stop()


def fill_then_stop_gateway(link: Link, tag: str, services) -> list[RouteNewOrder]:  # noqa: ANN001
    """Six orders filled, then a clean stop of the gateway (its stores kept for a restart)."""
    quote_aapl(link)
    link.start()
    orders = orders_for(tag, 6, services)
    link.send(orders)
    link.collect(all_filled(orders))
    assert link.gateway is not None and link.gateway.stop() == 0
    return orders


def restart_with_store_rolled_back(link: Link, tmp_path: Path, next_offset_sql: str) -> int:
    """The gateway restarted on a store that says nothing was delivered after inbound seq 1
    and no ExecID was forwarded, with its `executions` offsets set to `next_offset_sql`; how
    many ExecIDs it forgot."""
    db = sqlite3.connect(tmp_path / "gw" / "gateway.sqlite")
    with db:
        db.execute("UPDATE inbound SET delivered_seq = 1")
        forgotten = db.execute("DELETE FROM forwarded").rowcount
        db.execute(f"UPDATE executions_tail SET next_offset = {next_offset_sql}")
    db.close()
    link.start_gateway()
    return forgotten


def assert_resend_forwards_nothing_twice(link: Link, orders: list[RouteNewOrder], tag: str,
                                         services) -> None:  # noqa: ANN001
    later = orders_for(tag, 3, services)  # filled after the resend: sequence order
    link.send(later)
    link.collect(all_filled(orders + later), timeout_s=20)
    twice = [e for e, n in Counter(r.exec_id for r in link.reports).items() if n > 1]
    assert not twice, link.logs()


def test_restart_resends_what_was_not_delivered(services, topics, tmp_path: Path) -> None:
    """The crash window made explicit: the gateway's record says fewer inbound messages were
    delivered than its FIX store received, and some ExecIDs were never forwarded. On restart
    the session asks for a resend: the missing reports arrive (poss_dup), the others are
    dropped as duplicates."""
    link = Link(services, topics, tmp_path, {"sim1": {}})
    try:
        fill_then_stop_gateway(link, "r", services)
        before = list(link.reports)
        # The last record of each partition is where the store's offsets point: its ExecID is
        # always committed with them (the restart checks it is still there).
        records = read_topic(services.bootstrap_servers, topics + Topic.EXECUTIONS,
                             until=lambda found: len(found) >= len(before))
        last = {r.partition: r.offset for r in sorted(records, key=lambda r: r.offset)}
        lost = sorted(decode(Topic.EXECUTIONS, r.value).exec_id for r in records
                      if r.offset != last[r.partition])[::2]
        db = sqlite3.connect(tmp_path / "gw" / "gateway.sqlite")
        with db:
            db.execute("UPDATE inbound SET delivered_seq = 1")
            db.executemany("DELETE FROM forwarded WHERE exec_id = ?", [(e,) for e in lost])
        db.close()
        link.start_gateway()
        link.collect(lambda reports: len(reports) >= len(before) + len(lost), timeout_s=20)
        again = link.reports[len(before):]
        assert sorted(r.exec_id for r in again) == lost, link.logs()
        assert all(r.poss_dup for r in again)
        assert link.gateway is not None
        assert "resuming inbound at 2" in link.gateway.log_tail(200)
    finally:
        link.stop()


def test_restart_counts_what_reached_the_topic_after_the_last_commit(
        services, topics, tmp_path: Path) -> None:
    """The other crash window: the broker acknowledged reports whose ExecIDs the store had not
    committed yet (and its executions offsets lag behind them). On restart the market maker
    resends them; the gateway has read them back from the topic first, so none goes twice."""
    link = Link(services, topics, tmp_path, {"sim1": {}})
    try:
        orders = fill_then_stop_gateway(link, "c", services)
        forgotten = restart_with_store_rolled_back(link, tmp_path, "0")
        assert forgotten > 0
        assert_resend_forwards_nothing_twice(link, orders, "d", services)
        assert link.gateway is not None
        assert f"{forgotten} ExecIDs found on" in link.gateway.log_tail(500), link.logs()
        assert "resuming inbound at 2" in link.gateway.log_tail(500)
    finally:
        link.stop()


def test_restart_after_the_broker_forgot_its_topics(services, topics, tmp_path: Path) -> None:
    """The embedded broker keeps topics in memory: after its restart `executions` counts from 0
    again while the gateway's store still holds the old offsets. The gateway notices (the
    record before its offset is not one it forwarded) and reads the partition from 0, so a
    resend still forwards nothing twice and the store's offsets come back into range."""
    link = Link(services, topics, tmp_path, {"sim1": {}})
    try:
        orders = fill_then_stop_gateway(link, "f", services)
        restart_with_store_rolled_back(link, tmp_path, "next_offset + 1000")
        assert_resend_forwards_nothing_twice(link, orders, "g", services)
        assert link.gateway is not None
        assert "were recreated since the store's offsets" in link.gateway.log_tail(500)
    finally:
        link.stop()
    db = sqlite3.connect(tmp_path / "gw" / "gateway.sqlite")
    stored = sum(row[0] for row in db.execute("SELECT next_offset FROM executions_tail"))
    db.close()
    assert stored == len(link.reports)  # one record per report: the offsets are real again


def test_resting_order_survives_a_simulator_kill9(services, topics, tmp_path: Path) -> None:
    """A limit order rests at the simulator, which is killed and restarted: the gateway asks
    the order's status on logon, and the next quote that crosses fills it."""
    link = Link(services, topics, tmp_path, {"sim1": {}})
    quote_aapl(link)
    link.start()
    try:
        [base] = orders_for("k", 1, services)
        resting = replace(base, order_type=OrderType.LIMIT, limit_price=Decimal("209.50"),
                          side=Side.BUY, quantity=Decimal(5))
        link.send([resting])
        link.collect(lambda reports: any(r.exec_type is ExecType.NEW for r in reports))
        link.sims["sim1"].kill()
        link.start_sim("sim1")
        link.collect(lambda reports: any(r.exec_type is ExecType.ORDER_STATUS
                                         for r in reports), timeout_s=20)
        # One on logon; another may come from the gateway's own reconciliation of open orders.
        statuses = [r for r in link.reports if r.exec_type is ExecType.ORDER_STATUS]
        assert all(s.leaves_qty == 5 and s.cum_qty == 0 for s in statuses), link.logs()
        produce(services.bootstrap_servers, topics + Topic.QUOTES,
                [("AAPL", quote("AAPL", "209.30", "209.40"))])
        link.collect(all_filled([resting]))
        [fill] = [r for r in link.reports if r.exec_type is ExecType.TRADE]
        assert (fill.last_qty, fill.last_px) == (5, Decimal("209.38"))
    finally:
        link.stop()
