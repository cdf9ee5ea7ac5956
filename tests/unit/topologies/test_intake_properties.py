"""Property tests of the account topology's intake, run record by record as Quix runs it but
without Kafka: a record's bytes go through the input topics' deserializers (`input_serdes`),
the step runs in the record's message context with the state of its partition under its key,
and every output goes through the output serializers (`output_serdes`).

- Any record on `orders.commands` (random bytes; JSON near a command with wrong types, huge or
  non-finite numbers, numbers for decimal strings, unknown fields, types and versions, strings
  with newlines; random keys and partitions): nothing raises, and the record is either
  dead-lettered with a reason (the same again for the same record) and changes nothing, or
  refused `unknown_account` and changes nothing, or decided for an opened account on its own
  partition and changes that account's state only.
- Well-typed commands (deposits, withdrawals, orders of each type, cancels, replaces,
  duplicates) for accounts opened, never opened and opened along the way: an account never
  opened has no state and no ledger entry and each of its commands is refused
  `unknown_account`; each opened account passes `check_invariants`, its balances are what the
  shard's ledger keeps of the entries emitted for it (the first transaction of a txn_id: a
  txn_id never names two transactions), and (nothing fills: no executions) its cash plus held
  cash is the deposits less the withdrawals it accepted, cash never negative.

Bugs found here: a command decided after its idempotency key was forgotten reused the ids of
the key's first use (state 6.01, ledger 1.01: the shard keeps the first transaction of a
txn_id); the key's record is now kept once the state drops it (`state.account_parts`), and the
command is refused or, the same body again, has no effect. A record time a datetime cannot
hold, which raised, is now dead-lettered (`invalid_timestamp`, outside
2000-01-01..2200-01-01).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from collections.abc import Iterable
from contextvars import copy_context
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from quixstreams.context import set_message_context
from quixstreams.models import Row, Topic

from state import account_parts as parts
from state import ledger_accounts as la
from state import topics as t
from state.domain import ledger
from state.domain.account import (
    IDEMPOTENCY_KEYS_MAX,
    AccountState,
    RiskLimits,
    check_invariants,
)
from state.domain.risk import Reason
from state.ids import order_id_for
from state.messages import (
    CancelOrder,
    Command,
    CommandAccepted,
    CommandRejected,
    DeadLetter,
    LedgerTransaction,
    OrderEvent,
    ReplaceOrder,
    decimal_fields,
)
from state.router import account_partition
from topologies.accounts import AccountStep, Output, input_serdes, output_serdes

from ..state.builders import T0, deposit, place, withdraw
from .fakes import FakeRecord

D = Decimal
PREFIX = "p."
PARTITIONS = 4
COMMANDS = PREFIX + t.Topic.ORDERS_COMMANDS
DLQ = PREFIX + t.dlq_name(t.Topic.ORDERS_COMMANDS)
OUTPUT_TOPICS = [PREFIX + name for name in (t.Topic.ORDERS_ROUTE, t.Topic.ORDERS_EVENTS,
                                            t.Topic.LEDGER_POSTINGS)] + [DLQ]
LIMITS = RiskLimits(notional_usd_max=D("50000"), quantity_max=D("500"))
ACCOUNTS = ("acc_a1", "acc_b2", "acc_c3", "acc_d4")
T0_MS = int(T0.timestamp() * 1000)


Stores = dict[tuple[int, Any], dict[str, bytes]]  # (partition, record key) -> that key's state


class FakeState:
    """Quix's `State` handed to the step: the store of the record's partition, under its key."""

    def __init__(self, stores: Stores, partition: int, key: Any) -> None:
        self._stores, self._where = stores, (partition, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self._stores.get(self._where, {}).get(key, default)

    def set(self, key: str, value: bytes) -> None:
        self._stores.setdefault(self._where, {})[key] = value

    def delete(self, key: str) -> None:
        self._stores.get(self._where, {}).pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self._stores.get(self._where, {})


class Intake:
    """`orders.commands` into the account topology; accounts are opened in the shard (as
    `POST /v1/accounts` does), which holds nothing else for them yet."""

    def __init__(self, opened: Iterable[str]) -> None:
        self.opened = set(opened)
        self.stores: Stores = {}
        self.step = AccountStep(PREFIX, None, LIMITS, snapshot_loader=lambda account_id: None,
                                account_partitions=PARTITIONS,
                                account_is_open=lambda account_id: account_id in self.opened)
        self.commands = Topic(COMMANDS, **input_serdes())
        self.outputs = {name: Topic(name, **output_serdes()) for name in OUTPUT_TOPICS}
        self.offset = 0

    def feed(self, key: bytes | None, value: bytes | None, partition: int,
             timestamp_ms: int, offset: int | None = None) -> list[Output]:
        if offset is None:
            self.offset += 1
            offset = self.offset
        row = self.commands.row_deserialize(FakeRecord(
            value, offset, partition, key, topic_=COMMANDS, timestamp_ms=timestamp_ms))
        assert isinstance(row, Row)
        context = copy_context()
        context.run(set_message_context, row.context)
        state: Any = FakeState(self.stores, row.context.partition, row.key)
        out: list[Output] = context.run(self.step, row.value, row.key, row.timestamp,
                                        row.headers, state)
        for output in out:  # as `to_topic` writes each: keyed as the input record
            self.outputs[output.topic].row_serialize(
                Row(output, row.key, row.timestamp, row.context, row.headers), key=row.key)
        return out

    def send(self, command: Command, at_ms: int) -> list[Output]:
        """A well-formed command, keyed and partitioned as the README asks."""
        return self.feed(command.account_id.encode(), t.encode(command),
                         account_partition(command.account_id, PARTITIONS), at_ms)

    def stored(self, account_id: str) -> AccountState | None:
        """The account as its store holds it (in parts), read afresh."""
        store = self.stores.get((account_partition(account_id, PARTITIONS), account_id), {})
        meta = store.get(parts.META_KEY)
        return None if meta is None else parts.load(meta, store.get).state


def _decoded(out: list[Output]) -> list[Any]:
    """The outputs as messages (dead letters as None)."""
    return [None if o.topic == DLQ else t.decode(t.Topic(o.topic.removeprefix(PREFIX)), o.payload)
            for o in out]


def _changed(before: Stores, after: Stores) -> set[tuple[int, Any]]:
    return {where for where in before.keys() | after.keys()
            if before.get(where, {}) != after.get(where, {})}


def _refused_unknown(out: list[Output], account_id: str) -> bool:
    [event] = _decoded(out) if len(out) == 1 else [None]
    return (isinstance(event, CommandRejected) and event.reason == "unknown_account"
            and event.account_id == account_id)


# ---- well-typed commands --------------------------------------------------------------------

amounts = st.sampled_from(["0.01", "5.00", "99.99", "250.00", "1000.00", "20000.00", "20000.00",
                          "-1.00"])
quantities = st.sampled_from(["1", "0.5", "3", "10", "0.000001", "100", "7.25"])
prices = st.sampled_from(["1", "9.99", "100", "101.37", "250.5", "0.5"])
keys = st.sampled_from([f"k{i}" for i in range(12)])  # reused: duplicates and clashes
accounts = st.sampled_from(ACCOUNTS)


@st.composite
def commands(draw: st.DrawFn, key_prefix: str = "", at: dt.datetime = T0) -> Command:
    """A well-typed command; its idempotency key and the order it names (cancel, replace) are
    `key_prefix` and one of a few keys."""
    account, key = draw(accounts), key_prefix + draw(keys)
    kind = draw(st.sampled_from(["deposit", "deposit", "withdraw", "withdraw", "place", "place",
                                 "place", "cancel", "replace"]))
    if kind == "deposit":
        command: Command = deposit(key, draw(amounts), at)
    elif kind == "withdraw":
        command = withdraw(key, draw(amounts), at)
    elif kind == "place":
        order_type = draw(st.sampled_from(["market", "limit", "stop", "stop_limit"]))
        price = draw(prices)
        command = place(key, draw(st.sampled_from(["buy", "buy", "sell"])), draw(quantities),
                        order_type=order_type, symbol=draw(st.sampled_from(["AAPL", "TSLA"])),
                        limit=price if "limit" in order_type else None,
                        stop=price if "stop" in order_type else None,
                        reference=draw(st.none() | prices) if order_type != "market" else price,
                        reference_time=at, tif=draw(st.sampled_from(["day", "gtc", "ioc"])),
                        when=at)
    elif kind == "cancel":
        command = CancelOrder(account_id=account, idempotency_key=key, submitted_at=at,
                              order_id=order_id_for(account, key_prefix + draw(keys)))
    else:
        new_price = draw(st.none() | prices.map(D))
        limit = draw(st.booleans())
        command = ReplaceOrder(account_id=account, idempotency_key=key, submitted_at=at,
                               order_id=order_id_for(account, key_prefix + draw(keys)),
                               quantity=draw(st.none() | quantities.map(D)),
                               limit_price=new_price if limit else None,
                               stop_price=None if limit else new_price)
    return msgspec.structs.replace(command, account_id=account)


# ---- any record -----------------------------------------------------------------------------

# Decimal strings at the edges of what Decimal holds (each decodes), and strings that are not.
edge_decimals = st.sampled_from([
    "1e999999999", "-1E+999999", "9E+999999999999999999", "1e-999999999", "0E-1000000", "-0",
    "0", "0.00", "1e2", "1E+27", "1E+15", "999999999999999.99", "0.0000001", "-250.00",
    "99999999999999999999999999999999999999999", "12345678901234567890123456789.015"])
odd_decimals = edge_decimals | st.sampled_from([
    "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "1e9999999999999999999",
    "100.", ".5", "1_000", " 1", "1\n", "", "abc", "0x10", "\u0663", "1,5"])
odd_strings = st.sampled_from(["AAPL\n", "aapl", "\n", "acc_a1\n", " acc_a1", "x" * 65,
                               "2026-03-02T15:00:00", "2026-13-02T15:00:00Z", "\u0000",
                               "\ud800", "BRK.B", "market", "gtc"]) | st.text(max_size=12)
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.integers(10**300, 10**310) | st.floats() | odd_decimals | odd_strings)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
LEAVE_OUT = object()
FIELDS = ("type", "v", "account_id", "idempotency_key", "amount", "quantity", "limit_price",
          "stop_price", "reference_price", "symbol", "side", "order_type", "time_in_force",
          "submitted_at", "order_id", "unknown_field")


@st.composite
def mutations(draw: st.DrawFn, command: Command) -> list[tuple[str, Any]]:
    """Fields to set (or leave out): mostly a decimal or a text field of the command to an
    odd string, so that many still decode; else any field to any JSON."""
    body = msgspec.to_builtins(command)
    decimals = [name for name in decimal_fields(type(command)) if body.get(name) is not None]
    texts = [name for name, value in body.items() if isinstance(value, str)]
    changes: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["decimal", "decimal", "text", "any", "leave out"]))
        if kind == "decimal" and decimals:
            changes.append((draw(st.sampled_from(decimals)), draw(edge_decimals | odd_decimals)))
        elif kind == "text":
            changes.append((draw(st.sampled_from(texts)), draw(odd_strings)))
        elif kind == "leave out":
            changes.append((draw(st.sampled_from(list(body))), LEAVE_OUT))
        else:
            changes.append((draw(st.sampled_from(FIELDS)), draw(json_values)))
    return changes


def _near_command(command: Command, changes: list[tuple[str, Any]], pad: bool) -> bytes:
    body = msgspec.to_builtins(command)
    for name, value in changes:
        if value is LEAVE_OUT:
            body.pop(name, None)
        else:
            body[name] = value
    if pad:
        body["user_id"] = "x" * t.PAYLOAD_BYTES_MAX
    return json.dumps(body).encode()


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, int]:
    """(key, value, partition): mostly JSON near a command, keyed and partitioned right."""
    command = draw(commands())
    if draw(st.integers(0, 5)) == 0:
        value = draw(st.none() | st.binary(max_size=200))
    else:
        value = _near_command(command, draw(mutations(command)), draw(st.integers(0, 30)) == 0)
    key: bytes | None = command.account_id.encode()
    if draw(st.integers(0, 3)) == 0:
        key = draw(st.none() | st.sampled_from(ACCOUNTS).map(str.encode) | st.binary(max_size=10)
                   | st.text(max_size=8).map(lambda text: text.encode("utf-8", "surrogatepass")))
    partition = account_partition(command.account_id, PARTITIONS)
    if draw(st.integers(0, 3)) == 0:
        partition = draw(st.integers(0, PARTITIONS - 1))
    return key, value, partition


HUGE_DEPOSIT = (b'{"type":"deposit","account_id":"acc_a1","idempotency_key":"k1",'
                b'"amount":"1e999999999","submitted_at":"2026-03-02T15:00:00Z","v":1}')


def _seeded(opened: Iterable[str]) -> Intake:
    """Opened accounts with money and an order resting (something to lose)."""
    intake = Intake(opened)
    for account in ACCOUNTS:
        for command in (deposit("seed-dep", "5000.00"),
                        place("seed-ord", "buy", "10", order_type="limit", limit="100",
                              tif="gtc")):
            intake.send(msgspec.structs.replace(command, account_id=account), T0_MS)
    return intake


def _check_record(intake: Intake, key: bytes | None, value: bytes | None, partition: int,
                  at_ms: int) -> None:
    before = copy.deepcopy(intake.stores)
    out = intake.feed(key, value, partition, at_ms)
    changed = _changed(before, intake.stores)
    if any(o.topic == DLQ for o in out):
        assert [o.topic for o in out] == [DLQ], out
        letter = msgspec.json.decode(out[0].payload, type=DeadLetter)
        assert letter.error.strip(), letter
        assert (letter.source_topic, letter.partition, letter.original) == (
            COMMANDS, partition, value or b"")
        assert not changed, f"a dead letter changed {changed}"
        event("dead letter")
        again = intake.feed(key, value, partition, at_ms, offset=letter.offset)
        assert again == out, "the same record, another reason"
        return
    message = t.decode(t.Topic.ORDERS_COMMANDS, value)  # else it is a dead letter
    account = message.account_id
    assert key == account.encode(), f"decided under key {key!r} for {account}"
    assert partition == account_partition(account, PARTITIONS), "decided on another partition"
    if account not in intake.opened:
        assert _refused_unknown(out, account), out
        assert not changed, f"a command for {account}, never opened, changed {changed}"
        event("refused: unknown_account")
        return
    assert changed <= {(partition, account)}, f"a command for {account} changed {changed}"
    stored = intake.stored(account)
    assert stored is not None
    check_invariants(stored)
    event(f"decided: {type(message).__name__}")


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sets(accounts, min_size=1, max_size=3), st.lists(records(), min_size=1, max_size=5),
       st.integers(0, 10**9))
# A key that is not UTF-8: Quix's "str" deserializer raised, which stops the topology on the
# record again after every restart.
@example({"acc_a1"}, [(b"\xff", b"{}", 0), (b"acc_a1\xff", b'{"type":"deposit"}', 2)], 0)
# A well-formed deposit of 1e999999999 to an opened account: the idempotency digest's
# `normalize()` overflowed (decimal.Overflow) before the amount was checked.
@example({"acc_a1"}, [(b"acc_a1", HUGE_DEPOSIT, account_partition("acc_a1", PARTITIONS))], 0)
def test_no_record_raises_or_touches_another_account(opened: set[str],
                                                     recs: list[tuple[bytes | None,
                                                                      bytes | None, int]],
                                                     later_ms: int) -> None:
    intake = _seeded(opened)
    for i, (key, value, partition) in enumerate(recs):
        _check_record(intake, key, value, partition, T0_MS + later_ms + i)


# ---- well-typed commands --------------------------------------------------------------------

@functools.cache
def actions(key_prefix: str) -> st.SearchStrategy[tuple]:
    return st.one_of(
        st.tuples(st.just("open"), accounts),
        st.tuples(st.just("send"), st.integers(0, 3_600_000), commands(key_prefix)),
        st.tuples(st.just("send"), st.integers(0, 1000), commands(key_prefix)),
        st.tuples(st.just("send"), st.integers(0, 1000), commands(key_prefix)),
        st.tuples(st.just("again"), st.integers(0, 50)),
        # days pass: deposits settle and become withdrawable, keys are forgotten
        st.tuples(st.just("wait"), st.sampled_from([3, 5])),
    )


@dataclass
class Books:
    """What the shard keeps of one account's outputs: the first transaction of each txn_id and
    the first event of each event_id (its sink inserts ON CONFLICT DO NOTHING)."""

    txns: dict[str, LedgerTransaction]
    accepted: dict[str, CommandAccepted]

    def note(self, output: Any) -> None:
        if isinstance(output, LedgerTransaction):
            assert ledger.unbalanced_assets(output) == {}
            kept = self.txns.setdefault(output.txn_id, output)
            assert kept == output, f"txn_id {output.txn_id} reused by another transaction"
        elif isinstance(output, CommandAccepted):
            self.accepted.setdefault(output.event_id, output)


def _check_books(intake: Intake, books: dict[str, Books]) -> None:
    for account in ACCOUNTS:
        mine = books[account]
        if account not in intake.opened:
            assert not any(where[1] == account for where in intake.stores), account
            assert not mine.txns and not mine.accepted, account
            continue
        state = intake.stored(account)
        if state is None:
            continue  # opened, nothing sent since
        check_invariants(state)
        from_entries = ledger.balances(mine.txns.values())
        for bucket in la.USER_BUCKETS:
            name = la.user(account, bucket)
            assets = set(state.balances.get(bucket, {})) | {
                asset for (ledger_account, asset) in from_entries if ledger_account == name}
            for asset in assets:
                assert state.balance(bucket, asset) == from_entries.get((name, asset), D(0)), (
                    account, bucket, asset)
        net = D(0)
        for accepted in mine.accepted.values():
            assert accepted.amount is not None
            net += accepted.amount if accepted.command_type == "deposit" else -accepted.amount
        assert state.balance(la.CASH) + state.balance(la.CASH_HELD) == net, account
        assert state.balance(la.CASH) >= 0, account


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(accounts, min_size=1, max_size=3), st.data(), st.integers(10, 40))
def test_commands_touch_only_opened_accounts_and_keep_their_books(
        opened: set[str], data: st.DataObject, steps: int) -> None:
    """Actions drawn one by one. The keys of new commands change whenever days pass, and what
    is sent again from before is a key's first submission (a key used again once forgotten is
    `test_a_forgotten_key_used_again_keeps_the_books`)."""
    intake = Intake(opened)
    books = {account: Books({}, {}) for account in ACCOUNTS}
    sent: list[Command] = []  # what may be sent again
    first: dict[tuple[str, str], Command] = {}  # each key's first submission
    now_ms, days = T0_MS, 0
    for _ in range(steps):
        step = data.draw(actions(f"d{days}-"))
        if step[0] == "open":
            intake.opened.add(step[1])
            continue
        if step[0] == "wait":
            now_ms += step[1] * 86_400_000
            days += step[1]
            sent = [c for c in sent if c is first[c.account_id, c.idempotency_key]]
            continue
        if step[0] == "again":
            if not sent:
                continue
            command = sent[step[1] % len(sent)]
        else:
            now_ms += step[1]
            at = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
            command = step[2]
            fresh = {"reference_time": at} if getattr(command, "reference_time", None) else {}
            command = msgspec.structs.replace(command, submitted_at=at, **fresh)
            sent.append(command)
            first.setdefault((command.account_id, command.idempotency_key), command)
        out = intake.send(command, now_ms)
        if command.account_id not in intake.opened:
            assert _refused_unknown(out, command.account_id), out
        for output in _decoded(out):
            if output is not None:
                books[output.account_id].note(output)
            if isinstance(output, CommandAccepted):
                event(f"accepted: {output.command_type}")
            elif isinstance(output, OrderEvent):
                event(f"order {output.state} {output.reason or ''}")
            elif isinstance(output, CommandRejected):
                event(f"refused: {output.reason}")
        _check_books(intake, books)



def _deposit_at(key: str, amount: str, submitted_ms: int) -> Command:
    at = dt.datetime.fromtimestamp(submitted_ms / 1000, dt.UTC)
    return msgspec.structs.replace(deposit(key, amount, at), account_id="acc_a1")


DAY_MS = 86_400_000


@pytest.mark.parametrize("sends", [
    pytest.param(  # was booked under the first use's txn_id: state 6.01, ledger 1.01
        [("k0", "0.01", 0, 0), ("k1", "1.00", 3 * DAY_MS + 1000, 3 * DAY_MS + 1000),
         ("k0", "5.00", 3 * DAY_MS + 2000, 3 * DAY_MS + 2000)],
        id="key-used-again"),
    pytest.param(  # the same body again, submitted anew: had its effect once
        [("k0", "0.01", 0, 0), ("k1", "1.00", 3 * DAY_MS + 1000, 3 * DAY_MS + 1000),
         ("k0", "0.01", 3 * DAY_MS + 2000, 3 * DAY_MS + 2000)],
        id="same-body-submitted-again"),
    pytest.param(  # past the count bound, not the time: the 500th key pushes k0 out
        [("k0", "0.01", 0, 0),
         *[(f"n{i}", "0.01", 1000 + i, 1000 + i) for i in range(IDEMPOTENCY_KEYS_MAX)],
         ("k0", "5.00", 2000 + IDEMPOTENCY_KEYS_MAX, 2000 + IDEMPOTENCY_KEYS_MAX)],
        id="key-used-again-past-the-count"),
    pytest.param(
        [("k0", "0.01", 0, 0), ("k0", "0.01", 1, 1),
         ("k1", "1.00", 3 * DAY_MS + 1000, 3 * DAY_MS + 1000),
         ("k0", "0.01", 1, 3 * DAY_MS + 2000)],
        id="late-copy-of-a-retry"),
])
def test_a_forgotten_key_used_again_keeps_the_books(
        sends: list[tuple[str, str, int, int]]) -> None:
    """Deposits (key, amount, submitted, at: ms after T0) to one opened account. The last one
    under a key seen before with another amount is refused, whenever it comes."""
    intake = Intake({"acc_a1"})
    books = {account: Books({}, {}) for account in ACCOUNTS}
    first: dict[str, str] = {}
    last: list[Any] = []
    for key, amount, submitted_ms, at_ms in sends:
        last = _decoded(intake.send(_deposit_at(key, amount, T0_MS + submitted_ms),
                                    T0_MS + at_ms))
        for output in last:
            books["acc_a1"].note(output)
        first.setdefault(key, amount)
    _check_books(intake, books)
    key, amount, _, _ = sends[-1]
    if amount != first[key]:
        assert [(type(o).__name__, o.reason) for o in last] == [
            ("CommandRejected", Reason.DUPLICATE_IDEMPOTENCY_KEY)], last


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(-(2**63), 2**63 - 1) | st.integers(250_000_000_000_000, 253_402_300_799_999),
       records())
@example(253_402_300_800_000, (b"acc_a1", b"{}", account_partition("acc_a1", PARTITIONS)))
def test_any_record_timestamp_never_raises(timestamp_ms: int,
                                           record: tuple[bytes | None, bytes | None, int]) -> None:
    intake = _seeded(ACCOUNTS)
    _check_record(intake, *record, timestamp_ms)
