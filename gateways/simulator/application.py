"""The simulator's QuickFIX acceptor application: FIX requests in, book reports out."""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import quickfix as fix

from gateways.fix import fixmsg
from gateways.fix.session import session_comp_ids, session_key
from gateways.simulator.book import Book, NewOrder, ReplaceRequest, Report
from gateways.simulator.config import SimulatorConfig
from gateways.simulator.faults import Faults, faults_of
from gateways.simulator.store import BookStore
from state.messages import ExecType

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the simulator cannot read; answered with a business reject."""


def parse_new_order(message: fix.Message) -> NewOrder:
    try:
        side = fixmsg.SIDE_FROM_FIX[fixmsg.field(message, fixmsg.SIDE)]
        order_type = fixmsg.ORD_TYPE_FROM_FIX[fixmsg.field(message, fixmsg.ORD_TYPE)]
        tif_code = fixmsg.optional_field(message, fixmsg.TIME_IN_FORCE) or "0"
        price = fixmsg.optional_field(message, fixmsg.PRICE)
        stop = fixmsg.optional_field(message, fixmsg.STOP_PX)
        return NewOrder(
            cl_ord_id=fixmsg.field(message, fixmsg.CL_ORD_ID),
            account=fixmsg.optional_field(message, fixmsg.ACCOUNT) or "",
            symbol=fixmsg.field(message, fixmsg.SYMBOL),
            side=side, order_type=order_type,
            quantity=fixmsg.decimal_field(message, fixmsg.ORDER_QTY),
            time_in_force=fixmsg.TIF_FROM_FIX[tif_code],
            limit_price=Decimal(price) if price is not None else None,
            stop_price=Decimal(stop) if stop is not None else None,
        )
    except (KeyError, InvalidOperation, fixmsg.FixFieldError) as error:
        raise RequestError(f"unreadable NewOrderSingle: {error!r}") from error


def parse_replace(message: fix.Message) -> ReplaceRequest:
    try:
        price = fixmsg.optional_field(message, fixmsg.PRICE)
        stop = fixmsg.optional_field(message, fixmsg.STOP_PX)
        return ReplaceRequest(
            cl_ord_id=fixmsg.field(message, fixmsg.CL_ORD_ID),
            orig_cl_ord_id=fixmsg.field(message, fixmsg.ORIG_CL_ORD_ID),
            symbol=fixmsg.field(message, fixmsg.SYMBOL),
            side=fixmsg.SIDE_FROM_FIX[fixmsg.field(message, fixmsg.SIDE)],
            order_type=fixmsg.ORD_TYPE_FROM_FIX[fixmsg.field(message, fixmsg.ORD_TYPE)],
            quantity=fixmsg.decimal_field(message, fixmsg.ORDER_QTY),
            time_in_force=fixmsg.TIF_FROM_FIX[
                fixmsg.optional_field(message, fixmsg.TIME_IN_FORCE) or "0"],
            limit_price=Decimal(price) if price is not None else None,
            stop_price=Decimal(stop) if stop is not None else None,
        )
    except (KeyError, InvalidOperation, fixmsg.FixFieldError) as error:
        raise RequestError(f"unreadable OrderCancelReplaceRequest: {error!r}") from error


def report_message(report: Report, now: dt.datetime) -> fix.Message:
    if report.kind == "cancel_reject":
        message = fixmsg.new_message(fixmsg.MSG_ORDER_CANCEL_REJECT)
        message.setField(fixmsg.ORDER_ID, report.order_id)
        message.setField(fixmsg.CL_ORD_ID, report.cl_ord_id)
        message.setField(fixmsg.ORIG_CL_ORD_ID, report.orig_cl_ord_id or "NONE")
        message.setField(fixmsg.ORD_STATUS, report.ord_status)
        message.setField(fixmsg.CXL_REJ_RESPONSE_TO, report.response_to)
        message.setField(fixmsg.CXL_REJ_REASON, report.rej_reason or "0")
        if report.account:
            message.setField(fixmsg.ACCOUNT, report.account)
        if report.text:
            message.setField(fixmsg.TEXT, report.text)
        message.setField(fixmsg.TRANSACT_TIME, fixmsg.fix_time(now))
        return message
    message = fixmsg.new_message(fixmsg.MSG_EXECUTION_REPORT)
    message.setField(fixmsg.ORDER_ID, report.order_id)
    message.setField(fixmsg.CL_ORD_ID, report.cl_ord_id)
    if report.orig_cl_ord_id:
        message.setField(fixmsg.ORIG_CL_ORD_ID, report.orig_cl_ord_id)
    message.setField(fixmsg.EXEC_ID, report.exec_id)
    message.setField(fixmsg.EXEC_TYPE,
                     report.fix_exec_type or fixmsg.EXEC_TYPE_TO_FIX[report.exec_type])
    message.setField(fixmsg.ORD_STATUS, report.ord_status)
    if report.account:
        message.setField(fixmsg.ACCOUNT, report.account)
    message.setField(fixmsg.SYMBOL, report.symbol)
    message.setField(fixmsg.SIDE, fixmsg.SIDE_TO_FIX[report.side])
    message.setField(fixmsg.ORDER_QTY, fixmsg.fix_decimal(report.order_qty))
    if report.exec_type is ExecType.TRADE:
        message.setField(fixmsg.LAST_QTY, fixmsg.fix_decimal(report.last_qty))
        message.setField(fixmsg.LAST_PX, fixmsg.fix_decimal(report.last_px))
    message.setField(fixmsg.CUM_QTY, fixmsg.fix_decimal(report.cum_qty))
    message.setField(fixmsg.LEAVES_QTY, fixmsg.fix_decimal(report.leaves_qty))
    message.setField(fixmsg.AVG_PX, fixmsg.fix_decimal(report.avg_px))
    message.setField(fixmsg.TRANSACT_TIME, fixmsg.fix_time(now))
    if report.rej_reason:
        message.setField(fixmsg.ORD_REJ_REASON, report.rej_reason)
    if report.text:
        message.setField(fixmsg.TEXT, report.text)
    return message


class DelayedSender(threading.Thread):
    """Runs callbacks at their due time (answer latency, session drops) off the FIX thread."""

    def __init__(self) -> None:
        super().__init__(name="sim-delayed-sender", daemon=True)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False

    def schedule(self, delay_s: float, action: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._counter), action))
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (
                        not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:  # noqa: BLE001 - a failed send must not stop the simulator
                log.exception("delayed simulator action failed")


class SimulatorApplication(fix.Application):  # type: ignore[misc]
    def __init__(self, config: SimulatorConfig, book: Book, store: BookStore) -> None:
        super().__init__()
        self.config = config
        self.book = book
        self.store = store
        self.lock = threading.Lock()  # the book is shared with the quote thread
        self.session_of_order: dict[str, fix.SessionID] = {}
        self.sender = DelayedSender()
        self.reports_sent = 0
        self.logged_on: set[str] = set()
        self.sessions: dict[str, fix.SessionID] = {}  # every session that logged on, by key
        # What the config sets, or the faults file (gateways.simulator.faults) meanwhile.
        self.faults: Faults = faults_of(config)

    # ---- QuickFIX callbacks ------------------------------------------------------------

    def onCreate(self, session_id: fix.SessionID) -> None:  # noqa: N802
        log.info("simulator session created %s", session_key(session_id))

    def onLogon(self, session_id: fix.SessionID) -> None:  # noqa: N802
        self.logged_on.add(session_key(session_id))
        self.sessions[session_key(session_id)] = copy_session_id(session_id)
        log.info("simulator logon %s", session_key(session_id))

    def onLogout(self, session_id: fix.SessionID) -> None:  # noqa: N802
        self.logged_on.discard(session_key(session_id))
        log.info("simulator logout %s", session_key(session_id))

    def toAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def fromAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def toApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        pass

    def fromApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        try:
            self._handle(message, session_id)
        except Exception:  # noqa: BLE001 - an exception into the FIX engine would kill it
            log.exception("simulator could not handle %s", message.toString())

    # ---- requests ----------------------------------------------------------------------

    def _handle(self, message: fix.Message, callback_session_id: fix.SessionID) -> None:
        # The engine's SessionID lives only for the callback: keep a copy of our own.
        session_id = copy_session_id(callback_session_id)
        kind = fixmsg.msg_type(message)
        if kind == fixmsg.MSG_NEW_ORDER_SINGLE:
            try:
                request = parse_new_order(message)
            except RequestError as error:
                self._business_reject(message, session_id, str(error))
                return
            with self.lock:
                self.session_of_order[request.cl_ord_id] = session_id
                reports = self.book.new_order(request, dt.datetime.now(dt.UTC))
        elif kind == fixmsg.MSG_ORDER_CANCEL_REQUEST:
            cl_ord_id = fixmsg.field(message, fixmsg.CL_ORD_ID)
            orig = fixmsg.field(message, fixmsg.ORIG_CL_ORD_ID)
            with self.lock:
                self.session_of_order[cl_ord_id] = session_id
                reports = self.book.cancel(cl_ord_id, orig)
        elif kind == fixmsg.MSG_ORDER_CANCEL_REPLACE_REQUEST:
            try:
                replace = parse_replace(message)
            except RequestError as error:
                self._business_reject(message, session_id, str(error))
                return
            with self.lock:
                self.session_of_order[replace.cl_ord_id] = session_id
                reports = self.book.replace(replace)
        elif kind == fixmsg.MSG_ORDER_STATUS_REQUEST:
            side = fixmsg.SIDE_FROM_FIX.get(fixmsg.field(message, fixmsg.SIDE))
            if side is None:
                self._business_reject(message, session_id, "unreadable Side")
                return
            with self.lock:
                reports = self.book.status_of(fixmsg.field(message, fixmsg.CL_ORD_ID),
                                              fixmsg.field(message, fixmsg.SYMBOL), side)
        else:
            self._business_reject(message, session_id, f"unsupported message type {kind}")
            return
        self.deliver_and_save(reports, session_id)

    def deliver_and_save(self, reports: list[Report], session_id: fix.SessionID) -> None:
        """Send, then keep the book: a crash in between makes the restarted book do the
        same work again under the same ExecIDs, which the gateway drops as duplicates;
        the other order would lose reports that were never sent."""
        self.deliver(reports, session_id)
        with self.lock:
            self.store.save(self.book.take_dirty())

    def _business_reject(self, message: fix.Message, session_id: fix.SessionID,
                         text: str) -> None:
        reject = fixmsg.new_message(fixmsg.MSG_BUSINESS_MESSAGE_REJECT)
        reject.setField(fixmsg.REF_SEQ_NUM, str(fixmsg.seq_num(message)))
        reject.setField(fixmsg.REF_MSG_TYPE, fixmsg.msg_type(message))
        ref = fixmsg.optional_field(message, fixmsg.CL_ORD_ID)
        if ref:
            reject.setField(fixmsg.BUSINESS_REJECT_REF_ID, ref)
        reject.setField(fixmsg.BUSINESS_REJECT_REASON, "0")
        reject.setField(fixmsg.TEXT, text[:200])
        fix.Session.sendToTarget(reject, session_id)

    # ---- answers -----------------------------------------------------------------------

    def deliver_to_orders(self, reports: list[Report]) -> None:
        """Reports the quote thread caused: each goes to the session its order came on."""
        by_session: dict[str, tuple[fix.SessionID, list[Report]]] = {}
        for report in reports:
            session_id = self.session_of_order.get(report.cl_ord_id) or self._any_session()
            if session_id is None:
                log.error("no session for order %s; report %s not sent", report.cl_ord_id,
                          report.exec_id)
                continue
            by_session.setdefault(session_key(session_id), (session_id, []))[1].append(report)
        for session_id, batch in by_session.values():
            self.deliver(batch, session_id)
        with self.lock:
            self.store.save(self.book.take_dirty())

    def _any_session(self) -> fix.SessionID | None:
        """After a restart the book knows orders the session map does not: their reports
        go to the counterparty's first session (its only one, unless configured more)."""
        targets = session_comp_ids(self.config.target_comp_id, self.config.sessions)
        return fix.SessionID("FIX.4.4", self.config.sender_comp_id, targets[0])

    def deliver(self, reports: list[Report], session_id: fix.SessionID) -> None:
        faults = self.faults
        if self.config.silent or not reports:
            return
        if faults.out_of_order_reports:
            reports = _fills_reversed(reports)
        if faults.duplicate_reports:
            reports = [copy for report in reports for copy in (report, report)]
        if faults.latency_ms > 0:
            self.sender.schedule(faults.latency_ms / 1000,
                                 lambda: self._send(reports, session_id))
        else:
            self._send(reports, session_id)

    def _send(self, reports: list[Report], session_id: fix.SessionID) -> None:
        now = dt.datetime.now(dt.UTC)
        for report in reports:
            fix.Session.sendToTarget(report_message(report, now), session_id)
            self.reports_sent += 1
            every = self.faults.drop_session_every_reports
            if every and self.reports_sent % every == 0:
                self.sender.schedule(0, lambda: self._drop(session_id))

    def set_faults(self, faults: Faults, drop_sessions: int = 0) -> None:
        """Faults from now on (the faults file changed); `drop_sessions` > 0 drops every
        logged-on session once, off the caller's thread."""
        self.faults = faults
        if drop_sessions:
            for key in sorted(self.logged_on):
                self.sender.schedule(0, functools.partial(self._drop, self.sessions[key]))

    def _drop(self, session_id: fix.SessionID) -> None:
        session = fix.Session.lookupSession(session_id)
        if session is not None:
            log.warning("simulator fault: dropping session %s", session_key(session_id))
            session.disconnect()


_SESSION_IDS: dict[str, fix.SessionID] = {}


def copy_session_id(session_id: fix.SessionID) -> fix.SessionID:
    """Our own SessionID equal to the engine's (one per session, kept: building it took
    three calls into the engine per request)."""
    text = session_id.toString()
    copy = _SESSION_IDS.get(text)
    if copy is None:
        copy = fix.SessionID(session_id.getBeginString().getValue(),
                             session_id.getSenderCompID().getValue(),
                             session_id.getTargetCompID().getValue())
        _SESSION_IDS[text] = copy
    return copy


def _fills_reversed(reports: list[Report]) -> list[Report]:
    """The same reports with the fills in reverse order (acks stay first)."""
    fills = [report for report in reports if report.exec_type is ExecType.TRADE]
    others = [report for report in reports if report.exec_type is not ExecType.TRADE]
    return others + fills[::-1]
