"""A market order through the gateway to the simulator and back as `executions` records."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import pytest
from psutil import Process

from compose.embedded import free_port
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig
from gateways.fix.harness import TopicReader, launch, produce, quote
from gateways.simulator.config import SimulatorConfig
from state.ids import account_id_for, order_id_for
from state.messages import ExecType, ExecutionReport, OrderType, RouteNewOrder, Side, TimeInForce
from state.topics import Topic
from tests.integration.compose.stack_process import listeners

pytestmark = pytest.mark.integration


def new_order(account_id: str, key: str, quantity: str = "10", symbol: str = "AAPL",
              side: Side = Side.BUY, reference_price: str | None = "210.00") -> RouteNewOrder:
    order_id = order_id_for(account_id, key)
    return RouteNewOrder(
        account_id=account_id, order_id=order_id, cl_ord_id=order_id, symbol=symbol, side=side,
        order_type=OrderType.MARKET, quantity=Decimal(quantity),
        time_in_force=TimeInForce.DAY, routed_at=dt.datetime.now(dt.UTC),
        reference_price=Decimal(reference_price) if reference_price else None)


def test_market_order_fills_into_executions(services, topics, tmp_path: Path) -> None:
    port = free_port()
    sim_config = SimulatorConfig(bootstrap_servers=services.bootstrap_servers,
                                 topic_prefix=topics, port=port,
                                 store_dir=str(tmp_path / "sim"),
                                 partial_fill_qty_min=Decimal(1000))
    gw_config = FixGatewayConfig(
        bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
        market_makers=(MarketMakerConfig(name="sim1", host="127.0.0.1", port=port,
                                         sender_comp_id="BROKER", target_comp_id="MM1"),),
        store_dir=str(tmp_path / "gw"))
    account = account_id_for("roundtrip", 0, services.shards, services.partitions_per_shard)
    produce(services.bootstrap_servers, topics + Topic.QUOTES,
            [("AAPL", quote("AAPL", "209.90", "210.00"))])
    simulator = launch("gateways.simulator", sim_config, tmp_path / "sim.log")
    gateway = launch("gateways.fix", gw_config, tmp_path / "gw.log")
    reader = TopicReader(services.bootstrap_servers, topics + Topic.EXECUTIONS)
    try:
        time.sleep(0.5)  # let the simulator read the quote before the order arrives
        market = new_order(account, "k1", "10")
        large = new_order(account, "k2", "1000", side=Side.SELL)
        produce(services.bootstrap_servers, topics + Topic.ORDERS_ROUTE,
                [(account, market), (account, large)])
        reports: list[ExecutionReport] = list(reader.executions(until=6, timeout_s=30))
        assert len(reports) == 6, (reports, gateway.log_tail(), simulator.log_tail())
        # QuickFIX binds every interface; the simulator listens on its config's host only
        # (issue 14, item 3: `python -m gateways.simulator` runs itself with the bind shim).
        assert [(s.kind, s.ip, s.port) for s in listeners([Process(simulator.popen.pid)])] \
            == [("tcp", "127.0.0.1", port)]
    finally:
        reader.close()
        assert gateway.stop() == 0, gateway.log_tail()
        assert simulator.stop() == 0, simulator.log_tail()
    by_order = {o.order_id: [r for r in reports if r.order_id == o.order_id]
                for o in (market, large)}
    ack, fill = by_order[market.order_id]
    assert ack.exec_type is ExecType.NEW
    assert fill.exec_type is ExecType.TRADE
    # 210.00 improved by 1 bp = 209.979 -> 209.98
    assert (fill.last_qty, fill.last_px, fill.leaves_qty) == (Decimal(10), Decimal("209.98"), 0)
    assert fill.account_id == account and fill.market_maker == "sim1"
    assert fill.exec_id.startswith("sim1:") and fill.cl_ord_id == market.cl_ord_id
    sells = [r for r in by_order[large.order_id] if r.exec_type is ExecType.TRADE]
    # 209.90 improved by 1 bp = 209.92099 -> 209.92, in parts of 40/30/30 %.
    assert [r.last_qty for r in sells] == [Decimal(400), Decimal(300), Decimal(300)]
    assert {r.last_px for r in sells} == {Decimal("209.92")}
    assert sells[-1].cum_qty == Decimal(1000) and sells[-1].leaves_qty == 0
    assert len({r.exec_id for r in reports}) == len(reports)
