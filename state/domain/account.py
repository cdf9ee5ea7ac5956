"""One brokerage account's truth and the pure function that advances it.

`decide(state, message, now, market, limits)` turns a command or an execution report into the
next state and the messages to publish (order events, ledger transactions, routing requests,
alerts). It reads no clock and does no I/O: `now` is passed in (the shell passes the input
record's timestamp, so a replay from offset 0 gives the same outputs and ids).

Ledger model (names in `state.ledger_accounts`, balances positive when the user owns them):
- deposit: bank:ach -> cash. Deposits are provisional for `limits.deposit_settle_days` after
  `now` of the deposit: they count as buying power but not as withdrawable cash.
- withdraw: cash -> bank:withdrawals in one transaction (bank:withdrawals is money on its way
  to the user's bank; sending it is outside this topology), only from withdrawable cash.
- ach_return: cash -> bank:ach for the returned deposit's amount; a resulting negative cash
  balance restricts the account to closing trades (sells) until cash is non-negative again.
- place_order: buy holds cash -> cash_held; sell holds shares (settled first, then unsettled)
  -> shares_held.
- fill of a buy: cash_held (then cash, past the hold) -> clearing:<mm> in USD; clearing:<mm> ->
  shares_unsettled in shares. A sell is the reverse: shares_held (then shares, shares_unsettled)
  -> clearing:<mm>; clearing:<mm> -> cash. Cash per fill is cents(cumulative notional) minus
  what earlier fills booked, so rounding never drifts and a limit buy never exceeds its hold.
- completion (filled, cancelled, rejected, expired): the remaining reserve goes back.

Invariants (holds equal the open orders' reserves and are never negative; positions equal the
sum of fills; closed orders hold nothing) are checked after every step for what the step
touched (`_check_step`: the orders it stored, the assets it booked), so a step costs what it
changes, not what the account holds; `check_invariants` checks the whole account and runs on
every state the shell reads from its store and after every step of the property tests.

Retention (the state is bounded, and each step costs what the open orders cost): open orders
are kept until they close; closed orders for `ORDER_RETENTION` (at most `CLOSED_ORDERS_MAX`,
first closed first dropped); idempotency keys for `IDEMPOTENCY_RETENTION` (at most
`IDEMPOTENCY_KEYS_MAX`; a place_order whose key is gone but whose order is still kept is still
recognised by its derived order id); deposits for `DEPOSIT_RETENTION` (the ACH return window).
A fill for an order no longer kept is booked as a fill for an unknown order, with an alert.

What is forgotten leaves a watermark, so a duplicate older than the memory never applies twice:
`commands_forgotten_until` is the latest `submitted_at` of a dropped idempotency key, and a
command with an unknown key submitted at or before it is refused (`command_too_old`). A dropped
key's record is also kept outside the state (`state.account_parts`), and the shell passes it in
(`forgotten`) for a command whose key the state no longer holds: a key names one command of its
account for good, so a later command under it is the same command again (no effect) or is
refused (`Reason.DUPLICATE_IDEMPOTENCY_KEY`), whatever its `submitted_at`;
`executions_forgotten_until` is the latest `transact_time` of a dropped order's (or unknown
order's) executions, and a report for an unknown order from at or before it is not booked but
raised as a critical alert (`execution_for_forgotten_order`) for an operator to look at.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import TypeVar

import msgspec

from state import ledger_accounts as la
from state.domain.account_state import (
    CLOSED_ORDERS_MAX,
    DAY_TRADES_RETENTION,
    DEPOSIT_RETENTION,
    DEPOSITS_MAX,
    EXEC_IDS_PER_ORDER_MAX,
    IDEMPOTENCY_KEYS_MAX,
    IDEMPOTENCY_RETENTION,
    ORDER_RETENTION,
    ORPHAN_EXECS_MAX,
    RATE_WINDOW,
    AccountState,
    CommandRecord,
    DayTrade,
    DepositRecord,
    is_restricted,
    state_from_builtins,
    state_from_bytes,
    state_to_builtins,
    state_to_bytes,
)
from state.domain.ledger import Leg
from state.domain.money import ZERO, cents, is_cents, is_price, is_share_quantity, money_text
from state.domain.orders import Order, cancel_request
from state.domain.pending_cancel import on_pending_cancel
from state.domain.replace import on_replace_rejected, on_replaced, replace_order
from state.domain.risk import (
    AccountFigures,
    MarketContext,
    Reason,
    RiskLimits,
    business_days_back,
    check_order,
    hold_for,
)
from state.domain.settlement import settle_trades
from state.domain.step import (
    Output,
    Step,
    accept_command,
    advance,
    check_cum_qty,
    command_cause,
    command_type_of,
    exec_cause,
    hold_legs,
    reject_command,
)
from state.ids import cl_ord_id_for, order_id_for, order_id_of_cl_ord_id
from state.messages import (
    AchReturn,
    CancelOrder,
    Command,
    Deposit,
    ExecType,
    ExecutionReport,
    ExpireOrders,
    OrderState,
    PlaceOrder,
    ReplaceOrder,
    RouteNewOrder,
    SettleTrades,
    Side,
    TimeInForce,
    Withdraw,
)

# The account's public face: decide, and the state it decides on (from account_state).
__all__ = [
    "CLOSED_ORDERS_MAX",
    "DAY_TRADES_RETENTION",
    "DEPOSITS_MAX",
    "DEPOSIT_RETENTION",
    "EXEC_IDS_PER_ORDER_MAX",
    "IDEMPOTENCY_KEYS_MAX",
    "IDEMPOTENCY_RETENTION",
    "ORDER_RETENTION",
    "ORPHAN_EXECS_MAX",
    "RATE_WINDOW",
    "AccountState",
    "CommandRecord",
    "DayTrade",
    "DepositRecord",
    "MarketContext",
    "Output",
    "Reason",
    "RiskLimits",
    "check_invariants",
    "decide",
    "is_restricted",
    "state_from_builtins",
    "state_from_bytes",
    "state_to_builtins",
    "state_to_bytes",
]

_R = TypeVar("_R")

# ---- the decision function --------------------------------------------------------------


def decide(
    state: AccountState,
    message: Command | ExecutionReport,
    now: dt.datetime,
    market: MarketContext,
    limits: RiskLimits,
    forgotten: CommandRecord | None = None,
) -> tuple[AccountState, list[Output]]:
    """The next state of the account and the messages to publish. Does not change `state`.
    `forgotten`: for a command, the record of its key when the state dropped it (retention)."""
    assert message.account_id == state.account_id, (
        f"message for {message.account_id} given to account {state.account_id}"
    )
    # Times kept in the state are UTC, so a state decoded from its stored bytes is exactly
    # the state that was stored (the shell relies on it to skip decoding).
    assert now.utcoffset() == dt.timedelta(0), f"now {now.isoformat()} is not UTC"
    step = Step(state=state.clone(), now=now, market=market, limits=limits)
    if isinstance(message, ExecutionReport):
        _on_execution(step, message)
    else:
        _on_command(step, message, forgotten)
    _prune(step.state, now)
    _check_step(state, step)
    return step.state, step.outputs


# ---- commands ---------------------------------------------------------------------------


def _utc(time: dt.datetime) -> dt.datetime:
    """A producer's time as kept in the state: UTC (stored times come back as UTC)."""
    return time if time.tzinfo is dt.UTC else time.astimezone(dt.UTC)


_METADATA_FIELDS = frozenset(
    {"submitted_at", "reference_price", "reference_time", "user_id", "v"}
)


# Normalising in this context is exact: the default one rounds to 28 digits and overflows past
# 1E+999999 (a deposit of "1e999999999" raised before its amount was checked).
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def body_digest(command: Command) -> str:
    """What makes two commands under one idempotency key the same: the client's body, without
    metadata the gateway adds (submission time, the quote it saw, the user)."""
    parts = [type(command).__name__]
    for name in command.__struct_fields__:
        if name in _METADATA_FIELDS:
            continue
        value = getattr(command, name)
        parts.append(f"{name}={value.normalize(_EXACT) if isinstance(value, Decimal) else value}")
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


def _announce_again(step: Step, command: PlaceOrder) -> None:
    """The re-publication of a place_order whose order was rebuilt from held funds alone (its
    events were lost with the broker): its state is announced again and its route request
    sent again under the same ClOrdID (a FIX gateway that already sent it does not send it
    twice; one that never got it routes it now)."""
    order = step.state.order(order_id_for(step.state.account_id, command.idempotency_key))
    if order is None or not order.unannounced or not order.is_open:
        return
    order = msgspec.structs.replace(order, unannounced=False, reference_price=(
        order.reference_price or command.reference_price))
    step.outputs.append(_route_new_order(step, order))
    advance(step, order, order.state, command.idempotency_key, "announced_again",
             "rebuilt from its held funds after a broker reset")


def _kept_order_record(state: AccountState, command: Command) -> CommandRecord | None:
    """A place_order whose key was pruned while its order is still kept."""
    if not isinstance(command, PlaceOrder):
        return None
    order = state.order(order_id_for(state.account_id, command.idempotency_key))
    if order is None:
        return None
    return CommandRecord(command_type="place_order", digest=order.digest,
                         seen_at=order.placed_at, submitted_at=order.placed_at)


def _remember_latest_copy(state: AccountState, command: Command, seen: CommandRecord) -> None:
    """A retry may carry a later `submitted_at` than the first copy. The key's record keeps the
    latest, so that once the key is forgotten the watermark covers every copy seen and a late
    one is refused (`command_too_old`) rather than booked again."""
    submitted_at = _utc(command.submitted_at)
    if command.idempotency_key in state.commands and submitted_at > seen.submitted_at:
        state.commands[command.idempotency_key] = msgspec.structs.replace(
            seen, submitted_at=submitted_at)


def _refuse_reused_key(step: Step, command: Command, seen: CommandRecord, digest: str,
                       detail: str) -> None:
    order_id = None
    if isinstance(command, PlaceOrder):
        order_id = order_id_for(step.state.account_id, command.idempotency_key)
    reject_command(step, command, Reason.DUPLICATE_IDEMPOTENCY_KEY,
                   f"key already used by another {seen.command_type}{detail}",
                   order_id=order_id, event_suffix=digest[:8])


def _on_command(step: Step, command: Command, dropped: CommandRecord | None) -> None:
    state = step.state
    digest = body_digest(command)
    seen = state.commands.get(command.idempotency_key) or _kept_order_record(state, command)
    if seen is not None:
        if seen.digest != digest:
            _refuse_reused_key(step, command, seen, digest, "")
        if seen.digest == digest:
            _remember_latest_copy(state, command, seen)
            if isinstance(command, PlaceOrder):
                _announce_again(step, command)
        return  # the same command again: it already had its effect
    forgotten = state.commands_forgotten_until
    if forgotten is not None and command.submitted_at <= forgotten:
        reject_command(step, command, Reason.COMMAND_TOO_OLD,
                        f"submitted at or before {forgotten.isoformat()}, keys of which are "
                        "no longer remembered", event_suffix="too_old")
        return
    if dropped is not None:  # its ids are the first command's: never applied a second time
        if dropped.digest != digest:
            _refuse_reused_key(step, command, dropped, digest,
                               f" (first seen {dropped.seen_at.isoformat()})")
        return
    state.commands[command.idempotency_key] = CommandRecord(
        command_type=command_type_of(command), digest=digest, seen_at=step.now,
        submitted_at=_utc(command.submitted_at))
    if isinstance(command, PlaceOrder):
        _place_order(step, command)
    elif isinstance(command, CancelOrder):
        _cancel_order(step, command)
    elif isinstance(command, Deposit):
        _deposit(step, command)
    elif isinstance(command, Withdraw):
        _withdraw(step, command)
    elif isinstance(command, AchReturn):
        _ach_return(step, command)
    elif isinstance(command, ReplaceOrder):
        replace_order(step, command)
    elif isinstance(command, SettleTrades):
        settle_trades(step, command)
    else:
        _expire_orders(step, command)


# -- place_order


def _figures(state: AccountState, order: PlaceOrder, now: dt.datetime,
             limits: RiskLimits) -> AccountFigures:
    symbol = order.symbol
    today = now.date()
    window_start = business_days_back(today, limits.pdt_window_business_days)
    return AccountFigures(
        buying_power=state.balance(la.CASH),
        sellable_shares=state.balance(la.SHARES, symbol)
        + state.balance(la.SHARES_UNSETTLED, symbol),
        restricted=is_restricted(state),
        orders_last_second=sum(1 for t in state.order_times if now - t < RATE_WINDOW),
        day_trades_in_window=sum(1 for trade in state.day_trades if trade.day >= window_start),
        is_day_trade=order.side is Side.SELL and state.bought_on.get(symbol) == today,
        equity=equity(state),
    )


def equity(state: AccountState) -> Decimal:
    """Cash plus positions at the last price the account saw (fills, order quotes)."""
    total = state.balance(la.CASH) + state.balance(la.CASH_HELD)
    for symbol, quantity in state.filled_net.items():
        total += quantity * state.last_prices.get(symbol, ZERO)
    return total


def _place_order(step: Step, command: PlaceOrder) -> None:
    state = step.state
    cause = command.idempotency_key
    order = Order(
        order_id=order_id_for(state.account_id, command.idempotency_key),
        idempotency_key=command.idempotency_key, symbol=command.symbol, side=command.side,
        order_type=command.order_type, time_in_force=command.time_in_force,
        quantity=command.quantity, placed_at=step.now, limit_price=command.limit_price,
        stop_price=command.stop_price, reference_price=command.reference_price,
        digest=state.commands[command.idempotency_key].digest,
    )
    rejection = check_order(command, now=step.now, market=step.market, limits=step.limits,
                            account=_figures(state, command, step.now, step.limits))
    state.order_times.append(step.now)
    if rejection is not None:
        advance(step, order, OrderState.REJECTED, cause, rejection.reason, rejection.detail)
        return
    if command.reference_price is not None:
        state.last_prices[command.symbol] = command.reference_price
    order = advance(step, order, OrderState.VALIDATED, cause)
    order = _hold(step, order, hold_for(command, step.limits))
    order = advance(step, order, OrderState.FUNDS_HELD, cause)
    step.outputs.append(_route_new_order(step, order))
    advance(step, order, OrderState.ROUTED, cause)


def _route_new_order(step: Step, order: Order) -> RouteNewOrder:
    return RouteNewOrder(
        account_id=step.state.account_id, order_id=order.order_id,
        cl_ord_id=cl_ord_id_for(order.order_id), symbol=order.symbol, side=order.side,
        order_type=order.order_type, quantity=order.quantity, time_in_force=order.time_in_force,
        routed_at=step.now, limit_price=order.limit_price, stop_price=order.stop_price,
        reference_price=order.reference_price,
    )


def _hold(step: Step, order: Order, amount: Decimal) -> Order:
    """Reserve what the order may spend."""
    cause = command_cause(step.state.account_id, order.idempotency_key)
    legs, unsettled = hold_legs(step, order, amount)
    step.post("hold", cause, legs, order.order_id)
    return msgspec.structs.replace(order, held_amount=amount, reserve=amount,
                                   reserve_unsettled=unsettled)


def _release(step: Step, order: Order, cause_id: str, kind: str = "release") -> Order:
    """Give back what the order still holds."""
    if not order.reserve:
        return order
    if order.side is Side.BUY:
        legs: list[Leg] = [(step.user(la.CASH_HELD), la.USD, -order.reserve),
                           (step.user(la.CASH), la.USD, order.reserve)]
    else:
        legs = [(step.user(la.SHARES_HELD), order.symbol, -order.reserve),
                (step.user(la.SHARES), order.symbol, order.reserve_settled),
                (step.user(la.SHARES_UNSETTLED), order.symbol, order.reserve_unsettled)]
    step.post(kind, cause_id, legs, order.order_id)
    return msgspec.structs.replace(order, reserve=ZERO, reserve_unsettled=ZERO)


# -- cancel_order


def _cancel_order(step: Step, command: CancelOrder) -> None:
    order = step.state.order(command.order_id)
    if order is None:
        reject_command(step, command, Reason.UNKNOWN_ORDER, f"no order {command.order_id}",
                        order_id=command.order_id)
        return
    if not order.is_open:
        reject_command(step, command, Reason.ORDER_NOT_OPEN, f"order is {order.state}",
                        order_id=order.order_id)
        return
    if order.state is OrderState.PENDING_CANCEL:
        reject_command(step, command, Reason.CANCEL_PENDING, "a cancel is already on its way",
                        order_id=order.order_id)
        return
    request = order.next_request  # cancels and replaces share the ClOrdID numbers
    order = advance(step, order, OrderState.PENDING_CANCEL, command.idempotency_key,
                     cancel_attempts=order.cancel_attempts + 1, requests=request,
                     state_before_cancel=order.state)
    step.outputs.append(cancel_request(order, step.state.account_id, request, step.now))


# -- money commands


def held_deposits(deposits: Iterable[DepositRecord], now: dt.datetime, settle_days: int
                  ) -> list[tuple[Decimal, dt.datetime]]:
    """The deposits not yet settled (and not returned), each as (amount, the time it becomes
    withdrawable: `settle_days` after it was booked), soonest first."""
    settle = dt.timedelta(days=settle_days)
    return sorted(((d.amount, d.deposited_at + settle) for d in deposits
                   if not d.returned and now - d.deposited_at < settle), key=lambda h: h[1])


def provisional_cash(state: AccountState, now: dt.datetime, limits: RiskLimits) -> Decimal:
    """Deposits not yet settled (and not returned): buying power, not withdrawable."""
    return sum((amount for amount, _ in held_deposits(state.deposits.values(), now,
                                                       limits.deposit_settle_days)), ZERO)


def withdrawable_cash(state: AccountState, now: dt.datetime, limits: RiskLimits) -> Decimal:
    return max(state.balance(la.CASH) - provisional_cash(state, now, limits), ZERO)


def _time_text(at: dt.datetime) -> str:
    """UTC to the second, rounded up (never earlier than the time it stands for)."""
    at = at.astimezone(dt.UTC)
    if at.microsecond:
        at = at.replace(microsecond=0) + dt.timedelta(seconds=1)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def withdrawable_detail(cash: Decimal, withdrawable: Decimal,
                        held: Sequence[tuple[Decimal, dt.datetime]], settle_days: int) -> str:
    """Why only `withdrawable` of `cash` can be withdrawn: the ACH deposits still held and
    when each becomes withdrawable."""
    text = f"withdrawable {money_text(withdrawable)} of {money_text(cash)} cash"
    if not held:
        return text
    total = money_text(sum((amount for amount, _ in held), ZERO))
    rule = f"ACH, {settle_days} days"
    if len(held) == 1:
        return f"{text}: {total} in deposits held until {_time_text(held[0][1])} ({rule})"
    each = ", ".join(f"{money_text(amount)} until {_time_text(at)}" for amount, at in held)
    return f"{text}: {total} in deposits held ({rule}): {each}"


def _valid_amount(amount: Decimal) -> bool:
    return is_cents(amount) and amount > 0


def _deposit(step: Step, command: Deposit) -> None:
    if not _valid_amount(command.amount):
        reject_command(step, command, Reason.INVALID_AMOUNT, "amount must be positive cents")
        return
    cause = command_cause(step.state.account_id, command.idempotency_key)
    txn = step.post("deposit", cause, [(la.BANK_ACH, la.USD, -command.amount),
                                       (step.user(la.CASH), la.USD, command.amount)])
    step.state.deposits[command.idempotency_key] = DepositRecord(
        amount=command.amount, deposited_at=step.now)
    accept_command(step, command, command.amount, txn)


def _withdraw(step: Step, command: Withdraw) -> None:
    state = step.state
    if not _valid_amount(command.amount):
        reject_command(step, command, Reason.INVALID_AMOUNT, "amount must be positive cents")
        return
    if is_restricted(state):
        reject_command(step, command, Reason.ACCOUNT_RESTRICTED, "negative balance")
        return
    available = withdrawable_cash(state, step.now, step.limits)
    if command.amount > available:
        settle_days = step.limits.deposit_settle_days
        reject_command(step, command, Reason.INSUFFICIENT_WITHDRAWABLE_CASH,
                        withdrawable_detail(
                            state.balance(la.CASH), available,
                            held_deposits(state.deposits.values(), step.now, settle_days),
                            settle_days))
        return
    cause = command_cause(state.account_id, command.idempotency_key)
    txn = step.post("withdrawal", cause, [(step.user(la.CASH), la.USD, -command.amount),
                                          (la.BANK_WITHDRAWALS, la.USD, command.amount)])
    accept_command(step, command, command.amount, txn)


def _ach_return(step: Step, command: AchReturn) -> None:
    state = step.state
    deposit = state.deposits.get(command.deposit_idempotency_key)
    if deposit is None:
        reject_command(step, command, Reason.UNKNOWN_DEPOSIT,
                        f"no deposit {command.deposit_idempotency_key}")
        return
    if deposit.returned:
        reject_command(step, command, Reason.DEPOSIT_ALREADY_RETURNED,
                        f"deposit {command.deposit_idempotency_key} already returned")
        return
    cause = command_cause(state.account_id, command.idempotency_key)
    txn = step.post("ach_return", cause, [(step.user(la.CASH), la.USD, -deposit.amount),
                                          (la.BANK_ACH, la.USD, deposit.amount)])
    state.deposits[command.deposit_idempotency_key] = msgspec.structs.replace(
        deposit, returned=True)
    accept_command(step, command, deposit.amount, txn)
    if is_restricted(state):
        step.alert(cause, "warning", "account_restricted",
                   f"ACH return {command.reason} left cash at {state.balance(la.CASH)}")


def _expire_orders(step: Step, command: ExpireOrders) -> None:
    cause = command_cause(step.state.account_id, command.idempotency_key)
    for order in list(step.state.open_orders.values()):
        if (order.time_in_force is TimeInForce.DAY
                and order.placed_at.date() <= command.trading_day):
            routed = order.state in _ROUTED_STATES
            order = _release(step, order, cause, kind=f"expire:{order.order_id}")
            request = order.next_request if routed else order.requests
            order = advance(step, order, OrderState.EXPIRED, command.idempotency_key,
                             "day_end", requests=request)
            if routed:  # the market maker drops it too (a late fill still books, alerted)
                step.outputs.append(cancel_request(order, step.state.account_id, request,
                                                   step.now))
    accept_command(step, command, None, None)


_ROUTED_STATES = frozenset(
    {OrderState.ROUTED, OrderState.PARTIALLY_FILLED, OrderState.PENDING_CANCEL})


# ---- execution reports ------------------------------------------------------------------


def _on_execution(step: Step, report: ExecutionReport) -> None:
    order_id = report.order_id or order_id_of_cl_ord_id(report.cl_ord_id)
    order = step.state.order(order_id)
    if order is not None and (order.symbol != report.symbol or order.side != report.side):
        step.alert(exec_cause(report), "critical", "execution_mismatch",
                   f"report for {report.symbol} {report.side} on order of {order.symbol} "
                   f"{order.side}", order_id=order_id, exec_id=report.exec_id)
        order = None
    if order is None:
        _on_unknown_order(step, report, order_id)
        return
    if report.exec_id in order.exec_ids:
        _complete_if_filled(step, order, report)
        return  # a duplicate: already booked
    exec_ids = (order.exec_ids + (report.exec_id,))[-EXEC_IDS_PER_ORDER_MAX:]
    transact_time = _utc(report.transact_time)
    last = max(order.last_transact_time or transact_time, transact_time)
    order = msgspec.structs.replace(order, exec_ids=exec_ids, last_transact_time=last)
    step.store(order)
    _EXEC_HANDLERS[report.exec_type](step, order, report)


def _complete_if_filled(step: Step, order: Order, report: ExecutionReport) -> None:
    """An open order whose booked fills reach its quantity is complete. `_on_fill` completes
    it in the same step, so this happens only to an account rebuilt from a shard that landed
    the fill's transaction and lost the rest of its step with the broker: the fill's report,
    forwarded again, completes it (the remaining hold goes back) instead of being ignored."""
    if not order.is_open or order.filled_quantity < order.quantity:
        return
    order = _release(step, order, exec_cause(report))
    advance(step, order, OrderState.FILLED, report.exec_id)


def _on_ack(step: Step, order: Order, report: ExecutionReport) -> None:
    """The market maker has the order: nothing changes but the noted exec_id."""


_DONE_STATES = {
    ExecType.CANCELED: (OrderState.CANCELLED, None),
    ExecType.REJECTED: (OrderState.REJECTED, Reason.MARKET_MAKER_REJECTED),
    ExecType.EXPIRED: (OrderState.EXPIRED, None),
}


def _on_done(step: Step, order: Order, report: ExecutionReport) -> None:
    """Cancelled, rejected or expired by the market maker: the remaining hold goes back."""
    if not order.is_open:
        return  # already final here (e.g. filled, or expired at day end): nothing to release
    state, reason = _DONE_STATES[report.exec_type]
    order = _release(step, order, exec_cause(report))
    advance(step, order, state, report.exec_id, reason, report.text)
    check_cum_qty(step, order, report)


def _on_status(step: Step, order: Order, report: ExecutionReport) -> None:
    if report.cum_qty != order.filled_quantity:
        step.alert(exec_cause(report), "warning", "status_mismatch",
                   f"market maker reports {report.cum_qty} filled, booked {order.filled_quantity}",
                   order_id=order.order_id, exec_id=report.exec_id)


def _on_cancel_rejected(step: Step, order: Order, report: ExecutionReport) -> None:
    if order.state is not OrderState.PENDING_CANCEL:
        return
    previous = order.state_before_cancel or OrderState.ROUTED
    advance(step, order, previous, report.exec_id, "cancel_rejected", report.text,
             state_before_cancel=None)


def _valid_fill(report: ExecutionReport) -> bool:
    return (is_share_quantity(report.last_qty) and report.last_qty > 0
            and is_price(report.last_px) and report.last_px > 0)


def _on_fill(step: Step, order: Order, report: ExecutionReport) -> None:
    if not _valid_fill(report):
        step.alert(exec_cause(report), "critical", "invalid_fill",
                   f"fill of {report.last_qty} at {report.last_px} not booked",
                   order_id=order.order_id, exec_id=report.exec_id)
        return
    was_open = order.is_open
    qty, px = report.last_qty, report.last_px
    notional = order.fill_notional + qty * px
    amount = cents(notional) - order.cash_booked
    order = msgspec.structs.replace(
        order, filled_quantity=order.filled_quantity + qty, fill_notional=notional,
        cash_booked=order.cash_booked + amount)
    order = _book_fill(step, order, report, amount)
    cause = exec_cause(report)
    fill = (qty, px)
    if was_open and order.filled_quantity >= order.quantity:
        order = _release(step, order, cause)
        order = advance(step, order, OrderState.FILLED, report.exec_id, last_fill=fill)
    elif was_open:
        # A fill while a cancel is on its way leaves the order pending_cancel; should the cancel
        # be rejected, the order goes back to partially_filled.
        pending = order.state is OrderState.PENDING_CANCEL
        order = advance(
            step, order, order.state if pending else OrderState.PARTIALLY_FILLED,
            report.exec_id, last_fill=fill,
            state_before_cancel=OrderState.PARTIALLY_FILLED if pending else None)
    else:
        order = advance(step, order, order.state, report.exec_id, "late_fill",
                         f"fill after the order was {order.state}", last_fill=fill)
        step.alert(cause, "critical", f"fill_after_{order.state}",
                   f"{qty} at {px} booked on a {order.state} order",
                   order_id=order.order_id, exec_id=report.exec_id)
    if order.filled_quantity > order.quantity:
        step.alert(cause, "critical", "overfill",
                   f"filled {order.filled_quantity} of {order.quantity}",
                   order_id=order.order_id, exec_id=report.exec_id)
    check_cum_qty(step, order, report)


# Replaces (state.domain.replace) and the gateway's pending cancels
# (state.domain.pending_cancel) build on this module, so they are imported where used.
def _on_replaced(step: Step, order: Order, report: ExecutionReport) -> None:
    on_replaced(step, order, report)


def _on_pending_cancel(step: Step, order: Order, report: ExecutionReport) -> None:
    on_pending_cancel(step, order, report)


def _on_cancel_or_replace_rejected(step: Step, order: Order, report: ExecutionReport
                                   ) -> None:
    if not on_replace_rejected(step, order, report):
        _on_cancel_rejected(step, order, report)


_EXEC_HANDLERS: dict[ExecType, Callable[[Step, Order, ExecutionReport], None]] = {
    ExecType.NEW: _on_ack,
    ExecType.TRADE: _on_fill,
    ExecType.CANCELED: _on_done,
    ExecType.REJECTED: _on_done,
    ExecType.EXPIRED: _on_done,
    ExecType.ORDER_STATUS: _on_status,
    ExecType.CANCEL_REJECTED: _on_cancel_or_replace_rejected,
    ExecType.REPLACED: _on_replaced,
    ExecType.PENDING_CANCEL: _on_pending_cancel,
}


def _book_fill(step: Step, order: Order, report: ExecutionReport, amount: Decimal) -> Order:
    """Post one fill; what the order's reserve does not cover comes from free cash or shares."""
    qty, symbol = report.last_qty, order.symbol
    if order.side is Side.BUY:
        from_hold = min(amount, order.reserve)
        legs = _buy_legs(step, report, amount, from_hold)
        order = msgspec.structs.replace(order, reserve=order.reserve - from_hold)
        if amount > from_hold and order.is_open:
            step.alert(exec_cause(report), "warning", "fill_above_hold",
                       f"{amount - from_hold} beyond the hold taken from cash",
                       order_id=order.order_id, exec_id=report.exec_id)
    else:
        from_held = min(qty, order.reserve)
        from_held_settled = min(from_held, order.reserve_settled)
        legs = _sell_legs(step, report, amount, from_held)
        order = msgspec.structs.replace(
            order, reserve=order.reserve - from_held,
            reserve_unsettled=order.reserve_unsettled - (from_held - from_held_settled))
    step.post("fill", exec_cause(report), legs, order.order_id)
    _note_fill(step, order.order_id, symbol, report.side, qty, report.last_px)
    return order


def _buy_legs(step: Step, report: ExecutionReport, amount: Decimal, from_hold: Decimal
              ) -> list[Leg]:
    clearing = la.clearing(report.market_maker)
    return [
        (step.user(la.CASH_HELD), la.USD, -from_hold),
        (step.user(la.CASH), la.USD, -(amount - from_hold)),
        (clearing, la.USD, amount),
        (clearing, report.symbol, -report.last_qty),
        (step.user(la.SHARES_UNSETTLED), report.symbol, report.last_qty),
    ]


def _sell_legs(step: Step, report: ExecutionReport, amount: Decimal, from_held: Decimal
               ) -> list[Leg]:
    """Shares beyond the order's hold come from free settled shares, then unsettled (which may
    go negative: a real fill is booked even when it sells what the account does not have)."""
    symbol, clearing = report.symbol, la.clearing(report.market_maker)
    beyond = report.last_qty - from_held
    from_settled = min(beyond, max(step.state.balance(la.SHARES, symbol), ZERO))
    return [
        (step.user(la.SHARES_HELD), symbol, -from_held),
        (step.user(la.SHARES), symbol, -from_settled),
        (step.user(la.SHARES_UNSETTLED), symbol, -(beyond - from_settled)),
        (clearing, symbol, report.last_qty),
        (clearing, la.USD, -amount),
        (step.user(la.CASH), la.USD, amount),
    ]


def _note_fill(step: Step, order_id: str, symbol: str, side: Side, qty: Decimal,
               px: Decimal) -> None:
    """Positions from fills (the invariant's other side), last price and day trades."""
    state = step.state
    signed = qty if side is Side.BUY else -qty
    state.filled_net[symbol] = state.filled_net.get(symbol, ZERO) + signed
    step.touched_assets.add(symbol)
    state.last_prices[symbol] = px
    today = step.now.date()
    if side is Side.BUY:
        state.bought_on[symbol] = today
    elif state.bought_on.get(symbol) == today:
        trade = DayTrade(day=today, order_id=order_id)
        if trade not in state.day_trades:
            state.day_trades.append(trade)


def _on_unknown_order(step: Step, report: ExecutionReport, order_id: str) -> None:
    """A report for an order this account does not hold (never placed, or long pruned). A fill
    is real money: it is booked against free cash or shares, and operators are alerted."""
    state = step.state
    cause = exec_cause(report)
    if cause in state.orphan_execs:
        return
    forgotten = state.executions_forgotten_until
    if forgotten is not None and report.transact_time <= forgotten:
        step.alert(cause, "critical", "execution_for_forgotten_order",
                   f"{report.exec_type} {report.side} {report.last_qty} {report.symbol} at "
                   f"{report.last_px} for {order_id}, from before {forgotten.isoformat()}: "
                   "maybe a duplicate of what was booked, not booked",
                   order_id=order_id, exec_id=report.exec_id)
        return
    state.orphan_execs[cause] = _utc(report.transact_time)
    if report.exec_type is not ExecType.TRADE:
        step.alert(cause, "warning", "execution_for_unknown_order",
                   f"{report.exec_type} for unknown order {order_id}",
                   order_id=order_id, exec_id=report.exec_id)
        return
    if not _valid_fill(report):
        step.alert(cause, "critical", "invalid_fill",
                   f"fill of {report.last_qty} at {report.last_px} not booked",
                   order_id=order_id, exec_id=report.exec_id)
        return
    amount = cents(report.last_qty * report.last_px)
    if report.side is Side.BUY:
        legs = _buy_legs(step, report, amount, ZERO)
    else:
        legs = _sell_legs(step, report, amount, ZERO)
    step.post("fill", cause, legs, order_id)
    _note_fill(step, order_id, report.symbol, report.side, report.last_qty, report.last_px)
    step.alert(cause, "critical", "fill_for_unknown_order",
               f"{report.side} {report.last_qty} {report.symbol} at {report.last_px} booked",
               order_id=order_id, exec_id=report.exec_id)


# ---- retention and invariants -----------------------------------------------------------


def _drop_oldest(records: dict[str, _R], too_old: Callable[[_R], bool], count_max: int
                 ) -> list[_R]:
    """Drop records from the front of an insertion-ordered dict while there are too many or
    the first is too old (amortised O(1) per step); the dropped records."""
    dropped = []
    while records:
        first = next(iter(records))
        if len(records) <= count_max and not too_old(records[first]):
            break
        dropped.append(records.pop(first))
    return dropped


def _latest(current: dt.datetime | None, times: Iterable[dt.datetime | None]
            ) -> dt.datetime | None:
    for time in times:
        if time is not None and (current is None or time > current):
            current = time
    return current


def _prune(state: AccountState, now: dt.datetime) -> None:
    if state.order_times and now - min(state.order_times) >= RATE_WINDOW:
        state.order_times[:] = [t for t in state.order_times if now - t < RATE_WINDOW]
    orders = _drop_oldest(state.closed_orders,
                          lambda o: now - (o.closed_at or o.placed_at) > ORDER_RETENTION,
                          CLOSED_ORDERS_MAX)
    orphans = _drop_oldest(state.orphan_execs, lambda t: now - t > ORDER_RETENTION,
                           ORPHAN_EXECS_MAX)
    if orders or orphans:
        state.executions_forgotten_until = _latest(
            state.executions_forgotten_until,
            [*(o.last_transact_time for o in orders), *orphans])
    commands = _drop_oldest(state.commands, lambda c: now - c.seen_at > IDEMPOTENCY_RETENTION,
                            IDEMPOTENCY_KEYS_MAX)
    if commands:
        state.commands_forgotten_until = _latest(
            state.commands_forgotten_until, [c.submitted_at for c in commands])
    _drop_oldest(state.deposits, lambda d: now - d.deposited_at > DEPOSIT_RETENTION,
                 DEPOSITS_MAX)
    today = now.date()
    for symbol, day in list(state.bought_on.items()):
        if day != today:
            del state.bought_on[symbol]
    if state.day_trades and state.day_trades[0].day < today - DAY_TRADES_RETENTION:
        state.day_trades[:] = [t for t in state.day_trades
                               if t.day >= today - DAY_TRADES_RETENTION]


def _check_step(before: AccountState, step: Step) -> None:
    """`check_invariants` for what one step changed, so a step costs what it touches: each
    order it stored is sound where it is kept; the holds moved exactly as much as those
    orders' reserves (money counted twice: once on the ledger, once on the orders); every
    symbol it booked or filled has its position equal to its fills. With the invariants true
    of `before` they are true after the step; the whole check runs on every state read from
    the store (topologies.accounts) and the property tests check the books independently."""
    after = step.state
    cash_change = ZERO
    shares_change: dict[str, Decimal] = {}
    for order_id in step.touched_orders:
        order, old = after.order(order_id), before.order(order_id)
        if order is not None:  # None: closed and already past retention
            _check_order(after, order)
        side_of = order or old
        assert side_of is not None, f"order {order_id} stored but never kept"
        change = _open_reserve(order) - _open_reserve(old)
        if side_of.side is Side.BUY:
            cash_change += change
        else:
            shares_change[side_of.symbol] = shares_change.get(side_of.symbol, ZERO) + change
    held = after.balance(la.CASH_HELD)
    assert held - before.balance(la.CASH_HELD) == cash_change, (
        f"cash_held moved {held - before.balance(la.CASH_HELD)}, open buy reserves "
        f"{cash_change}")
    assert held >= 0, f"negative cash_held {held}"
    for symbol in (step.touched_assets | shares_change.keys()) - {la.USD}:
        held = after.balance(la.SHARES_HELD, symbol)
        moved_by = held - before.balance(la.SHARES_HELD, symbol)
        expected = shares_change.get(symbol, ZERO)
        assert moved_by == expected, (
            f"shares_held {symbol} moved {moved_by}, open sell reserves {expected}")
        assert held >= 0, f"negative shares_held {symbol} {held}"
        _check_position(after, symbol)


def _open_reserve(order: Order | None) -> Decimal:
    return order.reserve if order is not None and order.is_open else ZERO


def _check_order(state: AccountState, order: Order) -> None:
    if not order.is_open:
        assert order.order_id not in state.open_orders, (
            f"{order.state} order {order.order_id} among open orders")
        assert not order.reserve, f"{order.state} order {order.order_id} still holds"
        return
    assert order.order_id in state.open_orders, f"open order {order.order_id} not kept open"
    assert order.reserve >= 0, f"order {order.order_id}: negative reserve {order.reserve}"
    assert 0 <= order.reserve_unsettled <= order.reserve, (
        f"order {order.order_id}: unsettled part {order.reserve_unsettled} of {order.reserve}")


def _check_position(state: AccountState, symbol: str) -> None:
    position = sum((state.balance(bucket, symbol)
                    for bucket in (la.SHARES, la.SHARES_UNSETTLED, la.SHARES_HELD)), ZERO)
    filled = state.filled_net.get(symbol, ZERO)
    assert position == filled, f"position {symbol} {position} != sum of fills {filled}"


def check_invariants(state: AccountState) -> None:
    """Holds equal the open orders' reserves, none negative; positions equal fills."""
    held_cash = ZERO
    held_shares: dict[str, Decimal] = {}
    for order in state.open_orders.values():
        assert order.is_open, f"{order.state} order {order.order_id} among open orders"
        assert order.reserve >= 0, f"order {order.order_id}: negative reserve {order.reserve}"
        assert 0 <= order.reserve_unsettled <= order.reserve, (
            f"order {order.order_id}: unsettled part {order.reserve_unsettled} of "
            f"{order.reserve}")
        if order.side is Side.BUY:
            held_cash += order.reserve
        else:
            held_shares[order.symbol] = held_shares.get(order.symbol, ZERO) + order.reserve
    assert state.balance(la.CASH_HELD) == held_cash, (
        f"cash_held {state.balance(la.CASH_HELD)} != open buy reserves {held_cash}")
    symbols = set(held_shares) | set(state.balances.get(la.SHARES_HELD, {}))
    for symbol in symbols:
        held = state.balance(la.SHARES_HELD, symbol)
        expected = held_shares.get(symbol, ZERO)
        assert held == expected, f"shares_held {symbol} {held} != open sell reserves {expected}"
    for symbol in set(state.filled_net) | _position_symbols(state):
        _check_position(state, symbol)
    for order in state.closed_orders.values():
        assert not order.is_open and not order.reserve, (
            f"{order.state} order {order.order_id} kept closed with reserve {order.reserve}")


def _position_symbols(state: AccountState) -> set[str]:
    return {asset for bucket in (la.SHARES, la.SHARES_UNSETTLED, la.SHARES_HELD)
            for asset in state.balances.get(bucket, {})}
