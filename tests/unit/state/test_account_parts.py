"""An account stored in parts (`state.account_parts`): whatever way the account changed, the
writes planned for it, applied to a store, give back exactly the account (`==` and the same
`state_to_bytes`), leave no entry behind, and an append writes what it appends, not the ring.

States change as `decide` changes them (a clone: values not replaced are shared): appends,
prunes from the front, values replaced under their key, and what is rarer (a key deleted from
the middle, one moved to the end, a whole ring of equal but new objects) which rewrites."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state import account_parts as parts
from state import ledger_accounts as la
from state.account_parts import Stored
from state.domain.account import (
    CLOSED_ORDERS_MAX,
    IDEMPOTENCY_KEYS_MAX,
    AccountState,
    CommandRecord,
    state_from_bytes,
    state_to_bytes,
)
from state.domain.orders import Order
from state.messages import OrderState, OrderType, Side, TimeInForce

from .builders import ACCOUNT, T0

D = Decimal
Store = dict[str, bytes]


def record(n: int) -> CommandRecord:
    at = T0 + dt.timedelta(seconds=n)
    return CommandRecord(command_type="place_order", digest=f"{n:024x}", seen_at=at,
                         submitted_at=at)


def closed_order(n: int, quantity: str = "10") -> Order:
    at = T0 + dt.timedelta(seconds=n)
    return Order(order_id=f"ord-{n}", idempotency_key=f"k{n}", symbol="AAPL", side=Side.BUY,
                 order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                 quantity=D(quantity), placed_at=at, state=OrderState.FILLED, seq=5,
                 filled_quantity=D(quantity), fill_notional=D(quantity) * D("100.25"),
                 cash_booked=D(quantity) * D("100.25"), exec_ids=(f"x{n}",),
                 last_transact_time=at, closed_at=at)


def account(commands: int, closed: int) -> AccountState:
    state = AccountState.empty(ACCOUNT)
    state.balances = {la.CASH: {la.USD: D("1000.00")}}
    state.commands = {f"k{n}": record(n) for n in range(commands)}
    state.closed_orders = {f"ord-{n}": closed_order(n) for n in range(closed)}
    return state


def apply(store: Store, plan: parts.Plan) -> None:
    keys = [key for key, _ in plan.sets]
    assert len(keys) == len(set(keys)) and not set(keys) & set(plan.deletes), plan
    for key, value in plan.sets:
        store[key] = value
    for key in plan.deletes:
        store.pop(key)  # a delete names a key that is there


def written_bytes(plan: parts.Plan) -> int:
    return sum(len(value) for _, value in plan.sets)


class Shell:
    """A store and the account as last stored in it, as the step keeps them."""

    def __init__(self, state: AccountState) -> None:
        self.store: Store = {}
        self.writes = 0
        self.stored: Stored | None = None
        self.forgotten: dict[str, CommandRecord] = {}  # every key the ring dropped, as dropped
        self.write(state)

    def write(self, state: AccountState) -> parts.Plan | None:
        self.writes += 1
        plan = parts.plan(self.stored, state, self.writes.to_bytes(8, "big"))
        if self.stored is not None:
            before = self.stored.state.commands
            self.forgotten.update((key, before[key]) for key in before
                                  if key not in state.commands)
        if plan is not None:
            apply(self.store, plan)
            self.stored = plan.stored
        self.check(state)
        return plan

    def check(self, state: AccountState) -> None:
        loaded = parts.load(self.store[parts.META_KEY], self.store.get)
        assert loaded.state == state
        assert state_to_bytes(loaded.state) == state_to_bytes(state)
        assert self.stored is not None and loaded.meta == self.stored.meta
        live = {parts.META_KEY, parts.CORE_KEY}
        live |= {parts.command_key(n) for n in range(*loaded.meta.commands)}
        live |= {parts.closed_order_key(n) for n in range(*loaded.meta.closed_orders)}
        live |= {parts.forgotten_key(key) for key in self.forgotten}
        assert set(self.store) == live, set(self.store) ^ live
        for key, dropped in self.forgotten.items():
            assert parts.forgotten(self.store.get, key) == dropped, key


# ---- properties -----------------------------------------------------------------------------

RINGS = ("commands", "closed_orders")
changes = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(RINGS), st.integers(1, 3)),
    st.tuples(st.just("append"), st.sampled_from(RINGS), st.integers(1, 3)),
    st.tuples(st.just("prune"), st.sampled_from(RINGS), st.integers(1, 4)),
    st.tuples(st.just("replace"), st.sampled_from(RINGS), st.integers(0, 600)),
    st.tuples(st.just("replace_equal"), st.just("closed_orders"), st.integers(0, 600)),
    st.tuples(st.just("delete_middle"), st.sampled_from(RINGS), st.integers(0, 600)),
    st.tuples(st.just("move_to_end"), st.sampled_from(RINGS), st.integers(0, 600)),
    st.tuples(st.just("readd_pruned"), st.sampled_from(RINGS), st.integers(0, 600)),
    st.tuples(st.just("fresh_copy"), st.sampled_from(RINGS), st.just(0)),
    st.tuples(st.just("core"), st.sampled_from(["1.00", "-0.50", "0"]), st.just(0)),
    st.tuples(st.just("nothing"), st.just(""), st.just(0)),
)


class Model:
    """Changes a clone of the account as `decide` would (values not replaced are shared)."""

    def __init__(self) -> None:
        self.next = 10_000
        self.pruned: dict[str, list[tuple[str, object]]] = {ring: [] for ring in RINGS}

    def value(self, ring: str) -> tuple[str, object]:
        self.next += 1
        if ring == "commands":
            return f"k{self.next}", record(self.next)
        return f"ord-{self.next}", closed_order(self.next)

    def change(self, state: AccountState, kind: str, ring: str, n: int) -> AccountState:
        state = state.clone()
        if kind == "core":
            cash = state.balances.setdefault(la.CASH, {})
            cash[la.USD] = cash.get(la.USD, D(0)) + D(ring)
            return state
        if kind == "nothing":
            return state
        entries: dict[str, object] = getattr(state, ring)
        keys = list(entries)
        if kind == "append":
            entries.update(self.value(ring) for _ in range(n))
        elif kind == "prune":
            for key in keys[:n]:
                self.pruned[ring].append((key, entries.pop(key)))
        elif kind == "fresh_copy":  # as decoded again: equal values, none the same object
            decoded = state_from_bytes(state_to_bytes(state))
            setattr(state, ring, getattr(decoded, ring))
        elif kind == "readd_pruned" and self.pruned[ring]:
            key, value = self.pruned[ring].pop(n % len(self.pruned[ring]))
            entries[key] = value
        elif keys:
            key = keys[n % len(keys)]
            self._change_one(entries, kind, key)
        return state

    def _change_one(self, entries: dict[str, object], kind: str, key: str) -> None:
        value = entries[key]
        if kind == "replace" and isinstance(value, CommandRecord):
            entries[key] = msgspec.structs.replace(
                value, submitted_at=value.submitted_at + dt.timedelta(seconds=1))
        elif kind == "replace":
            assert isinstance(value, Order)
            entries[key] = msgspec.structs.replace(value, seq=value.seq + 1)
        elif kind == "replace_equal":  # equal, not the same bytes: it must be written
            assert isinstance(value, Order)
            entries[key] = msgspec.structs.replace(value, quantity=value.quantity + D("0.000"))
        elif kind == "delete_middle":
            del entries[key]
        else:  # move_to_end
            entries[key] = entries.pop(key)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 40), st.integers(0, 12), st.lists(changes, min_size=1, max_size=40))
def test_writes_applied_to_a_store_give_back_exactly_the_account(
        commands: int, closed: int, steps: list[tuple[str, str, int]]) -> None:
    state = account(commands, closed)
    shell = Shell(state)
    model = Model()
    for kind, ring, n in steps:
        state = model.change(state, kind, ring, n)
        plan = shell.write(state)
        if kind == "nothing":
            assert plan is None, "an unchanged account written"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(RINGS), st.integers(0, 3), st.integers(0, 3)),
                min_size=1, max_size=30))
def test_appends_and_prunes_write_one_entry_each(steps: list[tuple[str, int, int]]) -> None:
    """Appends and prunes (and nothing else) write the appended entries, delete the pruned
    ones and never rewrite an entry kept."""
    state = account(30, 10)
    shell = Shell(state)
    model = Model()
    for ring, appended, pruned in steps:
        state = model.change(state, "append", ring, appended) if appended else state
        state = model.change(state, "prune", ring, pruned) if pruned else state
        before = shell.stored
        plan = shell.write(state)
        assert before is not None
        if plan is None:
            continue
        prefix = parts.COMMANDS_PREFIX if ring == "commands" else parts.CLOSED_ORDERS_PREFIX
        entries = [key for key, _ in plan.sets if key.startswith(prefix)]
        kept = [key for key, _ in plan.sets if key.startswith(parts.FORGOTTEN_PREFIX)]
        assert len(entries) <= appended, entries
        assert len(plan.deletes) <= pruned, plan.deletes
        assert len(kept) == (len(plan.deletes) if ring == "commands" else 0), kept
        assert {key for key, _ in plan.sets} - set(entries) - set(kept) <= {parts.META_KEY}


# ---- examples -------------------------------------------------------------------------------


def _append_one_command(state: AccountState, n: int, prune: bool) -> AccountState:
    state = state.clone()
    if prune:
        del state.commands[next(iter(state.commands))]
    state.commands[f"k{n}"] = record(n)
    return state


def test_an_append_writes_as_much_whatever_the_ring_holds() -> None:
    written = {}
    for commands, closed in ((3, 1), (IDEMPOTENCY_KEYS_MAX, CLOSED_ORDERS_MAX)):
        state = account(commands, closed)
        shell = Shell(state)
        full = commands == IDEMPOTENCY_KEYS_MAX
        plan = shell.write(_append_one_command(state, 99_999, prune=full))
        assert plan is not None
        written[commands] = written_bytes(plan)
        forgotten = [parts.forgotten_key("k0")] if full else []
        assert [key for key, _ in plan.sets] == [parts.META_KEY, parts.command_key(commands),
                                                 *forgotten]
        assert plan.deletes == ([parts.command_key(0)] if full else [])
    small, large = written.values()
    assert large - small <= 80, written  # the ring bounds' integers and the dropped key's record
    assert large < 300, written  # a meta and two records
    assert len(state_to_bytes(account(IDEMPOTENCY_KEYS_MAX, CLOSED_ORDERS_MAX))) > 100 * large


def test_a_key_deleted_from_the_middle_rewrites_its_ring_past_its_head() -> None:
    state = account(5, 3)
    shell = Shell(state)
    changed = state.clone()
    del changed.commands["k2"]
    plan = shell.write(changed)
    assert plan is not None
    assert plan.deletes == [parts.command_key(n) for n in range(5)]
    assert [key for key, _ in plan.sets] == [parts.META_KEY] + [
        parts.command_key(n) for n in range(5, 9)] + [parts.forgotten_key("k2")]
    assert plan.stored.meta.commands == (5, 9)
    assert plan.stored.meta.closed_orders == (0, 3)


def test_a_value_replaced_in_place_rewrites_its_entry_only() -> None:
    state = account(5, 3)
    shell = Shell(state)
    changed = state.clone()
    changed.closed_orders["ord-1"] = msgspec.structs.replace(state.closed_orders["ord-1"],
                                                             seq=9)
    changed.commands["k3"] = msgspec.structs.replace(state.commands["k3"], digest="other")
    plan = shell.write(changed)
    assert plan is not None and not plan.deletes
    assert [key for key, _ in plan.sets] == [parts.META_KEY, parts.command_key(3),
                                             parts.closed_order_key(1)]


def test_the_core_is_written_only_when_its_bytes_change() -> None:
    state = account(5, 3)
    shell = Shell(state)
    changed = state.clone()
    changed.balances[la.CASH][la.USD] = D("1000.0")  # equal, other bytes: written
    plan = shell.write(changed)
    assert plan is not None
    assert [key for key, _ in plan.sets] == [parts.META_KEY, parts.CORE_KEY]
    assert shell.write(changed.clone()) is None


def test_every_write_has_its_own_meta() -> None:
    state = account(2, 1)
    shell = Shell(state)
    metas = {shell.store[parts.META_KEY]}
    for n in range(5):
        state = _append_one_command(state, 1000 + n, prune=True)
        shell.write(state)
        metas.add(shell.store[parts.META_KEY])
    assert len(metas) == 6
    assert shell.stored is not None and shell.stored.meta.writes == 6
