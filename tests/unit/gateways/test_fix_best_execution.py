"""Best-execution figures read back from the gateway's store."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from gateways.fix.best_execution import best_execution_report, prometheus_text
from gateways.fix.store import GatewayStore
from gateways.fix.tracking import ExecutionStats, OpenOrder
from state.messages import Side


def test_report_and_metrics_from_the_store(tmp_path: Path) -> None:
    assert best_execution_report(tmp_path / "none") == []
    store = GatewayStore(tmp_path)
    stats = ExecutionStats(orders=4, filled=3, rejected=1, filled_qty=Decimal(30),
                           improvement_usd=Decimal("0.60"), improved_qty=Decimal(30),
                           fill_ms_total=30, fill_ms=[5, 10, 15])
    order = OpenOrder(order_id="o", cl_ord_id="o", account_id="a", symbol="AAPL",
                      side=Side.BUY, quantity=Decimal(1), market_maker="mm1", session="s",
                      routed_at_ms=1, reference_price=Decimal("1.5"))
    store.record(exec_ids=["mm1:e1"], delivered={"s": 7}, sent=[("o", "new")],
                 orders=[order], stats={"mm1": stats})
    store.close()
    again = GatewayStore(tmp_path)
    assert again.forwarded_exec_ids() == {"mm1:e1"}
    assert again.delivered_seqs() == {"s": 7}
    assert again.open_orders()["o"].reference_price == Decimal("1.5")
    again.close()
    [row] = best_execution_report(tmp_path)
    assert row.market_maker == "mm1" and row.fill_rate == Decimal("0.75")
    assert row.price_improvement_per_share_usd == Decimal("0.02")
    assert (row.p50_fill_ms, row.average_fill_ms) == (10, Decimal("10.0"))
    text = prometheus_text([row])
    assert 'fix_fill_rate{market_maker="mm1"} 0.7500' in text
