"""Best-execution figures per market maker (in the spirit of Rule 606): fill rate, average
price improvement per share against the NBBO at routing time, and time to fill.

The gateway keeps them in its store; these functions read them for the `brokerage` report
command and for `/metrics`, without the gateway running.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from gateways.fix.store import DB_NAME, GatewayStore
from gateways.fix.tracking import ExecutionStats


@dataclass(frozen=True)
class BestExecution:
    market_maker: str
    orders: int
    filled: int
    rejected: int
    fill_rate: Decimal
    filled_qty: Decimal
    price_improvement_per_share_usd: Decimal
    price_improvement_usd: Decimal
    average_fill_ms: Decimal
    p50_fill_ms: int
    p99_fill_ms: int


def figures(market_maker: str, stats: ExecutionStats) -> BestExecution:
    ordered = sorted(stats.fill_ms)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

    return BestExecution(
        market_maker=market_maker, orders=stats.orders, filled=stats.filled,
        rejected=stats.rejected, fill_rate=stats.fill_rate, filled_qty=stats.filled_qty,
        price_improvement_per_share_usd=stats.improvement_per_share,
        price_improvement_usd=stats.improvement_usd, average_fill_ms=stats.average_fill_ms,
        p50_fill_ms=int(statistics.median_low(ordered)) if ordered else 0,
        p99_fill_ms=pct(0.99))


def best_execution_report(store_dir: str | Path) -> list[BestExecution]:
    """The figures of every market maker the gateway with this store_dir has routed to."""
    path = Path(store_dir)
    if not (path / DB_NAME).exists():
        return []
    store = GatewayStore(path)
    try:
        return [figures(mm, stats) for mm, stats in sorted(store.stats().items())]
    finally:
        store.close()


def prometheus_text(report: list[BestExecution]) -> str:
    """The figures as Prometheus text-format gauges, labelled by market maker."""
    metrics = [
        ("fix_orders_routed_total", "orders routed", "orders"),
        ("fix_orders_filled_total", "orders completely filled", "filled"),
        ("fix_orders_rejected_total", "orders rejected by the market maker", "rejected"),
        ("fix_fill_rate", "filled orders over routed orders", "fill_rate"),
        ("fix_price_improvement_per_share_usd",
         "average price improvement per share against the NBBO at routing",
         "price_improvement_per_share_usd"),
        ("fix_time_to_fill_ms_avg", "average routing to complete fill time",
         "average_fill_ms"),
    ]
    lines: list[str] = []
    for name, help_text, attribute in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for row in report:
            lines.append(f'{name}{{market_maker="{row.market_maker}"}} '
                         f"{getattr(row, attribute)}")
    return "\n".join(lines) + "\n"
