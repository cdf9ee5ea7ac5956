"""ShardSink on its own (no Quix): writes handed to the writer thread while records are added,
all of them landed before `flush` returns; a shard that is down fails the checkpoint with
backpressure, and the same records landed again later change nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from confluent_kafka import Producer
from quixstreams.sinks import SinkBackpressureError

from compose.embedded import free_port, postgres_dsn
from sinks.shard_sink import ShardSink
from state import ledger_accounts as la
from state import topics as t
from state.ids import account_id_for
from state.router import ShardRouter
from state.shard_store import ledger_balances, migrate, reconcile
from tests.integration.sinks.helpers import count
from tests.integration.sinks.ledger_builders import at, deposit, fill

pytestmark = pytest.mark.integration


def _sink(services, dsn: str, batch_size_max: int) -> ShardSink:
    return ShardSink(shard=0, dsn=dsn, router=ShardRouter(2, services.partitions_per_shard),
                     topic_prefix="p.", epoch="e1", batch_size_max=batch_size_max,
                     retry_after_s=0.1,
                     dlq_producer=Producer({"bootstrap.servers": services.bootstrap_servers}))


def _add_all(sink: ShardSink, postings: list, partition: int) -> None:
    for offset, posting in enumerate(postings):
        sink.add(t.encode(posting), posting.account_id.encode(), 0, [], "p.ledger.postings",
                 partition, offset)


def test_writes_overlap_reading_and_all_land_before_flush_returns(services, fresh_databases
                                                                  ) -> None:
    dsn = fresh_databases[0]
    migrate(dsn)
    router = ShardRouter(2, services.partitions_per_shard)
    account = account_id_for("writer", 0, 2, services.partitions_per_shard)
    postings = [deposit(account, "10.00", f"d{i}", at(i)) if i % 2 == 0 else
                fill(account, "ord_w", f"w-x{i}", "buy", "AAPL", "1", "4.00", at(i))
                for i in range(23)]
    sink = _sink(services, dsn, batch_size_max=5)
    try:
        sink.setup()
        _add_all(sink, postings, router.partition_of_account(account))
        assert len(sink._writes) == 4  # handed off while adding, before any flush
        sink.flush()
        assert not sink._writes and sink.stats.postings == 23
        assert count(dsn, "SELECT count(*) FROM ledger_transactions") == 23
        # the same records again (Quix re-delivers after a failed checkpoint): nothing changes
        before = ledger_balances(dsn)
        _add_all(sink, postings, router.partition_of_account(account))
        sink.flush()
        assert ledger_balances(dsn) == before
    finally:
        sink.close()
    assert before[(la.user(account, la.CASH), "USD")] == Decimal(12 * 10 - 11 * 4)
    assert count(dsn, "SELECT count(*) FROM positions WHERE quantity = 11") == 1
    assert reconcile(dsn) == []


def test_a_shard_that_is_down_fails_the_checkpoint_with_backpressure(services) -> None:
    account = account_id_for("writer-down", 0, 2, services.partitions_per_shard)
    postings = [deposit(account, "1.00", f"d{i}", at(i)) for i in range(12)]
    sink = _sink(services, postgres_dsn(free_port()), batch_size_max=5)  # nobody listens
    try:
        sink.setup()  # not fatal at start
        _add_all(sink, postings,
                 ShardRouter(2, services.partitions_per_shard).partition_of_account(account))
        with pytest.raises(SinkBackpressureError):
            sink.flush()
        assert not sink._writes and sink.stats.backpressures == 1  # the others were skipped
        sink.on_paused()
    finally:
        sink.close()
