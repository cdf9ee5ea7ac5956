"""Replacing an open order's quantity and/or prices (a FIX cancel/replace).

- `replace_order` (the command): the new terms are checked (shape as a place_order's, the
  quantity above what is filled, a price only for the types that have one, size, notional,
  market and account status); the reserve the new terms need for the remaining quantity is
  computed, and if it is larger than the order's reserve the difference is checked against
  buying power (or free shares) and held now. The request is routed (`RouteReplace`, the next
  request number's ClOrdID, the order's current ClOrdID as the original) and recorded on the
  order (`Order.pending_replace`); the order stays in its state and an OrderEvent with reason
  `replace_requested` answers the command. Funds a smaller order frees are released only once
  the market maker confirms.
- `on_replaced` (ExecType.REPLACED): the order takes the new terms (quantity = cum + leaves
  of the report), its reserve is brought to what the new terms need for what is left (the
  excess released; a shortfall, possible when fills at the old terms came in between, held
  from what is free, else alerted) and its ClOrdID advances; reason `replaced`.
- `on_replace_rejected` (ExecType.CANCEL_REJECTED of the replace's ClOrdID): the extra hold
  taken for the replace goes back, the old terms stay; reason `replace_rejected`.

The order's reserve stays what `check_invariants` counts: the holds move only through the
order's reserve, in balanced transactions with deterministic ids (cause: the command, or the
execution report).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import cast

import msgspec

from state import ledger_accounts as la
from state.domain.account_state import is_restricted
from state.domain.ledger import Leg
from state.domain.money import ZERO, cents_up, is_share_quantity, tick_refusal
from state.domain.orders import Order, PendingReplace
from state.domain.risk import Reason, RiskLimits, buy_hold_price, notional_price
from state.domain.step import (
    Step,
    advance,
    check_cum_qty,
    command_cause,
    exec_cause,
    hold_legs,
    reject_command,
)
from state.ids import cl_ord_id_for
from state.messages import (
    ExecutionReport,
    OrderState,
    OrderType,
    PlaceOrder,
    ReplaceOrder,
    RouteReplace,
    Side,
    SymbolStatus,
)

__all__ = [
    "ReplaceReason",
    "Terms",
    "on_replace_rejected",
    "on_replaced",
    "replace_order",
    "target_reserve",
]


class ReplaceReason(StrEnum):
    """Reject reasons of a replace_order beyond `risk.Reason` (stable codes)."""

    REPLACE_PENDING = "replace_pending"  # an earlier replace of the order awaits its answer


@dataclass(frozen=True)
class Rejection:
    reason: Reason | ReplaceReason
    detail: str


def _reject(step: Step, command: ReplaceOrder, rejection: Rejection) -> None:
    # Any stable code goes on the CommandRejected (a str); the account's helper is typed for
    # the risk reasons only.
    reject_command(step, command, cast(Reason, rejection.reason), rejection.detail,
                    order_id=command.order_id)


class Terms(msgspec.Struct, frozen=True, kw_only=True):
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None


def _current_terms(order: Order) -> Terms:
    return Terms(quantity=order.quantity, limit_price=order.limit_price,
                 stop_price=order.stop_price)


def _requested_terms(order: Order, command: ReplaceOrder) -> Terms:
    """Fields the command leaves out keep their values."""
    return Terms(
        quantity=order.quantity if command.quantity is None else command.quantity,
        limit_price=order.limit_price if command.limit_price is None else command.limit_price,
        stop_price=order.stop_price if command.stop_price is None else command.stop_price,
    )


def _as_place_order(order: Order, terms: Terms, quantity: Decimal, step: Step) -> PlaceOrder:
    """The order's terms in the shape the risk functions price."""
    return PlaceOrder(
        account_id=step.state.account_id, idempotency_key=order.idempotency_key,
        symbol=order.symbol, side=order.side, order_type=order.order_type, quantity=quantity,
        submitted_at=step.now, time_in_force=order.time_in_force,
        limit_price=terms.limit_price, stop_price=terms.stop_price,
        reference_price=order.reference_price,
    )


def target_reserve(order: Order, terms: Terms, step: Step) -> Decimal:
    """What the order must hold for what is left of `terms` after its fills so far: shares
    for a sell; for a buy, the cash of all fills at the terms' hold price (rounded up to the
    cent, as the first hold was) less the cash the fills already booked, so that rounding of
    the fills booked so far never makes a hold fall short."""
    remaining = max(terms.quantity - order.filled_quantity, ZERO)
    if order.side is Side.SELL:
        return remaining
    price = buy_hold_price(_as_place_order(order, terms, remaining, step), step.limits)
    return max(cents_up(order.fill_notional + remaining * price) - order.cash_booked, ZERO)


# ---- the command ------------------------------------------------------------------------


def replace_order(step: Step, command: ReplaceOrder) -> None:
    order = step.state.order(command.order_id)
    refusal = _refusal(order, command)
    if refusal is not None:
        _reject(step, command, refusal)
        return
    assert order is not None
    terms = _requested_terms(order, command)
    target = target_reserve(order, terms, step)
    extra = max(target - order.reserve, ZERO)
    refusal = _check_terms(order, terms, step) or _check_funds(order, extra, step)
    if refusal is not None:
        _reject(step, command, refusal)
        return
    cause = command_cause(step.state.account_id, command.idempotency_key)
    order, extra_unsettled = _hold_more(step, order, extra, cause)
    request = order.next_request
    pending = PendingReplace(
        cl_ord_id=cl_ord_id_for(order.order_id, request),
        idempotency_key=command.idempotency_key, quantity=terms.quantity,
        limit_price=terms.limit_price, stop_price=terms.stop_price, extra_hold=extra,
        extra_hold_unsettled=extra_unsettled)
    order = advance(step, order, order.state, command.idempotency_key, "replace_requested",
                     _describe(terms), requests=request, pending_replace=pending)
    step.outputs.append(RouteReplace(
        account_id=step.state.account_id, order_id=order.order_id,
        cl_ord_id=pending.cl_ord_id, orig_cl_ord_id=order.current_cl_ord_id,
        symbol=order.symbol, side=order.side, order_type=order.order_type,
        quantity=terms.quantity, time_in_force=order.time_in_force, routed_at=step.now,
        limit_price=terms.limit_price, stop_price=terms.stop_price,
    ))


def _describe(terms: Terms) -> str:
    parts = [f"quantity {terms.quantity}"]
    if terms.limit_price is not None:
        parts.append(f"limit {terms.limit_price}")
    if terms.stop_price is not None:
        parts.append(f"stop {terms.stop_price}")
    return ", ".join(parts)


def _refusal(order: Order | None, command: ReplaceOrder) -> Rejection | None:
    """Whether the order may be replaced at all (before its new terms are looked at)."""
    if order is None:
        return Rejection(Reason.UNKNOWN_ORDER, f"no order {command.order_id}")
    if not order.is_open:
        return Rejection(Reason.ORDER_NOT_OPEN, f"order is {order.state}")
    if order.state is OrderState.PENDING_CANCEL:
        return Rejection(Reason.CANCEL_PENDING, "a cancel is on its way")
    if order.pending_replace is not None:
        return Rejection(ReplaceReason.REPLACE_PENDING,
                         f"replace {order.pending_replace.cl_ord_id} awaits its answer")
    return _check_shape(order, command)


def _invalid(detail: str) -> Rejection:
    return Rejection(Reason.INVALID_ORDER, detail)


def _check_shape(order: Order, command: ReplaceOrder) -> Rejection | None:
    """The same shape rules as a place_order's (risk._check_shape), for the fields given."""
    if command.quantity is None and command.limit_price is None and command.stop_price is None:
        return _invalid("nothing to replace: give quantity, limit_price or stop_price")
    if command.quantity is not None:
        if not is_share_quantity(command.quantity) or command.quantity <= 0:
            return _invalid("quantity must be positive with at most 6 places")
        if command.quantity <= order.filled_quantity:
            return _invalid(f"quantity must be above the {order.filled_quantity} filled")
    has_limit = order.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    has_stop = order.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    for name, allowed in (("limit_price", has_limit), ("stop_price", has_stop)):
        price = getattr(command, name)
        if price is None:
            continue
        if not allowed:
            return _invalid(f"{order.order_type} order: {name} not allowed")
        refusal = tick_refusal(name, price)
        if refusal is not None:
            return _invalid(refusal)
    if _requested_terms(order, command) == _current_terms(order):
        return _invalid("the new terms are the order's terms")
    return None


def _check_terms(order: Order, terms: Terms, step: Step) -> Rejection | None:
    """Market status, size and notional limits of the new terms (as for a new order)."""
    status = step.market.status(order.symbol)
    if status is SymbolStatus.HALTED:
        return Rejection(Reason.SYMBOL_HALTED, f"{order.symbol} is halted")
    limits: RiskLimits = step.limits
    if terms.quantity > limits.quantity_max:
        return Rejection(Reason.QUANTITY_TOO_LARGE, f"quantity above {limits.quantity_max}")
    price = notional_price(_as_place_order(order, terms, terms.quantity, step))
    if price is not None and terms.quantity * price > limits.notional_usd_max:
        return Rejection(Reason.NOTIONAL_TOO_LARGE, f"notional above {limits.notional_usd_max}")
    grows = terms.quantity > order.quantity or target_reserve(order, terms, step) > order.reserve
    if order.side is Side.BUY and grows:
        if is_restricted(step.state):
            return Rejection(Reason.ACCOUNT_RESTRICTED, "negative balance: closing trades only")
        if status is SymbolStatus.RESTRICTED:
            return Rejection(Reason.SYMBOL_RESTRICTED, f"{order.symbol}: closing trades only")
    return None


def _check_funds(order: Order, extra: Decimal, step: Step) -> Rejection | None:
    if not extra:
        return None
    state = step.state
    if order.side is Side.BUY:
        buying_power = state.balance(la.CASH)
        if extra > buying_power:
            return Rejection(Reason.INSUFFICIENT_BUYING_POWER,
                             f"needs {extra} more, buying power {max(buying_power, ZERO)}")
        return None
    free = state.balance(la.SHARES, order.symbol) + state.balance(la.SHARES_UNSETTLED,
                                                                  order.symbol)
    if extra > free:
        return Rejection(Reason.INSUFFICIENT_SHARES,
                         f"sells {extra} more, owns {max(free, ZERO)} free")
    return None


# ---- holds ------------------------------------------------------------------------------


def _hold_more(step: Step, order: Order, amount: Decimal, cause: str
               ) -> tuple[Order, Decimal]:
    """Add `amount` to the order's reserve (cash; or shares, settled first); the order and
    the part of `amount` taken from unsettled shares."""
    if not amount:
        return order, ZERO
    legs, unsettled = hold_legs(step, order, amount)
    step.post("hold", cause, legs, order.order_id)
    return msgspec.structs.replace(order, reserve=order.reserve + amount,
                                   reserve_unsettled=order.reserve_unsettled + unsettled), \
        unsettled


def _release_part(step: Step, order: Order, amount: Decimal, cause: str,
                  unsettled_wanted: Decimal) -> Order:
    """Give back `amount` of the order's reserve; for a sell, `unsettled_wanted` of it (as far
    as the reserve has) to unsettled shares, the rest to settled ones as far as the reserve
    has, then to unsettled."""
    amount = min(amount, order.reserve)
    if amount <= 0:
        return order
    if order.side is Side.BUY:
        legs: list[Leg] = [(step.user(la.CASH_HELD), la.USD, -amount),
                           (step.user(la.CASH), la.USD, amount)]
        unsettled = ZERO
    else:
        unsettled = min(unsettled_wanted, amount, order.reserve_unsettled)
        settled = min(amount - unsettled, order.reserve_settled)
        unsettled = amount - settled
        legs = [(step.user(la.SHARES_HELD), order.symbol, -amount),
                (step.user(la.SHARES), order.symbol, settled),
                (step.user(la.SHARES_UNSETTLED), order.symbol, unsettled)]
    step.post("release", cause, legs, order.order_id)
    return msgspec.structs.replace(order, reserve=order.reserve - amount,
                                   reserve_unsettled=order.reserve_unsettled - unsettled)


def _free_to_hold(step: Step, order: Order) -> Decimal:
    state = step.state
    if order.side is Side.BUY:
        return max(state.balance(la.CASH), ZERO)
    return (max(state.balance(la.SHARES, order.symbol), ZERO)
            + max(state.balance(la.SHARES_UNSETTLED, order.symbol), ZERO))


# ---- execution reports ------------------------------------------------------------------


def on_replaced(step: Step, order: Order, report: ExecutionReport) -> None:
    """The market maker confirmed a replace: the order takes its new terms."""
    cause = exec_cause(report)
    pending = order.pending_replace
    if pending is None or report.cl_ord_id != pending.cl_ord_id:
        step.alert(cause, "critical", "unexpected_replace",
                   f"replaced as {report.cl_ord_id}, pending replace "
                   f"{pending.cl_ord_id if pending else None}: terms unchanged",
                   order_id=order.order_id, exec_id=report.exec_id)
        return
    if not order.is_open:
        # Closed meanwhile (filled, cancelled, expired): its hold went back then.
        step.store(msgspec.structs.replace(order, pending_replace=None))
        return
    quantity = report.cum_qty + report.leaves_qty
    if quantity != pending.quantity:
        step.alert(cause, "warning", "replace_quantity_mismatch",
                   f"asked for {pending.quantity}, market maker has {quantity}",
                   order_id=order.order_id, exec_id=report.exec_id)
    terms = Terms(quantity=quantity, limit_price=pending.limit_price,
                  stop_price=pending.stop_price)
    target = target_reserve(order, terms, step)
    if order.reserve > target:
        order = _release_part(step, order, order.reserve - target, cause,
                              unsettled_wanted=order.reserve_unsettled)
    elif order.reserve < target:
        order = _cover_shortfall(step, order, target - order.reserve, report)
    order = msgspec.structs.replace(
        order, quantity=quantity, limit_price=pending.limit_price,
        stop_price=pending.stop_price, confirmed_cl_ord_id=pending.cl_ord_id,
        pending_replace=None)
    if order.filled_quantity >= quantity:  # fills meanwhile reached the new quantity
        order = _release_part(step, order, order.reserve, cause,
                              unsettled_wanted=order.reserve_unsettled)
        order = advance(step, order, OrderState.FILLED, report.exec_id, "replaced",
                         _describe(terms))
    else:
        order = advance(step, order, order.state, report.exec_id, "replaced",
                         _describe(terms))
    check_cum_qty(step, order, report)


def _cover_shortfall(step: Step, order: Order, shortfall: Decimal,
                     report: ExecutionReport) -> Order:
    """Fills at the old terms while the replace was on its way left the reserve short of the
    new terms: hold what is free of it, alert the rest (fills beyond a hold still book)."""
    take = min(shortfall, _free_to_hold(step, order))
    order, _ = _hold_more(step, order, take, exec_cause(report))
    if take < shortfall:
        step.alert(exec_cause(report), "warning", "replace_under_held",
                   f"new terms need {shortfall - take} more than could be held",
                   order_id=order.order_id, exec_id=report.exec_id)
    return order


def on_replace_rejected(step: Step, order: Order, report: ExecutionReport) -> bool:
    """A CANCEL_REJECTED answering the order's pending replace: the old terms stay and what
    was held for the replace goes back. False when the report answers something else (a
    cancel), for the caller to handle."""
    pending = order.pending_replace
    if pending is None or report.cl_ord_id != pending.cl_ord_id:
        return False
    if not order.is_open:
        step.store(msgspec.structs.replace(order, pending_replace=None))
        return True
    cause = exec_cause(report)
    # Only what the old terms do not need goes back: fills meanwhile took from the reserve.
    excess = order.reserve - target_reserve(order, _current_terms(order), step)
    order = _release_part(step, order, min(pending.extra_hold, max(excess, ZERO)), cause,
                          unsettled_wanted=pending.extra_hold_unsettled)
    advance(step, order, order.state, report.exec_id, "replace_rejected", report.text,
             pending_replace=None)
    return True
