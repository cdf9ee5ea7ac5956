"""The account step's store: an account in parts (`state.account_parts`), as the step writes
and reads it through Quix's `State` (a dict here), against `decide` run on the same messages.

- A message writes what it changed: with the rings full (500 idempotency records, 50 closed
  orders) an order's messages write a meta, the core and an entry or two each.
- The decoded account the step keeps is used only while the store holds the meta it wrote:
  after the store goes back to a checkpoint (an aborted one, or a rebalance that gave the
  partition to another member meanwhile) the account is read from the store again.
- An account stored as one value (before parts) is read, then written in parts.
"""

from __future__ import annotations

import datetime as dt
from contextvars import copy_context
from decimal import Decimal
from typing import Any

import pytest
from quixstreams.context import set_message_context
from quixstreams.models import MessageContext

from benchmarks.state_bytes import DictState
from state import account_parts as parts
from state import ledger_accounts as la
from state import topics as t
from state.domain.account import (
    CLOSED_ORDERS_MAX,
    IDEMPOTENCY_KEYS_MAX,
    AccountState,
    RiskLimits,
    state_to_bytes,
)
from state.domain.hydrate import AccountSnapshot, SnapshotCommand
from state.domain.risk import Reason
from state.messages import Command, ExecType, ExecutionReport
from topologies.accounts import AccountStep, Output

from ..state.builders import ACCOUNT, T0, Driver, deposit, place, report

D = Decimal
PREFIX = "p."
LIMITS = RiskLimits(notional_usd_max=D("1e12"), quantity_max=D("1e6"),
                    order_rate_per_s_max=1_000_000)


def new_step() -> AccountStep:
    return AccountStep(PREFIX, None, LIMITS)


def run(step: AccountStep, message: Command | ExecutionReport, at: dt.datetime,
        state: DictState) -> list[Output]:
    """The step on one record of `message`, time-stamped `at`, as Quix runs it."""
    kind = t.Topic.EXECUTIONS if isinstance(message, ExecutionReport) else t.Topic.ORDERS_COMMANDS
    context = copy_context()
    context.run(set_message_context, MessageContext(PREFIX + kind, 0, 0, 0))
    at_ms = int(at.timestamp() * 1000)
    quix_state: Any = state  # Quix's State, as far as the step uses it
    return context.run(step, t.encode(message), message.account_id, at_ms, None, quix_state)


def stored(state: DictState) -> AccountState:
    """The account as the store holds it, read afresh."""
    return parts.load(state.store[parts.META_KEY], state.store.get).state


def same(first: AccountState, second: AccountState) -> bool:
    return first == second and state_to_bytes(first) == state_to_bytes(second)


class Account:
    """One account through the step and, beside it, through `decide` alone (the model)."""

    def __init__(self) -> None:
        self.state = DictState()
        self.step = new_step()
        self.model = Driver(LIMITS)
        self.clock = T0
        self.orders = 0

    def send(self, message: Command | ExecutionReport) -> list[Output]:
        self.clock += dt.timedelta(milliseconds=500)
        self.state.sets.clear()
        self.state.deletes.clear()
        out = run(self.step, message, self.clock, self.state)
        self.model.send(message, self.clock)
        return out

    def order(self) -> list[DictState]:
        """A limit buy, acknowledged, then filled: what each of its three messages wrote."""
        self.orders += 1
        key = f"buy-{self.orders}"
        writes = []
        for message in (
                place(key, "buy", "1", order_type="limit", limit="100", reference=None,
                      tif="gtc", when=self.clock),
                report(key, f"{key}-new", ExecType.NEW, leaves="1", when=self.clock),
                report(key, f"{key}-fill", qty="1", px="99.50", cum="1", when=self.clock)):
            self.send(message)
            writes.append(DictState())
            writes[-1].sets, writes[-1].deletes = list(self.state.sets), list(self.state.deletes)
        return writes

    def check(self) -> None:
        assert same(stored(self.state), self.model.state)


@pytest.fixture(scope="module")
def full() -> Account:
    """An account whose rings are full (kept for the module: it takes a few thousand steps)."""
    account = Account()
    account.send(deposit("dep", "1000000.00", T0))
    while len(account.model.state.commands) < IDEMPOTENCY_KEYS_MAX:
        account.order()
    assert len(account.model.state.closed_orders) == CLOSED_ORDERS_MAX
    account.check()
    return account


def test_an_order_on_full_rings_writes_a_few_entries_not_the_account(full: Account) -> None:
    whole = len(state_to_bytes(full.model.state))
    place_writes, new_writes, fill_writes = full.order()
    full.check()
    commands = full.step._cache.get(ACCOUNT, full.state.store[parts.META_KEY])
    assert commands is not None
    tail, head = commands.meta.commands
    # the place_order: its idempotency record appended, the oldest pruned (its key kept as
    # forgotten); the open order
    dropped = [key for key, _ in place_writes.sets if key.startswith(parts.FORGOTTEN_PREFIX)]
    assert len(dropped) == 1, dropped
    assert [key for key, _ in place_writes.sets] == [parts.META_KEY, parts.CORE_KEY,
                                                     parts.command_key(head - 1), *dropped]
    assert place_writes.deletes == [parts.command_key(tail - 1)]
    # the acknowledgement: the open order's exec_ids (core)
    assert [key for key, _ in new_writes.sets] == [parts.META_KEY, parts.CORE_KEY]
    assert not new_writes.deletes
    # the fill: the order closed (appended, the oldest closed order pruned) and booked (core)
    tail, head = commands.meta.closed_orders
    assert [key for key, _ in fill_writes.sets] == [parts.META_KEY, parts.CORE_KEY,
                                                    parts.closed_order_key(head - 1)]
    assert fill_writes.deletes == [parts.closed_order_key(tail - 1)]
    for writes in (place_writes, new_writes, fill_writes):
        written = sum(len(value) for _, value in writes.sets)
        assert written < 2000 and written * 40 < whole, (written, whole)


def test_a_restarted_step_reads_the_account_in_parts(full: Account) -> None:
    """A restart (or a rebalance back to this member): nothing cached, the account is
    reassembled from its parts, and carries on as it would have."""
    full.step = new_step()
    full.order()
    full.check()


def test_a_message_that_changes_nothing_writes_nothing() -> None:
    account = Account()
    account.send(deposit("dep", "100.00", T0))
    account.send(deposit("dep", "100.00", T0))  # the same command again: no effect
    assert not account.state.sets and not account.state.deletes
    account.check()


def test_the_cached_account_is_not_used_after_the_store_went_back() -> None:
    """An aborted checkpoint reverts the store under the step's cache: the deposit it held
    is gone, and the next message is decided against the store, not the cache."""
    account = Account()
    account.send(deposit("dep-1", "100.00", T0))
    committed: list[tuple[Command, dt.datetime]] = [(deposit("dep-1", "100.00", T0),
                                                     account.clock)]
    checkpoint = dict(account.state.store)
    account.send(deposit("dep-2", "900.00", T0))  # written, then the checkpoint aborted
    account.state.store.clear()
    account.state.store.update(checkpoint)
    account.model = replayed(committed)
    account.send(deposit("dep-3", "5.00", T0))
    assert stored(account.state).balance(la.CASH) == D("105.00")
    account.check()


def test_a_write_by_another_member_is_not_taken_for_the_cached_one() -> None:
    """The partition goes to another member from the last checkpoint and comes back: the
    store's meta has the same write count as the one this step cached (each wrote once after
    the checkpoint) but another writer's stamp, so the step reads the store again."""
    account = Account()
    account.send(deposit("dep-1", "100.00", T0))
    committed: list[tuple[Command, dt.datetime]] = [(deposit("dep-1", "100.00", T0),
                                                     account.clock)]
    checkpoint = dict(account.state.store)
    account.send(deposit("dep-2", "900.00", T0))  # this member's write, never committed
    mine = parts.load(account.state.store[parts.META_KEY], account.state.store.get)
    other = DictState(dict(checkpoint))
    account.clock += dt.timedelta(milliseconds=500)
    run(new_step(), deposit("dep-3", "5.00", T0), account.clock, other)
    committed.append((deposit("dep-3", "5.00", T0), account.clock))
    theirs = parts.load(other.store[parts.META_KEY], other.store.get)
    assert theirs.meta.writes == mine.meta.writes and theirs.meta.stamp != mine.meta.stamp
    account.state.store.clear()
    account.state.store.update(other.store)
    account.model = replayed(committed)
    account.send(deposit("dep-4", "1.00", T0))
    assert stored(account.state).balance(la.CASH) == D("106.00")
    account.check()


def replayed(messages: list[tuple[Command, dt.datetime]]) -> Driver:
    model = Driver(LIMITS)
    for message, at in messages:
        model.send(message, at)
    return model


def test_an_account_stored_as_one_value_is_read_then_written_in_parts(full: Account) -> None:
    account = Account()
    account.model = Driver(LIMITS)
    account.model.state = full.model.state
    account.clock = full.clock
    account.orders = full.orders
    account.state.store[parts.SINGLE_VALUE_KEY] = state_to_bytes(full.model.state)
    place_writes, _, _ = account.order()
    assert parts.SINGLE_VALUE_KEY in place_writes.deletes
    assert parts.SINGLE_VALUE_KEY not in account.state.store
    account.check()
    assert len(stored(account.state).commands) == IDEMPOTENCY_KEYS_MAX


def test_a_ring_entry_missing_from_the_store_is_a_broken_invariant() -> None:
    account = Account()
    account.send(deposit("dep", "100.00", T0))
    account.send(deposit("dep-2", "100.00", T0))
    del account.state.store[parts.command_key(0)]
    with pytest.raises(AssertionError, match="c/0"):
        run(new_step(), deposit("dep-3", "1.00", T0), account.clock, account.state)


def test_a_rebuilt_account_keeps_the_keys_its_state_does_not_hold() -> None:
    """The broker forgot the account; the shard shows a key from before the lookback. The step
    stores it as forgotten while it rebuilds the account, so a command under it is refused
    (it would be booked under the first command's ids)."""
    old_at = T0 - dt.timedelta(days=10)
    snapshot = AccountSnapshot(
        account_id=ACCOUNT, as_of=T0, balances={la.CASH: {la.USD: D("100.00")}},
        forgotten=(SnapshotCommand(idempotency_key="old-dep", command_type="command",
                                   seen_at=old_at),))
    step = AccountStep(PREFIX, None, LIMITS, snapshot_loader=lambda account_id: snapshot)
    state = DictState()
    later = T0 + dt.timedelta(minutes=1)  # submitted after the snapshot: not too old
    out = run(step, deposit("new-dep", "1.00", later), later, state)
    assert any(output.topic == PREFIX + t.Topic.LEDGER_POSTINGS for output in out), out
    assert parts.forgotten(state.store.get, "old-dep") is not None
    refused = run(step, deposit("old-dep", "5.00", later), later, state)
    assert [t.decode(t.Topic.ORDERS_EVENTS, output.payload).reason for output in refused] == [
        Reason.DUPLICATE_IDEMPOTENCY_KEY]
    assert stored(state).balance(la.CASH) == D("101.00")
