"""Hydration: a state rebuilt from what the shard records continues as the original would.

A realistic story runs through `decide`; its outputs are turned into a snapshot the way the
shard holds them (`snapshot_of`: balances and clearing sums as the shard's tables hold them,
the rest read by `snapshot_from_records`, the loader's own derivation); the hydrated state and
the original then receive the same next messages and must emit the same ledger transactions,
order events and routing requests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

import msgspec
import pytest

from state import ledger_accounts as la
from state.domain import ledger
from state.domain.account import (
    AccountState,
    MarketContext,
    Output,
    RiskLimits,
    check_invariants,
    decide,
)
from state.domain.hydrate import (
    UNKNOWN_DIGEST,
    AccountSnapshot,
    SnapshotCommand,
    SnapshotFill,
    forgotten_records,
    hydrate,
    state_or_hydrated,
    unsettled_lots,
)
from state.domain.risk import Reason
from state.domain.shard_snapshot import COMMANDS_LOOKBACK, snapshot_from_records
from state.ids import order_id_for
from state.messages import (
    Alert,
    Command,
    CommandAccepted,
    CommandRejected,
    ExecutionReport,
    LedgerTransaction,
    OrderEvent,
    OrderState,
    PlaceOrder,
    RouteCancel,
    Side,
)

from .builders import (
    ACCOUNT,
    T0,
    D,
    Driver,
    ach_return,
    cancel,
    deposit,
    expire,
    of_type,
    place,
    replace,
    report,
    settle,
    withdraw,
)

MONDAY = T0.date()  # 2026-03-02
TUESDAY, WEDNESDAY, THURSDAY = (MONDAY + dt.timedelta(days=n) for n in (1, 2, 3))
Input = Command | ExecutionReport
SHARD_EVENTS = (OrderEvent, CommandAccepted, CommandRejected, Alert)


def on(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC)


def limit(key: str, side: str, qty: str, px: str, when: dt.datetime, symbol: str = "AAPL"
          ) -> PlaceOrder:
    return place(key, side, qty, order_type="limit", limit=px, reference=None, when=when,
                 symbol=symbol)


def fill(key: str, exec_id: str, qty: str, px: str, cum: str, when: dt.datetime,
         side: str = "buy", symbol: str = "AAPL", mm: str = "mm1") -> ExecutionReport:
    return report(key, exec_id, qty=qty, px=px, cum=cum, side=side, symbol=symbol, mm=mm,
                  when=when)


def story() -> list[Input]:
    """Three days of an account: money in and out, trades settled and unsettled, a day trade,
    and at the end open orders of every kind (partly filled buy, sell holding settled and
    unsettled shares, a buy whose cancel was refused, a buy with a replace on its way)."""
    mon, tue, wed = (lambda h, m=0, d=d: on(d, h, m) for d in (MONDAY, TUESDAY, WEDNESDAY))
    return [
        deposit("d0", "5000.00", on(MONDAY - dt.timedelta(days=5), 9)),
        deposit("d1", "100000.00", mon(9)),
        limit("b1", "buy", "10", "100", mon(15)),
        fill("b1", "x1", "4", "99.5", "4", mon(15, 1)),
        fill("b1", "x2", "6", "99.75", "10", mon(15, 2)),
        place("b2", "buy", "5", symbol="MSFT", reference="200", when=mon(15, 5)),
        fill("b2", "x3", "5", "201.333", "5", mon(15, 6), symbol="MSFT", mm="mm2"),
        withdraw("w1", "500.00", mon(16)),
        withdraw("w2", "999999.00", mon(16, 1)),  # refused
        settle(TUESDAY, tue(22)),
        limit("b3", "buy", "10", "101", tue(15)),
        fill("b3", "x4", "10", "100.9", "10", tue(15, 1)),
        deposit("d2", "2000.00", tue(16)),
        ach_return("r1", "d2", wed(9)),
        limit("b6", "buy", "2", "200", wed(14), symbol="MSFT"),
        fill("b6", "x6", "2", "199", "2", wed(14, 1), symbol="MSFT", mm="mm2"),
        limit("s2", "sell", "2", "202", wed(14, 2), symbol="MSFT"),
        fill("s2", "x7", "2", "202", "2", wed(14, 3), side="sell", symbol="MSFT", mm="mm2"),
        limit("b4", "buy", "20", "95", wed(15)),
        fill("b4", "x5", "5", "94.99", "5", wed(15, 1)),
        limit("s1", "sell", "15", "120", wed(15, 2)),  # 10 settled + 5 unsettled shares
        fill("s1", "x8", "3", "120", "3", wed(15, 3), side="sell"),
        limit("b5", "buy", "3", "90", wed(15, 4)),
        cancel("c5", "b5", wed(15, 5)),
        report("b5", "x9", "cancel_rejected", when=wed(15, 6), cum="0"),
        limit("b7", "buy", "4", "80", wed(15, 7), symbol="MSFT"),
        replace("rp7", "b7", "6", limit="81", when=wed(15, 8)),
        cancel("c9", "nope", wed(15, 9)),  # refused: unknown order
    ]


def after_restart() -> list[Input]:
    """What comes after the restart: duplicates of what was done, then new business."""
    thu = lambda h, m=0: on(THURSDAY, h, m)  # noqa: E731
    return [
        deposit("d1", "100000.00", thu(9)),  # a duplicate: nothing happens
        withdraw("w1", "500.00", thu(9, 1)),  # a duplicate
        fill("b1", "x2", "6", "99.75", "10", on(MONDAY, 15, 2)),  # a duplicate fill
        fill("b4", "x5", "5", "94.99", "5", on(WEDNESDAY, 15, 1)),  # a duplicate fill
        fill("b4", "x10", "5", "94.98", "10", thu(10)),
        fill("s1", "x11", "2", "121.01", "5", thu(10, 1), side="sell"),
        report("b7", "x12", "replaced", cum="0", leaves="6", when=thu(10, 2), symbol="MSFT",
               order_id=order_id_for(ACCOUNT, "b7"),
               cl_ord_id=f"{order_id_for(ACCOUNT, 'b7')}.1",
               orig_cl_ord_id=order_id_for(ACCOUNT, "b7")),
        cancel("c5b", "b5", thu(10, 3)),  # its second request: ClOrdID .2
        report("b5", "x13", "canceled", when=thu(10, 4), cum="0",
               cl_ord_id=f"{order_id_for(ACCOUNT, 'b5')}.2"),
        cancel("c4", "b4", thu(10, 5)),
        report("b4", "x14", "canceled", cum="10", when=thu(10, 6),
               cl_ord_id=f"{order_id_for(ACCOUNT, 'b4')}.1"),
        limit("n1", "sell", "12", "130", thu(11)),
        settle(THURSDAY, thu(22)),
        limit("n2", "buy", "1", "100", thu(22, 1)),
        fill("n2", "x15", "1", "99", "1", thu(22, 2)),
        limit("n3", "sell", "1", "101", thu(22, 3)),  # a day trade
        fill("n3", "x16", "1", "101", "1", thu(22, 4), side="sell"),
        ach_return("r2", "d1", thu(22, 5)),
        ach_return("r1", "d2", thu(22, 6)),  # a duplicate of the return before the restart
        limit("b6", "buy", "2", "200", thu(22, 7), symbol="MSFT"),  # a duplicate
        place("b4", "buy", "7", symbol="MSFT", reference="200", when=thu(22, 8)),  # other body
        expire(THURSDAY, thu(23)),
    ]


def when_of(message: Input) -> dt.datetime:
    if isinstance(message, ExecutionReport):
        return message.transact_time
    return message.submitted_at


def run(messages: Sequence[Input], driver: Driver | None = None) -> Driver:
    driver = driver or Driver()
    for message in messages:
        driver.send(message, when_of(message))
    return driver


def snapshot_of(account_id: str, outputs: Sequence[Output]) -> AccountSnapshot | None:
    """The snapshot as the shard would give it: balances and clearing sums as its tables hold
    them (every transaction summed), the rest from the rows themselves."""
    transactions = [o for o in outputs if isinstance(o, LedgerTransaction)]
    events = [o for o in outputs if isinstance(o, SHARD_EVENTS)]
    balances: dict[str, dict[str, Decimal]] = {}
    clearing: dict[str, dict[str, Decimal]] = {}
    for (account, asset), amount in ledger.balances(transactions).items():
        owner = la.parse_user(account)
        if owner is not None and owner[0] == account_id:
            balances.setdefault(owner[1], {})[asset] = amount
        elif account.startswith("clearing:"):
            clearing.setdefault(account, {})[asset] = amount
    snapshot = snapshot_from_records(account_id, balances, clearing, transactions, events)
    if snapshot is None:
        return None
    return msgspec.structs.replace(snapshot, forgotten=forgotten_keys(snapshot.as_of, events))


def forgotten_keys(as_of: dt.datetime, events: Sequence[Output]) -> tuple[SnapshotCommand, ...]:
    """The keys of events from before the commands' lookback, each at its first event."""
    cutoff = as_of - COMMANDS_LOOKBACK
    first: dict[str, dt.datetime] = {}
    for event in events:
        key = getattr(event, "idempotency_key", None)
        if key is not None and event.occurred_at < cutoff:
            first[key] = min(first.get(key, event.occurred_at), event.occurred_at)
    return tuple(SnapshotCommand(idempotency_key=key, command_type="command", seen_at=at)
                 for key, at in sorted(first.items(), key=lambda item: (item[1], item[0])))


def nonzero(balances: dict[str, dict[str, Decimal]]) -> dict[tuple[str, str], Decimal]:
    return {(bucket, asset): amount for bucket, assets in balances.items()
            for asset, amount in assets.items() if amount}


def continued(state: AccountState, messages: Sequence[Input]) -> list[Output]:
    driver = Driver()
    driver.state = state
    return run(messages, driver).outputs


@pytest.fixture(scope="module")
def original() -> Driver:
    return run(story())


@pytest.fixture(scope="module")
def hydrated(original: Driver) -> AccountState:
    snapshot = snapshot_of(ACCOUNT, original.outputs)
    assert snapshot is not None
    return hydrate(snapshot, on(THURSDAY, 8))


def test_balances_positions_and_reserves_are_the_originals(original: Driver,
                                                            hydrated: AccountState) -> None:
    check_invariants(hydrated)
    assert nonzero(hydrated.balances) == nonzero(original.state.balances)
    assert {s: q for s, q in hydrated.filled_net.items() if q} == {
        s: q for s, q in original.state.filled_net.items() if q}
    assert hydrated.open_orders.keys() == original.state.open_orders.keys()
    for order_id, order in original.state.open_orders.items():
        again = hydrated.open_orders[order_id]
        for name in ("state", "seq", "quantity", "limit_price", "reserve", "reserve_unsettled",
                     "filled_quantity", "fill_notional", "cash_booked", "exec_ids", "requests",
                     "cancel_attempts", "pending_replace", "confirmed_cl_ord_id",
                     "state_before_cancel", "digest", "placed_at", "held_amount"):
            assert getattr(again, name) == getattr(order, name), (order_id, name)
    sell = hydrated.open_orders[order_id_for(ACCOUNT, "s1")]
    assert (sell.reserve, sell.reserve_unsettled) == (D(12), D(5))


def test_lots_deposits_and_day_trades_are_the_originals(original: Driver,
                                                         hydrated: AccountState) -> None:
    assert hydrated.unsettled_lots == original.state.unsettled_lots
    assert hydrated.deposits == original.state.deposits
    assert hydrated.day_trades == original.state.day_trades
    assert hydrated.closed_orders.keys() == original.state.closed_orders.keys()


def test_idempotency_keys_are_remembered_and_older_unknown_ones_refused(
        original: Driver, hydrated: AccountState) -> None:
    assert hydrated.commands.keys() == original.state.commands.keys()
    for key, record in original.state.commands.items():
        again = hydrated.commands[key]
        assert again.command_type == record.command_type, key
        assert again.digest in (record.digest, UNKNOWN_DIGEST), key
    # Bodies the shard records are known exactly; a rejected withdrawal's amount is not.
    for key in ("d1", "w1", "b1", "b4", "c5", "rp7", "c9", f"settle-{TUESDAY}", "r1"):
        assert hydrated.commands[key].digest == original.state.commands[key].digest, key
    assert hydrated.commands["w2"].digest == UNKNOWN_DIGEST
    assert hydrated.commands_forgotten_until == on(WEDNESDAY, 15, 9)
    assert hydrated.executions_forgotten_until == on(WEDNESDAY, 15, 9)
    out = continued(hydrated, [deposit("lost", "10.00", on(WEDNESDAY, 12))])
    [refused] = of_type(out, CommandRejected)
    assert refused.reason == "command_too_old"


def test_continuing_gives_what_the_original_gives(original: Driver,
                                                  hydrated: AccountState) -> None:
    expected = continued(original.state, after_restart())
    got = continued(hydrated, after_restart())
    assert got == expected
    assert not of_type(got, Alert)
    txns = [o for o in got if isinstance(o, LedgerTransaction)]
    assert {t.kind for t in txns} >= {"fill", "release", "hold", "settle", "ach_return"}
    cancels = of_type(got, RouteCancel)
    assert [c.cl_ord_id for c in cancels][:2] == [
        f"{order_id_for(ACCOUNT, 'b5')}.2", f"{order_id_for(ACCOUNT, 'b4')}.1"]


def test_every_prefix_of_the_story_hydrates_and_continues_alike() -> None:
    """A restart may come anywhere: after every message of the story."""
    messages = story()
    rest = after_restart()
    for cut in range(1, len(messages) + 1):
        driver = run(messages[:cut])
        snapshot = snapshot_of(ACCOUNT, driver.outputs)
        assert snapshot is not None
        state = hydrate(snapshot, on(THURSDAY, 8))
        assert nonzero(state.balances) == nonzero(driver.state.balances), cut
        expected = [o for o in continued(driver.state, rest) if isinstance(o, LedgerTransaction)]
        got = [o for o in continued(state, rest) if isinstance(o, LedgerTransaction)]
        assert got == expected, f"after {messages[cut - 1]}"


def test_a_new_account_starts_empty_and_a_stored_state_is_kept() -> None:
    assert snapshot_of(ACCOUNT, []) is None
    calls: list[int] = []

    def loader() -> AccountSnapshot | None:
        calls.append(1)
        return None

    now = on(MONDAY, 9)
    assert state_or_hydrated(None, loader, ACCOUNT, now) == AccountState.empty(ACCOUNT)
    stored = AccountState.empty(ACCOUNT)
    assert state_or_hydrated(stored, loader, ACCOUNT, now) is stored
    assert calls == [1]


def test_the_loaders_errors_propagate() -> None:
    def broken() -> AccountSnapshot | None:
        raise OSError("shard down")

    with pytest.raises(OSError):
        state_or_hydrated(None, broken, ACCOUNT, on(MONDAY, 9))


def test_a_hydrated_account_no_longer_rejects_its_orders() -> None:
    """The bug hydration fixes: cash on the shard, no state in the topology."""
    driver = run([deposit("d1", "1000.00", on(MONDAY, 9))])
    loaded = state_or_hydrated(None, lambda: snapshot_of(ACCOUNT, driver.outputs), ACCOUNT,
                               on(MONDAY, 10))
    state, out = decide(loaded, limit("b", "buy", "5", "100", on(MONDAY, 10)), on(MONDAY, 10),
                        Driver().market, Driver().limits)
    assert [e.state for e in of_type(out, OrderEvent)][-1] is OrderState.ROUTED
    assert state.balance(la.CASH_HELD) == D("500.00")


def test_a_hold_whose_order_events_did_not_land_stays_held_until_day_end() -> None:
    driver = run([deposit("d1", "1000.00", on(MONDAY, 9)),
                  limit("b", "buy", "5", "100", on(MONDAY, 10))])
    without_events = [o for o in driver.outputs
                      if not (isinstance(o, OrderEvent) and o.idempotency_key == "b")]
    snapshot = snapshot_of(ACCOUNT, without_events)
    assert snapshot is not None
    state = hydrate(snapshot, on(MONDAY, 11))
    [order] = state.open_orders.values()
    assert (order.order_id, order.reserve, order.side) == (
        order_id_for(ACCOUNT, "b"), D("500.00"), Side.BUY)
    state, out = decide(state, expire(MONDAY, on(MONDAY, 23)), on(MONDAY, 23),
                        Driver().market, Driver().limits)
    check_invariants(state)
    assert state.balance(la.CASH) == D("1000.00") and not state.open_orders


def test_a_held_order_with_no_events_is_announced_and_routed_again_by_its_journal() -> None:
    """Only the hold landed (the broker lost the order's events and its route request): the
    journal's place_order gives the order its terms back, and its re-publication announces
    the order and routes it again under the same ClOrdID; a further copy changes nothing."""
    import msgspec

    from state.domain.hydrate import SnapshotJournaled
    from state.messages import RouteNewOrder
    from state.topics import encode

    command = limit("b", "buy", "5", "100", on(MONDAY, 10))
    driver = run([deposit("d1", "1000.00", on(MONDAY, 9)), command])
    without_events = [o for o in driver.outputs
                      if not (isinstance(o, OrderEvent) and o.idempotency_key == "b")]
    snapshot = snapshot_of(ACCOUNT, without_events)
    assert snapshot is not None
    snapshot = msgspec.structs.replace(snapshot, journaled=(SnapshotJournaled(
        idempotency_key="b", command_type="place_order", submitted_at=command.submitted_at,
        payload=encode(command)),))
    state = hydrate(snapshot, on(MONDAY, 11))
    [order] = state.open_orders.values()
    assert order.unannounced and (order.symbol, order.quantity, order.limit_price) == (
        "AAPL", D("5"), D("100"))
    state, out = decide(state, command, on(MONDAY, 11), Driver().market, Driver().limits)
    check_invariants(state)
    [route] = of_type(out, RouteNewOrder)
    assert route.cl_ord_id.startswith(order.order_id) or route.order_id == order.order_id
    [event] = of_type(out, OrderEvent)
    assert (event.state, event.reason, event.seq) == (OrderState.ROUTED, "announced_again",
                                                      order.seq + 1)
    assert not of_type(out, LedgerTransaction)  # the hold stands as it was
    state, again = decide(state, command, on(MONDAY, 12), Driver().market, Driver().limits)
    assert again == []


def test_a_deposit_whose_transaction_did_not_land_is_booked_when_published_again() -> None:
    """Its acceptance landed, its transaction was lost with the broker: the key is not spent,
    and the journal's re-publication books the deposit (once)."""
    import msgspec

    from state.domain.hydrate import SnapshotJournaled
    from state.topics import encode

    first = deposit("d1", "1000.00", on(MONDAY, 9))
    second = deposit("d2", "250.00", on(MONDAY, 9, 30))
    driver = run([first, second])
    without_txn = [o for o in driver.outputs
                   if not (isinstance(o, LedgerTransaction) and "d2" in o.cause_id)]
    snapshot = snapshot_of(ACCOUNT, without_txn)
    assert snapshot is not None
    snapshot = msgspec.structs.replace(snapshot, journaled=(SnapshotJournaled(
        idempotency_key="d2", command_type="deposit", submitted_at=second.submitted_at,
        payload=encode(second)),))
    state = hydrate(snapshot, on(MONDAY, 11))
    assert state.balance(la.CASH) == D("1000.00") and "d2" not in state.commands
    state, out = decide(state, second, on(MONDAY, 11), Driver().market, Driver().limits)
    check_invariants(state)
    assert state.balance(la.CASH) == D("1250.00")
    assert len(of_type(out, LedgerTransaction)) == 1
    state, again = decide(state, second, on(MONDAY, 12), Driver().market, Driver().limits)
    assert state.balance(la.CASH) == D("1250.00") and not of_type(again, LedgerTransaction)


def test_a_release_that_did_not_land_keeps_the_order_holding() -> None:
    driver = run([deposit("d1", "1000.00", on(MONDAY, 9)),
                  limit("b", "buy", "5", "100", on(MONDAY, 10)),
                  report("b", "xc", "canceled", when=on(MONDAY, 10, 1))])
    without_release = [o for o in driver.outputs
                       if not (isinstance(o, LedgerTransaction) and o.kind == "release")]
    snapshot = snapshot_of(ACCOUNT, without_release)
    assert snapshot is not None
    state = hydrate(snapshot, on(MONDAY, 11))
    [order] = state.open_orders.values()
    assert order.state is OrderState.ROUTED and order.reserve == D("500.00")


def test_a_fill_whose_step_landed_only_in_the_ledger_completes_when_forwarded_again() -> None:
    """The sink landed the fill's transaction but the broker lost its order event (and the
    release of what the fill left): the rebuilt order has all its fills yet is open. The
    report, forwarded again, completes it and gives back the rest of its hold."""
    last_fill = fill("b", "x1", "5", "99.50", "5", on(MONDAY, 10, 1))
    driver = run([deposit("d1", "1000.00", on(MONDAY, 9)),
                  limit("b", "buy", "5", "100", on(MONDAY, 10)), last_fill])
    fill_step = [o for o in driver.outputs
                 if isinstance(o, OrderEvent) and o.state is OrderState.FILLED
                 or isinstance(o, LedgerTransaction) and o.kind == "release"]
    assert len(fill_step) == 2
    snapshot = snapshot_of(ACCOUNT, [o for o in driver.outputs if o not in fill_step])
    assert snapshot is not None
    state = hydrate(snapshot, on(MONDAY, 11))
    [order] = state.open_orders.values()
    assert order.filled_quantity == order.quantity and order.reserve == D("2.50")
    state, out = decide(state, last_fill, on(MONDAY, 11), Driver().market, Driver().limits)
    check_invariants(state)
    assert not state.open_orders and state.balance(la.CASH_HELD) == 0
    assert state.balance(la.CASH) == D("1000.00") - D("497.50")
    [event] = [o for o in out if isinstance(o, OrderEvent)]
    assert (event.state, event.cause_id) == (OrderState.FILLED, "x1")
    [release] = [o for o in out if isinstance(o, LedgerTransaction)]
    assert release.txn_id == next(o.txn_id for o in fill_step
                                  if isinstance(o, LedgerTransaction))  # the same id
    again, more = decide(state, last_fill, on(MONDAY, 12), Driver().market, Driver().limits)
    assert more == []  # a duplicate of a completed order changes nothing


def test_unsettled_lots_are_the_latest_trade_dates_that_add_up() -> None:
    def bought(day: dt.date, qty: str, cash: str) -> SnapshotFill:
        return SnapshotFill(exec_cause=f"exec:mm1:{day}", order_id=None, symbol="AAPL",
                            side=Side.BUY, quantity=D(qty), price=D(1), cash=D(cash),
                            clearing_account="clearing:mm1",
                            booked_at=on(day, 15))

    fills = [bought(MONDAY, "1", "10.00"), bought(TUESDAY, "2", "20.00"),
             bought(WEDNESDAY, "3", "30.00")]
    outstanding = {"clearing:mm1": {"AAPL": D(-5), la.USD: D("50.00")}}
    lots = unsettled_lots(fills, outstanding)
    assert sorted(lot.trade_date for lot in lots) == [TUESDAY, WEDNESDAY]
    # More outstanding than the window explains: the rest joins the first date's lot.
    lots = unsettled_lots(fills[1:], {"clearing:mm1": {"AAPL": D(-6), la.USD: D("60.00")}})
    first = min(lots, key=lambda lot: lot.trade_date)
    assert (first.trade_date, first.bought, first.cash) == (TUESDAY, D(3), D("30.00"))


def test_a_snapshot_round_trips_through_json() -> None:
    snapshot = snapshot_of(ACCOUNT, run(story()).outputs)
    assert snapshot is not None
    raw = msgspec.json.encode(snapshot)
    assert msgspec.json.decode(raw, type=AccountSnapshot) == snapshot



def test_any_cut_of_the_two_streams_hydrates_to_a_sound_state() -> None:
    """Ledger and events land from two topics: after a crash either may be ahead. Whatever
    the cut, the hydrated state keeps the ledger's balances, satisfies the invariants and goes
    on (every step of `decide` checks them again)."""
    outputs = run(story()).outputs
    txns = [o for o in outputs if isinstance(o, LedgerTransaction)]
    events = [o for o in outputs if isinstance(o, SHARD_EVENTS)]
    for t_cut in range(len(txns) + 1):
        for e_cut in range(len(events) + 1):
            snapshot = snapshot_of(ACCOUNT, [*txns[:t_cut], *events[:e_cut]])
            if snapshot is None:
                continue
            state = hydrate(snapshot, on(THURSDAY, 8))  # checks the invariants
            books = ledger.balances(txns[:t_cut])
            assert {(b, a): m for (b, a), m in nonzero(state.balances).items()} == {
                (la.parse_user(k[0])[1], k[1]): m  # type: ignore[index]
                for k, m in books.items() if m and k[0].startswith("user:")}
            continued(state, after_restart())


def _oid(key: str) -> str:
    return order_id_for(ACCOUNT, key)


CASES: dict[str, tuple[list[Input], list[Input]]] = {
    # Settlement counts the unsettled shares an open sell holds as settled without a ledger
    # leg of the order: its release must give back settled shares.
    "settled_while_held": (
        [deposit("d", "5000.00", on(MONDAY, 9)),
         limit("b", "buy", "10", "100", on(MONDAY, 10)),
         fill("b", "x1", "10", "100", "10", on(MONDAY, 10, 1)),
         limit("s", "sell", "10", "150", on(MONDAY, 11)),
         fill("s", "x2", "4", "150", "4", on(MONDAY, 11, 1), side="sell"),
         settle(TUESDAY, on(TUESDAY, 22))],
        [cancel("c", "s", on(WEDNESDAY, 9)),
         report("s", "x3", "canceled", cum="4", side="sell", when=on(WEDNESDAY, 9, 1),
                cl_ord_id=f"{_oid('s')}.1"),
         limit("s2", "sell", "6", "150", on(WEDNESDAY, 10))]),
    # A cancel on its way with a fill meanwhile, refused: the order goes back to partly filled.
    "pending_cancel": (
        [deposit("d", "5000.00", on(MONDAY, 9)),
         limit("b", "buy", "10", "100", on(MONDAY, 10)),
         cancel("c", "b", on(MONDAY, 10, 1)),
         fill("b", "x1", "3", "99", "3", on(MONDAY, 10, 2))],
        [report("b", "x2", "cancel_rejected", cum="3", when=on(MONDAY, 10, 3),
                cl_ord_id=f"{_oid('b')}.1"),
         fill("b", "x3", "7", "98", "10", on(MONDAY, 10, 4))]),
    # The gateway's cancel of an order it got no answer for.
    "gateway_pending_cancel": (
        [deposit("d", "5000.00", on(MONDAY, 9)),
         limit("b", "buy", "10", "100", on(MONDAY, 10)),
         report("b", "x1", "pending_cancel", when=on(MONDAY, 10, 1))],
        [report("b", "x1", "pending_cancel", when=on(MONDAY, 10, 1)),
         report("b", "x2", "canceled", when=on(MONDAY, 10, 2))]),
    # A replace on its way that grew the hold, then refused: the extra hold goes back.
    "replace_refused": (
        [deposit("d", "5000.00", on(MONDAY, 9)),
         limit("s0", "buy", "20", "100", on(MONDAY, 9, 30)),
         fill("s0", "x0", "20", "100", "20", on(MONDAY, 9, 31)),
         limit("s", "sell", "5", "120", on(MONDAY, 10)),
         replace("r", "s", "15", when=on(MONDAY, 10, 1))],
        [report("s", "x1", "cancel_rejected", side="sell", when=on(MONDAY, 10, 2),
                cl_ord_id=f"{_oid('s')}.1"),
         replace("r2", "s", "8", limit="119", when=on(MONDAY, 10, 3)),
         report("s", "x2", "replaced", cum="0", leaves="8", side="sell",
                when=on(MONDAY, 10, 4), cl_ord_id=f"{_oid('s')}.2", orig_cl_ord_id=_oid("s")),
         cancel("c", "s", on(MONDAY, 10, 5))]),
    # A fill for an order the account never had: booked once, alerted, never again.
    "unknown_order_fill": (
        [deposit("d", "5000.00", on(MONDAY, 9)),
         fill("ghost", "x1", "1", "100", "1", on(MONDAY, 10))],
        [fill("ghost", "x1", "1", "100", "1", on(MONDAY, 10)),
         fill("ghost", "x2", "1", "100", "2", on(MONDAY, 10, 5))]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_open_business_at_the_restart_goes_on_as_before(case: str) -> None:
    before, after = CASES[case]
    original = run(before)
    snapshot = snapshot_of(ACCOUNT, original.outputs)
    assert snapshot is not None
    restart = max(when_of(m) for m in before)
    state = hydrate(snapshot, restart)
    for order_id, order in original.state.open_orders.items():
        assert state.open_orders[order_id] == msgspec.structs.replace(
            order, reference_price=None, last_transact_time=state.open_orders[
                order_id].last_transact_time), order_id
    assert continued(state, after) == continued(original.state, after)


def test_keys_the_rebuilt_state_does_not_keep_still_name_their_commands(
        original: Driver) -> None:
    """d0 was deposited before the commands' lookback: the rebuilt state does not hold its key,
    and a deposit under it with another amount, submitted after the snapshot, would be booked
    under d0's transaction id (the shard keeps d0's). Given back as forgotten, it is refused."""
    snapshot = snapshot_of(ACCOUNT, original.outputs)
    assert snapshot is not None
    state = hydrate(snapshot, on(THURSDAY, 8))
    records = forgotten_records(snapshot, state)
    assert "d0" in records and "d0" not in state.commands
    assert not set(records) & set(state.commands)
    assert records["d0"].digest == UNKNOWN_DIGEST
    again = deposit("d0", "7.00", on(THURSDAY, 9))
    limits, market = RiskLimits(), MarketContext()
    _, booked = decide(state, again, on(THURSDAY, 9), market, limits)
    assert any(isinstance(o, LedgerTransaction) for o in booked)  # what happened before
    after, refused = decide(state, again, on(THURSDAY, 9), market, limits, records["d0"])
    assert [(type(o).__name__, o.reason) for o in refused] == [
        ("CommandRejected", Reason.DUPLICATE_IDEMPOTENCY_KEY)]
    assert after.balance(la.CASH) == state.balance(la.CASH)
