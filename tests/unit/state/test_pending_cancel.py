"""ExecType.PENDING_CANCEL: the gateway asked a silent market maker to cancel an order."""

from __future__ import annotations

from state import ledger_accounts as la
from state.domain.account import check_invariants
from state.ids import order_id_for
from state.messages import CommandRejected, ExecutionReport, OrderEvent, OrderState

from .builders import ACCOUNT, D, Driver, cancel, deposit, of_type, place, report, txns

OID = order_id_for(ACCOUNT, "o")


def buying() -> Driver:
    d = Driver()
    d.send(deposit("dep", "10000.00"))
    d.send(place("o", "buy", "10", order_type="limit", limit="100", reference=None))
    return d


def gateway_pending_cancel(exec_id: str = "gateway:pending_cancel:o") -> ExecutionReport:
    return report("o", exec_id, "pending_cancel", cum="0", leaves="10",
                  cl_ord_id=f"{OID}.gw1", orig_cl_ord_id=OID)


def test_an_open_order_waits_in_pending_cancel_with_its_funds_held() -> None:
    d = buying()
    out = d.send(gateway_pending_cancel())
    assert txns(out) == []
    [event] = of_type(out, OrderEvent)
    assert (event.state, event.previous_state) == (OrderState.PENDING_CANCEL, OrderState.ROUTED)
    assert event.reason == "no_answer_cancel_requested"
    assert d.cash(la.CASH_HELD) == D("1000.00")
    # the user's own cancel is already on its way
    [rejected] = of_type(d.send(cancel("c1", "o")), CommandRejected)
    assert rejected.reason == "cancel_pending"
    # the confirmed cancel releases the hold
    d.send(report("o", "xc", "canceled", cl_ord_id=f"{OID}.gw1", orig_cl_ord_id=OID))
    assert d.order("o").state == OrderState.CANCELLED
    assert d.cash(la.CASH_HELD) == 0 and d.cash() == D("10000.00")


def test_a_fill_while_pending_cancel_books_and_a_refused_cancel_returns_the_order() -> None:
    d = buying()
    d.send(report("o", "x1", qty="4", px="100", cum="4", leaves="6"))
    d.send(gateway_pending_cancel())
    out = d.send(report("o", "x2", qty="1", px="100", cum="5", leaves="5"))
    assert [e.state for e in of_type(out, OrderEvent)] == [OrderState.PENDING_CANCEL]
    d.send(report("o", "xcr", "cancel_rejected", cum="5", cl_ord_id=f"{OID}.gw1",
                  orig_cl_ord_id=OID))
    assert d.order("o").state == OrderState.PARTIALLY_FILLED
    assert d.cash(la.CASH_HELD) == D("500.00")
    check_invariants(d.state)


def test_a_duplicate_changes_nothing() -> None:
    d = buying()
    d.send(gateway_pending_cancel())
    before = d.state
    assert d.send(gateway_pending_cancel()) == []
    assert d.state == before


def test_a_second_report_for_a_pending_cancel_order_emits_nothing() -> None:
    d = buying()
    d.send(cancel("c1", "o"))
    assert d.send(gateway_pending_cancel()) == []
    assert d.order("o").state == OrderState.PENDING_CANCEL


def test_a_closed_order_is_not_touched() -> None:
    d = buying()
    d.send(report("o", "xf", qty="10", px="100", cum="10"))
    balances = {bucket: dict(assets) for bucket, assets in d.state.balances.items()}
    assert d.send(gateway_pending_cancel()) == []
    order = d.order("o")
    assert order.state == OrderState.FILLED and order.state_before_cancel is None
    assert d.state.balances == balances
