"""Hydration: an account's state rebuilt from its shard, the durable record.

The embedded broker keeps topics (and so the account topology's changelog) in memory only: after
a restart the topology meets accounts it holds no state for while their shard still has every
ledger transaction and order event. `state_or_hydrated` gives the topology the state it stored,
else the state rebuilt from an `AccountSnapshot` of the shard (`hydrate`), else (a new account)
the empty state. `state.domain.shard_snapshot` derives the snapshot from the shard's rows;
`state.shard_store.load_account_snapshot` reads them.

What the shard tells exactly: the user's balances (the ledger), each order's terms, state, event
seq, fills (quantity, cash, exec ids), reserve (its `cash_held` / `shares_held` legs), cancel and
replace requests (hence its ClOrdIDs), deposits and recent fills (lots, day trades). What it
cannot tell is taken on the safe side, so that nothing is applied twice:
- `commands_forgotten_until` and `executions_forgotten_until` are set to `as_of`: a command with
  a key the snapshot does not hold, submitted at or before the snapshot, is refused
  (`command_too_old`); an execution for an order the snapshot does not hold, from at or before
  it, is alerted and not booked. Except for commands the HTTP gateway acknowledged that have no
  outcome on record (`journaled`, from the intake journal): the journal re-publishes them after
  a broker reset, and other commands landed after them must not make them too old. The command
  cut-off then lies just before the first of them (never before the records the snapshot reads,
  `IDEMPOTENCY_RETENTION`): a key unknown to the snapshot and submitted after that has no trace
  on record, so it was never applied and deciding it now applies it once.
- an idempotency key whose body the shard does not record gets the digest `UNKNOWN_DIGEST` (or
  a best guess): any reuse of that key is refused as a different body, never applied again.
- every other key the shard shows the account used (`forgotten`, from before the lookback, and
  the snapshot's commands the rebuilt state does not keep) is given back as a forgotten key
  (`forgotten_records`, which the shell stores as `state.account_parts` does a key the state
  dropped): a key names one command for good, across a broker reset too.
- the settled/unsettled split of a sell's reserve is the ledger's, capped by the shares bought on
  trade dates not yet settled (settlement converts held unsettled shares without a ledger leg of
  the order); any excess counted as unsettled settles at the next settlement.
Other losses are listed in `shard_snapshot`'s docstring.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from decimal import Decimal

import msgspec

from state import ledger_accounts as la
from state.domain.account import (
    CLOSED_ORDERS_MAX,
    DAY_TRADES_RETENTION,
    DEPOSIT_RETENTION,
    DEPOSITS_MAX,
    IDEMPOTENCY_KEYS_MAX,
    IDEMPOTENCY_RETENTION,
    ORDER_RETENTION,
    ORPHAN_EXECS_MAX,
    RATE_WINDOW,
    AccountState,
    CommandRecord,
    DayTrade,
    DepositRecord,
    _latest,
    _utc,
    body_digest,
    check_invariants,
)
from state.domain.lots import SettlementLot, bought_by_symbol, lot_key
from state.domain.money import ZERO
from state.domain.orders import Order, PendingReplace
from state.ids import order_id_for
from state.messages import (
    TERMINAL_ORDER_STATES,
    OrderState,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
)

__all__ = [
    "UNKNOWN_DIGEST",
    "AccountSnapshot",
    "SnapshotCommand",
    "SnapshotDeposit",
    "SnapshotFill",
    "SnapshotJournaled",
    "SnapshotOrder",
    "forgotten_records",
    "hydrate",
    "state_or_hydrated",
]

# The digest of a key whose body is not known: it matches no body, so a reuse is refused.
UNKNOWN_DIGEST = "unknown"


class SnapshotOrder(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An order as the shard records it: open, or closed within the order retention."""

    order_id: str
    idempotency_key: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    placed_at: dt.datetime
    state: OrderState
    seq: int  # of its last OrderEvent: the next event continues the numbering
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    held_amount: Decimal = ZERO
    # From the ledger: what the order still holds (USD for a buy, shares for a sell) and, for a
    # sell, the part of it taken from unsettled shares.
    reserve: Decimal = ZERO
    reserve_unsettled: Decimal = ZERO
    filled_quantity: Decimal = ZERO
    fill_notional: Decimal = ZERO
    cash_booked: Decimal = ZERO
    digest: str = ""  # of its place_order body
    exec_ids: tuple[str, ...] = ()
    last_transact_time: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    # ClOrdIDs: request n went out as `cl_ord_id_for(order_id, n)`; the market maker knows the
    # order by `confirmed_cl_ord_id` (None: the new order's) and may be answering a replace.
    requests: int = 0
    cancel_attempts: int = 0
    confirmed_cl_ord_id: str | None = None
    pending_replace: PendingReplace | None = None
    state_before_cancel: OrderState | None = None
    unannounced: bool = False


class SnapshotCommand(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An idempotency key the account used: which command, when processed, its body's digest."""

    idempotency_key: str
    command_type: str
    seen_at: dt.datetime
    digest: str = UNKNOWN_DIGEST


class SnapshotDeposit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: str
    amount: Decimal
    deposited_at: dt.datetime
    returned: bool = False


class SnapshotFill(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One fill transaction: its clearing legs (lots), its side and day (day trades)."""

    exec_cause: str  # the fill's cause id: `exec:<market maker>:<exec id>`
    order_id: str | None
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    cash: Decimal  # USD the fill moved, unsigned
    clearing_account: str
    booked_at: dt.datetime


class SnapshotJournaled(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A command the HTTP gateway acknowledged (its intake journal) with no outcome on record."""

    idempotency_key: str
    command_type: str
    submitted_at: dt.datetime
    payload: bytes | None = None  # the command as journaled (place orders: their terms)


class AccountSnapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account_id: str
    as_of: dt.datetime  # the newest ledger transaction or event of the account
    # The user's buckets (la.CASH, ...) -> asset -> amount, as the ledger sums them.
    balances: dict[str, dict[str, Decimal]] = msgspec.field(default_factory=dict)
    orders: tuple[SnapshotOrder, ...] = ()  # by placement
    commands: tuple[SnapshotCommand, ...] = ()  # by seen_at
    deposits: tuple[SnapshotDeposit, ...] = ()  # by deposited_at
    fills: tuple[SnapshotFill, ...] = ()  # of the last days, in booking order
    # The account's share of each clearing account (clearing account -> asset -> amount): its
    # fills less what settlement moved out, i.e. what its unsettled lots must add up to.
    clearing_outstanding: dict[str, dict[str, Decimal]] = msgspec.field(default_factory=dict)
    journaled: tuple[SnapshotJournaled, ...] = ()  # by submission
    # Keys the account used before the commands' lookback (digest unknown).
    forgotten: tuple[SnapshotCommand, ...] = ()


# ---- the shell's entry ----------------------------------------------------------------------


def state_or_hydrated(stored: AccountState | None,
                      snapshot_loader: Callable[[], AccountSnapshot | None],
                      account_id: str, now: dt.datetime) -> AccountState:
    """The stored state; else the account rebuilt from its shard; else (nothing recorded: a new
    account) the empty state. The loader's errors propagate: an account whose shard cannot be
    read must not go on from an empty state (that is the very loss hydration prevents)."""
    if stored is not None:
        return stored
    snapshot = snapshot_loader()
    if snapshot is None:
        return AccountState.empty(account_id)
    assert snapshot.account_id == account_id, (
        f"snapshot of {snapshot.account_id} loaded for {account_id}")
    return hydrate(snapshot, now)


# ---- hydrate --------------------------------------------------------------------------------


def hydrate(snapshot: AccountSnapshot, now: dt.datetime) -> AccountState:
    """The account state the snapshot implies at `now` (retention applied as `decide` would);
    satisfies `check_invariants` (else the snapshot is inconsistent: AssertionError)."""
    state = AccountState(account_id=snapshot.account_id)
    state.balances = {bucket: {asset: amount for asset, amount in assets.items() if amount}
                      for bucket, assets in snapshot.balances.items()
                      if bucket in la.USER_BUCKETS}
    state.filled_net = _positions(state.balances)
    lots = unsettled_lots(snapshot.fills, snapshot.clearing_outstanding)
    state.unsettled_lots = {lot.key: lot for lot in lots}
    _restore_orders(state, _with_journaled_terms(snapshot), now)
    _cap_held_unsettled(state, bought_by_symbol(lots))
    _restore_commands(state, snapshot.commands, now)
    _know_unannounced_bodies(state)
    _restore_deposits(state, snapshot.deposits, now)
    _restore_fills(state, snapshot, now)
    state.commands_forgotten_until = _latest(state.commands_forgotten_until,
                                             [_unrecorded_until(state, snapshot)])
    state.executions_forgotten_until = _latest(state.executions_forgotten_until,
                                               [snapshot.as_of])
    check_invariants(state)
    return state


def forgotten_records(snapshot: AccountSnapshot, state: AccountState
                      ) -> dict[str, CommandRecord]:
    """The keys the snapshot shows the account used whose records `state` (hydrated from it)
    does not keep, each with what is known of its command."""
    records: dict[str, CommandRecord] = {}
    for command in (*snapshot.commands, *snapshot.forgotten):
        key = command.idempotency_key
        if key in state.commands or key in records:
            continue
        seen_at = _utc(command.seen_at)
        records[key] = CommandRecord(command_type=command.command_type, digest=command.digest,
                                     seen_at=seen_at, submitted_at=seen_at)
    return records


def _with_journaled_terms(snapshot: AccountSnapshot) -> list[SnapshotOrder]:
    """Orders the ledger holds funds for but no event of which landed take their terms from
    their place_order in the intake journal (the shard knows its exact body), and are marked
    unannounced: the journal re-publishes the command, which announces and routes it again."""
    placed: dict[str, PlaceOrder] = {}
    for entry in snapshot.journaled:
        if entry.command_type == "place_order" and entry.payload is not None:
            command = _PLACE_DECODER.decode(entry.payload)
            placed[order_id_for(snapshot.account_id, command.idempotency_key)] = command
    orders = []
    for row in snapshot.orders:
        body = placed.get(row.order_id)
        if body is not None and row.digest == UNKNOWN_DIGEST:
            row = msgspec.structs.replace(
                row, idempotency_key=body.idempotency_key, symbol=body.symbol,
                side=body.side, order_type=body.order_type, time_in_force=body.time_in_force,
                quantity=body.quantity, limit_price=body.limit_price,
                stop_price=body.stop_price, digest=body_digest(body), unannounced=True)
        orders.append(row)
    return orders


def _know_unannounced_bodies(state: AccountState) -> None:
    """An unannounced order's key names the journaled body: its re-publication is the same
    command (not another body under a reused key)."""
    for order in state.open_orders.values():
        record = state.commands.get(order.idempotency_key)
        if order.unannounced and record is not None and record.digest == UNKNOWN_DIGEST:
            state.commands[order.idempotency_key] = msgspec.structs.replace(
                record, digest=order.digest)


def _unrecorded_until(state: AccountState, snapshot: AccountSnapshot) -> dt.datetime:
    """Unknown keys submitted at or before this are refused as too old: the snapshot's time,
    or just before the first journaled command without an outcome (not before the records'
    window; see the module docstring)."""
    as_of = _utc(snapshot.as_of)
    pending = [_utc(c.submitted_at) for c in snapshot.journaled
               if not _key_known(state, c.idempotency_key)]
    if not pending or min(pending) > as_of:
        return as_of
    return max(min(pending) - _JUST_BEFORE, as_of - IDEMPOTENCY_RETENTION)


_JUST_BEFORE = dt.timedelta(microseconds=1)
_PLACE_DECODER = msgspec.json.Decoder(PlaceOrder)


def _key_known(state: AccountState, key: str) -> bool:
    return key in state.commands or state.order(order_id_for(state.account_id, key)) is not None


def _positions(balances: dict[str, dict[str, Decimal]]) -> dict[str, Decimal]:
    """Positions equal fills (the invariant): the share buckets are the sum of the fills."""
    positions: dict[str, Decimal] = {}
    for bucket in (la.SHARES, la.SHARES_UNSETTLED, la.SHARES_HELD):
        for symbol, amount in balances.get(bucket, {}).items():
            positions[symbol] = positions.get(symbol, ZERO) + amount
    return {symbol: amount for symbol, amount in positions.items() if amount}


def _restore_orders(state: AccountState, orders: Iterable[SnapshotOrder], now: dt.datetime
                    ) -> None:
    open_orders = [o for o in orders if o.state not in TERMINAL_ORDER_STATES]
    closed = sorted((o for o in orders if o.state in TERMINAL_ORDER_STATES),
                    key=lambda o: o.closed_at or o.placed_at)
    closed = [o for o in closed if now - (o.closed_at or o.placed_at) <= ORDER_RETENTION]
    dropped = closed[:-CLOSED_ORDERS_MAX] if len(closed) > CLOSED_ORDERS_MAX else []
    closed = closed[len(dropped):]
    for row in sorted(open_orders, key=lambda o: o.placed_at):
        state.open_orders[row.order_id] = _order(row)
    for row in closed:
        state.closed_orders[row.order_id] = _order(row)
    state.executions_forgotten_until = _latest(
        state.executions_forgotten_until, [o.last_transact_time for o in dropped])
    state.order_times = sorted(_utc(o.placed_at) for o in orders
                               if now - o.placed_at < RATE_WINDOW)


def _order(row: SnapshotOrder) -> Order:
    is_open = row.state not in TERMINAL_ORDER_STATES
    assert is_open or not row.reserve, (
        f"{row.state} order {row.order_id} holds {row.reserve} on the ledger")
    return Order(
        order_id=row.order_id, idempotency_key=row.idempotency_key, symbol=row.symbol,
        side=row.side, order_type=row.order_type, time_in_force=row.time_in_force,
        quantity=row.quantity, placed_at=_utc(row.placed_at), digest=row.digest,
        state=row.state, seq=row.seq, limit_price=row.limit_price, stop_price=row.stop_price,
        held_amount=row.held_amount, reserve=row.reserve,
        reserve_unsettled=min(max(row.reserve_unsettled, ZERO), row.reserve),
        filled_quantity=row.filled_quantity, fill_notional=row.fill_notional,
        cash_booked=row.cash_booked,
        cancel_attempts=row.cancel_attempts, state_before_cancel=row.state_before_cancel,
        exec_ids=row.exec_ids,
        last_transact_time=_utc(row.last_transact_time) if row.last_transact_time else None,
        closed_at=_utc(row.closed_at) if row.closed_at else None, requests=row.requests,
        confirmed_cl_ord_id=row.confirmed_cl_ord_id, pending_replace=row.pending_replace,
        unannounced=row.unannounced,
    )


def _cap_held_unsettled(state: AccountState, bought_unsettled: dict[str, Decimal]) -> None:
    """Unsettled shares (free and held by sells) never exceed what was bought on trade dates
    not yet settled: settlement counts held unsettled shares as settled without a ledger leg of
    the order, so the ledger's unsettled part of a reserve is an upper bound. The first
    placed orders settle first, as in `settlement._settle_held`."""
    held: dict[str, Decimal] = {}
    for order in state.open_orders.values():
        if order.side is Side.SELL:
            held[order.symbol] = held.get(order.symbol, ZERO) + order.reserve_unsettled
    for symbol, total in held.items():
        cap = max(bought_unsettled.get(symbol, ZERO) - state.balance(la.SHARES_UNSETTLED, symbol),
                  ZERO)
        excess = total - cap
        for order in list(state.open_orders.values()):
            if excess <= 0:
                break
            if order.side is not Side.SELL or order.symbol != symbol:
                continue
            settled = min(excess, order.reserve_unsettled)
            state.open_orders[order.order_id] = msgspec.structs.replace(
                order, reserve_unsettled=order.reserve_unsettled - settled)
            excess -= settled


def _restore_commands(state: AccountState, commands: Iterable[SnapshotCommand],
                      now: dt.datetime) -> None:
    """Keys within the retention, oldest first (the order `decide` prunes them in); the
    submission time is not recorded: the processing time stands for it (later, so a cut-off
    derived from it refuses more, never less)."""
    kept: list[SnapshotCommand] = []
    forgotten: list[dt.datetime] = []
    for command in sorted(commands, key=lambda c: c.seen_at):
        if now - command.seen_at > IDEMPOTENCY_RETENTION:
            forgotten.append(command.seen_at)
        else:
            kept.append(command)
    if len(kept) > IDEMPOTENCY_KEYS_MAX:
        forgotten += [c.seen_at for c in kept[:-IDEMPOTENCY_KEYS_MAX]]
        kept = kept[-IDEMPOTENCY_KEYS_MAX:]
    for command in kept:
        seen_at = _utc(command.seen_at)
        state.commands.setdefault(command.idempotency_key, CommandRecord(
            command_type=command.command_type, digest=command.digest, seen_at=seen_at,
            submitted_at=seen_at))
    state.commands_forgotten_until = _latest(state.commands_forgotten_until, forgotten)


def _restore_deposits(state: AccountState, deposits: Iterable[SnapshotDeposit],
                      now: dt.datetime) -> None:
    kept = [d for d in sorted(deposits, key=lambda d: d.deposited_at)
            if now - d.deposited_at <= DEPOSIT_RETENTION][-DEPOSITS_MAX:]
    for deposit in kept:
        state.deposits[deposit.idempotency_key] = DepositRecord(
            amount=deposit.amount, deposited_at=_utc(deposit.deposited_at),
            returned=deposit.returned)


def _restore_fills(state: AccountState, snapshot: AccountSnapshot, now: dt.datetime) -> None:
    """Last prices, buy days and day trades replayed from the fills in booking order (as
    `account._note_fill` saw them); fills of orders the snapshot does not hold are the
    account's executions for unknown orders (`orphan_execs`)."""
    known = {order.order_id for order in snapshot.orders}
    orphans: dict[str, dt.datetime] = {}
    bought_on: dict[str, dt.date] = {}
    for fill in snapshot.fills:
        day = _utc(fill.booked_at).date()
        state.last_prices[fill.symbol] = fill.price
        if fill.side is Side.BUY:
            bought_on[fill.symbol] = day
        elif bought_on.get(fill.symbol) == day:
            trade = DayTrade(day=day, order_id=fill.order_id or "")
            if trade not in state.day_trades:
                state.day_trades.append(trade)
        if fill.order_id not in known and now - fill.booked_at <= ORDER_RETENTION:
            orphans[fill.exec_cause] = _utc(fill.booked_at)
    today = now.date()
    state.bought_on = {symbol: day for symbol, day in bought_on.items() if day == today}
    state.day_trades = [t for t in state.day_trades if t.day >= today - DAY_TRADES_RETENTION]
    kept = list(orphans.items())[-ORPHAN_EXECS_MAX:]
    state.orphan_execs = dict(kept)


# ---- unsettled lots -------------------------------------------------------------------------


def unsettled_lots(fills: Iterable[SnapshotFill],
                   clearing_outstanding: dict[str, dict[str, Decimal]]) -> list[SettlementLot]:
    """The lots of the trade dates settlement has not reached yet.

    Settlement always settles every trade date up to one day, so what is left is the lots of
    the latest trade dates: the shortest-dated suffix of the fills' lots whose clearing legs
    add up to the account's outstanding clearing balances. When no suffix does (fills older
    than the snapshot's window are unsettled too), every lot of the window is unsettled and the
    rest is one lot at the window's first trade date (settled at the next settlement)."""
    by_date: dict[dt.date, dict[str, SettlementLot]] = {}
    for fill in fills:
        day = _utc(fill.booked_at).date()
        lots = by_date.setdefault(day, {})
        key = lot_key(day, fill.clearing_account, fill.symbol)
        lot = lots.get(key) or SettlementLot(trade_date=day,
                                             clearing_account=fill.clearing_account,
                                             symbol=fill.symbol)
        if fill.side is Side.BUY:
            lot = msgspec.structs.replace(lot, bought=lot.bought + fill.quantity,
                                          cash=lot.cash + fill.cash)
        else:
            lot = msgspec.structs.replace(lot, sold=lot.sold + fill.quantity,
                                          cash=lot.cash - fill.cash)
        lots[key] = lot
    target = _nonzero(clearing_outstanding)
    dates = sorted(by_date)
    for first in range(len(dates) + 1):
        suffix = [lot for day in dates[first:] for lot in by_date[day].values()]
        if _clearing_sums(suffix) == target:
            return suffix
    every = [lot for day in dates for lot in by_date[day].values()]
    return _with_remainder(every, target, dates[0] if dates else None)


def _clearing_sums(lots: Iterable[SettlementLot]) -> dict[tuple[str, str], Decimal]:
    """What the lots leave on the clearing accounts (as the fills' clearing legs did)."""
    sums: dict[tuple[str, str], Decimal] = {}
    for lot in lots:
        for asset, amount in ((lot.symbol, lot.sold - lot.bought), (la.USD, lot.cash)):
            key = (lot.clearing_account, asset)
            sums[key] = sums.get(key, ZERO) + amount
    return {key: amount for key, amount in sums.items() if amount}


def _nonzero(amounts: dict[str, dict[str, Decimal]]) -> dict[tuple[str, str], Decimal]:
    return {(account, asset): amount for account, assets in amounts.items()
            for asset, amount in assets.items() if amount}


def _with_remainder(lots: list[SettlementLot], target: dict[tuple[str, str], Decimal],
                    day: dt.date | None) -> list[SettlementLot]:
    """`lots` and, at `day`, what the clearing balances hold beyond them: per clearing account
    and symbol its shares; a clearing account's USD goes with its first symbol (USD of a
    clearing account no lot names cannot be placed and is left out)."""
    if day is None:
        return lots
    missing = dict(target)
    for key, amount in _clearing_sums(lots).items():
        missing[key] = missing.get(key, ZERO) - amount
    result = {lot.key: lot for lot in lots}

    def add(account: str, symbol: str, sold: Decimal, bought: Decimal, cash: Decimal) -> None:
        key = lot_key(day, account, symbol)
        lot = result.get(key) or SettlementLot(trade_date=day, clearing_account=account,
                                               symbol=symbol)
        result[key] = msgspec.structs.replace(lot, sold=lot.sold + sold,
                                              bought=lot.bought + bought, cash=lot.cash + cash)

    for (account, asset), amount in sorted(missing.items()):
        if asset != la.USD and amount:
            add(account, asset, max(amount, ZERO), max(-amount, ZERO), ZERO)
    for (account, asset), amount in sorted(missing.items()):
        if asset != la.USD or not amount:
            continue
        symbol = next((lot.symbol for lot in result.values()
                       if lot.clearing_account == account), None)
        if symbol is not None:
            add(account, symbol, ZERO, ZERO, amount)
    return list(result.values())
