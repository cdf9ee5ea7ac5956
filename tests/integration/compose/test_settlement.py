"""`brokerage settle --date D` on real shards and the embedded broker: the netting of the
trade date's fills across shards, and one settle_trades command per account.

python -m pytest -q tests/integration/compose/test_settlement.py
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from compose.day_end import expire_day_orders
from compose.settlement import netting_report, settle
from gateways.fix.harness import TopicReader
from state import ledger_accounts as la
from state.ids import account_id_for
from state.messages import ExpireOrders, LedgerEntry, LedgerTransaction, SettleTrades
from state.shard_store import connect, migrate, write_batch
from state.topics import Topic, decode

pytestmark = pytest.mark.integration

D = Decimal
SETTLE_DATE = dt.date(2026, 11, 30)  # a Monday: settles Friday 2026-11-27


def at(day: int, hour: int = 15) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC)


def fill(account: str, n: int, side: str, mm: str, symbol: str, qty: str, cash: str,
         when: dt.datetime) -> LedgerTransaction:
    """A fill as the account topology books it (see state/domain/account.py)."""
    clearing, q, c = la.clearing(mm), D(qty), D(cash)
    if side == "buy":
        legs = [(la.user(account, la.CASH_HELD), la.USD, -c), (clearing, la.USD, c),
                (clearing, symbol, -q), (la.user(account, la.SHARES_UNSETTLED), symbol, q)]
    else:
        legs = [(la.user(account, la.SHARES_HELD), symbol, -q), (clearing, symbol, q),
                (clearing, la.USD, -c), (la.user(account, la.CASH), la.USD, c)]
    return LedgerTransaction(
        txn_id=f"txn_{account}_{n}", account_id=account, kind="fill", cause_id=f"x{n}",
        occurred_at=when, order_id=f"ord_{n}",
        entries=tuple(LedgerEntry(ledger_account=a, asset=s, amount=v) for a, s, v in legs))


def deposit(account: str, amount: str, when: dt.datetime) -> LedgerTransaction:
    return LedgerTransaction(
        txn_id=f"txn_{account}_dep", account_id=account, kind="deposit", cause_id="d",
        occurred_at=when, entries=(
            LedgerEntry(ledger_account=la.BANK_ACH, asset=la.USD, amount=-D(amount)),
            LedgerEntry(ledger_account=la.user(account, la.CASH), asset=la.USD,
                        amount=D(amount))))


def prepare(dsns: tuple[str, ...], services: Any) -> list[str]:
    accounts = [account_id_for(f"settle{shard}", shard, services.shards,
                               services.partitions_per_shard) for shard in range(len(dsns))]
    stories = [
        [deposit(accounts[0], "10000.00", at(27, 9)),
         fill(accounts[0], 1, "buy", "mm1", "AAPL", "10", "2100.00", at(27, 14)),
         fill(accounts[0], 2, "sell", "mm1", "AAPL", "4", "842.00", at(27, 15)),
         fill(accounts[0], 3, "buy", "mm2", "MSFT", "2", "800.00", at(27, 16)),
         fill(accounts[0], 4, "buy", "mm1", "AAPL", "100", "21000.00", at(26, 16))],  # T-1
        [fill(accounts[1], 5, "sell", "mm2", "AAPL", "3", "630.30", at(27, 0)),
         fill(accounts[1], 6, "buy", "mm1", "AAPL", "1.5", "315.15", at(27, 23)),
         fill(accounts[1], 7, "buy", "mm2", "MSFT", "0.25", "100.02", at(27, 20)),
         fill(accounts[1], 8, "sell", "mm2", "MSFT", "9", "3600.00", at(28, 0))],  # Saturday
    ]
    for dsn, account, postings in zip(dsns, accounts, stories, strict=True):
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO accounts (account_id, user_id, shard) VALUES (%s, %s, %s)",
                         (account, "settler", dsns.index(dsn)))
        with connect(dsn) as conn:
            write_batch(conn, postings, [])
    return accounts


def test_netting_of_the_trade_date_across_shards(services: Any, topics: str,
                                                 fresh_databases: tuple[str, ...]) -> None:
    assert len(fresh_databases) == 2
    accounts = prepare(fresh_databases, services)
    report = netting_report(fresh_databases, SETTLE_DATE)
    assert report.trade_date == dt.date(2026, 11, 27)
    figures = {(r.market_maker, r.symbol): (r.fills, r.bought, r.sold, r.net_shares, r.net_cash)
               for r in report.rows}
    assert figures == {
        ("mm1", "AAPL"): (3, D("11.5"), D(4), D("7.5"), D("1573.15")),  # 2100+315.15-842
        ("mm2", "AAPL"): (1, D(0), D(3), D(-3), D("-630.30")),
        ("mm2", "MSFT"): (2, D("2.25"), D(0), D("2.25"), D("900.02")),
    }
    assert [(r.market_maker, r.symbol) for r in report.rows] == sorted(figures)
    assert report.cash_by_market_maker() == {"mm1": D("1573.15"), "mm2": D("269.72")}

    lines: list[str] = []
    settled = settle(services.bootstrap_servers, topics, fresh_databases, SETTLE_DATE,
                     lines.append)
    assert settled.rows == report.rows and settled.accounts == 2
    assert "trades of 2026-11-27 settling on 2026-11-30 for 2 accounts" in lines
    assert any(line.startswith("mm1") and "AAPL" in line and "1573.15" in line
               for line in lines)
    # Day end shares the per-account producer.
    assert expire_day_orders(services.bootstrap_servers, topics, fresh_databases,
                             dt.date(2026, 11, 27), lines.append) == 2

    reader = TopicReader(services.bootstrap_servers, topics + Topic.ORDERS_COMMANDS)
    commands: list[Any] = []
    try:
        for _ in range(100):
            commands += [decode(Topic.ORDERS_COMMANDS, value) for _, value in reader.poll(0.1)]
            if len(commands) >= 4:
                break
    finally:
        reader.close()
    settles = [c for c in commands if isinstance(c, SettleTrades)]
    assert sorted(c.account_id for c in settles) == sorted(accounts)
    assert {(c.idempotency_key, c.settle_date) for c in settles} == {
        ("settle-2026-11-30", SETTLE_DATE)}
    assert len([c for c in commands if isinstance(c, ExpireOrders)]) == 2
