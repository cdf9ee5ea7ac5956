"""The FIX gateway's recovery rules (gateways.fix.durable) and the store's part in them:
reports kept until booked, forwarded again on another epoch or when old, orders in flight at a
reset ended or asked about."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from gateways.fix.durable import (
    ALERT_AFTER_ATTEMPTS,
    ENDED_AT_MARKET_MAKER,
    NOT_KNOWN_TO_MARKET_MAKER,
    NOT_ROUTED_BEFORE_RESET,
    NOT_ROUTED_IN_TIME,
    OrderAction,
    StoredExecution,
    alert_due,
    concluded_report,
    is_settled,
    may_forward_again,
    not_routed_report,
    reconcile_order,
    reforward_due,
    status_conclusion,
)
from gateways.fix.store import Forwarded, GatewayStore
from gateways.fix.tracking import OpenOrder
from state.execution_booking import ShardOrder, exec_txn_ids
from state.ids import cl_ord_id_for, txn_id_for
from state.messages import ExecType, ExecutionReport, OrderState, Side

T0 = dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.UTC)
DAY_MS = 86_400_000


def entry(exec_type: ExecType = ExecType.TRADE, *, epoch: str | None = "e1",
          forwarded_at_ms: int = 0, attempts: int = 0, stored_at_ms: int = 0
          ) -> StoredExecution:
    return StoredExecution(exec_id="mm1:x1", account_id="acc1", order_id="ord1",
                           exec_type=exec_type, market_maker="mm1", payload=b"{}", epoch=epoch,
                           forwarded_at_ms=forwarded_at_ms, stored_at_ms=stored_at_ms,
                           attempts=attempts)


def shard_order(state: OrderState = OrderState.ROUTED, created_at: dt.datetime = T0,
                order_id: str = "ord1") -> ShardOrder:
    return ShardOrder(order_id=order_id, account_id="acc1", state=state, symbol="GME",
                      side="sell", quantity=Decimal(1), filled_quantity=Decimal(0),
                      created_at=created_at, updated_at=created_at)


# ---- settled --------------------------------------------------------------------------------


def test_a_fill_is_settled_only_when_its_shard_shows_it_booked() -> None:
    assert not is_settled(entry(ExecType.TRADE), False, shard_order(OrderState.FILLED))
    assert not is_settled(entry(ExecType.TRADE), False, None)
    assert is_settled(entry(ExecType.TRADE), True, shard_order())


@pytest.mark.parametrize("exec_type", [ExecType.NEW, ExecType.ORDER_STATUS])
def test_a_report_that_books_nothing_is_settled_once_its_order_is_in_the_shard(
        exec_type: ExecType) -> None:
    assert not is_settled(entry(exec_type), False, None)
    assert is_settled(entry(exec_type), False, shard_order())


@pytest.mark.parametrize("exec_type", [ExecType.CANCELED, ExecType.REJECTED, ExecType.EXPIRED,
                                       ExecType.CANCEL_REJECTED, ExecType.REPLACED])
def test_an_ending_report_waits_until_booked_or_its_order_closed(exec_type: ExecType) -> None:
    assert not is_settled(entry(exec_type), False, shard_order(OrderState.ROUTED))
    assert is_settled(entry(exec_type), False, shard_order(OrderState.CANCELLED))
    assert is_settled(entry(exec_type), True, shard_order(OrderState.ROUTED))


def test_the_gateways_pending_cancel_is_settled_when_the_order_waits_for_its_cancel() -> None:
    assert not is_settled(entry(ExecType.PENDING_CANCEL), False, shard_order(OrderState.ROUTED))
    assert is_settled(entry(ExecType.PENDING_CANCEL), False,
                      shard_order(OrderState.PENDING_CANCEL))


# ---- forwarded again ------------------------------------------------------------------------


def test_another_epoch_forwards_at_once_and_the_same_epoch_waits_with_back_off() -> None:
    assert reforward_due(entry(epoch="e1", forwarded_at_ms=1000), "e2", 1001, 30_000)
    assert reforward_due(entry(epoch=None, forwarded_at_ms=1000), "e2", 1001, 30_000)
    assert not reforward_due(entry(epoch="e1", forwarded_at_ms=1000), "e1", 30_999, 30_000)
    assert reforward_due(entry(epoch="e1", forwarded_at_ms=1000), "e1", 31_000, 30_000)
    # After two attempts the wait is four times as long.
    again = entry(epoch="e1", forwarded_at_ms=1000, attempts=2)
    assert not reforward_due(again, "e1", 1000 + 119_999, 30_000)
    assert reforward_due(again, "e1", 1000 + 120_000, 30_000)
    # With no epoch known, age alone decides.
    assert not reforward_due(entry(forwarded_at_ms=1000), None, 2000, 30_000)


def test_a_report_waits_for_its_order_in_the_shard_until_the_orphan_time() -> None:
    waiting = entry(stored_at_ms=1000)
    assert may_forward_again(waiting, shard_order(), 1001, 120_000)
    assert not may_forward_again(waiting, None, 120_999, 120_000)
    assert may_forward_again(waiting, None, 121_000, 120_000)


def test_an_operator_is_alerted_once_after_some_attempts() -> None:
    due = [n for n in range(10) if alert_due(entry(attempts=n))]
    assert due == [ALERT_AFTER_ATTEMPTS - 1]


# ---- orders in flight at a reset ------------------------------------------------------------


EPOCH_START = T0 + dt.timedelta(minutes=5)


def decide(order: ShardOrder, *, sent: bool = False, open_here: bool = False,
           now: dt.datetime = EPOCH_START + dt.timedelta(seconds=1)
           ) -> tuple[OrderAction, str | None]:
    return reconcile_order(order, sent=sent, open_here=open_here,
                           epoch_started_at=EPOCH_START, now=now,
                           unrouted_order_timeout_ms=120_000)


def test_an_order_never_sent_from_before_the_epoch_is_ended() -> None:
    assert decide(shard_order(created_at=T0)) == (OrderAction.END, NOT_ROUTED_BEFORE_RESET)
    assert decide(shard_order(OrderState.PENDING_CANCEL, created_at=T0)) == (
        OrderAction.END, NOT_ROUTED_BEFORE_RESET)


def test_an_order_never_sent_in_this_epoch_is_ended_only_after_the_timeout() -> None:
    young = shard_order(created_at=EPOCH_START + dt.timedelta(seconds=10))
    assert decide(young, now=young.created_at + dt.timedelta(seconds=119)) == (
        OrderAction.NONE, None)
    assert decide(young, now=young.created_at + dt.timedelta(seconds=120)) == (
        OrderAction.END, NOT_ROUTED_IN_TIME)


def test_a_sent_order_open_here_is_asked_about_and_a_closed_one_left_alone() -> None:
    assert decide(shard_order(created_at=T0), sent=True, open_here=True) == (
        OrderAction.ASK_STATUS, None)
    # Closed here: its closing report is in the store and goes again until booked.
    assert decide(shard_order(created_at=T0), sent=True) == (OrderAction.NONE, None)
    assert decide(shard_order(OrderState.FILLED, created_at=T0)) == (OrderAction.NONE, None)


def test_the_not_routed_report_releases_the_hold_through_a_rejection() -> None:
    report = not_routed_report(shard_order(), NOT_ROUTED_BEFORE_RESET, EPOCH_START)
    assert report.exec_type is ExecType.REJECTED
    assert report.exec_id == "gateway:not_routed:ord1"
    assert report.cl_ord_id == cl_ord_id_for("ord1") and report.side is Side.SELL
    assert report.text == NOT_ROUTED_BEFORE_RESET and report.cum_qty == 0


def status(text: str | None = None, cum_qty: str = "0") -> ExecutionReport:
    return ExecutionReport(account_id="acc1", exec_id="mm1:S-unknown-ord1-1", order_id="ord1",
                           cl_ord_id="ord1", exec_type=ExecType.ORDER_STATUS, symbol="GME",
                           side=Side.SELL, last_qty=Decimal(0), last_px=Decimal(0),
                           cum_qty=Decimal(cum_qty), leaves_qty=Decimal(0), transact_time=T0,
                           market_maker="mm1", text=text)


def test_a_status_answer_rejected_ends_the_order() -> None:
    assert status_conclusion("8", Decimal(0), Decimal(0)) == (ExecType.REJECTED,
                                                              NOT_KNOWN_TO_MARKET_MAKER)
    ended = concluded_report(status("unknown order"), ExecType.REJECTED,
                             NOT_KNOWN_TO_MARKET_MAKER, Decimal(0))
    assert ended.exec_type is ExecType.REJECTED and ended.exec_id == \
        "gateway:status_rejected:ord1"
    assert ended.text == "not_known_to_market_maker: unknown order"


def test_a_status_answer_cancelled_ends_the_order_only_with_every_fill_here() -> None:
    assert status_conclusion("4", Decimal(3), Decimal(3)) == (ExecType.CANCELED,
                                                              ENDED_AT_MARKET_MAKER)
    assert status_conclusion("C", Decimal(0), Decimal(0)) == (ExecType.EXPIRED,
                                                              ENDED_AT_MARKET_MAKER)
    assert status_conclusion("4", Decimal(5), Decimal(3)) is None  # fills missing here
    for open_status in ("0", "1", "2", None):
        assert status_conclusion(open_status, Decimal(0), Decimal(0)) is None


def test_exec_txn_ids_are_those_the_account_topology_books_under() -> None:
    assert txn_id_for("exec:mm1:mm1:x1", "fill") in exec_txn_ids("mm1", "mm1:x1")


# ---- the store ------------------------------------------------------------------------------


def forwarded(exec_id: str, order_id: str = "ord1", epoch: str = "e1") -> Forwarded:
    return Forwarded(exec_id, order_id, "acc1", ExecType.TRADE, "mm1", b"payload-" +
                     exec_id.encode(), epoch)


def test_the_store_keeps_payloads_until_settled(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path)
    store.record(exec_ids=[forwarded("mm1:a"), forwarded("mm1:b"), ("mm1:c", "ord1")],
                 delivered={}, sent=[], orders=[], stats={}, now_ms=1000)
    kept = store.unbooked(10)
    assert [(e.exec_id, e.payload, e.epoch, e.stored_at_ms) for e in kept] == [
        ("mm1:a", b"payload-mm1:a", "e1", 1000), ("mm1:b", b"payload-mm1:b", "e1", 1000)]
    store.record(exec_ids=[], delivered={}, sent=[], orders=[], stats={}, now_ms=5000,
                 reforwarded=[("mm1:b", "e2")])
    store.settle(["mm1:a"], ["mm1:b"], 6000)
    store.close()
    again = GatewayStore(tmp_path)
    [left] = again.unbooked(10)
    assert (left.exec_id, left.epoch, left.attempts, left.forwarded_at_ms,
            left.stored_at_ms) == ("mm1:b", "e2", 1, 5000, 1000)
    assert again.forwarded_exec_ids() == {"mm1:a", "mm1:b", "mm1:c"}
    assert again.unbooked_count() == 1
    again.close()


def test_a_bounded_pass_takes_those_checked_longest_ago_first(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path)
    store.record(exec_ids=[forwarded(f"mm1:{n}") for n in range(5)], delivered={}, sent=[],
                 orders=[], stats={}, now_ms=1000)
    first = [e.exec_id for e in store.unbooked(3)]
    store.settle([], first, 2000)
    second = [e.exec_id for e in store.unbooked(3)]
    assert len(set(first) | set(second)) == 5
    store.close()


def test_prune_keeps_a_report_not_booked_and_its_order(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path)
    closed = OpenOrder(order_id="ord1", cl_ord_id="ord1", account_id="acc1", symbol="GME",
                       side=Side.SELL, quantity=Decimal(1), market_maker="mm1", session="s",
                       routed_at_ms=0, terminal=True, closed_at_ms=DAY_MS)
    store.record(exec_ids=[forwarded("mm1:fill", "ord1"), forwarded("mm1:stray", "other")],
                 delivered={}, sent=[("ord1", "new")], orders=[closed], stats={}, now_ms=DAY_MS)
    pruned = store.prune(20 * DAY_MS, 30 * DAY_MS)
    assert not (pruned.order_ids or pruned.exec_ids or pruned.cl_ord_ids)
    store.settle(["mm1:fill", "mm1:stray"], [], 30 * DAY_MS)
    pruned = store.prune(20 * DAY_MS, 30 * DAY_MS)
    assert pruned.order_ids == {"ord1"} and pruned.exec_ids == {"mm1:fill", "mm1:stray"}
    store.close()


def test_tail_offsets_are_stored_with_their_epoch(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path)
    assert store.executions_tail_epoch() is None
    store.record(exec_ids=[], delivered={}, sent=[], orders=[], stats={}, tail={0: 5, 1: 7},
                 tail_epoch="e1")
    assert store.executions_tail() == {0: 5, 1: 7} and store.executions_tail_epoch() == "e1"
    # Offsets of a new epoch replace the old epoch's (they count in another log).
    store.record(exec_ids=[], delivered={}, sent=[], orders=[], stats={}, tail={1: 2},
                 tail_epoch="e2")
    assert store.executions_tail() == {1: 2} and store.executions_tail_epoch() == "e2"
    store.restart_tail({0: 0, 1: 0}, [forwarded("mm1:t")], 1000, "e3")
    assert store.executions_tail() == {0: 0, 1: 0} and store.executions_tail_epoch() == "e3"
    assert [e.exec_id for e in store.unbooked(5)] == ["mm1:t"]
    store.close()
