"""load_account_snapshot reads from a real shard what the account topology lost on restart."""

from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest

from state.domain.account import check_invariants
from state.domain.hydrate import hydrate, state_or_hydrated
from state.messages import LedgerTransaction
from state.shard_store import load_account_snapshot, migrate, write_batch
from tests.unit.state.builders import ACCOUNT
from tests.unit.state.test_hydrate import (
    SHARD_EVENTS,
    THURSDAY,
    after_restart,
    continued,
    nonzero,
    on,
    run,
    snapshot_of,
    story,
)

pytestmark = pytest.mark.integration

BATCH_SIZE = 7  # the sink lands a partition in batches: several here


@pytest.fixture
def shard(fresh_databases) -> str:
    dsn = fresh_databases[0]
    migrate(dsn)
    return dsn


def land(dsn: str, outputs: list) -> None:
    """Write what the account published, as the shard sink would (in batches)."""
    postings = [o for o in outputs if isinstance(o, LedgerTransaction)]
    events = [o for o in outputs if isinstance(o, SHARD_EVENTS)]
    with psycopg.connect(dsn) as conn:
        for first in range(0, max(len(postings), len(events)), BATCH_SIZE):
            write_batch(conn, postings[first:first + BATCH_SIZE],
                        events[first:first + BATCH_SIZE])


def test_the_shards_snapshot_is_the_records_snapshot_and_hydrates_alike(shard: str) -> None:
    original = run(story())
    land(shard, original.outputs)
    started = time.monotonic()
    loaded = load_account_snapshot(shard, ACCOUNT)
    assert time.monotonic() - started < 2.0
    assert loaded is not None
    assert loaded == snapshot_of(ACCOUNT, original.outputs)
    now = on(THURSDAY, 8)
    state = hydrate(loaded, now)
    check_invariants(state)
    assert nonzero(state.balances) == nonzero(original.state.balances)
    assert {oid: (o.reserve, o.reserve_unsettled) for oid, o in state.open_orders.items()} == {
        oid: (o.reserve, o.reserve_unsettled) for oid, o in original.state.open_orders.items()}
    assert continued(state, after_restart()) == continued(original.state, after_restart())


def test_a_landing_replayed_changes_nothing(shard: str) -> None:
    original = run(story())
    land(shard, original.outputs)
    first = load_account_snapshot(shard, ACCOUNT)
    land(shard, original.outputs)  # the sink's overlap after a restart
    assert load_account_snapshot(shard, ACCOUNT) == first


def test_a_new_account_has_no_snapshot_and_starts_empty(shard: str) -> None:
    land(shard, run(story()).outputs)
    assert load_account_snapshot(shard, "acc_other") is None
    state = state_or_hydrated(None, lambda: load_account_snapshot(shard, "acc_other"),
                              "acc_other", dt.datetime(2026, 3, 5, tzinfo=dt.UTC))
    assert not state.balances and not state.open_orders


def test_an_unreachable_shard_raises(shard: str) -> None:
    dead = "postgresql://nobody@127.0.0.1:1/none"
    with pytest.raises(psycopg.OperationalError):
        state_or_hydrated(None, lambda: load_account_snapshot(dead, ACCOUNT), ACCOUNT,
                          on(THURSDAY, 8))
