"""FIX 4.4 messages to and from our topic messages, with exact decimals.

Fields are set and read as strings by tag number: the bindings' typed price fields are
floats, and money never passes through a float here.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

import quickfix as fix

from gateways.exceptions import GatewayError
from state.ids import order_id_of_cl_ord_id
from state.messages import (
    ExecType,
    ExecutionReport,
    OrderType,
    RouteCancel,
    RouteNewOrder,
    RouteReplace,
    RouteStatusRequest,
    Side,
    TimeInForce,
)


class FixFieldError(GatewayError):
    """An incoming FIX message lacks a field we need or carries a value we cannot read."""


# Tags used here, by name (FIX 4.4).
ACCOUNT = 1
AVG_PX = 6
CL_ORD_ID = 11
CUM_QTY = 14
EXEC_ID = 17
LAST_PX = 31
LAST_QTY = 32
MSG_SEQ_NUM = 34
MSG_TYPE = 35
ORDER_ID = 37
ORDER_QTY = 38
ORD_STATUS = 39
ORD_TYPE = 40
ORIG_CL_ORD_ID = 41
POSS_DUP_FLAG = 43
PRICE = 44
SIDE = 54
SYMBOL = 55
TEXT = 58
TIME_IN_FORCE = 59
TRANSACT_TIME = 60
ORIG_SENDING_TIME = 122
EXEC_TYPE = 150
LEAVES_QTY = 151
STOP_PX = 99
ORD_REJ_REASON = 103
CXL_REJ_REASON = 102
CXL_REJ_RESPONSE_TO = 434
REF_SEQ_NUM = 45
REF_MSG_TYPE = 372
BUSINESS_REJECT_REF_ID = 379
BUSINESS_REJECT_REASON = 380
REF_TAG_ID = 371
SESSION_REJECT_REASON = 373

MSG_NEW_ORDER_SINGLE = "D"
MSG_ORDER_CANCEL_REQUEST = "F"
MSG_ORDER_CANCEL_REPLACE_REQUEST = "G"
MSG_ORDER_STATUS_REQUEST = "H"
MSG_EXECUTION_REPORT = "8"
MSG_ORDER_CANCEL_REJECT = "9"
MSG_BUSINESS_MESSAGE_REJECT = "j"
MSG_REJECT = "3"

ORD_REJ_UNKNOWN_SYMBOL = "1"
ORD_REJ_DUPLICATE_ORDER = "6"
# CxlRejResponseTo (434): which request an OrderCancelReject answers.
CXL_REJ_TO_CANCEL = "1"
CXL_REJ_TO_REPLACE = "2"

SIDE_TO_FIX = {Side.BUY: "1", Side.SELL: "2"}
SIDE_FROM_FIX = {code: side for side, code in SIDE_TO_FIX.items()}
ORD_TYPE_TO_FIX = {OrderType.MARKET: "1", OrderType.LIMIT: "2", OrderType.STOP: "3",
                   OrderType.STOP_LIMIT: "4"}
ORD_TYPE_FROM_FIX = {code: kind for kind, code in ORD_TYPE_TO_FIX.items()}
TIF_TO_FIX = {TimeInForce.DAY: "0", TimeInForce.GTC: "1", TimeInForce.IOC: "3"}
TIF_FROM_FIX = {code: tif for tif, code in TIF_TO_FIX.items()}
# ExecType (150). The market maker's pending states (A, 6, E) are informational for us.
EXEC_TYPE_FROM_FIX = {
    "0": ExecType.NEW, "F": ExecType.TRADE, "4": ExecType.CANCELED, "8": ExecType.REJECTED,
    "C": ExecType.EXPIRED, "I": ExecType.ORDER_STATUS, "A": ExecType.ORDER_STATUS,
    "6": ExecType.ORDER_STATUS, "E": ExecType.ORDER_STATUS, "5": ExecType.REPLACED,
    "D": ExecType.ORDER_STATUS,
}
EXEC_TYPE_TO_FIX = {ExecType.NEW: "0", ExecType.TRADE: "F", ExecType.CANCELED: "4",
                    ExecType.REJECTED: "8", ExecType.EXPIRED: "C",
                    ExecType.ORDER_STATUS: "I", ExecType.REPLACED: "5"}

def fix_decimal(value: Decimal) -> str:
    """A decimal as FIX writes it: plain notation, no exponent."""
    text = format(value, "f")
    return text


def fix_time(moment: dt.datetime) -> str:
    """UTCTimestamp with milliseconds. Formatted by hand: strftime was a tenth of the cost of
    a report on the round-trip path."""
    u = moment.astimezone(dt.UTC)
    return (f"{u.year:04d}{u.month:02d}{u.day:02d}-{u.hour:02d}:{u.minute:02d}:"
            f"{u.second:02d}.{u.microsecond // 1000:03d}")


def parse_fix_time(text: str) -> dt.datetime:
    """UTCTimestamp (YYYYMMDD-HH:MM:SS[.sss...]); read by hand, strptime is slow."""
    try:
        if len(text) < 17 or text[8] != "-" or text[11] != ":" or text[14] != ":":
            raise ValueError(text)
        fraction = text[18:] if len(text) > 17 and text[17] == "." else ""
        if len(text) > 17 and not fraction.isdigit():
            raise ValueError(text)
        micros = int((fraction + "000000")[:6]) if fraction else 0
        return dt.datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]),
                           int(text[12:14]), int(text[15:17]), micros, tzinfo=dt.UTC)
    except ValueError as error:
        raise FixFieldError(f"{text!r} is not a UTCTimestamp") from error


def new_message(msg_type: str) -> fix.Message:
    message = fix.Message()
    message.getHeader().setField(MSG_TYPE, msg_type)
    return message


def _set_order_terms(message: fix.Message, terms: RouteNewOrder | RouteReplace,
                     now: dt.datetime) -> None:
    """The fields a new order and a cancel/replace both carry: the order's full terms."""
    message.setField(CL_ORD_ID, terms.cl_ord_id)
    message.setField(ACCOUNT, terms.account_id)
    message.setField(SYMBOL, terms.symbol)
    message.setField(SIDE, SIDE_TO_FIX[terms.side])
    message.setField(TRANSACT_TIME, fix_time(now))
    message.setField(ORDER_QTY, fix_decimal(terms.quantity))
    message.setField(ORD_TYPE, ORD_TYPE_TO_FIX[terms.order_type])
    if terms.limit_price is not None:
        message.setField(PRICE, fix_decimal(terms.limit_price))
    if terms.stop_price is not None:
        message.setField(STOP_PX, fix_decimal(terms.stop_price))
    message.setField(TIME_IN_FORCE, TIF_TO_FIX[terms.time_in_force])


def new_order_single(order: RouteNewOrder, now: dt.datetime) -> fix.Message:
    message = new_message(MSG_NEW_ORDER_SINGLE)
    _set_order_terms(message, order, now)
    return message


def order_cancel_request(cancel: RouteCancel, now: dt.datetime) -> fix.Message:
    message = new_message(MSG_ORDER_CANCEL_REQUEST)
    message.setField(ORIG_CL_ORD_ID, cancel.orig_cl_ord_id)
    message.setField(CL_ORD_ID, cancel.cl_ord_id)
    message.setField(ACCOUNT, cancel.account_id)
    message.setField(SYMBOL, cancel.symbol)
    message.setField(SIDE, SIDE_TO_FIX[cancel.side])
    message.setField(TRANSACT_TIME, fix_time(now))
    message.setField(ORDER_QTY, fix_decimal(cancel.quantity))
    return message


def order_cancel_replace_request(replace: RouteReplace, orig_cl_ord_id: str,
                                 now: dt.datetime) -> fix.Message:
    """OrderCancelReplaceRequest (35=G): the order's full new terms. `orig_cl_ord_id` is the
    ClOrdID the market maker knows the order by now (the gateway's, after earlier replaces)."""
    message = new_message(MSG_ORDER_CANCEL_REPLACE_REQUEST)
    message.setField(ORIG_CL_ORD_ID, orig_cl_ord_id)
    _set_order_terms(message, replace, now)
    return message


def order_status_request(request: RouteStatusRequest) -> fix.Message:
    message = new_message(MSG_ORDER_STATUS_REQUEST)
    message.setField(CL_ORD_ID, request.cl_ord_id)
    message.setField(ACCOUNT, request.account_id)
    message.setField(SYMBOL, request.symbol)
    message.setField(SIDE, SIDE_TO_FIX[request.side])
    return message


def business_message_reject(refused: fix.Message, reason: str, text: str) -> fix.Message:
    """BusinessMessageReject (35=j) of an inbound application message."""
    reject = new_message(MSG_BUSINESS_MESSAGE_REJECT)
    reject.setField(REF_SEQ_NUM, str(seq_num(refused)))
    reject.setField(REF_MSG_TYPE, msg_type(refused))
    reject.setField(BUSINESS_REJECT_REASON, reason)
    reject.setField(TEXT, text[:200])
    return reject


def msg_type(message: fix.Message) -> str:
    return str(message.getHeader().getField(MSG_TYPE))


def field(message: fix.Message, tag: int) -> str:
    if not message.isSetField(tag):
        raise FixFieldError(f"missing tag {tag} in {msg_type(message)} message")
    return str(message.getField(tag))


def optional_field(message: fix.Message, tag: int) -> str | None:
    return str(message.getField(tag)) if message.isSetField(tag) else None


def header_field(message: fix.Message, tag: int) -> str | None:
    header = message.getHeader()
    return str(header.getField(tag)) if header.isSetField(tag) else None


def decimal_field(message: fix.Message, tag: int, default: Decimal | None = None) -> Decimal:
    text = optional_field(message, tag)
    if text is None:
        if default is None:
            raise FixFieldError(f"missing tag {tag} in {msg_type(message)} message")
        return default
    try:
        value = Decimal(text)
    except InvalidOperation as error:
        raise FixFieldError(f"tag {tag}: {text!r} is not a decimal") from error
    if not value.is_finite():
        raise FixFieldError(f"tag {tag}: {text!r} is not finite")
    return value


def poss_dup(message: fix.Message) -> bool:
    return header_field(message, POSS_DUP_FLAG) == "Y"


def seq_num(message: fix.Message) -> int:
    text = header_field(message, MSG_SEQ_NUM)
    return int(text) if text else 0


def _account_of(message: fix.Message, known: KnownOrder | None, cl_ord_id: str) -> str | None:
    """The account a report is for: the one this gateway routed the order for. A market maker
    naming another Account (1) on a report of our ClOrdID is refused (FixFieldError): the
    report was forwarded under the named account, and a fill of the order was booked in an
    account that never placed it."""
    named = optional_field(message, ACCOUNT)
    if known is None:
        return named
    if named and named != known.account_id:
        raise FixFieldError(f"Account {named[:64]!r} is not the account of order {cl_ord_id} "
                            f"({known.account_id})")
    return known.account_id


class KnownOrder:
    """What the gateway remembers of an order to fill gaps in what a report carries."""

    __slots__ = ("account_id", "symbol", "side", "quantity", "cum_qty", "cl_ord_id")

    def __init__(self, account_id: str, symbol: str, side: Side, quantity: Decimal,
                 cum_qty: Decimal = Decimal(0), cl_ord_id: str | None = None) -> None:
        self.account_id = account_id
        self.symbol = symbol
        self.side = side
        self.quantity = quantity
        self.cum_qty = cum_qty
        self.cl_ord_id = cl_ord_id  # the ClOrdID the market maker knows the order by now


def exec_id_of(market_maker: str, fix_exec_id: str) -> str:
    """Our ExecID of a market maker's report: its ExecID (17) is unique only per market maker."""
    return f"{market_maker}:{fix_exec_id}"


def execution_report_from_fix(
    message: fix.Message, market_maker: str, known: KnownOrder | None, received_at: dt.datetime,
) -> ExecutionReport:
    """A FIX ExecutionReport (35=8) normalised; raises FixFieldError when unusable."""
    cl_ord_id = field(message, CL_ORD_ID)
    exec_type_code = field(message, EXEC_TYPE)
    exec_type = EXEC_TYPE_FROM_FIX.get(exec_type_code)
    if exec_type is None:
        raise FixFieldError(f"ExecType {exec_type_code!r} is not handled")
    side = SIDE_FROM_FIX.get(field(message, SIDE))
    if side is None:
        raise FixFieldError(f"Side {field(message, SIDE)!r} is not handled")
    account_id = _account_of(message, known, cl_ord_id)
    if not account_id:
        raise FixFieldError(f"report for unknown ClOrdID {cl_ord_id} carries no Account")
    transact = optional_field(message, TRANSACT_TIME)
    # A replace moves no shares, whatever LastQty/LastPx the market maker put on it.
    traded = exec_type is not ExecType.REPLACED
    return ExecutionReport(
        account_id=account_id,
        exec_id=exec_id_of(market_maker, field(message, EXEC_ID)),
        order_id=order_id_of_cl_ord_id(cl_ord_id),
        cl_ord_id=cl_ord_id,
        exec_type=exec_type,
        symbol=field(message, SYMBOL),
        side=side,
        last_qty=decimal_field(message, LAST_QTY, Decimal(0)) if traded else Decimal(0),
        last_px=decimal_field(message, LAST_PX, Decimal(0)) if traded else Decimal(0),
        cum_qty=decimal_field(message, CUM_QTY),
        leaves_qty=decimal_field(message, LEAVES_QTY),
        transact_time=parse_fix_time(transact) if transact else received_at,
        market_maker=market_maker,
        orig_cl_ord_id=optional_field(message, ORIG_CL_ORD_ID),
        text=optional_field(message, TEXT),
        poss_dup=poss_dup(message),
    )


def cancel_reject_from_fix(
    message: fix.Message, market_maker: str, known: KnownOrder | None, received_at: dt.datetime,
) -> ExecutionReport:
    """An OrderCancelReject (35=9) of a cancel or of a replace (CxlRejResponseTo 1 or 2) as a
    `cancel_rejected` report: the order lives on unchanged. It has no ExecID: the id is
    derived from the request's ClOrdID, which the market maker answers once."""
    cl_ord_id = field(message, CL_ORD_ID)
    if known is None:
        raise FixFieldError(f"OrderCancelReject for unknown ClOrdID {cl_ord_id}")
    reason = optional_field(message, CXL_REJ_REASON)
    text = optional_field(message, TEXT)
    response_to = optional_field(message, CXL_REJ_RESPONSE_TO)
    transact = optional_field(message, TRANSACT_TIME)
    orig_cl_ord_id = optional_field(message, ORIG_CL_ORD_ID)
    if orig_cl_ord_id in (None, "", "NONE"):
        orig_cl_ord_id = known.cl_ord_id
    return ExecutionReport(
        account_id=_account_of(message, known, cl_ord_id) or known.account_id,
        exec_id=f"{market_maker}:cxlrej:{cl_ord_id}",
        order_id=order_id_of_cl_ord_id(cl_ord_id),
        cl_ord_id=cl_ord_id,
        exec_type=ExecType.CANCEL_REJECTED,
        symbol=known.symbol,
        side=known.side,
        last_qty=Decimal(0),
        last_px=Decimal(0),
        cum_qty=known.cum_qty,
        leaves_qty=max(known.quantity - known.cum_qty, Decimal(0)),
        transact_time=parse_fix_time(transact) if transact else received_at,
        market_maker=market_maker,
        orig_cl_ord_id=orig_cl_ord_id,
        text=" ".join(part for part in (
            "CxlRejResponseTo=2" if response_to == CXL_REJ_TO_REPLACE else None,
            f"CxlRejReason={reason}" if reason else None, text) if part) or None,
        poss_dup=poss_dup(message),
    )


def business_reject_from_fix(
    message: fix.Message, market_maker: str, known: KnownOrder | None, cl_ord_id: str,
    received_at: dt.datetime, session_key: str,
) -> ExecutionReport:
    """A BusinessMessageReject (35=j) or session Reject (35=3) of one of our requests, as a
    `rejected` report of that request. The id names the rejecting message's sequence number
    on its session, which is unique and stable across resends."""
    if known is None:
        raise FixFieldError(f"reject of unknown ClOrdID {cl_ord_id}")
    text = optional_field(message, TEXT) or "rejected by the market maker"
    return ExecutionReport(
        account_id=known.account_id,
        exec_id=f"{market_maker}:rej:{session_key}:{seq_num(message)}",
        order_id=order_id_of_cl_ord_id(cl_ord_id),
        cl_ord_id=cl_ord_id,
        exec_type=ExecType.REJECTED,
        symbol=known.symbol,
        side=known.side,
        last_qty=Decimal(0),
        last_px=Decimal(0),
        cum_qty=known.cum_qty,
        leaves_qty=Decimal(0),
        transact_time=received_at,
        market_maker=market_maker,
        text=f"{msg_type(message)}: {text}",
        poss_dup=poss_dup(message),
    )
