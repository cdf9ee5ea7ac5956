"""Bad and unexpected FIX input against the gateway, from a scripted market maker.

The peer is a small QuickFIX acceptor inside the test, so it can answer in ways the simulator
never would: reports for ClOrdIDs the gateway never sent, BusinessMessageRejects and
session-level Rejects of orders and cancels, and malformed or unexpected messages. Its
answer to a request is chosen by the order's symbol:

    FILL  acknowledged and filled          BREJ  BusinessMessageReject of the order
    SREJ  session Reject of the order      CXLB  acknowledged; its cancel gets a BMR
    CXLS  acknowledged; its cancel gets a session Reject
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import quickfix as fix

from compose.embedded import free_port
from gateways.fix import fixmsg
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig
from gateways.fix.harness import ServiceProcess, TopicReader, launch, produce
from gateways.fix.session import acceptor_settings_text, load_settings, session_key
from gateways.simulator.application import report_message
from gateways.simulator.book import CxlRejReason, Report
from state.ids import account_id_for
from state.messages import (
    Alert,
    ExecType,
    ExecutionReport,
    Message,
    RouteCancel,
    RouteNewOrder,
    Side,
)
from state.topics import Topic, decode
from tests.integration.gateways.test_fix_roundtrip import new_order

pytestmark = pytest.mark.integration

MM = "scripted"
PEER_COMP_ID = "MMX"


def report(cl_ord_id: str, exec_id: str, exec_type: ExecType, symbol: str, account: str,
           quantity: Decimal, filled: Decimal = Decimal(0)) -> Report:
    done = exec_type is ExecType.TRADE and filled == quantity
    return Report(cl_ord_id=cl_ord_id, order_id=f"X-{cl_ord_id}", exec_id=exec_id,
                  exec_type=exec_type, ord_status="2" if done else "0", account=account,
                  symbol=symbol, side=Side.BUY, order_qty=quantity, last_qty=filled,
                  last_px=Decimal("100.01") if filled else Decimal(0), cum_qty=filled,
                  leaves_qty=quantity - filled,
                  avg_px=Decimal("100.01") if filled else Decimal(0))


class ScriptedApplication(fix.Application):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.logged_on = threading.Event()
        self.session_id: fix.SessionID | None = None
        self.received: queue.Queue[tuple[str, str]] = queue.Queue()  # (MsgType, ClOrdID)
        self.errors: list[str] = []

    def onCreate(self, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def onLogon(self, session_id: fix.SessionID) -> None:  # noqa: N802
        self.session_id = fix.SessionID(session_id.getBeginString().getValue(),
                                        session_id.getSenderCompID().getValue(),
                                        session_id.getTargetCompID().getValue())
        self.logged_on.set()

    def onLogout(self, session_id: fix.SessionID) -> None:  # noqa: N802
        self.logged_on.clear()

    def toAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def fromAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        self.received.put((fixmsg.msg_type(message), ""))

    def toApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def fromApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        kind = fixmsg.msg_type(message)
        cl_ord_id = fixmsg.optional_field(message, fixmsg.CL_ORD_ID) or ""
        self.received.put((kind, cl_ord_id))
        symbol = fixmsg.optional_field(message, fixmsg.SYMBOL) or ""
        account = fixmsg.optional_field(message, fixmsg.ACCOUNT) or ""
        if kind == fixmsg.MSG_NEW_ORDER_SINGLE:
            quantity = Decimal(fixmsg.field(message, fixmsg.ORDER_QTY))
            if symbol == "SREJ":
                # The engine answers with a session-level Reject (35=3) naming our seq.
                raise fix.IncorrectTagValue(fixmsg.SYMBOL)
            if symbol == "BREJ":
                self.send(business_reject(message, "symbol not traded here"))
                return
            self.send(report_message(report(cl_ord_id, f"{cl_ord_id}-new", ExecType.NEW,
                                            symbol, account, quantity), now()))
            if symbol == "FILL":
                self.send(report_message(report(cl_ord_id, f"{cl_ord_id}-fill",
                                                ExecType.TRADE, symbol, account, quantity,
                                                quantity), now()))
        elif kind == fixmsg.MSG_ORDER_CANCEL_REQUEST:
            if symbol == "CXLS":
                raise fix.IncorrectTagValue(fixmsg.SYMBOL)
            self.send(business_reject(message, "cancels not accepted"))

    def send(self, message: fix.Message) -> None:
        assert self.session_id is not None
        if not fix.Session.sendToTarget(message, self.session_id):
            self.errors.append(f"not sent: {message.toString()}")


def business_reject(message: fix.Message, text: str) -> fix.Message:
    reject = fixmsg.business_message_reject(message, "0", text)
    reject.setField(fixmsg.BUSINESS_REJECT_REF_ID, fixmsg.field(message, fixmsg.CL_ORD_ID))
    return reject


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ScriptedPeer:
    """The acceptor, in this process."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.app = ScriptedApplication()
        self.settings = load_settings(
            acceptor_settings_text("FIX.4.4", PEER_COMP_ID, ["BROKER"], "127.0.0.1", self.port,
                                   tmp_path / "peer", heartbeat_s=5, validate=True),
            tmp_path / "peer" / "peer.cfg")
        self.store_factory = fix.FileStoreFactory(self.settings)
        self.log_factory = fix.FileLogFactory(self.settings)
        self.acceptor = fix.ThreadedSocketAcceptor(self.app, self.store_factory, self.settings,
                                                   self.log_factory)

    def start(self) -> None:
        self.acceptor.start()

    def stop(self) -> None:
        self.acceptor.stop()

    def kinds_until(self, done: Callable[[list[str]], bool], timeout_s: float = 15) -> list[str]:
        """MsgTypes of the messages the gateway sends from now, until `done` says so."""
        kinds: list[str] = []
        deadline = time.monotonic() + timeout_s
        while not done(kinds) and time.monotonic() < deadline:
            try:
                kinds.append(self.app.received.get(timeout=0.1)[0])
            except queue.Empty:
                continue
        return kinds


class Rig:
    def __init__(self, services, topics: str, tmp_path: Path,  # noqa: ANN001
                 validate: bool = True) -> None:
        self.services, self.topics, self.tmp = services, topics, tmp_path
        self.peer = ScriptedPeer(tmp_path)
        self.config = FixGatewayConfig(
            bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
            store_dir=str(tmp_path / "gw"),
            market_makers=(MarketMakerConfig(name=MM, host="127.0.0.1", port=self.peer.port,
                                             sender_comp_id="BROKER",
                                             target_comp_id=PEER_COMP_ID),),
            validate_messages=validate)
        self.executions = TopicReader(services.bootstrap_servers, topics + Topic.EXECUTIONS)
        self.events = TopicReader(services.bootstrap_servers, topics + Topic.ORDERS_EVENTS)
        self.reports: list[ExecutionReport] = []
        self.alerts: list[Alert] = []
        self.gateway: ServiceProcess | None = None
        self.account = account_id_for("badinput", 0, services.shards,
                                      services.partitions_per_shard)

    def start(self) -> None:
        self.peer.start()
        self.gateway = launch("gateways.fix", self.config, self.tmp / "gw.log")
        assert self.peer.app.logged_on.wait(20), self.log()

    def route(self, *messages: Message) -> None:
        produce(self.services.bootstrap_servers, self.topics + Topic.ORDERS_ROUTE,
                [(self.account, message) for message in messages])

    def order(self, key: str, symbol: str) -> RouteNewOrder:
        return new_order(self.account, key, "10", symbol=symbol, reference_price=None)

    def cancel(self, order: RouteNewOrder) -> RouteCancel:
        return RouteCancel(account_id=order.account_id, order_id=order.order_id,
                           cl_ord_id=f"{order.order_id}.c1", orig_cl_ord_id=order.cl_ord_id,
                           symbol=order.symbol, side=order.side, quantity=order.quantity,
                           routed_at=now())

    def until(self, done: Callable[[], bool], timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self.reports += [decode(Topic.EXECUTIONS, v)
                             for _, v in self.executions.poll(0.05)]
            self.alerts += [event for _, v in self.events.poll(0.05)
                            if isinstance(event := decode(Topic.ORDERS_EVENTS, v), Alert)]
        assert done(), (self.reports, self.alerts, self.log())

    def reports_of(self, order_id: str) -> list[ExecutionReport]:
        return [r for r in self.reports if r.order_id == order_id]

    def log(self) -> str:
        return self.gateway.log_tail(60) if self.gateway else ""

    def stop(self) -> None:
        self.executions.close()
        self.events.close()
        code = self.gateway.stop() if self.gateway else 0
        self.peer.stop()
        assert code == 0, self.log()


@pytest.fixture
def rig(services, topics, tmp_path: Path, request) -> Iterator[Rig]:  # noqa: ANN001
    rig = Rig(services, topics, tmp_path, validate=getattr(request, "param", True))
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


def test_report_for_an_unknown_cl_ord_id_is_an_alert(rig: Rig) -> None:
    """Neither dropped nor booked silently: an `unknown_order` alert on orders.events (and,
    when the report names an account, the report itself on executions, for the topology to
    judge); a report without an account becomes an alert alone."""
    known = rig.order("known", "FILL")
    rig.route(known)
    rig.until(lambda: any(r.exec_type is ExecType.TRADE for r in rig.reports_of(known.order_id)))
    stranger = "ord_never_routed_here"
    rig.peer.app.send(report_message(report(stranger, "U-1", ExecType.TRADE, "AAPL",
                                            rig.account, Decimal(5), Decimal(5)), now()))
    orphan = "ord_never_routed_either"
    rig.peer.app.send(report_message(report(orphan, "U-2", ExecType.NEW, "AAPL", "",
                                            Decimal(5)), now()))
    rig.until(lambda: len([a for a in rig.alerts if a.code == "unknown_order"]) >= 2)
    by_order = {a.order_id: a for a in rig.alerts if a.code == "unknown_order"}
    assert by_order[stranger].account_id == rig.account
    assert by_order[stranger].exec_id == f"{MM}:U-1"
    assert by_order[orphan].account_id == "unknown"
    assert [r.exec_id for r in rig.reports_of(stranger)] == [f"{MM}:U-1"]
    assert rig.reports_of(orphan) == []


def test_a_resent_fill_of_a_closed_order_is_dropped_quietly(rig: Rig) -> None:
    """A market maker resending a fill (same ExecID) after the order closed here: nothing is
    forwarded twice and no alert is raised (the duplicate is not an unusable report)."""
    known = rig.order("resent", "FILL")
    rig.route(known)
    rig.until(lambda: any(r.exec_type is ExecType.TRADE and r.leaves_qty == 0
                          for r in rig.reports_of(known.order_id)))
    fill = next(r for r in rig.reports_of(known.order_id) if r.exec_type is ExecType.TRADE)
    raw_exec_id = fill.exec_id.split(":", 1)[1]
    # Without Account (1), as market makers resend: it can only be read against its order
    rig.peer.app.send(report_message(report(known.cl_ord_id, raw_exec_id, ExecType.TRADE,
                                            "FILL", "", fill.cum_qty, fill.cum_qty), now()))
    sentinel = "ord_sentinel_never_routed"  # an alert that must come after the resend's
    rig.peer.app.send(report_message(report(sentinel, "S-1", ExecType.NEW, "AAPL", "",
                                            Decimal(5)), now()))
    rig.until(lambda: any(a.order_id == sentinel for a in rig.alerts))
    assert [a.code for a in rig.alerts if a.order_id != sentinel] == [], rig.alerts
    assert [r.exec_id for r in rig.reports_of(known.order_id)].count(fill.exec_id) == 1


def test_a_too_late_replace_reject_of_a_filled_order_is_dropped_quietly(rig: Rig) -> None:
    """A replace that met the order's last fill: the market maker answers OrderCancelReject
    "too late" after the order closed here. That is its true answer, not an unusable report:
    no alert, and nothing forwarded for the closed order."""
    known = rig.order("late", "FILL")
    rig.route(known)
    rig.until(lambda: any(r.exec_type is ExecType.TRADE and r.leaves_qty == 0
                          for r in rig.reports_of(known.order_id)))
    forwarded = len(rig.reports_of(known.order_id))
    too_late = Report(cl_ord_id=f"{known.order_id}.1", order_id=f"X-{known.cl_ord_id}",
                      exec_id="", exec_type=ExecType.CANCEL_REJECTED, ord_status="2",
                      account="", symbol="FILL", side=Side.BUY, order_qty=known.quantity,
                      last_qty=Decimal(0), last_px=Decimal(0), cum_qty=known.quantity,
                      leaves_qty=Decimal(0), avg_px=Decimal(0),
                      orig_cl_ord_id=known.cl_ord_id, rej_reason=CxlRejReason.TOO_LATE,
                      kind="cancel_reject", response_to="2")
    rig.peer.app.send(report_message(too_late, now()))
    sentinel = "ord_sentinel_after_too_late"  # an alert that must come after the reject's
    rig.peer.app.send(report_message(report(sentinel, "S-2", ExecType.NEW, "AAPL", "",
                                            Decimal(5)), now()))
    rig.until(lambda: any(a.order_id == sentinel for a in rig.alerts))
    assert [a.code for a in rig.alerts if a.order_id != sentinel] == [], rig.alerts
    assert len(rig.reports_of(known.order_id)) == forwarded


def test_rejects_of_orders_and_cancels_become_executions(rig: Rig) -> None:
    """BusinessMessageReject and session-level Reject, of a NewOrderSingle and of a cancel:
    `rejected` for the orders, `cancel_rejected` for the cancels (the order lives on)."""
    b_new, s_new = rig.order("bnew", "BREJ"), rig.order("snew", "SREJ")
    b_resting, s_resting = rig.order("bcxl", "CXLB"), rig.order("scxl", "CXLS")
    rig.route(b_new, s_new, b_resting, s_resting)
    rig.until(lambda: all(rig.reports_of(o.order_id)
                          for o in (b_new, s_new, b_resting, s_resting)))
    rig.route(rig.cancel(b_resting), rig.cancel(s_resting))
    rig.until(lambda: all(len(rig.reports_of(o.order_id)) >= 2
                          for o in (b_resting, s_resting)))
    for order, kind in ((b_new, "j"), (s_new, "3")):
        [rejected] = rig.reports_of(order.order_id)
        assert rejected.exec_type is ExecType.REJECTED, rejected
        assert rejected.text is not None and rejected.text.startswith(f"{kind}:")
        assert (rejected.account_id, rejected.cl_ord_id) == (rig.account, order.cl_ord_id)
        assert rejected.exec_id.startswith(f"{MM}:rej:")
    for order, kind in ((b_resting, "j"), (s_resting, "3")):
        new, refused = rig.reports_of(order.order_id)
        assert new.exec_type is ExecType.NEW
        assert refused.exec_type is ExecType.CANCEL_REJECTED, refused
        assert refused.cl_ord_id == f"{order.order_id}.c1"
        assert refused.text is not None and refused.text.startswith(f"{kind}:")
    assert len({r.exec_id for r in rig.reports}) == len(rig.reports)


def malformed_reports(cl_ord_id: str, account: str) -> list[tuple[str, fix.Message]]:
    """(what the gateway's log says, message) for messages its session must refuse."""
    missing = report_message(report(cl_ord_id, "M-1", ExecType.NEW, "AAPL", account,
                                    Decimal(10)), now())
    missing.removeField(fixmsg.EXEC_ID)
    bad_value = report_message(report(cl_ord_id, "M-2", ExecType.NEW, "AAPL", account,
                                      Decimal(10)), now())
    bad_value.setField(fixmsg.EXEC_TYPE, "Z")
    bad_format = report_message(report(cl_ord_id, "M-3", ExecType.TRADE, "AAPL", account,
                                       Decimal(10), Decimal(10)), now())
    bad_format.setField(fixmsg.LAST_QTY, "ten")
    bad_time = report_message(report(cl_ord_id, "M-4", ExecType.NEW, "AAPL", account,
                                     Decimal(10)), now())
    bad_time.setField(fixmsg.TRANSACT_TIME, "yesterday")
    return [("Required tag missing", missing), ("Value is incorrect", bad_value),
            ("Incorrect data format", bad_format), ("Incorrect data format", bad_time)]


@pytest.mark.parametrize("rig", [True, False], indirect=True, ids=["validating", "lenient"])
def test_malformed_and_unexpected_messages_are_refused_and_routing_goes_on(rig: Rig) -> None:
    """With data-dictionary validation (the default) the session refuses malformed reports
    with a Reject and the reason in our log; without it they reach the gateway, which
    refuses them itself with an `unusable_report` alert. Either way nothing malformed reaches
    `executions`, an unexpected message type gets a BusinessMessageReject, the gateway stays
    up and routes the next order."""
    validating = rig.config.validate_messages
    first = rig.order("first", "FILL")
    rig.route(first)
    rig.until(lambda: any(r.exec_type is ExecType.TRADE for r in rig.reports_of(first.order_id)))
    malformed = malformed_reports(first.cl_ord_id, rig.account)
    for _, message in malformed:
        rig.peer.app.send(message)
    # An application message a market maker has no business sending us.
    unexpected = fixmsg.new_order_single(rig.order("backwards", "AAPL"), now())
    rig.peer.app.send(unexpected)
    session_rejects = len(malformed) if validating else 0
    kinds = rig.peer.kinds_until(
        lambda got: got.count("3") >= session_rejects and "j" in got, timeout_s=10)
    assert kinds.count("3") == session_rejects and kinds.count("j") == 1, (kinds, rig.log())
    if not validating:
        rig.until(lambda: len([a for a in rig.alerts if a.code == "unusable_report"])
                  >= len(malformed))
        assert {a.order_id for a in rig.alerts} == {first.order_id}
    # The gateway is up, and the next order goes out and comes back filled.
    second = rig.order("second", "FILL")
    rig.route(second)
    rig.until(lambda: any(r.exec_type is ExecType.TRADE
                          for r in rig.reports_of(second.order_id)))
    assert rig.gateway is not None and rig.gateway.alive()
    log = rig.log()
    if validating:
        for reason, _ in malformed:
            assert reason in log, log
    assert "unexpected D message" in log and "rejected (BusinessMessageReject)" in log
    # Nothing malformed reached the topic; the first order was booked once.
    assert [r.exec_type for r in rig.reports_of(first.order_id)] == [ExecType.NEW,
                                                                   ExecType.TRADE]
    assert rig.peer.app.session_id is not None
    assert session_key(rig.peer.app.session_id) == f"FIX.4.4:{PEER_COMP_ID}->BROKER"
    assert not rig.peer.app.errors
