"""One shard down: the others keep landing rows; when it returns, its rows arrive, none lost,
none doubled, and reconciliation is clean.

Shard 1 is a PostgreSQL server of this test's own (the session's servers stay up for the
other tests); it is stopped and restarted on the same data directory and port.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest

from compose.embedded import free_port, postgres_dsn, start_postgres
from sinks.config import SinkConfig
from state import ledger_accounts as la
from state.ids import account_id_for
from state.shard_store import ledger_balances, migrate, reconcile
from tests.integration.sinks.helpers import count, produce, running_sink, wait_for
from tests.integration.sinks.ledger_builders import at, deposit, fill

pytestmark = pytest.mark.integration


def _entries(dsn: str) -> int:
    return count(dsn, "SELECT count(*) FROM ledger_entries")


def test_a_down_shard_pauses_alone_and_catches_up(services, topics, fresh_databases) -> None:
    # Not pytest's tmp_path: PostgreSQL runs as a user of its own, and pytest sessions of
    # others sharing /tmp/pytest-of-<user> prune older base temp dirs while this one runs.
    tmp_path = Path(tempfile.mkdtemp(prefix="brokerage-outage-"))
    port = free_port()
    pgdata, logs = tmp_path / "shard1", tmp_path / "logs"
    server = start_postgres("outage-shard1", pgdata, port, logs)
    try:
        shard0, shard1 = fresh_databases[0], postgres_dsn(port)
        for dsn in (shard0, shard1):
            migrate(dsn)
        pps = services.partitions_per_shard
        a0, a1 = (account_id_for(f"outage{s}", s, 2, pps) for s in (0, 1))
        config = SinkConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
                            shard_dsns=(shard0, shard1), partitions_per_shard=pps,
                            consumer_group=topics + "sink", commit_interval_s=0.2,
                            retry_after_s=0.5,
                            # small: writes are handed to the writer thread while reading,
                            # and some are in flight when the shard goes down
                            batch_size_max=3)

        def wave(account: str, n: int, first: int) -> list:
            return [deposit(account, "100.00", f"w{first + i}", at(first + i)) if i % 2 == 0
                    else fill(account, "ord_x", f"{account}-x{first + i}", "buy", "AAPL", "1",
                              "50.00", at(first + i)) for i in range(n)]

        with running_sink(config):
            produce(services.bootstrap_servers, topics, wave(a0, 4, 0) + wave(a1, 4, 0))
            wait_for(lambda: (_entries(shard0), _entries(shard1)) == (12, 12), 45, "wave 1")

            server.stop()
            produce(services.bootstrap_servers, topics, wave(a0, 20, 100) + wave(a1, 20, 100))
            down_at = time.monotonic()
            wait_for(lambda: _entries(shard0) == 72, 30, "shard 0 to land wave 2 alone")
            assert time.monotonic() - down_at < 30

            server = start_postgres("outage-shard1", pgdata, port, logs)
            wait_for(lambda: _entries(shard1) == 72, 45, "shard 1 to catch up")
            # a little longer: nothing more arrives (no double writes after the retries)
            time.sleep(1.0)

        for dsn, account in ((shard0, a0), (shard1, a1)):
            assert _entries(dsn) == 72
            assert count(dsn, "SELECT count(*) FROM ledger_transactions") == 24
            balances = ledger_balances(dsn)
            assert balances[(la.user(account, la.CASH), "USD")] == Decimal(12 * 100 - 12 * 50)
            assert balances[(la.user(account, la.SHARES_UNSETTLED), "AAPL")] == 12
            assert reconcile(dsn) == []
    finally:
        server.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
