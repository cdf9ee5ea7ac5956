"""Durable intake in the pure core: a command the HTTP gateway acknowledged and journaled, whose
outcome was lost with the broker, is decided when the journal re-publishes it after the
restart; it is not refused as too old because later business landed before the reset. And the
journal entry itself: the exact bytes produced, the order a placement creates."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from state import topics as t
from state.domain.account import IDEMPOTENCY_RETENTION, AccountState
from state.domain.hydrate import AccountSnapshot, SnapshotJournaled, hydrate
from state.ids import order_id_for
from state.intake_journal import JournalEntry
from state.messages import Command, CommandAccepted, CommandRejected, OrderEvent, OrderState
from state.topics import Topic

from .builders import ACCOUNT, Driver, cancel, deposit, of_type
from .test_hydrate import THURSDAY, WEDNESDAY, limit, on, run, snapshot_of, story

RESTARTED_AT = on(THURSDAY, 8)
# Acknowledged on Wednesday morning, lost with the broker; business after them landed.
LOST: list[Command] = [deposit("j-dep", "300.00", on(WEDNESDAY, 11)),
        limit("j-buy", "buy", "2", "50", on(WEDNESDAY, 11, 1)),
        cancel("j-cancel", "j-buy", on(WEDNESDAY, 11, 2))]


def journaled(*messages: Command) -> tuple[SnapshotJournaled, ...]:
    entries = [JournalEntry.of(m) for m in messages]
    return tuple(SnapshotJournaled(idempotency_key=e.idempotency_key,
                                   command_type=e.command_type, submitted_at=e.submitted_at)
                 for e in entries)


@pytest.fixture(scope="module")
def landed() -> AccountSnapshot:
    snapshot = snapshot_of(ACCOUNT, run(story()).outputs)
    assert snapshot is not None and snapshot.as_of > LOST[-1].submitted_at
    return snapshot


def replayed(state: AccountState, messages: list) -> list:
    """The journal's re-publication after the restart: each processed at the new `now`."""
    driver = Driver()
    driver.state = state
    outputs = []
    for number, message in enumerate(messages):
        outputs += driver.send(message, RESTARTED_AT + dt.timedelta(seconds=number))
    return outputs


def test_without_the_journal_a_lost_acknowledged_command_is_refused_too_old(
        landed: AccountSnapshot) -> None:
    outputs = replayed(hydrate(landed, RESTARTED_AT), LOST[:1])
    [refused] = of_type(outputs, CommandRejected)
    assert refused.reason == "command_too_old"


def test_journaled_commands_without_outcome_are_decided_when_re_published(
        landed: AccountSnapshot) -> None:
    snapshot = msgspec.structs.replace(landed, journaled=journaled(*LOST))
    state = hydrate(snapshot, RESTARTED_AT)
    assert state.commands_forgotten_until == LOST[0].submitted_at - dt.timedelta(microseconds=1)
    outputs = replayed(state, LOST)
    assert not [r for r in of_type(outputs, CommandRejected)]
    [accepted] = of_type(outputs, CommandAccepted)
    assert (accepted.idempotency_key, accepted.command_type) == ("j-dep", "deposit")
    order_id = order_id_for(ACCOUNT, "j-buy")
    assert [e.state for e in of_type(outputs, OrderEvent) if e.order_id == order_id] == [
        OrderState.VALIDATED, OrderState.FUNDS_HELD, OrderState.ROUTED,
        OrderState.PENDING_CANCEL]
    # Re-published again (a second reset, or the replayer before the sink caught up): the
    # same commands, nothing more happens.
    again = Driver()
    again.state = state
    for message in LOST:
        again.send(message, RESTARTED_AT)
    assert replayed(again.state, LOST) == []


def test_older_unknown_keys_are_still_refused(landed: AccountSnapshot) -> None:
    state = hydrate(msgspec.structs.replace(landed, journaled=journaled(*LOST)), RESTARTED_AT)
    outputs = replayed(state, [deposit("not-journaled", "10.00", on(WEDNESDAY, 10, 59))])
    [refused] = of_type(outputs, CommandRejected)
    assert refused.reason == "command_too_old"


def test_a_journaled_key_the_records_know_moves_nothing(landed: AccountSnapshot) -> None:
    known = deposit("d1", "100000.00", on(WEDNESDAY, 9))  # landed on Monday: decided
    state = hydrate(msgspec.structs.replace(landed, journaled=journaled(known)), RESTARTED_AT)
    assert state.commands_forgotten_until == landed.as_of
    assert replayed(state, [known]) == []


def test_the_cut_off_never_goes_before_the_records_the_snapshot_reads(
        landed: AccountSnapshot) -> None:
    ancient = deposit("j-old", "1.00", landed.as_of - IDEMPOTENCY_RETENTION - dt.timedelta(hours=1))
    state = hydrate(msgspec.structs.replace(landed, journaled=journaled(ancient)), RESTARTED_AT)
    assert state.commands_forgotten_until == landed.as_of - IDEMPOTENCY_RETENTION


def test_a_journal_entry_holds_the_bytes_produced_and_the_order_it_creates() -> None:
    placement, money = LOST[1], LOST[0]
    entry = JournalEntry.of(placement)
    assert entry.payload == t.encode(placement)
    assert t.decode(Topic.ORDERS_COMMANDS, entry.payload) == placement
    assert (entry.account_id, entry.idempotency_key, entry.command_type) == (
        ACCOUNT, "j-buy", "place_order")
    assert entry.order_id == order_id_for(ACCOUNT, "j-buy")
    assert entry.submitted_at == placement.submitted_at
    assert JournalEntry.of(money).order_id is None
    assert JournalEntry.of(money).command_type == "deposit"
