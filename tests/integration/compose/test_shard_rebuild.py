"""`brokerage shard rebuild N`: a shard rebuilt from the topics equals the live one; a live
shard changed behind the topics' back differs, and so do its balances from the stream's."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from compose.cli import main as brokerage
from compose.exceptions import ComposeError
from compose.shard_rebuild import rebuild_shard, rebuilt_database_name, stream_balances
from sinks.config import SinkConfig
from state import ledger_accounts as la
from state.ids import account_id_for
from state.messages import LedgerTransaction, OrderState
from state.router import ShardRouter
from state.shard_store import migrate, reconcile, reconcile_with_stream, sink_offsets
from tests.integration.sinks.helpers import count, produce, running_sink, wait_for
from tests.integration.sinks.ledger_builders import (
    accepted,
    at,
    deposit,
    fill,
    order_event,
    rejected,
)

pytestmark = pytest.mark.integration


def _story(account: str, n: int) -> list:
    dep = deposit(account, "5000.00", f"d{n}", at(n))
    return [dep, accepted(account, f"d{n}", dep, at(n)),
            order_event(account, f"o{n}", 0, OrderState.PENDING, when=at(n + 0.1)),
            order_event(account, f"o{n}", 1, OrderState.FILLED, filled="3", when=at(n + 0.3)),
            fill(account, f"ord_{n}", f"{account}-x{n}", "buy", "MSFT", "3", "101.50",
                 at(n + 0.3)),
            rejected(account, f"w{n}", "insufficient_funds", at(n + 0.5))]


def _tamper(dsn: str, account: str) -> None:
    """An extra balanced transaction written straight into the live shard, balances moved with
    it: consistent in itself (reconcile sees nothing), absent from the topics."""
    cash = la.user(account, la.CASH)
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("INSERT INTO ledger_transactions (txn_id, account_id, kind, cause_id, "
                     "occurred_at) VALUES ('t_forged', %s, 'deposit', 'forged', now())",
                     (account,))
        conn.execute("INSERT INTO ledger_entries VALUES "
                     "('t_forged', 0, %s, 'USD', -7, %s, now()), "
                     "('t_forged', 1, %s, 'USD', 7, %s, now())",
                     (la.BANK_ACH, account, cash, account))
        conn.execute("UPDATE account_balances SET balance = balance + "
                     "CASE WHEN ledger_account = %s THEN 7 ELSE -7 END "
                     "WHERE (ledger_account, asset) IN ((%s, 'USD'), (%s, 'USD'))",
                     (cash, cash, la.BANK_ACH))


def _leftover_rebuilds(live_dsn: str) -> list[str]:
    name = live_dsn.rsplit("/", 1)[1]
    with psycopg.connect(live_dsn) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"{name}_rebuild_%",)).fetchall()
    return [row[0] for row in rows]


def _drop(live_dsn: str, names: list[str]) -> None:
    with psycopg.connect(live_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_rebuild_equals_live_and_sees_a_forged_transaction(services, topics, fresh_databases
                                                           ) -> None:
    pps, shards = services.partitions_per_shard, services.shards
    accounts = [account_id_for(f"rebuild{s}-{i}", s, shards, pps)
                for s in range(shards) for i in range(3)]
    messages = [m for n, account in enumerate(accounts) for m in _story(account, n)]
    shard1 = [a for a in accounts if ShardRouter(shards, pps).shard_of_account(a) == 1]
    # a replayed posting and a malformed record in shard 1's partitions change nothing
    replayed = next(m for m in messages if isinstance(m, LedgerTransaction)
                    and m.account_id == shard1[0])
    produce(services.bootstrap_servers, topics, messages + [replayed],
            extra=[("ledger.postings", shard1[0].encode(), b'{"type":"ledger_transaction"}')])
    live = fresh_databases[1]
    for dsn in fresh_databases:
        migrate(dsn)
    config = SinkConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
                        shard_dsns=fresh_databases, partitions_per_shard=pps,
                        consumer_group=topics + "sink", commit_interval_s=0.2)
    with running_sink(config):
        wait_for(lambda: all(count(dsn, "SELECT count(*) FROM order_events") == 12
                             and count(dsn, "SELECT count(*) FROM ledger_entries") == 18
                             for dsn in fresh_databases), 45, "the rows of every shard")

    lines: list[str] = []
    try:
        assert rebuild_shard(services.bootstrap_servers, topics, live, 1, shards, pps,
                             lines.append, progress_every=5, idle_s=1.0) == []
        assert any("records read" in line for line in lines)  # progress
        assert any("refused" in line and "1 refused" in line for line in lines)
        assert _leftover_rebuilds(live) == []  # equal: the copy is dropped

        # the stream's balances agree with the shard's, whole or cut at what has landed
        partitions = ShardRouter(shards, pps).partitions_of_shard(1)
        streamed = stream_balances(services.bootstrap_servers, topics, partitions, idle_s=1.0)
        # the replayed deposit counts once
        assert streamed[(la.user(shard1[0], la.CASH), "USD")] == Decimal("5000.00") - Decimal(
            "304.50")
        assert reconcile_with_stream(live, streamed) == []
        landed = {p: offset for (topic, p), offset in sink_offsets(live).items()
                  if topic == topics + "ledger.postings"}
        assert reconcile_with_stream(live, stream_balances(
            services.bootstrap_servers, topics, partitions, offsets_max=landed,
            idle_s=1.0)) == []

        _tamper(live, shard1[0])
        assert reconcile(live) == []  # consistent in itself: only the topics can tell
        lines.clear()
        differences = rebuild_shard(services.bootstrap_servers, topics, live, 1, shards, pps,
                                    lines.append, idle_s=1.0)
        assert "ledger_transactions: 1 rows only in live, 0 rows only in rebuilt" in differences
        assert any(d.startswith("account_balances:") for d in differences)
        assert len(_leftover_rebuilds(live)) == 1  # different: kept for inspection
        assert any("rebuilt database kept" in line for line in lines)
        assert reconcile_with_stream(live, streamed) == [
            f"stream balance {la.BANK_ACH} USD: shard "
            f"{streamed[(la.BANK_ACH, 'USD')] - 7}, stream {streamed[(la.BANK_ACH, 'USD')]}",
            f"stream balance {la.user(shard1[0], la.CASH)} USD: shard "
            f"{streamed[(la.user(shard1[0], la.CASH), 'USD')] + 7}, stream "
            f"{streamed[(la.user(shard1[0], la.CASH), 'USD')]}"]
    finally:
        _drop(live, _leftover_rebuilds(live))


def test_rebuilt_database_name_fits_postgres() -> None:
    when = dt.datetime(2026, 3, 2, 14, 30, 5, tzinfo=dt.UTC)
    assert rebuilt_database_name("postgresql://u@h:1/shard1", 1, when) == (
        "shard1_rebuild_1_20260302T143005")
    assert len(rebuilt_database_name("postgresql://u@h:1/" + "x" * 80, 12, when)) == 63


def _stack_file(path: Path, services, topics: str, dsns: tuple[str, ...]) -> Path:
    quoted = ", ".join(f'"{dsn}"' for dsn in dsns)
    path.write_text(f"""[stack]
data_dir = "{path.parent / 'data'}"
topic_prefix = "{topics}"
shards = {services.shards}
partitions_per_shard = {services.partitions_per_shard}
[kafka]
bootstrap_servers = "{services.bootstrap_servers}"
[postgres]
shard_dsns = [{quoted}]
[redis]
url = "{services.redis_url}"
""")
    return path


def _forget_broker(dsn: str, postings: str, partitions: list[int]) -> None:
    """What a shard looks like after its records of a broker that is gone: offsets (far past
    anything the new broker holds) counting in that broker's log."""
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO broker_epochs (epoch, first_seen_at) "
                     "VALUES ('gone', now() - interval '1 hour')")
        conn.execute("UPDATE sink_offsets SET epoch = 'gone', offset_max = offset_max + 1000000 "
                     "WHERE topic = %s AND partition = ANY(%s)", (postings, partitions))


def test_after_a_broker_reset_reconcile_answers_at_once_and_rebuild_refuses(
        services, topics, fresh_databases, tmp_path, capsys) -> None:
    pps, shards = services.partitions_per_shard, services.shards
    router = ShardRouter(shards, pps)
    accounts = [account_id_for(f"epoch{s}-{i}", s, shards, pps)
                for s in range(shards) for i in range(4)]
    produce(services.bootstrap_servers, topics,
            [m for n, account in enumerate(accounts) for m in _story(account, n)])
    for dsn in fresh_databases:
        migrate(dsn)
    config = SinkConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
                        shard_dsns=fresh_databases, partitions_per_shard=pps,
                        consumer_group=topics + "sink", commit_interval_s=0.2)
    with running_sink(config):
        wait_for(lambda: all(count(dsn, "SELECT count(*) FROM order_events") == 16
                             for dsn in fresh_databases), 45, "the rows of every shard")
    stack = str(_stack_file(tmp_path / "stack.toml", services, topics, fresh_databases))
    capsys.readouterr()
    assert brokerage(["--stack", stack, "reconcile"]) == 0
    out = capsys.readouterr().out
    assert "shard 0: clean" in out and "shard 1: clean" in out and "note:" not in out

    postings = topics + "ledger.postings"
    landed0 = sorted(p for (topic, p) in sink_offsets(fresh_databases[0]) if topic == postings)
    assert len(landed0) == 2  # the accounts spread over both of shard 0's partitions
    _forget_broker(fresh_databases[0], postings, landed0[:1])  # one partition landed since
    _forget_broker(fresh_databases[1], postings, list(router.partitions_of_shard(1)))

    started = time.monotonic()
    assert brokerage(["--stack", stack, "reconcile"]) == 0
    took_s = time.monotonic() - started
    out = capsys.readouterr().out
    assert took_s < 30, f"reconcile took {took_s:.1f} s after a broker reset"
    assert "shard 0: clean" in out and "shard 1: clean" in out
    assert (f"note: partitions {landed0[:1]} were landed under an earlier broker epoch "
            "(epoch gone) and cannot be compared with the stream") in out
    in_partition = sum(2 for account in accounts[:4]
                       if router.partition_of_account(account) == landed0[1])
    assert (f"note: partitions {landed0[1:]} landed under the current broker epoch: "
            f"{in_partition} stream transactions checked against the shard's ledger") in out
    assert (f"note: partitions {list(router.partitions_of_shard(1))} were landed under an "
            "earlier broker epoch") in out
    assert out.count("its balances are checked against its own entries") == 2

    # a rebuild from the topics cannot reproduce a shard holding records of a gone broker
    started = time.monotonic()
    with pytest.raises(ComposeError, match="earlier broker epoch \\(epoch gone\\)"):
        rebuild_shard(services.bootstrap_servers, topics, fresh_databases[1], 1, shards, pps,
                      lambda line: None)
    assert brokerage(["--stack", stack, "shard", "rebuild", "1"]) == 1
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err.strip()
    assert error.startswith("brokerage: shard 1 holds records landed under an earlier broker "
                            "epoch") and "\n" not in error
    assert _leftover_rebuilds(fresh_databases[1]) == []

    # a real difference still fails reconcile
    with psycopg.connect(fresh_databases[1]) as conn:
        conn.execute("UPDATE account_balances SET balance = balance + 1 WHERE ledger_account = %s",
                     (la.user(accounts[4], la.CASH),))
    assert brokerage(["--stack", stack, "reconcile"]) == 1
    assert "shard 1: 1 differences" in capsys.readouterr().out
