"""Durable executions and orders in flight at a reset: the gateway's recovery rules, pure.

The embedded broker forgets every topic when it restarts; the gateway's SQLite store and the
shards outlive it. So the store keeps each execution report it forwarded (the payload as
produced to `executions`) until the account's shard shows it booked, and forwards it again
(same payload, same key: the account topology drops a second copy by ExecID) when it is not:
- at once when the broker's epoch is not the one it was forwarded under (state.epoch), and
- otherwise when it has waited `reforward_after_ms` since it was last forwarded (doubling with
  each attempt, so a report the topology will never book costs a few records an hour).
A report waits for its order to be in the shard first (an order lost with the broker comes
back when its command is re-published): a fill forwarded for an order the account does not
hold would be booked as an orphan fill, and booked again against the order once it is back.
After `orphan_after_ms` it goes anyway (a fill is real money: booked against free cash, with
a critical alert, by the account topology).

Orders in flight at a reset (README "Orders in flight at a reset"): an order open in its shard
whose ClOrdID this gateway never sent is ended (a rejected report, text
`not_routed_before_reset`) when it is older than the broker epoch (its route request was lost
with the broker), or `not_routed_in_time` when it has waited `unrouted_order_timeout_ms` in the
current epoch; its ClOrdID is then recorded as ended so a late route request is never sent.
One that was sent and is open here is asked about (OrderStatusRequest); the answer ends it when
the market maker says rejected (it does not know the order) or cancelled/expired with the
fills booked here.

No I/O and no clock here: times are passed in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from state.execution_booking import ShardOrder
from state.ids import cl_ord_id_for
from state.messages import ExecType, ExecutionReport, OrderState, Side

NOT_ROUTED_BEFORE_RESET = "not_routed_before_reset"
NOT_ROUTED_IN_TIME = "not_routed_in_time"
NOT_KNOWN_TO_MARKET_MAKER = "not_known_to_market_maker"
ENDED_AT_MARKET_MAKER = "ended_at_market_maker"
# Re-forward attempts after which an operator is told (the payload stays in the store).
ALERT_AFTER_ATTEMPTS = 3
BACKOFF_DOUBLINGS_MAX = 6

# FIX OrdStatus (39) codes an OrderStatusRequest answer may carry.
ORD_STATUS_CANCELED = "4"
ORD_STATUS_REJECTED = "8"
ORD_STATUS_EXPIRED = "C"


@dataclass(frozen=True, slots=True)
class StoredExecution:
    """An execution report the store keeps until its shard shows it booked."""

    exec_id: str
    account_id: str
    order_id: str
    exec_type: ExecType
    market_maker: str
    payload: bytes  # exactly the record value produced to `executions`
    epoch: str | None  # the broker epoch it was last forwarded under
    forwarded_at_ms: int  # when it was last forwarded
    stored_at_ms: int  # when it was first forwarded
    attempts: int = 0  # forwards after the first


# ---- durable executions -------------------------------------------------------------------


def nothing_left_to_book(exec_type: ExecType, order: ShardOrder | None) -> bool:
    """A report that may leave no row when booked: is its order in a state it cannot change?
    An acknowledgement or a status answer changes nothing once the order is in the shard; a
    cancel, reject, expiry or cancel-reject changes nothing once the order is closed (booked
    or not, the order's money was settled by what closed it). A fill always leaves a row."""
    if order is None or exec_type is ExecType.TRADE:
        return False
    if exec_type in (ExecType.NEW, ExecType.ORDER_STATUS):
        return True
    if exec_type is ExecType.PENDING_CANCEL and order.state is OrderState.PENDING_CANCEL:
        return True
    return not order.is_open


def is_settled(entry: StoredExecution, booked: bool, order: ShardOrder | None) -> bool:
    """May the store drop the payload: the shard holds what the report did."""
    return booked or nothing_left_to_book(entry.exec_type, order)


def reforward_due(entry: StoredExecution, epoch: str | None, now_ms: int,
                  reforward_after_ms: int) -> bool:
    """Forward again now: another broker epoch than the one it went to, or waited long."""
    if epoch is not None and entry.epoch != epoch:
        return True
    wait = reforward_after_ms * 2 ** min(entry.attempts, BACKOFF_DOUBLINGS_MAX)
    return now_ms - entry.forwarded_at_ms >= wait


def may_forward_again(entry: StoredExecution, order: ShardOrder | None, now_ms: int,
                      orphan_after_ms: int) -> bool:
    """A report goes again only once its order is in the shard, or when it has waited so long
    that the order is not coming back (then the topology books or alerts it as an orphan)."""
    return order is not None or now_ms - entry.stored_at_ms >= orphan_after_ms


def alert_due(entry: StoredExecution) -> bool:
    """Forwarded this many times and still not booked: an operator looks (once)."""
    return entry.attempts + 1 == ALERT_AFTER_ATTEMPTS


# ---- orders in flight at a reset ----------------------------------------------------------


class OrderAction(StrEnum):
    NONE = "none"
    END = "end"  # never sent here: ended so its hold is released
    ASK_STATUS = "ask_status"  # sent and open here: ask the market maker


def reconcile_order(order: ShardOrder, *, sent: bool, open_here: bool,
                    epoch_started_at: dt.datetime | None, now: dt.datetime,
                    unrouted_order_timeout_ms: int) -> tuple[OrderAction, str | None]:
    """What to do with an order its shard holds; with the reason when it is ended."""
    if not order.is_open:
        return OrderAction.NONE, None
    if sent:
        return (OrderAction.ASK_STATUS if open_here else OrderAction.NONE), None
    if epoch_started_at is not None and order.created_at < epoch_started_at:
        return OrderAction.END, NOT_ROUTED_BEFORE_RESET
    if now - order.created_at >= dt.timedelta(milliseconds=unrouted_order_timeout_ms):
        return OrderAction.END, NOT_ROUTED_IN_TIME
    return OrderAction.NONE, None


def not_routed_report(order: ShardOrder, reason: str, now: dt.datetime) -> ExecutionReport:
    """The gateway's own `rejected` report of an order no market maker ever got: the account
    topology releases its hold and closes it (state rejected, detail `reason`). One per order
    (deterministic ExecID)."""
    return ExecutionReport(
        account_id=order.account_id, exec_id=f"gateway:not_routed:{order.order_id}",
        order_id=order.order_id, cl_ord_id=cl_ord_id_for(order.order_id),
        exec_type=ExecType.REJECTED, symbol=order.symbol, side=Side(order.side),
        last_qty=Decimal(0), last_px=Decimal(0), cum_qty=order.filled_quantity,
        leaves_qty=Decimal(0), transact_time=now, market_maker="", text=reason)


def status_conclusion(ord_status: str | None, status_cum_qty: Decimal,
                      booked_cum_qty: Decimal) -> tuple[ExecType, str] | None:
    """What an OrderStatusRequest answer says of an order this gateway holds open: rejected
    (the market maker does not know it, or refused it and that report was lost) ends it;
    cancelled or expired ends it when every fill it counts is already here (otherwise the
    missing fills come first: the answer alone cannot book them)."""
    if ord_status == ORD_STATUS_REJECTED:
        return ExecType.REJECTED, NOT_KNOWN_TO_MARKET_MAKER
    if ord_status in (ORD_STATUS_CANCELED, ORD_STATUS_EXPIRED) \
            and status_cum_qty == booked_cum_qty:
        exec_type = ExecType.CANCELED if ord_status == ORD_STATUS_CANCELED else ExecType.EXPIRED
        return exec_type, ENDED_AT_MARKET_MAKER
    return None


def concluded_report(status: ExecutionReport, exec_type: ExecType, reason: str,
                     booked_cum_qty: Decimal) -> ExecutionReport:
    """The report that ends an order after a status answer (one per order)."""
    detail = f"{reason}: {status.text}" if status.text else reason
    return ExecutionReport(
        account_id=status.account_id, exec_id=f"gateway:status_{exec_type}:{status.order_id}",
        order_id=status.order_id, cl_ord_id=status.cl_ord_id, exec_type=exec_type,
        symbol=status.symbol, side=status.side, last_qty=Decimal(0), last_px=Decimal(0),
        cum_qty=booked_cum_qty, leaves_qty=Decimal(0), transact_time=status.transact_time,
        market_maker=status.market_maker, text=detail[:500])
