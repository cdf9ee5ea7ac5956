"""The gateway's pure bookkeeping: delivered sequence numbers, circuit breakers, routing,
stuck orders. No I/O and no clock: times (ms) are passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from state.messages import ExecType, Side


class SeqTracker:
    """The highest inbound sequence number below which every application message is safely
    on the topic. On restart the session expects the next one, so the market maker resends
    anything received but not yet delivered (duplicates are dropped by ExecID)."""

    def __init__(self, delivered: int = 0) -> None:
        self._pending: set[int] = set()
        self._done_max = delivered

    def begin(self, seq: int) -> None:
        self._pending.add(seq)

    def complete(self, seq: int) -> None:
        self._pending.discard(seq)
        self._done_max = max(self._done_max, seq)

    @property
    def delivered(self) -> int:
        if self._pending:
            return min(min(self._pending) - 1, self._done_max)
        return self._done_max


class CircuitBreaker:
    """Open while a request to the market maker has gone unanswered for `timeout_ms`; any
    answer from it closes the breaker (status requests of its stuck orders are the probes)."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._unanswered_since_ms: int | None = None

    def on_request(self, now_ms: int) -> None:
        if self._unanswered_since_ms is None:
            self._unanswered_since_ms = now_ms

    def on_answer(self) -> None:
        self._unanswered_since_ms = None

    def is_open(self, now_ms: int) -> bool:
        since = self._unanswered_since_ms
        return since is not None and now_ms - since >= self.timeout_ms


@dataclass
class ExecutionStats:
    """Best-execution figures of one market maker (in the spirit of Rule 606)."""

    orders: int = 0
    filled: int = 0
    rejected: int = 0
    filled_qty: Decimal = Decimal(0)
    improvement_usd: Decimal = Decimal(0)  # against the NBBO at routing time
    improved_qty: Decimal = Decimal(0)  # the filled quantity that had a reference price
    fill_ms_total: int = 0
    fill_ms: list[int] = field(default_factory=list)

    @property
    def fill_rate(self) -> Decimal:
        return (Decimal(self.filled) / Decimal(self.orders)).quantize(Decimal("0.0001")) \
            if self.orders else Decimal(0)

    @property
    def improvement_per_share(self) -> Decimal:
        if not self.improved_qty:
            return Decimal(0)
        return (self.improvement_usd / self.improved_qty).quantize(Decimal("0.000001"))

    @property
    def average_fill_ms(self) -> Decimal:
        return (Decimal(self.fill_ms_total) / Decimal(self.filled)).quantize(Decimal("0.1")) \
            if self.filled else Decimal(0)


def price_improvement(side: Side, reference_price: Decimal, fill_price: Decimal,
                      quantity: Decimal) -> Decimal:
    """Dollars saved against the reference (the NBBO far side at routing time)."""
    per_share = reference_price - fill_price if side is Side.BUY else fill_price - reference_price
    return per_share * quantity


@dataclass
class OpenOrder:
    """An order the gateway routed and has not seen end."""

    order_id: str
    cl_ord_id: str  # the order's own ClOrdID (of its NewOrderSingle)
    account_id: str
    symbol: str
    side: Side
    quantity: Decimal
    market_maker: str
    session: str
    routed_at_ms: int
    reference_price: Decimal | None = None
    cum_qty: Decimal = Decimal(0)
    # Set while a request (new, cancel, status) awaits its first answer.
    awaiting_since_ms: int | None = None
    stuck_stage: int = 0  # 0 fine, 1 status asked, 2 cancel sent, 3 alerted
    terminal: bool = False
    closed_at_ms: int | None = None  # when it became terminal (the store prunes by it)
    # The ClOrdID of the last replace the market maker confirmed (None: never replaced).
    replaced_cl_ord_id: str | None = None

    @property
    def current_cl_ord_id(self) -> str:
        """The ClOrdID the market maker knows the order by now: the OrigClOrdID of any
        later cancel or replace, and the ClOrdID of a status request."""
        return self.replaced_cl_ord_id or self.cl_ord_id

    def on_replaced(self, cl_ord_id: str, cum_qty: Decimal, leaves_qty: Decimal) -> None:
        """A replace took effect: the order goes by its new ClOrdID and quantity."""
        self.replaced_cl_ord_id = cl_ord_id
        self.quantity = cum_qty + leaves_qty


TERMINAL_EXEC_TYPES = frozenset({ExecType.REJECTED, ExecType.CANCELED, ExecType.EXPIRED})


class StuckAction:
    STATUS = "status"
    CANCEL = "cancel"
    ALERT = "alert"


def stuck_action(order: OpenOrder, now_ms: int, timeout_ms: int) -> str | None:
    """What to do next for an order whose request went unanswered: ask its status, then
    cancel it, then raise an alert; funds stay held throughout (the topology decides)."""
    if order.terminal or order.awaiting_since_ms is None:
        return None
    if now_ms - order.awaiting_since_ms < timeout_ms:
        return None
    return {0: StuckAction.STATUS, 1: StuckAction.CANCEL, 2: StuckAction.ALERT}.get(
        order.stuck_stage)


class Router:
    """Chooses a session for a new order among a market maker's sessions."""

    def __init__(self, policy: str, sessions_by_mm: dict[str, list[str]]) -> None:
        self.policy = policy
        self.sessions_by_mm = sessions_by_mm
        self._mm_names = list(sessions_by_mm)
        self._next_mm = 0
        self._next_session = dict.fromkeys(sessions_by_mm, 0)

    def choose(self, logged_on: set[str], open_breakers: set[str],
               stats: dict[str, ExecutionStats]) -> tuple[str, str]:
        """(market maker, session). Prefers connected market makers with a closed breaker,
        then any connected one, then any (QuickFIX keeps the order and sends it on logon)."""
        connected = [mm for mm in self._mm_names
                     if any(s in logged_on for s in self.sessions_by_mm[mm])]
        healthy = [mm for mm in connected if mm not in open_breakers]
        candidates = healthy or connected or self._mm_names
        mm = self._pick(candidates, stats)
        sessions = self.sessions_by_mm[mm]
        live = [s for s in sessions if s in logged_on] or sessions
        index = self._next_session[mm] % len(live)
        self._next_session[mm] += 1
        return mm, live[index]

    def _pick(self, candidates: list[str], stats: dict[str, ExecutionStats]) -> str:
        if self.policy == "best_price_improvement":
            scored = [mm for mm in candidates if stats.get(mm) and stats[mm].filled]
            if len(scored) == len(candidates):
                return max(candidates, key=lambda mm: stats[mm].improvement_per_share)
            # Market makers without figures yet get orders round robin until they have some.
            candidates = [mm for mm in candidates if mm not in scored] or candidates
        for _ in range(len(self._mm_names)):
            mm = self._mm_names[self._next_mm % len(self._mm_names)]
            self._next_mm += 1
            if mm in candidates:
                return mm
        return candidates[0]
