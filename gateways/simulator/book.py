"""The simulator's order book: pure (no I/O, no clock); time and quotes are passed in.

Market orders fill at the far side of the NBBO (ask for a buy, bid for a sell) improved by
`price_improvement_bps`, rounded to the cent (Decimal's default half-even). Orders of at
least `partial_fill_qty_min` fill in three reports of 40 %, 30 % and 30 %. Limit orders rest
until the far side reaches their price; stop orders rest until the far side reaches the stop,
then act as market (stop) or limit (stop_limit) orders.

An order for a symbol without a quote yet (the first minutes of a stack, a symbol whose feed
starts late) is held, not rejected: acknowledged as Pending New (FIX ExecType/OrdStatus A) and
accepted (New, then executed as any order) on the symbol's first quote, or rejected with
"no quote for symbol" once it has waited `quote_wait` with none. A market maker that cannot
price an order yet acknowledges receipt and takes it when it can, rather than refusing an
order it would fill a moment later; Pending New is the FIX way to say "received, not yet
accepted", and it answers the request (the brokerage's stuck-order and breaker clocks stop).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from state.messages import ExecType, OrderType, Side, SymbolStatus, TimeInForce

CENT = Decimal("0.01")
QTY_STEP = Decimal("0.000001")
PARTS = (Decimal("0.4"), Decimal("0.3"))  # the rest is the last part


class OrdStatus:
    """FIX OrdStatus (39) codes."""

    NEW = "0"
    PARTIALLY_FILLED = "1"
    FILLED = "2"
    CANCELED = "4"
    REJECTED = "8"
    PENDING_NEW = "A"  # held: received, waiting for the symbol's first quote


# ExecType (150) of a Pending New report: state.messages.ExecType has no member for it (the
# brokerage reads the market maker's pending states as status information).
FIX_EXEC_TYPE_PENDING_NEW = "A"
NO_QUOTE = ("no quote for symbol", "1")


@dataclass(frozen=True)
class NBBO:
    bid: Decimal
    ask: Decimal


@dataclass(frozen=True)
class NewOrder:
    cl_ord_id: str
    account: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass(frozen=True)
class Report:
    """One ExecutionReport (kind "report") or OrderCancelReject (kind "cancel_reject")."""

    cl_ord_id: str
    order_id: str
    exec_id: str
    exec_type: ExecType
    ord_status: str
    account: str
    symbol: str
    side: Side
    order_qty: Decimal
    last_qty: Decimal
    last_px: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    avg_px: Decimal
    orig_cl_ord_id: str | None = None
    text: str | None = None
    rej_reason: str | None = None
    kind: str = "report"
    response_to: str = "1"  # CxlRejResponseTo of a cancel_reject: 1 cancel, 2 replace
    fix_exec_type: str | None = None  # ExecType (150) when exec_type cannot name it (A)


class CxlRejReason:
    """FIX CxlRejReason (102) codes."""

    TOO_LATE = "0"
    UNKNOWN_ORDER = "1"
    DUPLICATE_CL_ORD_ID = "6"
    OTHER = "99"


@dataclass(frozen=True)
class ReplaceRequest:
    """An OrderCancelReplaceRequest: the order's full new terms under a new ClOrdID."""

    cl_ord_id: str
    orig_cl_ord_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass
class SimOrder:
    request: NewOrder
    order_id: str
    cl_ord_id: str  # the latest ClOrdID that names the order (changes on cancel)
    cum_qty: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    ord_status: str = OrdStatus.NEW
    triggered: bool = False
    reports: int = 0
    fill_parts: list[Decimal] = field(default_factory=list)
    received_at: dt.datetime | None = None
    aliases: list[str] = field(default_factory=list)  # later ClOrdIDs (cancels, replaces)

    @property
    def leaves_qty(self) -> Decimal:
        if self.ord_status in (OrdStatus.CANCELED, OrdStatus.REJECTED, OrdStatus.FILLED):
            return Decimal(0)
        return self.request.quantity - self.cum_qty

    @property
    def avg_px(self) -> Decimal:
        return (self.notional / self.cum_qty).quantize(QTY_STEP) if self.cum_qty else Decimal(0)

    @property
    def open(self) -> bool:
        return self.ord_status in (OrdStatus.NEW, OrdStatus.PARTIALLY_FILLED)

    @property
    def held(self) -> bool:
        """Received but not accepted: waiting for its symbol's first quote."""
        return self.ord_status == OrdStatus.PENDING_NEW


def improved_price(side: Side, nbbo: NBBO, improvement_bps: Decimal) -> Decimal:
    """The far side of the NBBO improved in the customer's favour, rounded to the cent."""
    factor = improvement_bps / Decimal(10_000)
    if side is Side.BUY:
        return (nbbo.ask * (1 - factor)).quantize(CENT)
    return (nbbo.bid * (1 + factor)).quantize(CENT)


def fill_parts(quantity: Decimal, partial_fill_qty_min: Decimal) -> list[Decimal]:
    if quantity < partial_fill_qty_min:
        return [quantity]
    first, second = ((quantity * part).quantize(QTY_STEP, ROUND_DOWN) for part in PARTS)
    parts = [first, second, quantity - first - second]
    return [part for part in parts if part > 0]


class Book:
    def __init__(self, price_improvement_bps: Decimal, partial_fill_qty_min: Decimal,
                 known_symbols: tuple[str, ...] = (), quote_wait_s: float = 0.0) -> None:
        self.price_improvement_bps = price_improvement_bps
        self.partial_fill_qty_min = partial_fill_qty_min
        self.known_symbols = frozenset(known_symbols)
        # How long an order waits for its symbol's first quote; 0 rejects it at once.
        self.quote_wait = dt.timedelta(seconds=quote_wait_s)
        self.nbbo: dict[str, NBBO] = {}
        self.status: dict[str, SymbolStatus] = {}
        self.orders: dict[str, SimOrder] = {}  # by every ClOrdID that names the order
        # Orders waiting for a first quote, by order_id: the expiry check looks at these
        # only, not at every order the book has ever had.
        self.held: dict[str, SimOrder] = {}
        # Open orders by symbol, then order_id: a quote looks at its symbol's resting orders
        # only (every order ever received would make each quote cost more than the last).
        # `_report` keeps it, since every change of an order's status is reported.
        self.resting: dict[str, dict[str, SimOrder]] = {}
        self.dirty: dict[str, SimOrder] = {}  # changed since take_dirty(), by order_id
        self._unknown_status = 0

    def load(self, orders: list[SimOrder]) -> None:
        """Orders kept from before a restart."""
        for order in orders:
            self.orders[order.request.cl_ord_id] = order
            for alias in order.aliases:
                self.orders[alias] = order
            if order.held:
                self.held[order.order_id] = order
            self._index(order)

    def take_dirty(self) -> list[SimOrder]:
        dirty, self.dirty = list(self.dirty.values()), {}
        return dirty

    # ---- market data -------------------------------------------------------------------

    def on_quote(self, symbol: str, bid: Decimal, ask: Decimal,
                 venue_time: dt.datetime | None = None) -> list[Report]:
        """Record the NBBO; resting orders it reaches fill. A quote older than an order
        (replayed after a restart) moves no order that arrived after it."""
        if bid <= 0 or ask <= 0 or bid > ask:
            return []  # a crossed or empty quote is not a price to trade on
        self.nbbo[symbol] = NBBO(bid, ask)
        reports: list[Report] = []
        for order in self._open_orders(symbol):
            if not _older_than(venue_time, order):
                reports += self._try_execute(order)
        # Held orders after the resting ones: they arrived later. The same age rule keeps a
        # replay after a restart deterministic (the same quote accepts the order again).
        for order in [o for o in self.held.values() if o.request.symbol == symbol]:
            if not _older_than(venue_time, order):
                reports += self._accept_held(order)
        return reports

    def expire_held(self, now: dt.datetime) -> list[Report]:
        """Reject every held order that has waited `quote_wait` without a quote."""
        reports: list[Report] = []
        for order in list(self.held.values()):
            assert order.received_at is not None  # set for every held order
            if now - order.received_at >= self.quote_wait:
                reports.append(self._end_held(order, OrdStatus.REJECTED, ExecType.REJECTED,
                                              *NO_QUOTE))
        return reports

    def on_status(self, symbol: str, status: SymbolStatus) -> None:
        self.status[symbol] = status

    # ---- requests ----------------------------------------------------------------------

    def new_order(self, request: NewOrder, now: dt.datetime | None = None) -> list[Report]:
        existing = self.orders.get(request.cl_ord_id)
        if existing is not None:
            existing.reports += 1
            self.dirty[existing.order_id] = existing
            return [self._reject(request, existing.order_id, "duplicate ClOrdID", "6",
                                 ExecType.REJECTED, exec_suffix=f"dup{existing.reports}")]
        # Ids derive from the ClOrdID so they stay unique across simulator restarts.
        order_id = f"S-{request.cl_ord_id}"
        reason = self._rejection(request)
        unquoted = reason is None and request.symbol not in self.nbbo
        if unquoted and self.quote_wait > dt.timedelta(0) and now is not None:
            return self._hold(request, order_id, now)
        if unquoted:
            reason = NO_QUOTE
        if reason is not None:
            text, code = reason
            order = SimOrder(request, order_id, request.cl_ord_id,
                             ord_status=OrdStatus.REJECTED)
            self.orders[request.cl_ord_id] = order
            return [self._report(order, ExecType.REJECTED, text=text, rej_reason=code)]
        order = SimOrder(request, order_id, request.cl_ord_id,
                         fill_parts=fill_parts(request.quantity, self.partial_fill_qty_min),
                         received_at=now)
        self.orders[request.cl_ord_id] = order
        return self._accept(order)

    def _hold(self, request: NewOrder, order_id: str, now: dt.datetime) -> list[Report]:
        order = SimOrder(request, order_id, request.cl_ord_id,
                         fill_parts=fill_parts(request.quantity, self.partial_fill_qty_min),
                         ord_status=OrdStatus.PENDING_NEW, received_at=now)
        self.orders[request.cl_ord_id] = order
        self.held[order_id] = order
        return [self._report(order, ExecType.ORDER_STATUS, text="waiting for a quote",
                             fix_exec_type=FIX_EXEC_TYPE_PENDING_NEW)]

    def _accept(self, order: SimOrder) -> list[Report]:
        """New, then whatever the order does at the current quote."""
        order.ord_status = OrdStatus.NEW
        reports = [self._report(order, ExecType.NEW)]
        reports += self._try_execute(order)
        if order.open and order.request.time_in_force is TimeInForce.IOC:
            order.ord_status = OrdStatus.CANCELED
            reports.append(self._report(order, ExecType.CANCELED, text="IOC not marketable"))
        return reports

    def _accept_held(self, order: SimOrder) -> list[Report]:
        """A held order at its symbol's first quote: checked again (the symbol may have been
        halted meanwhile), then accepted."""
        del self.held[order.order_id]
        reason = self._rejection(order.request)
        if reason is not None:
            return [self._end_held(order, OrdStatus.REJECTED, ExecType.REJECTED, *reason)]
        return self._accept(order)

    def _end_held(self, order: SimOrder, ord_status: str, exec_type: ExecType,
                  text: str | None = None, code: str | None = None) -> Report:
        self.held.pop(order.order_id, None)
        order.ord_status = ord_status
        return self._report(order, exec_type, text=text, rej_reason=code)

    def cancel(self, cl_ord_id: str, orig_cl_ord_id: str) -> list[Report]:
        order = self.orders.get(orig_cl_ord_id)
        if order is None or not (order.open or order.held):
            text, code = (("unknown order", CxlRejReason.UNKNOWN_ORDER) if order is None
                          else ("too late to cancel", CxlRejReason.TOO_LATE))
            return [self._cancel_reject(cl_ord_id, orig_cl_ord_id, order, text, code,
                                        response_to="1")]
        self.held.pop(order.order_id, None)  # a held order may be cancelled while it waits
        order.ord_status = OrdStatus.CANCELED
        order.cl_ord_id = cl_ord_id
        order.aliases.append(cl_ord_id)
        self.orders[cl_ord_id] = order
        return [self._report(order, ExecType.CANCELED, orig_cl_ord_id=orig_cl_ord_id)]

    def replace(self, request: ReplaceRequest) -> list[Report]:
        """Apply new quantity and prices to an open order (or the rest of a partly filled
        one). The order keeps its fills; it may trade at once at its new terms."""
        order = self.orders.get(request.orig_cl_ord_id)
        if order is not None and self.orders.get(request.cl_ord_id) is order:
            return []  # the same replace again (a resend): it took effect already
        refusal = self._replace_refusal(order, request)
        if refusal is not None:
            text, code = refusal
            return [self._cancel_reject(request.cl_ord_id, request.orig_cl_ord_id, order, text,
                                        code, response_to="2")]
        assert order is not None
        order.request = dataclasses.replace(
            order.request, order_type=request.order_type, quantity=request.quantity,
            time_in_force=request.time_in_force, limit_price=request.limit_price,
            stop_price=request.stop_price)
        order.fill_parts = fill_parts(request.quantity - order.cum_qty,
                                      self.partial_fill_qty_min)
        order.cl_ord_id = request.cl_ord_id
        order.aliases.append(request.cl_ord_id)
        self.orders[request.cl_ord_id] = order
        reports = [self._report(order, ExecType.REPLACED, orig_cl_ord_id=request.orig_cl_ord_id)]
        return reports + self._try_execute(order)

    def _replace_refusal(self, order: SimOrder | None,
                         request: ReplaceRequest) -> tuple[str, str] | None:
        if order is None:
            return "unknown order", CxlRejReason.UNKNOWN_ORDER
        if order.held:
            # Its terms were never accepted: a replace would change an order not yet taken.
            return "order not yet accepted (waiting for a quote)", CxlRejReason.OTHER
        if not order.open:
            return "too late to replace", CxlRejReason.TOO_LATE
        if request.cl_ord_id in self.orders:
            return "duplicate ClOrdID", CxlRejReason.DUPLICATE_CL_ORD_ID
        if request.quantity <= order.cum_qty:
            return (f"too late: {order.cum_qty} already filled, new quantity "
                    f"{request.quantity}", CxlRejReason.TOO_LATE)
        if (request.symbol, request.side) != (order.request.symbol, order.request.side):
            return "symbol and side cannot change", CxlRejReason.OTHER
        if request.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and (
                request.limit_price is None or request.limit_price <= 0):
            return "limit price required", CxlRejReason.OTHER
        if request.order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and (
                request.stop_price is None or request.stop_price <= 0):
            return "stop price required", CxlRejReason.OTHER
        return None

    def _cancel_reject(self, cl_ord_id: str, orig_cl_ord_id: str, order: SimOrder | None,
                       text: str, code: str, response_to: str) -> Report:
        return Report(cl_ord_id=cl_ord_id, order_id=order.order_id if order else "NONE",
                      exec_id="", exec_type=ExecType.CANCEL_REJECTED,
                      ord_status=order.ord_status if order else OrdStatus.REJECTED,
                      account=order.request.account if order else "",
                      symbol=order.request.symbol if order else "",
                      side=order.request.side if order else Side.BUY,
                      order_qty=Decimal(0), last_qty=Decimal(0), last_px=Decimal(0),
                      cum_qty=order.cum_qty if order else Decimal(0), leaves_qty=Decimal(0),
                      avg_px=Decimal(0), orig_cl_ord_id=orig_cl_ord_id, text=text,
                      rej_reason=code, kind="cancel_reject", response_to=response_to)

    def status_of(self, cl_ord_id: str, symbol: str = "", side: Side = Side.BUY) -> list[Report]:
        order = self.orders.get(cl_ord_id)
        if order is None:
            # FIX 4.4: a status request for an unknown order is answered as rejected.
            self._unknown_status += 1
            return [Report(cl_ord_id=cl_ord_id, order_id="NONE",
                           exec_id=f"S-unknown-{cl_ord_id}-{self._unknown_status}",
                           exec_type=ExecType.ORDER_STATUS, ord_status=OrdStatus.REJECTED,
                           account="", symbol=symbol, side=side, order_qty=Decimal(0),
                           last_qty=Decimal(0), last_px=Decimal(0), cum_qty=Decimal(0),
                           leaves_qty=Decimal(0), avg_px=Decimal(0), text="unknown order")]
        return [self._report(order, ExecType.ORDER_STATUS, cl_ord_id=cl_ord_id)]

    # ---- internals ---------------------------------------------------------------------

    def _rejection(self, request: NewOrder) -> tuple[str, str] | None:
        """Why the order is refused, whatever the quote (a missing quote is the caller's:
        the order may wait for one)."""
        if self.known_symbols and request.symbol not in self.known_symbols:
            return "unknown symbol", "1"
        if self.status.get(request.symbol) is SymbolStatus.HALTED:
            return "symbol halted", "2"
        if request.quantity <= 0:
            return "quantity must be positive", "13"
        if request.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and (
                request.limit_price is None or request.limit_price <= 0):
            return "limit price required", "99"
        if request.order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and (
                request.stop_price is None or request.stop_price <= 0):
            return "stop price required", "99"
        return None

    def _open_orders(self, symbol: str) -> list[SimOrder]:
        return list(self.resting.get(symbol, {}).values())

    def _index(self, order: SimOrder) -> None:
        symbol = order.request.symbol
        if order.open:
            self.resting.setdefault(symbol, {})[order.order_id] = order
        elif order.order_id in self.resting.get(symbol, {}):
            del self.resting[symbol][order.order_id]

    def _execution_price(self, order: SimOrder) -> Decimal | None:
        """The price the order fills at now, or None while it must rest."""
        request = order.request
        nbbo = self.nbbo.get(request.symbol)
        if nbbo is None or self.status.get(request.symbol) is SymbolStatus.HALTED:
            return None
        buy = request.side is Side.BUY
        far = nbbo.ask if buy else nbbo.bid
        if request.order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and not order.triggered:
            assert request.stop_price is not None
            if (far >= request.stop_price) if buy else (far <= request.stop_price):
                order.triggered = True
            else:
                return None
        price = improved_price(request.side, nbbo, self.price_improvement_bps)
        if request.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
            limit = request.limit_price
            assert limit is not None
            if (far > limit) if buy else (far < limit):
                return None
            price = min(price, limit) if buy else max(price, limit)
        return price

    def _try_execute(self, order: SimOrder) -> list[Report]:
        price = self._execution_price(order)
        if price is None:
            return []
        reports = []
        while order.fill_parts:
            quantity = order.fill_parts.pop(0)
            order.cum_qty += quantity
            order.notional += quantity * price
            order.ord_status = (OrdStatus.FILLED if order.cum_qty >= order.request.quantity
                                else OrdStatus.PARTIALLY_FILLED)
            reports.append(self._report(order, ExecType.TRADE, last_qty=quantity, last_px=price))
        return reports

    def _report(self, order: SimOrder, exec_type: ExecType, *, last_qty: Decimal = Decimal(0),
                last_px: Decimal = Decimal(0), text: str | None = None,
                rej_reason: str | None = None, orig_cl_ord_id: str | None = None,
                cl_ord_id: str | None = None, fix_exec_type: str | None = None) -> Report:
        order.reports += 1
        self.dirty[order.order_id] = order
        self._index(order)
        request = order.request
        return Report(
            cl_ord_id=cl_ord_id or order.cl_ord_id, order_id=order.order_id,
            exec_id=f"{order.order_id}-{order.reports}", exec_type=exec_type,
            ord_status=order.ord_status, account=request.account, symbol=request.symbol,
            side=request.side, order_qty=request.quantity, last_qty=last_qty, last_px=last_px,
            cum_qty=order.cum_qty, leaves_qty=order.leaves_qty, avg_px=order.avg_px,
            orig_cl_ord_id=orig_cl_ord_id, text=text, rej_reason=rej_reason,
            fix_exec_type=fix_exec_type)

    def _reject(self, request: NewOrder, order_id: str, text: str, code: str,
                exec_type: ExecType, exec_suffix: str) -> Report:
        return Report(
            cl_ord_id=request.cl_ord_id, order_id=order_id,
            exec_id=f"{order_id}-{exec_suffix}", exec_type=exec_type,
            ord_status=OrdStatus.REJECTED, account=request.account, symbol=request.symbol,
            side=request.side, order_qty=request.quantity, last_qty=Decimal(0),
            last_px=Decimal(0), cum_qty=Decimal(0), leaves_qty=Decimal(0), avg_px=Decimal(0),
            text=text, rej_reason=code)


def _older_than(venue_time: dt.datetime | None, order: SimOrder) -> bool:
    """A quote older than the order (replayed after a restart) does not move it."""
    return venue_time is not None and order.received_at is not None \
        and venue_time < order.received_at
