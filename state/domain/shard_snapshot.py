"""An account's `AccountSnapshot` derived from what its shard records (pure, no I/O).

`snapshot_from_records` reads the account's ledger transactions and account events, the rows
`state.shard_store.load_account_snapshot` loads (the unit tests feed it a `decide()` run's own
outputs). Ledger and events land from two topics, so after a crash either may be a little ahead
of the other: amounts (balances, reserves, fills) are the ledger's; terms, states and event seq
are the events'. An order the ledger still holds funds for is kept open whatever its events say.

What `transactions` and `events` must hold (the loader reads exactly this, or more):
- for every order id they name: all of that order's transactions and OrderEvents;
- every order that is open, or holds funds on the ledger, or changed within `ORDERS_LOOKBACK`;
- fills within `FILLS_LOOKBACK`, deposits and ACH returns within `DEPOSITS_LOOKBACK`,
  withdrawals, settlements and command events within `COMMANDS_LOOKBACK` of the newest record.
Anything older is ignored here, so the loader's rows and a full history give the same snapshot.

Not exact (the shard does not record it), and what stands for it:
- bodies of some idempotency keys: rejected deposits and withdrawals, replaces (guessed: the
  changed terms), ACH returns (guessed: reason R01 and the deposit matched by amount), day ends
  and settlements (from the `eod-`/`settle-` key convention). A wrong guess acts as
  `UNKNOWN_DIGEST`: a reuse of the key is refused as another body, never applied twice.
- submission times of commands: their processing time stands for them.
- which deposit an ACH return returned: the oldest unreturned deposit of that amount.
- exec ids of acknowledgements and status replies (they change nothing when repeated), the
  market maker's transact times (our booking times stand for them, later: a safe cut-off),
  order reference prices (a replace of an open market buy then has no hold price) and last
  prices from quotes (the last fill price stands for them).
- the unsettled part of a sell's reserve (see `hydrate`).
- an order the ledger holds funds for but whose events did not land (or say it closed): it is
  kept as a routed day order (expired at day end, its hold released); a buy's symbol is then
  `UNKNOWN_SYMBOL` unless one of its fills names it, its quantity what filled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from state import ledger_accounts as la
from state.domain.account import (
    DAY_TRADES_RETENTION,
    DEPOSIT_RETENTION,
    IDEMPOTENCY_RETENTION,
    ORDER_RETENTION,
    body_digest,
)
from state.domain.hydrate import (
    UNKNOWN_DIGEST,
    AccountSnapshot,
    SnapshotCommand,
    SnapshotDeposit,
    SnapshotFill,
    SnapshotOrder,
)
from state.domain.money import PRICE_QUANTUM, ZERO
from state.domain.orders import PendingReplace
from state.ids import cl_ord_id_for
from state.messages import (
    TERMINAL_ORDER_STATES,
    AccountEvent,
    AchReturn,
    CancelOrder,
    Command,
    CommandAccepted,
    CommandRejected,
    Deposit,
    ExpireOrders,
    LedgerTransaction,
    OrderEvent,
    OrderState,
    OrderType,
    PlaceOrder,
    ReplaceOrder,
    SettleTrades,
    Side,
    TimeInForce,
    Withdraw,
)

__all__ = [
    "COMMANDS_LOOKBACK",
    "DEPOSITS_LOOKBACK",
    "FILLS_LOOKBACK",
    "ORDERS_LOOKBACK",
    "TERMINAL_STATE_NAMES",
    "UNKNOWN_SYMBOL",
    "snapshot_from_records",
]

ORDERS_LOOKBACK = max(ORDER_RETENTION, IDEMPOTENCY_RETENTION)
COMMANDS_LOOKBACK = IDEMPOTENCY_RETENTION
FILLS_LOOKBACK = DAY_TRADES_RETENTION + dt.timedelta(days=1)
# Returns refer to deposits of the retention before them: matched over twice the retention.
DEPOSITS_LOOKBACK = 2 * DEPOSIT_RETENTION
UNKNOWN_SYMBOL = "UNKNOWN"
TERMINAL_STATE_NAMES = tuple(sorted(state.value for state in TERMINAL_ORDER_STATES))
_PLACE_EVENTS_SEQ = 3  # validated, funds_held, routed: what a routed placement emitted
_PLACING = frozenset({OrderState.PENDING, OrderState.VALIDATED, OrderState.FUNDS_HELD})
_ROUTED = frozenset({OrderState.ROUTED, OrderState.PARTIALLY_FILLED, OrderState.PENDING_CANCEL})
_DUPLICATE_REASONS = frozenset({"duplicate_idempotency_key_different_body", "command_too_old"})
_COMMAND_OF_KIND = {"deposit": "deposit", "withdrawal": "withdraw", "ach_return": "ach_return",
                    "settle": "settle_trades"}


def snapshot_from_records(
    account_id: str,
    balances: Mapping[str, Mapping[str, Decimal]],
    clearing_outstanding: Mapping[str, Mapping[str, Decimal]],
    transactions: Sequence[LedgerTransaction],
    events: Sequence[AccountEvent],
) -> AccountSnapshot | None:
    """The snapshot of `account_id` from its records (None: nothing recorded, a new account).
    `balances`: the user's buckets -> asset -> amount; `clearing_outstanding`: the sums of the
    account's legs on each clearing account -> asset; `transactions` in landing order."""
    times = [t.occurred_at for t in transactions] + [e.occurred_at for e in events]
    if not times:
        return None
    as_of = _utc(max(times))
    records = _Records(account_id, as_of, transactions, events)
    deposits, returned_of = _deposits(records)
    return AccountSnapshot(
        account_id=account_id, as_of=as_of,
        balances={bucket: dict(assets) for bucket, assets in balances.items()},
        orders=tuple(sorted(_orders(records), key=lambda o: (o.placed_at, o.order_id))),
        commands=tuple(_commands(records, returned_of)),
        deposits=tuple(d for d in deposits if as_of - d.deposited_at <= DEPOSIT_RETENTION),
        fills=tuple(_fills(records)),
        clearing_outstanding={account: dict(assets)
                              for account, assets in clearing_outstanding.items()},
    )


def _utc(time: dt.datetime) -> dt.datetime:
    return time if time.tzinfo is dt.UTC else time.astimezone(dt.UTC)


@dataclass
class _Records:
    """The records grouped the ways the derivation reads them."""

    account_id: str
    as_of: dt.datetime
    transactions: Sequence[LedgerTransaction]
    events: Sequence[AccountEvent]
    order_events: dict[str, list[OrderEvent]] = field(default_factory=dict)
    order_txns: dict[str, list[LedgerTransaction]] = field(default_factory=dict)
    fill_prices: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    txn_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for event in self.events:
            if isinstance(event, OrderEvent):
                self.order_events.setdefault(event.order_id, []).append(event)
                if event.last_fill_price is not None:
                    self.fill_prices[(event.order_id, event.cause_id)] = event.last_fill_price
        for order_events in self.order_events.values():
            order_events.sort(key=lambda e: e.seq)
        for txn in self.transactions:
            self.txn_ids.add(txn.txn_id)
            if txn.order_id is not None:
                self.order_txns.setdefault(txn.order_id, []).append(txn)

    def user(self, bucket: str) -> str:
        return la.user(self.account_id, bucket)

    def command_key(self, cause_id: str) -> str | None:
        prefix = f"cmd:{self.account_id}:"
        return cause_id[len(prefix):] if cause_id.startswith(prefix) else None

    def since(self, time: dt.datetime, lookback: dt.timedelta) -> bool:
        return self.as_of - time <= lookback


# ---- fills --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fill:
    exec_cause: str
    exec_id: str
    clearing_account: str
    symbol: str
    side: Side
    quantity: Decimal
    cash: Decimal
    booked_at: dt.datetime


def _fill_of(txn: LedgerTransaction) -> _Fill | None:
    """A fill transaction's clearing legs: shares one way, cash the other."""
    clearing = la.clearing("x")[: -len("x")]
    shares = cash = ZERO
    account = symbol = None
    for entry in txn.entries:
        if not entry.ledger_account.startswith(clearing):
            continue
        account = entry.ledger_account
        if entry.asset == la.USD:
            cash += entry.amount
        else:
            symbol = entry.asset
            shares += entry.amount
    if account is None or symbol is None or not shares:
        return None
    parts = txn.cause_id.split(":", 2)
    exec_id = parts[2] if len(parts) == 3 and parts[0] == "exec" else txn.cause_id
    return _Fill(exec_cause=txn.cause_id, exec_id=exec_id, clearing_account=account,
                 symbol=symbol, side=Side.BUY if shares < 0 else Side.SELL,
                 quantity=abs(shares), cash=abs(cash), booked_at=_utc(txn.occurred_at))


def _price(records: _Records, order_id: str | None, fill: _Fill) -> Decimal:
    """The fill's price as its OrderEvent reported it; else its cash per share."""
    price = records.fill_prices.get((order_id or "", fill.exec_id))
    if price is not None:
        return price
    return (fill.cash / fill.quantity).quantize(PRICE_QUANTUM)


def _fills(records: _Records) -> Iterable[SnapshotFill]:
    for txn in records.transactions:
        if txn.kind != "fill" or not records.since(txn.occurred_at, FILLS_LOOKBACK):
            continue
        fill = _fill_of(txn)
        if fill is None:
            continue
        yield SnapshotFill(
            exec_cause=fill.exec_cause, order_id=txn.order_id, symbol=fill.symbol,
            side=fill.side, quantity=fill.quantity, price=_price(records, txn.order_id, fill),
            cash=fill.cash, clearing_account=fill.clearing_account, booked_at=fill.booked_at)


# ---- orders -------------------------------------------------------------------------------


@dataclass
class _LedgerSide:
    """What an order's transactions say: its reserve (and the unsettled part), its fills."""

    side: Side | None = None
    symbol: str | None = None
    reserve: Decimal = ZERO
    reserve_unsettled: Decimal = ZERO
    first_hold: Decimal | None = None
    first_cause: str | None = None
    first_at: dt.datetime | None = None
    holds: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # cause -> held
    fills: list[_Fill] = field(default_factory=list)


def _ledger_side(records: _Records, order_id: str) -> _LedgerSide:
    side = _LedgerSide()
    cash_held, shares_held = records.user(la.CASH_HELD), records.user(la.SHARES_HELD)
    unsettled_account = records.user(la.SHARES_UNSETTLED)
    for txn in records.order_txns.get(order_id, []):
        if side.first_at is None:
            side.first_at, side.first_cause = _utc(txn.occurred_at), txn.cause_id
        held = unsettled = ZERO
        for entry in txn.entries:
            if entry.ledger_account == cash_held:
                side.side = Side.BUY
                held += entry.amount
            elif entry.ledger_account == shares_held:
                side.side, side.symbol = Side.SELL, entry.asset
                held += entry.amount
            elif entry.ledger_account == unsettled_account:
                unsettled += entry.amount
        fill = _fill_of(txn) if txn.kind == "fill" else None
        if fill is not None:
            side.fills.append(fill)
            side.symbol = side.symbol or fill.symbol
            # a sell's fill takes the settled part of its reserve first
            settled_part = side.reserve - side.reserve_unsettled
            side.reserve_unsettled -= max(-held - settled_part, ZERO)
        elif held > 0:
            side.reserve_unsettled -= unsettled  # the hold's unsettled shares (a negative leg)
            side.holds[txn.cause_id] = (held, -unsettled)
            if side.first_hold is None:
                side.first_hold = held
        elif held < 0:
            side.reserve_unsettled -= unsettled  # released to unsettled shares
        side.reserve += held
        side.reserve_unsettled = min(max(side.reserve_unsettled, ZERO), side.reserve)
    return side


def _orders(records: _Records) -> Iterable[SnapshotOrder]:
    for order_id in {*records.order_events, *records.order_txns}:
        ledger = _ledger_side(records, order_id)
        events = records.order_events.get(order_id)
        if events:
            row = _from_events(records, order_id, events, ledger)
        elif ledger.reserve:
            row = _held_only(records, order_id, ledger)
        else:
            continue  # fills of an order the shard has no events of: executions for it
        if (row.state not in TERMINAL_ORDER_STATES
                or records.since(row.closed_at or row.placed_at, ORDER_RETENTION)):
            yield row


@dataclass
class _Scan:
    """An order's history as its events tell it, in seq order."""

    requests: int = 0
    cancel_attempts: int = 0
    state_before_cancel: OrderState | None = None
    pending: PendingReplace | None = None
    confirmed: str | None = None
    closed_at: dt.datetime | None = None
    exec_events: list[tuple[dt.datetime, str]] = field(default_factory=list)
    commands: list[SnapshotCommand] = field(default_factory=list)


def _from_events(records: _Records, order_id: str, events: list[OrderEvent],
                 ledger: _LedgerSide) -> SnapshotOrder:
    first, last = events[0], events[-1]
    scan = _scan(records, order_id, events, ledger)
    state, seq = last.state, last.seq
    time_in_force, closed_at = last.time_in_force, scan.closed_at
    if state in _PLACING:
        # The placement's last events did not land: the step that emitted them routed it.
        state, seq = OrderState.ROUTED, max(seq, _PLACE_EVENTS_SEQ)
    if ledger.reserve and state in TERMINAL_ORDER_STATES:
        # The release did not land: the hold stands until day end gives it back.
        state, time_in_force, closed_at = OrderState.ROUTED, TimeInForce.DAY, None
    exec_ids = _exec_ids(ledger.fills, scan.exec_events)
    held = next((e.held_amount for e in reversed(events) if e.held_amount is not None),
                ledger.first_hold or ZERO)
    return SnapshotOrder(
        order_id=order_id, idempotency_key=first.idempotency_key, symbol=first.symbol,
        side=first.side, order_type=first.order_type, time_in_force=time_in_force,
        quantity=last.quantity, placed_at=_utc(first.occurred_at), state=state, seq=seq,
        limit_price=last.limit_price, stop_price=last.stop_price, held_amount=held,
        reserve=ledger.reserve,
        reserve_unsettled=ledger.reserve_unsettled if first.side is Side.SELL else ZERO,
        filled_quantity=sum((f.quantity for f in ledger.fills), ZERO),
        fill_notional=sum((f.quantity * _price(records, order_id, f) for f in ledger.fills),
                          ZERO),
        cash_booked=sum((f.cash for f in ledger.fills), ZERO),
        digest=_place_digest(records.account_id, first),
        exec_ids=tuple(exec_id for _, exec_id in exec_ids),
        last_transact_time=exec_ids[-1][0] if exec_ids else None,
        closed_at=_utc(closed_at) if closed_at else None, requests=scan.requests,
        cancel_attempts=scan.cancel_attempts, confirmed_cl_ord_id=scan.confirmed,
        pending_replace=scan.pending,
        state_before_cancel=scan.state_before_cancel if state is OrderState.PENDING_CANCEL
        else None,
    )


def _exec_ids(fills: list[_Fill], exec_events: list[tuple[dt.datetime, str]]
              ) -> list[tuple[dt.datetime, str]]:
    """The execution ids the order has seen, oldest first: fills (booked) and the reports
    that moved its state (cancels, rejects, replaces)."""
    seen: dict[str, dt.datetime] = {}
    for time, exec_id in sorted([(f.booked_at, f.exec_id) for f in fills] + exec_events,
                                key=lambda pair: pair[0]):
        seen.setdefault(exec_id, time)
    return [(time, exec_id) for exec_id, time in seen.items()]


_EXEC_REASONS = frozenset({"replaced", "replace_rejected", "cancel_rejected",
                           "no_answer_cancel_requested", "market_maker_rejected"})


def _scan(records: _Records, order_id: str, events: list[OrderEvent], ledger: _LedgerSide
          ) -> _Scan:
    scan = _Scan()
    terms = (events[0].quantity, events[0].limit_price, events[0].stop_price)
    for event in events:
        time, reason = _utc(event.occurred_at), event.reason
        if event.state in TERMINAL_ORDER_STATES and scan.closed_at is None:
            scan.closed_at = time
        recent = records.since(time, COMMANDS_LOOKBACK)
        entering_cancel = (event.state is OrderState.PENDING_CANCEL
                           and event.previous_state is not OrderState.PENDING_CANCEL)
        if entering_cancel:
            scan.state_before_cancel = event.previous_state
            if reason is None:  # the user's cancel (the gateway's gives a reason)
                scan.requests += 1
                scan.cancel_attempts += 1
                if recent:
                    scan.commands.append(_command(
                        event.cause_id, "cancel_order", time,
                        CancelOrder(account_id=records.account_id,
                                    idempotency_key=event.cause_id, order_id=order_id,
                                    submitted_at=time)))
        elif event.last_fill_quantity is not None and event.state not in TERMINAL_ORDER_STATES:
            scan.state_before_cancel = (OrderState.PARTIALLY_FILLED
                                        if event.state is OrderState.PENDING_CANCEL else None)
        if reason == "replace_requested":
            scan.requests += 1
            scan.pending = _pending_replace(records, order_id, event, scan.requests, ledger)
            if recent:
                scan.commands.append(_replace_command(records, order_id, event, terms,
                                                      scan.pending))
        elif reason == "replaced":
            scan.confirmed = scan.pending.cl_ord_id if scan.pending else scan.confirmed
            scan.pending = None
        elif reason == "replace_rejected":
            scan.pending = None
        elif reason == "cancel_rejected":
            scan.state_before_cancel = None
        elif reason == "day_end" and event.previous_state in _ROUTED:
            scan.requests += 1
        if reason in _EXEC_REASONS or (
                event.state in (OrderState.CANCELLED, OrderState.EXPIRED)
                and reason != "day_end" and event.previous_state not in TERMINAL_ORDER_STATES):
            scan.exec_events.append((time, event.cause_id))
        terms = (event.quantity, event.limit_price, event.stop_price)
    return scan


def _describe_terms(detail: str | None) -> dict[str, Decimal]:
    """The terms `replace._describe` wrote: "quantity 10, limit 101.5, stop 99"."""
    terms = {}
    for part in (detail or "").split(", "):
        name, _, value = part.partition(" ")
        if name in ("quantity", "limit", "stop") and value:
            terms[name] = Decimal(value)
    return terms


def _pending_replace(records: _Records, order_id: str, event: OrderEvent, request: int,
                     ledger: _LedgerSide) -> PendingReplace | None:
    terms = _describe_terms(event.detail)
    if "quantity" not in terms:
        return None
    extra, extra_unsettled = ledger.holds.get(f"cmd:{records.account_id}:{event.cause_id}",
                                              (ZERO, ZERO))
    return PendingReplace(
        cl_ord_id=cl_ord_id_for(order_id, request), idempotency_key=event.cause_id,
        quantity=terms["quantity"], limit_price=terms.get("limit"),
        stop_price=terms.get("stop"), extra_hold=extra, extra_hold_unsettled=extra_unsettled)


def _replace_command(records: _Records, order_id: str, event: OrderEvent,
                     before: tuple[Decimal, Decimal | None, Decimal | None],
                     pending: PendingReplace | None) -> SnapshotCommand:
    """A replace's body is not recorded: guessed as the terms it changed."""
    time = _utc(event.occurred_at)
    if pending is None:
        return SnapshotCommand(idempotency_key=event.cause_id, command_type="replace_order",
                               seen_at=time)
    quantity, limit_price, stop_price = before
    guess = ReplaceOrder(
        account_id=records.account_id, idempotency_key=event.cause_id, order_id=order_id,
        submitted_at=time,
        quantity=pending.quantity if pending.quantity != quantity else None,
        limit_price=pending.limit_price if pending.limit_price != limit_price else None,
        stop_price=pending.stop_price if pending.stop_price != stop_price else None)
    return _command(event.cause_id, "replace_order", time, guess)


def _place_digest(account_id: str, first: OrderEvent) -> str:
    """The place_order body is the order's first event's terms (metadata aside)."""
    return body_digest(PlaceOrder(
        account_id=account_id, idempotency_key=first.idempotency_key, symbol=first.symbol,
        side=first.side, order_type=first.order_type, quantity=first.quantity,
        submitted_at=first.occurred_at, time_in_force=first.time_in_force,
        limit_price=first.limit_price, stop_price=first.stop_price))


def _held_only(records: _Records, order_id: str, ledger: _LedgerSide) -> SnapshotOrder:
    """An order the ledger holds funds for and no event of which landed."""
    side = ledger.side or Side.BUY
    assert ledger.first_at is not None
    filled = sum((f.quantity for f in ledger.fills), ZERO)
    key = records.command_key(ledger.first_cause or "") or order_id
    exec_ids = _exec_ids(ledger.fills, [])
    return SnapshotOrder(
        order_id=order_id, idempotency_key=key, symbol=ledger.symbol or UNKNOWN_SYMBOL,
        side=side, order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
        quantity=filled + (ledger.reserve if side is Side.SELL else ZERO),
        placed_at=ledger.first_at, state=OrderState.ROUTED, seq=_PLACE_EVENTS_SEQ,
        held_amount=ledger.first_hold or ZERO, reserve=ledger.reserve,
        reserve_unsettled=ledger.reserve_unsettled if side is Side.SELL else ZERO,
        filled_quantity=filled,
        fill_notional=sum((f.quantity * _price(records, order_id, f) for f in ledger.fills),
                          ZERO),
        cash_booked=sum((f.cash for f in ledger.fills), ZERO), digest=UNKNOWN_DIGEST,
        exec_ids=tuple(exec_id for _, exec_id in exec_ids),
        last_transact_time=exec_ids[-1][0] if exec_ids else None)


# ---- commands and deposits ----------------------------------------------------------------


def _command(key: str, command_type: str, seen_at: dt.datetime, body: Command | None
             ) -> SnapshotCommand:
    return SnapshotCommand(idempotency_key=key, command_type=command_type, seen_at=seen_at,
                           digest=body_digest(body) if body is not None else UNKNOWN_DIGEST)


def _dated(key: str, prefix: str) -> dt.date | None:
    """The date a key of the `eod-`/`settle-` convention names."""
    if not key.startswith(prefix):
        return None
    try:
        return dt.date.fromisoformat(key[len(prefix):])
    except ValueError:
        return None


def _guessed_body(records: _Records, key: str, command_type: str, time: dt.datetime,
                  amount: Decimal | None, returned_of: Mapping[str, str]) -> Command | None:
    account_id = records.account_id
    if command_type == "deposit" and amount is not None:
        return Deposit(account_id=account_id, idempotency_key=key, amount=amount,
                       submitted_at=time)
    if command_type == "withdraw" and amount is not None:
        return Withdraw(account_id=account_id, idempotency_key=key, amount=amount,
                        submitted_at=time)
    if command_type == "ach_return" and key in returned_of:
        return AchReturn(account_id=account_id, idempotency_key=key,
                         deposit_idempotency_key=returned_of[key], submitted_at=time)
    day = _dated(key, "eod-")
    if command_type == "expire_orders" and day is not None:
        return ExpireOrders(account_id=account_id, idempotency_key=key, trading_day=day,
                            submitted_at=time)
    day = _dated(key, "settle-")
    if command_type == "settle_trades" and day is not None:
        return SettleTrades(account_id=account_id, idempotency_key=key, settle_date=day,
                            submitted_at=time)
    return None


def _user_cash(records: _Records, txn: LedgerTransaction) -> Decimal:
    cash = records.user(la.CASH)
    return sum((e.amount for e in txn.entries if e.ledger_account == cash and e.asset == la.USD),
               ZERO)


def _commands(records: _Records, returned_of: Mapping[str, str]) -> list[SnapshotCommand]:
    """Every idempotency key the records show within the lookback, first seen first; a key
    seen twice keeps its first time and any digest known."""
    found: list[SnapshotCommand] = []
    for order_id, events in records.order_events.items():
        first = events[0]
        time = _utc(first.occurred_at)
        if records.since(time, COMMANDS_LOOKBACK):
            found.append(SnapshotCommand(
                idempotency_key=first.idempotency_key, command_type="place_order",
                seen_at=time, digest=_place_digest(records.account_id, first)))
        found += _scan(records, order_id, events, _ledger_side(records, order_id)).commands
        for event in events:
            if event.reason == "day_end" and records.since(event.occurred_at, COMMANDS_LOOKBACK):
                found.append(_command(event.cause_id, "expire_orders", _utc(event.occurred_at),
                                      _guessed_body(records, event.cause_id, "expire_orders",
                                                    event.occurred_at, None, returned_of)))
    for record in records.events:
        if not isinstance(record, CommandAccepted | CommandRejected):
            continue
        time = _utc(record.occurred_at)
        if not records.since(time, COMMANDS_LOOKBACK):
            continue
        if isinstance(record, CommandRejected):
            if record.reason in _DUPLICATE_REASONS:
                continue  # refused before the key was recorded
            body: Command | None = None
            if record.command_type == "cancel_order" and record.order_id is not None:
                body = CancelOrder(account_id=records.account_id,
                                   idempotency_key=record.idempotency_key,
                                   order_id=record.order_id, submitted_at=time)
        else:
            if record.txn_id is not None and record.txn_id not in records.txn_ids:
                # Its transaction did not land (lost with the broker): the key is not spent,
                # and the command, published again, books it.
                continue
            body = _guessed_body(records, record.idempotency_key, record.command_type, time,
                                 record.amount, returned_of)
        found.append(_command(record.idempotency_key, record.command_type, time, body))
    for txn in records.transactions:
        key = records.command_key(txn.cause_id)
        command_type = _COMMAND_OF_KIND.get(txn.kind)
        if key is None or command_type is None:
            continue
        time = _utc(txn.occurred_at)
        if records.since(time, COMMANDS_LOOKBACK):
            amount = abs(_user_cash(records, txn))
            found.append(_command(key, command_type, time, _guessed_body(
                records, key, command_type, time, amount, returned_of)))
    return _merged(found)


def _merged(found: list[SnapshotCommand]) -> list[SnapshotCommand]:
    by_key: dict[str, SnapshotCommand] = {}
    for command in sorted(found, key=lambda c: c.seen_at):
        kept = by_key.get(command.idempotency_key)
        if kept is None:
            by_key[command.idempotency_key] = command
        elif kept.digest == UNKNOWN_DIGEST and command.digest != UNKNOWN_DIGEST:
            by_key[command.idempotency_key] = SnapshotCommand(
                idempotency_key=kept.idempotency_key, command_type=kept.command_type,
                seen_at=kept.seen_at, digest=command.digest)
    return list(by_key.values())


def _deposits(records: _Records) -> tuple[list[SnapshotDeposit], dict[str, str]]:
    """Deposits, each ACH return matched to the oldest unreturned deposit of its amount made
    before it (the shard does not record which one it returned); and return key -> deposit
    key."""
    deposits: list[SnapshotDeposit] = []
    returned_of: dict[str, str] = {}
    for txn in records.transactions:
        key = records.command_key(txn.cause_id)
        if key is None or not records.since(txn.occurred_at, DEPOSITS_LOOKBACK):
            continue
        amount = _user_cash(records, txn)
        if txn.kind == "deposit":
            deposits.append(SnapshotDeposit(idempotency_key=key, amount=amount,
                                            deposited_at=_utc(txn.occurred_at)))
        elif txn.kind == "ach_return":
            for index, deposit in enumerate(deposits):
                if not deposit.returned and deposit.amount == -amount:
                    deposits[index] = SnapshotDeposit(
                        idempotency_key=deposit.idempotency_key, amount=deposit.amount,
                        deposited_at=deposit.deposited_at, returned=True)
                    returned_of[key] = deposit.idempotency_key
                    break
    return deposits, returned_of
