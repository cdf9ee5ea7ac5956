"""ExecType.PENDING_CANCEL: the FIX gateway got no answer from a market maker about an order
and asked it to cancel the order. The order waits for a fill or a confirmed cancel: it moves to
`pending_cancel` with its funds still held (nothing is booked), and returns to where it was
should the cancel be refused (`state_before_cancel`, as for a user's cancel)."""

from __future__ import annotations

from state.domain.orders import Order
from state.domain.step import Step, advance
from state.messages import ExecutionReport, OrderState

__all__ = ["on_pending_cancel"]


def on_pending_cancel(step: Step, order: Order, report: ExecutionReport) -> None:
    if not order.is_open or order.state is OrderState.PENDING_CANCEL:
        return  # closed, or a cancel is already on its way: nothing changes
    advance(step, order, OrderState.PENDING_CANCEL, report.exec_id,
             "no_answer_cancel_requested", report.text, state_before_cancel=order.state)
