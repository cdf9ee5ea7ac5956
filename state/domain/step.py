"""One decision in progress (`Step`) and the moves every part of the domain core makes with it.

`state.domain.account` decides commands and execution reports; `replace`, `pending_cancel` and
`settlement` decide their own kinds. All of them build on this module and none on another's
internals, so the core reads one way: account_state <- step <- {replace, pending_cancel,
settlement} <- account.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from state import ledger_accounts as la
from state.domain import ledger
from state.domain.account_state import AccountState
from state.domain.ledger import Leg
from state.domain.lots import note_fill
from state.domain.money import ZERO
from state.domain.orders import Order, moved
from state.domain.risk import MarketContext, Reason, RiskLimits
from state.ids import cl_ord_id_for
from state.messages import (
    Alert,
    Command,
    CommandAccepted,
    CommandRejected,
    ExecutionReport,
    LedgerTransaction,
    Message,
    OrderEvent,
    OrderState,
    RouteStatusRequest,
    Side,
)

Output = Message  # one of the messages in state.messages the shell publishes


@dataclass
class Step:
    """One decision in progress: the working state and what it emits."""

    state: AccountState
    now: dt.datetime
    market: MarketContext
    limits: RiskLimits
    outputs: list[Output] = field(default_factory=list)
    # What this step changed, for the invariant check proportional to it (`_check_step`).
    touched_orders: set[str] = field(default_factory=set)
    touched_assets: set[str] = field(default_factory=set)

    def store(self, order: Order) -> None:
        self.state.store(order)
        self.touched_orders.add(order.order_id)

    def book(self, txn: LedgerTransaction | None) -> None:
        if txn is None:
            return
        for entry in txn.entries:
            parsed = la.parse_user(entry.ledger_account)
            if parsed is None:
                continue
            account_id, bucket = parsed
            assert account_id == self.state.account_id, (
                f"{txn.txn_id} touches another account's {entry.ledger_account}"
            )
            assets = self.state.balances.setdefault(bucket, {})
            assets[entry.asset] = assets.get(entry.asset, ZERO) + entry.amount
            self.touched_assets.add(entry.asset)
        self.outputs.append(txn)

    def post(self, kind: str, cause_id: str, legs: list[Leg], order_id: str | None = None
             ) -> LedgerTransaction | None:
        txn = ledger.transaction(account_id=self.state.account_id, kind=kind, cause_id=cause_id,
                                 occurred_at=self.now, legs=legs, order_id=order_id)
        self.book(txn)
        if kind == "fill" and txn is not None:
            note_fill(self.state.unsettled_lots, txn, self.now.date())
        return txn

    def user(self, bucket: str) -> str:
        return la.user(self.state.account_id, bucket)

    def alert(self, cause_id: str, severity: str, code: str, detail: str,
              order_id: str | None = None, exec_id: str | None = None) -> None:
        self.outputs.append(Alert(
            event_id=f"{cause_id}:alert:{code}", account_id=self.state.account_id,
            severity=severity, code=code, detail=detail, occurred_at=self.now,
            order_id=order_id, exec_id=exec_id,
        ))


def command_cause(account_id: str, idempotency_key: str) -> str:
    return f"cmd:{account_id}:{idempotency_key}"


def exec_cause(report: ExecutionReport) -> str:
    return f"exec:{report.market_maker}:{report.exec_id}"


def command_type_of(command: Command) -> str:
    tag = type(command).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def reject_command(step: Step, command: Command, reason: Reason, detail: str,
                    order_id: str | None = None, event_suffix: str = "") -> None:
    suffix = f":{event_suffix}" if event_suffix else ""
    step.outputs.append(CommandRejected(
        event_id=f"{step.state.account_id}:{command.idempotency_key}:rejected{suffix}",
        account_id=step.state.account_id, idempotency_key=command.idempotency_key,
        command_type=command_type_of(command), reason=reason, occurred_at=step.now,
        detail=detail, order_id=order_id,
    ))


def accept_command(step: Step, command: Command, amount: Decimal | None,
                    txn: LedgerTransaction | None) -> None:
    step.outputs.append(CommandAccepted(
        event_id=f"{step.state.account_id}:{command.idempotency_key}:accepted",
        account_id=step.state.account_id, idempotency_key=command.idempotency_key,
        command_type=command_type_of(command), occurred_at=step.now, amount=amount,
        txn_id=txn.txn_id if txn is not None else None,
    ))


def order_event(step: Step, order: Order, previous: OrderState | None, cause_id: str,
                 reason: str | None = None, detail: str | None = None,
                 last_fill: tuple[Decimal, Decimal] | None = None) -> None:
    step.outputs.append(OrderEvent(
        event_id=f"{order.order_id}:{order.seq}", account_id=step.state.account_id,
        order_id=order.order_id, seq=order.seq, state=order.state, symbol=order.symbol,
        side=order.side, order_type=order.order_type, quantity=order.quantity,
        time_in_force=order.time_in_force, filled_quantity=order.filled_quantity,
        occurred_at=step.now, cause_id=cause_id, idempotency_key=order.idempotency_key,
        previous_state=previous, reason=reason, detail=detail, limit_price=order.limit_price,
        stop_price=order.stop_price, average_fill_price=order.average_fill_price,
        last_fill_quantity=last_fill[0] if last_fill else None,
        last_fill_price=last_fill[1] if last_fill else None,
        held_amount=order.held_amount if order.held_amount else None,
    ))


def advance(step: Step, order: Order, state: OrderState, cause_id: str,
             reason: str | None = None, detail: str | None = None,
             last_fill: tuple[Decimal, Decimal] | None = None, **changes: object) -> Order:
    """Move the order to `state`, store it and emit its OrderEvent."""
    previous = order.state
    order = moved(order, state, step.now, **changes)
    step.store(order)
    order_event(step, order, previous, cause_id, reason, detail, last_fill)
    return order


def hold_legs(step: Step, order: Order, amount: Decimal) -> tuple[list[Leg], Decimal]:
    """The legs that reserve `amount` more for the order: cash for a buy, shares (settled
    first) for a sell; and the part taken from unsettled shares."""
    if order.side is Side.BUY:
        return [(step.user(la.CASH), la.USD, -amount),
                (step.user(la.CASH_HELD), la.USD, amount)], ZERO
    settled = min(amount, max(step.state.balance(la.SHARES, order.symbol), ZERO))
    unsettled = amount - settled
    return [(step.user(la.SHARES), order.symbol, -settled),
            (step.user(la.SHARES_UNSETTLED), order.symbol, -unsettled),
            (step.user(la.SHARES_HELD), order.symbol, amount)], unsettled


def check_cum_qty(step: Step, order: Order, report: ExecutionReport) -> None:
    """A cumulative quantity above what we booked means a fill report is missing: ask."""
    if report.cum_qty > order.filled_quantity:
        step.alert(exec_cause(report), "warning", "fill_gap",
                   f"market maker reports {report.cum_qty} filled, booked "
                   f"{order.filled_quantity}", order_id=order.order_id, exec_id=report.exec_id)
        step.outputs.append(RouteStatusRequest(
            account_id=step.state.account_id, order_id=order.order_id,
            cl_ord_id=cl_ord_id_for(order.order_id), symbol=order.symbol, side=order.side,
            routed_at=step.now,
        ))
