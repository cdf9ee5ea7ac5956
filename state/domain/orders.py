"""An order as the account sees it: its state machine and its remaining reserve (hold).

The reserve is what is still held for the order: USD in `cash_held` for a buy, shares in
`shares_held` for a sell. An open order's reserve shrinks as fills consume it; a terminal order
has none (its remainder was released when it reached that state).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec

from state.domain.money import SHARE_QUANTUM, ZERO
from state.ids import cl_ord_id_for
from state.messages import (
    TERMINAL_ORDER_STATES,
    OrderState,
    OrderType,
    RouteCancel,
    Side,
    TimeInForce,
)

S = OrderState
# Which state may follow which; a same-state step is a late event noted on a terminal order
# (a fill after cancel), a further partial fill, or a replace requested, confirmed or refused
# (the contract has no pending_replace state: a replace keeps the order where it is).
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.PENDING: frozenset({S.VALIDATED, S.REJECTED}),
    S.VALIDATED: frozenset({S.FUNDS_HELD, S.REJECTED}),
    S.FUNDS_HELD: frozenset({S.ROUTED, S.REJECTED, S.FAILED}),
    S.ROUTED: frozenset({S.ROUTED, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED,
                         S.REJECTED, S.EXPIRED, S.FAILED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL,
                                   S.CANCELLED, S.REJECTED, S.EXPIRED, S.FAILED}),
    S.PENDING_CANCEL: frozenset({S.PENDING_CANCEL, S.ROUTED, S.PARTIALLY_FILLED, S.FILLED,
                                 S.CANCELLED, S.REJECTED, S.EXPIRED, S.FAILED}),
    S.FILLED: frozenset({S.FILLED}),
    S.CANCELLED: frozenset({S.CANCELLED}),
    S.REJECTED: frozenset({S.REJECTED}),
    S.EXPIRED: frozenset({S.EXPIRED}),
    S.FAILED: frozenset({S.FAILED}),
}


class PendingReplace(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                     omit_defaults=True):
    """A replace sent to the market maker and not yet confirmed or refused: the terms it asks
    for, and what was held on top of the order's reserve for it (released if refused)."""

    cl_ord_id: str
    idempotency_key: str
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    extra_hold: Decimal = ZERO  # USD (buy) or shares (sell) added to the reserve
    extra_hold_unsettled: Decimal = ZERO  # sell only: the part of it from unsettled shares


class Order(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
            omit_defaults=True):
    order_id: str
    idempotency_key: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    placed_at: dt.datetime
    digest: str = ""  # of the place_order body, for idempotency once its key is pruned
    state: OrderState = OrderState.PENDING
    seq: int = 0  # seq of the last OrderEvent emitted
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reference_price: Decimal | None = None
    held_amount: Decimal = ZERO  # the initial hold
    reserve: Decimal = ZERO  # what is still held: USD (buy) or shares (sell)
    reserve_unsettled: Decimal = ZERO  # sell only: the part of `reserve` from unsettled shares
    filled_quantity: Decimal = ZERO
    fill_notional: Decimal = ZERO  # exact sum of last_qty * last_px
    cash_booked: Decimal = ZERO  # cash moved for fills so far, always cents(fill_notional)
    cancel_attempts: int = 0
    state_before_cancel: OrderState | None = None
    exec_ids: tuple[str, ...] = ()
    last_transact_time: dt.datetime | None = None  # latest execution, market maker's clock
    closed_at: dt.datetime | None = None
    # Requests after the new order (cancels, replaces) each take the next number for their
    # ClOrdID (`cl_ord_id_for(order_id, n)`); the market maker knows the order by the ClOrdID
    # of its last confirmed replace (None: the new order's).
    requests: int = 0
    confirmed_cl_ord_id: str | None = None
    pending_replace: PendingReplace | None = None
    # Rebuilt from a shard that holds its funds but none of its events (they were lost with
    # the broker): its place_order, re-published by the intake journal, announces it again.
    unannounced: bool = False

    @property
    def is_open(self) -> bool:
        return self.state not in TERMINAL_ORDER_STATES

    @property
    def reserve_settled(self) -> Decimal:
        return self.reserve - self.reserve_unsettled

    @property
    def next_request(self) -> int:
        """The number of the order's next cancel or replace request (states stored before
        replaces counted only cancels)."""
        return max(self.requests, self.cancel_attempts) + 1

    @property
    def current_cl_ord_id(self) -> str:
        return self.confirmed_cl_ord_id or cl_ord_id_for(self.order_id)

    @property
    def average_fill_price(self) -> Decimal | None:
        if not self.filled_quantity:
            return None
        return (self.fill_notional / self.filled_quantity).quantize(SHARE_QUANTUM)


def moved(order: Order, state: OrderState, now: dt.datetime, **changes: object) -> Order:
    """The order in `state` with its event seq advanced; refuses a transition the state machine
    does not have (a broken invariant, not a business rejection)."""
    assert state in TRANSITIONS[order.state], (
        f"order {order.order_id}: no transition {order.state} -> {state}"
    )
    closed_at = order.closed_at
    if state in TERMINAL_ORDER_STATES and closed_at is None:
        closed_at = now
    return msgspec.structs.replace(
        order, state=state, seq=order.seq + 1, closed_at=closed_at, **changes
    )


def cancel_request(order: Order, account_id: str, request: int, now: dt.datetime
                   ) -> RouteCancel:
    """The route request cancelling the order under its request number `request`."""
    return RouteCancel(
        account_id=account_id, order_id=order.order_id,
        cl_ord_id=cl_ord_id_for(order.order_id, request),
        orig_cl_ord_id=order.current_cl_ord_id, symbol=order.symbol, side=order.side,
        quantity=order.quantity, routed_at=now,
    )
