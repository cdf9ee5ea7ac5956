"""Order kinds through the link: rejects, resting limits filled by a later quote, cancels,
several sessions per market maker, and malformed route records to the DLQ."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer
from msgspec.structs import replace

from gateways.fix.harness import TopicReader, produce, quote
from state.messages import DeadLetter, ExecType, OrderType, RouteCancel, Side
from state.topics import Topic, dlq_name
from tests.integration.gateways.test_fix_faults import Link, orders_for
from tests.integration.gateways.test_fix_roundtrip import new_order

pytestmark = pytest.mark.integration


def test_rejects_rests_cancels_and_spreads_over_sessions(services, topics,
                                                         tmp_path: Path) -> None:
    # MSFT never gets a quote: its order waits (Pending New) a second, then is rejected.
    link = Link(services, topics, tmp_path,
                {"sim1": {"sessions": 2, "known_symbols": ("AAPL", "MSFT"),
                          "quote_wait_s": 1.0}})
    [maker] = link.gw_config.market_makers
    link.gw_config = replace(link.gw_config, market_makers=(replace(maker, sessions=2),))
    produce(services.bootstrap_servers, topics + Topic.QUOTES,
            [("AAPL", quote("AAPL", "209.90", "210.00"))])
    link.start()
    link.wait_logged_on(2)  # orders spread over the sessions logged on when they come
    dlq = TopicReader(services.bootstrap_servers, topics + dlq_name(Topic.ORDERS_ROUTE))
    try:
        markets = orders_for("m", 4, services)
        account = markets[0].account_id
        unknown = new_order(account, "zzz", symbol="ZZZ")
        unquoted = new_order(account, "msft", symbol="MSFT")
        resting = replace(new_order(account, "rest", "5"), order_type=OrderType.LIMIT,
                          limit_price=Decimal("209.50"))
        to_cancel = replace(resting, order_id="ord_cancelme", cl_ord_id="ord_cancelme",
                            limit_price=Decimal("200.00"))
        link.send([*markets, unknown, unquoted, resting, to_cancel])
        raw = Producer({"bootstrap.servers": services.bootstrap_servers})
        raw.produce(topics + Topic.ORDERS_ROUTE, key=account.encode(), value=b"not json")
        raw.flush(10)
        link.collect(lambda rs: sum(r.exec_type is ExecType.NEW for r in rs) >= 6)
        cancel = RouteCancel(account_id=account, order_id=to_cancel.order_id,
                             cl_ord_id=f"{to_cancel.order_id}.1",
                             orig_cl_ord_id=to_cancel.cl_ord_id, symbol="AAPL", side=Side.BUY,
                             quantity=to_cancel.quantity, routed_at=dt.datetime.now(dt.UTC))
        stray = RouteCancel(account_id=account, order_id="ord_never", cl_ord_id="ord_never.1",
                            orig_cl_ord_id="ord_never", symbol="AAPL", side=Side.BUY,
                            quantity=Decimal(1), routed_at=dt.datetime.now(dt.UTC))
        link.send([cancel, stray])  # type: ignore[list-item]
        time.sleep(0.3)
        produce(services.bootstrap_servers, topics + Topic.QUOTES,
                [("AAPL", quote("AAPL", "209.30", "209.40"))])

        def done(rs) -> bool:  # noqa: ANN001
            kinds = {(r.order_id, r.exec_type) for r in rs}
            return {(resting.order_id, ExecType.TRADE), (to_cancel.order_id, ExecType.CANCELED),
                    ("ord_never", ExecType.CANCEL_REJECTED),
                    (unquoted.order_id, ExecType.REJECTED)} <= kinds
        link.collect(done)
        reports = link.reports
        assert done(reports), link.logs()
        by = {(r.order_id, r.exec_type): r for r in reports}
        assert by[(unknown.order_id, ExecType.REJECTED)].text == "unknown symbol"
        assert by[(unquoted.order_id, ExecType.REJECTED)].text == "no quote for symbol"
        # 209.40 improved by 1 bp = 209.379 -> 209.38, within the 209.50 limit.
        assert by[(resting.order_id, ExecType.TRADE)].last_px == Decimal("209.38")
        assert all((o.order_id, ExecType.TRADE) in by for o in markets)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + 10
        while not letters and time.monotonic() < deadline:
            letters = [msgspec.json.decode(v, type=DeadLetter) for _, v in dlq.poll(0.2)]
        assert letters and letters[0].original == b"not json", link.logs()
    finally:
        dlq.close()
        link.stop()
    logs = {p.name: p.read_text() for p in (tmp_path / "gw" / "log").glob("*messages*")}
    used = [name for name, text in logs.items() if "35=D" in text]
    assert len(used) == 2, list(logs)  # orders went out on both sessions
