"""Property tests: random interleavings of commands and execution reports.

A simulated market maker answers what the account routes. In the *realistic* run it behaves
(fills only live orders, within their leaves quantity and limit/collar); in the *hostile* run it
also fills dead, unknown and filled orders, overfills and prices anywhere. After every step:
every transaction balances; the account's balances equal the sum of the entries it emitted;
holds equal the open orders' remaining reserve and none is negative; positions equal the sum
of fills; (realistic only) no account goes negative except cash after an ACH return. At the end
a replay of the same messages from empty state gives identical outputs and state.

Replaces (confirmed or refused by the market maker, filled meanwhile within both the old and
the new terms), the gateway's pending cancels and T+1 settlements interleave with the rest;
after every step the clearing balances also equal the account's unsettled lots (what
settlement has still to move).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state import ledger_accounts as la
from state.domain import ledger
from state.domain.account import (
    AccountState,
    MarketContext,
    Output,
    RiskLimits,
    check_invariants,
    decide,
    state_from_builtins,
    state_from_bytes,
    state_to_builtins,
    state_to_bytes,
)
from state.ids import order_id_for
from state.messages import (
    TERMINAL_ORDER_STATES,
    Alert,
    CommandAccepted,
    ExecType,
    ExecutionReport,
    LedgerTransaction,
    OrderEvent,
    RouteNewOrder,
    RouteReplace,
    Side,
    SymbolStatus,
)

from .builders import (
    ACCOUNT,
    T0,
    ach_return,
    cancel,
    deposit,
    expire,
    place,
    replace,
    settle,
    withdraw,
)

D = Decimal
SYMBOLS = ("AAPL", "TSLA")
LIMITS = RiskLimits(notional_usd_max=D("50000"), quantity_max=D("500"))
USER_BUCKETS = la.USER_BUCKETS

amounts = st.sampled_from(["0.01", "5.00", "99.99", "250.00", "1000.00", "20000.00", "-1.00"])
quantities = st.sampled_from(["1", "0.5", "3", "10", "0.000001", "100", "7.25"])
prices = st.sampled_from(["1", "9.99", "100", "101.37", "250.5"])
fractions = st.sampled_from(["1", "0.5", "0.3", "0.01"])
index = st.integers(min_value=0, max_value=30)

place_actions = st.tuples(st.just("place"), st.sampled_from(["buy", "sell"]),
                          st.sampled_from(["market", "limit", "stop", "stop_limit"]), quantities,
                          prices, st.sampled_from(SYMBOLS), st.sampled_from(["day", "gtc", "ioc"]),
                          st.booleans())
fill_actions = st.tuples(st.just("fill"), index, fractions, st.integers(0, 2))
mm_actions = st.tuples(st.just("mm"), index, st.sampled_from(
    ["new", "canceled", "rejected", "expired", "order_status", "cancel_rejected"]))
replace_actions = st.tuples(st.just("replace"), index, st.none() | quantities,
                            st.none() | prices, st.sampled_from(["limit", "stop"]))
mm_replace_actions = st.tuples(st.just("mm_replace"), index,
                               st.sampled_from(["replaced", "replaced", "cancel_rejected"]))
# Orders and fills weigh more than money moves, so most runs trade.
actions = st.one_of(
    place_actions, place_actions, fill_actions, fill_actions, fill_actions, mm_actions,
    st.tuples(st.just("deposit"), amounts),
    st.tuples(st.just("withdraw"), amounts),
    st.tuples(st.just("ach_return"), index),
    st.tuples(st.just("cancel"), index),
    st.tuples(st.just("duplicate"), index),
    st.tuples(st.just("expire"),),
    st.tuples(st.just("wait"), st.sampled_from([0.05, 1, 3600, 86400])),
    st.tuples(st.just("status"), st.sampled_from(SYMBOLS),
              st.sampled_from([SymbolStatus.OPEN, SymbolStatus.OPEN, SymbolStatus.HALTED,
                               SymbolStatus.RESTRICTED])),
    replace_actions, replace_actions, mm_replace_actions, mm_replace_actions,
    st.tuples(st.just("pending_cancel"), index),
    st.tuples(st.just("settle"), st.integers(0, 2)),
)


@dataclass
class MarketMaker:
    """What the market maker knows of each routed order."""

    live: dict[str, bool] = field(default_factory=dict)
    cum: dict[str, Decimal] = field(default_factory=dict)
    routes: dict[str, RouteNewOrder] = field(default_factory=dict)
    replaces: dict[str, RouteReplace] = field(default_factory=dict)  # not yet answered
    exec_count: int = 0


@dataclass
class Run:
    hostile: bool
    round_trip: bool  # pass the state through builtins between steps, as the shell does
    state: AccountState = field(default_factory=lambda: AccountState.empty(ACCOUNT))
    now: dt.datetime = T0
    market: dict[str, SymbolStatus] = field(default_factory=dict)
    mm: MarketMaker = field(default_factory=MarketMaker)
    keys: list[str] = field(default_factory=list)
    deposit_keys: list[str] = field(default_factory=list)
    sent: list[tuple[Any, dt.datetime, dict[str, SymbolStatus]]] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    txns: list[LedgerTransaction] = field(default_factory=list)
    fills: dict[str, Decimal] = field(default_factory=dict)
    seen_exec: set[str] = field(default_factory=set)
    ach_returned: bool = False
    counter: int = 0

    def send(self, message: Any) -> list[Output]:
        self.sent.append((message, self.now, dict(self.market)))
        if self.round_trip:
            self.state = state_from_builtins(state_to_builtins(self.state))
        before = self.state
        snapshot = state_to_builtins(before)
        self.state, out = decide(self.state, message, self.now,
                                 MarketContext(symbol_status=dict(self.market)), LIMITS)
        assert state_to_builtins(before) == snapshot, "decide changed its input state"
        # decide checks what the step touched; the whole check holds after every step
        check_invariants(self.state)
        # the shell keeps decoded states and skips decoding while the store holds their bytes:
        # that needs the stored form to give back exactly the state (offsets, exponents)
        raw = state_to_bytes(self.state)
        assert raw == msgspec.msgpack.encode(self.state), "pre-encoded orders changed the bytes"
        stored = state_from_bytes(raw)
        assert msgspec.json.encode(stored) == msgspec.json.encode(self.state)
        self.outputs.extend(out)
        self._observe(message, out)
        return out

    def _observe(self, message: Any, out: list[Output]) -> None:
        for item in out:
            if isinstance(item, LedgerTransaction):
                assert ledger.unbalanced_assets(item) == {}
                self.txns.append(item)
            elif isinstance(item, RouteNewOrder):
                self.mm.live[item.order_id] = True
                self.mm.cum[item.order_id] = D(0)
                self.mm.routes[item.order_id] = item
            elif isinstance(item, RouteReplace):
                self.mm.replaces[item.order_id] = item
            elif isinstance(item, CommandAccepted) and item.command_type == "ach_return":
                self.ach_returned = True
        # A report for an order the account no longer remembers, from before what it forgot,
        # is refused (alerted, not booked): it may be a duplicate of what was booked.
        refused = any(isinstance(o, Alert) and o.code == "execution_for_forgotten_order"
                      for o in out)
        if isinstance(message, ExecutionReport) and message.exec_type is ExecType.TRADE:
            cause = f"{message.market_maker}:{message.exec_id}"
            if (cause not in self.seen_exec and message.last_qty > 0 and message.last_px > 0
                    and not refused):
                self.seen_exec.add(cause)
                signed = message.last_qty if message.side is Side.BUY else -message.last_qty
                self.fills[message.symbol] = self.fills.get(message.symbol, D(0)) + signed

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def pick(self, items: list[Any], i: int) -> Any:
        return items[i % len(items)] if items else None

    # -- actions

    def act(self, action: tuple) -> None:
        self.now += dt.timedelta(milliseconds=150)  # a brisk but mostly unthrottled pace
        getattr(self, f"do_{action[0]}")(*action[1:])
        self.check()

    def do_deposit(self, amount: str) -> None:
        key = self.next_id("dep")
        self.deposit_keys.append(key)
        self.send(deposit(key, amount, self.now))

    def do_withdraw(self, amount: str) -> None:
        self.send(withdraw(self.next_id("wd"), amount, self.now))

    def do_ach_return(self, i: int) -> None:
        target = self.pick(self.deposit_keys, i) or "none"
        self.send(ach_return(self.next_id("ret"), target, self.now))

    def do_place(self, side: str, order_type: str, qty: str, price: str, symbol: str, tif: str,
                 with_reference: bool) -> None:
        key = self.next_id("ord")
        self.keys.append(key)
        limit = price if order_type in ("limit", "stop_limit") else None
        stop = price if order_type in ("stop", "stop_limit") else None
        reference = price if with_reference or order_type == "market" else None
        self.send(place(key, side, qty, order_type=order_type, symbol=symbol, limit=limit,
                        stop=stop, reference=reference, reference_time=self.now, tif=tif,
                        when=self.now))

    def do_cancel(self, i: int) -> None:
        key = self.pick(self.keys, i) or "none"
        self.send(cancel(self.next_id("cxl"), key, self.now))

    def do_wait(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def do_status(self, symbol: str, status: SymbolStatus) -> None:
        self.market[symbol] = status

    def do_expire(self) -> None:
        day = self.now.date()
        self.send(expire(day, self.now))
        if not self.hostile:  # the market maker expires its day orders too
            for order_id, route in self.mm.routes.items():
                if route.time_in_force == "day":
                    self.mm.live[order_id] = False

    def do_duplicate(self, i: int) -> None:
        previous = self.pick(self.sent, i)
        if previous is not None and (self.hostile or isinstance(previous[0], ExecutionReport)):
            self.send(previous[0])

    def _report(self, order_id: str, route: RouteNewOrder, exec_type: str, qty: Decimal,
                px: Decimal) -> ExecutionReport:
        self.mm.exec_count += 1
        cum = self.mm.cum.get(order_id, D(0)) + qty
        self.mm.cum[order_id] = cum
        return ExecutionReport(
            account_id=ACCOUNT, exec_id=f"e{self.mm.exec_count}", order_id=order_id,
            cl_ord_id=order_id, exec_type=ExecType(exec_type), symbol=route.symbol,
            side=route.side, last_qty=qty, last_px=px, cum_qty=cum,
            leaves_qty=max(route.quantity - cum, D(0)), transact_time=self.now,
            market_maker="mm1")

    def _target(self, i: int) -> tuple[str, RouteNewOrder] | None:
        if self.hostile:
            key = self.pick(self.keys, i)
            order_id = order_id_for(ACCOUNT, key) if key else "ord_unknown"
            route = self.mm.routes.get(order_id)
            if route is None:
                route = RouteNewOrder(account_id=ACCOUNT, order_id=order_id, cl_ord_id=order_id,
                                      symbol=SYMBOLS[i % 2], side=Side.BUY if i % 3 else Side.SELL,
                                      order_type="market", quantity=D(5),  # type: ignore[arg-type]
                                      time_in_force="day", routed_at=self.now)  # type: ignore
            return order_id, route
        live = [oid for oid, alive in self.mm.live.items() if alive]
        order_id = self.pick(live, i)
        return (order_id, self.mm.routes[order_id]) if order_id else None

    def do_fill(self, i: int, fraction: str, price_step: int) -> None:
        target = self._target(i)
        if target is None:
            return
        order_id, route = target
        leaves = route.quantity - self.mm.cum.get(order_id, D(0))
        if self.hostile and leaves <= 0:
            leaves = route.quantity
        qty = (leaves * D(fraction)).quantize(D("0.000001"), rounding=ROUND_DOWN)
        qty = max(qty, D("0.000001"))
        px = self._fill_price(route, price_step)
        pending = self.mm.replaces.get(order_id)
        if pending is not None and not self.hostile:
            # Not yet replaced: a fill the old and the new terms both allow.
            new = self._replaced_route(route, pending)
            leaves = min(leaves, new.quantity - self.mm.cum.get(order_id, D(0)))
            px = min(px, self._fill_price(new, price_step))
        if qty > leaves and not self.hostile:
            return
        self.send(self._report(order_id, route, "trade", qty, px))
        if self.mm.cum[order_id] >= route.quantity:
            self.mm.live[order_id] = False

    def _fill_price(self, route: RouteNewOrder, step: int) -> Decimal:
        factor = (D("0.95"), D("1"), D("1.05"))[step]
        if self.hostile:
            base = route.limit_price or route.reference_price or route.stop_price or D(100)
            return (base * factor * factor).quantize(D("0.0001"))
        if route.side is Side.SELL:
            base = route.limit_price or route.reference_price or route.stop_price or D(100)
            return base * max(factor, D(1))
        if route.limit_price is not None:
            return route.limit_price * min(factor, D(1))
        ceiling = max(route.stop_price or D(0), route.reference_price or D(0)) * D("1.05")
        return (ceiling * factor / D("1.05")).quantize(D("0.0001"), rounding=ROUND_DOWN)

    def do_mm(self, i: int, exec_type: str) -> None:
        target = self._target(i)
        if target is None:
            return
        order_id, route = target
        if exec_type in ("canceled", "rejected", "expired"):
            self.mm.live[order_id] = False
        self.send(self._report(order_id, route, exec_type, D(0), D(0)))

    def do_replace(self, i: int, qty: str | None, price: str | None, which: str) -> None:
        """Mostly an open order, with the price its type has; sometimes any order, any price."""
        open_orders = list(self.state.open_orders.values())
        order = self.pick(open_orders, i) if i % 7 else None
        key = order.idempotency_key if order else self.pick(self.keys, i) or "none"
        if order is not None and not self.hostile:
            which = {"limit": "limit", "stop": "stop", "market": "none"}.get(
                order.order_type, which)
        self.send(replace(self.next_id("rep"), key, qty,
                          limit=price if which == "limit" else None,
                          stop=price if which == "stop" else None, when=self.now))

    @staticmethod
    def _replaced_route(route: RouteNewOrder, request: RouteReplace) -> RouteNewOrder:
        return msgspec.structs.replace(route, quantity=request.quantity,
                                       limit_price=request.limit_price,
                                       stop_price=request.stop_price)

    def do_mm_replace(self, i: int, answer: str) -> None:
        """The market maker answers a replace: confirms it (when the order lives and the new
        quantity is above what it filled), else refuses it. A hostile one answers anything,
        with any quantity."""
        pending = list(self.mm.replaces.values())
        request = self.pick(pending, i)
        if request is None and not self.hostile:
            return
        if request is None:
            target = self._target(i)
            if target is None:
                return
            order_id, route = target
            cl_ord_id, quantity = f"{order_id}.{i % 4}", route.quantity + i % 3
        else:
            order_id, cl_ord_id, quantity = request.order_id, request.cl_ord_id, request.quantity
            route = self.mm.routes[order_id]
            del self.mm.replaces[order_id]
        cum = self.mm.cum.get(order_id, D(0))
        if not self.hostile and (not self.mm.live.get(order_id) or quantity <= cum):
            answer = "cancel_rejected"
        if answer == "replaced" and request is not None:
            self.mm.routes[order_id] = self._replaced_route(route, request)
        self.mm.exec_count += 1
        self.send(ExecutionReport(
            account_id=ACCOUNT, exec_id=f"e{self.mm.exec_count}", order_id=order_id,
            cl_ord_id=cl_ord_id, exec_type=ExecType(answer), symbol=route.symbol,
            side=route.side, last_qty=D(0), last_px=D(0), cum_qty=cum,
            leaves_qty=max(quantity - cum, D(0)), transact_time=self.now, market_maker="mm1",
            orig_cl_ord_id=order_id))

    def do_pending_cancel(self, i: int) -> None:
        """The gateway got no answer for an order and asked the market maker to cancel it."""
        target = self._target(i)
        if target is None:
            return
        order_id, route = target
        cum = self.mm.cum.get(order_id, D(0))
        self.send(ExecutionReport(
            account_id=ACCOUNT, exec_id=f"gateway:pending_cancel:{order_id}",
            order_id=order_id, cl_ord_id=f"{order_id}.gw1",
            exec_type=ExecType.PENDING_CANCEL, symbol=route.symbol, side=route.side,
            last_qty=D(0), last_px=D(0), cum_qty=cum,
            leaves_qty=max(route.quantity - cum, D(0)), transact_time=self.now,
            market_maker="mm1", orig_cl_ord_id=order_id))

    def do_settle(self, days_ahead: int) -> None:
        self.send(settle(self.now.date() + dt.timedelta(days=days_ahead), self.now))

    # -- properties

    def check(self) -> None:
        state = self.state
        from_entries = ledger.balances(self.txns)
        for bucket in USER_BUCKETS:
            account = la.user(ACCOUNT, bucket)
            assets = set(state.balances.get(bucket, {})) | {
                asset for (name, asset) in from_entries if name == account}
            for asset in assets:
                booked = from_entries.get((account, asset), D(0))
                assert state.balance(bucket, asset) == booked, (bucket, asset)
                if bucket in (la.CASH_HELD, la.SHARES_HELD):
                    assert booked >= 0, f"negative hold {bucket} {asset}"
                elif not self.hostile and not (bucket == la.CASH and self.ach_returned):
                    assert booked >= 0, f"{bucket} {asset} went negative: {booked}"
        orders = [*state.open_orders.values(), *state.closed_orders.values()]
        assert all(not o.reserve for o in orders if o.state in TERMINAL_ORDER_STATES)
        held_cash = sum((o.reserve for o in orders
                         if o.side is Side.BUY and o.state not in TERMINAL_ORDER_STATES), D(0))
        assert state.balance(la.CASH_HELD) == held_cash
        for symbol in SYMBOLS:
            held = sum((o.reserve for o in orders if o.symbol == symbol
                        and o.side is Side.SELL and o.state not in TERMINAL_ORDER_STATES), D(0))
            assert state.balance(la.SHARES_HELD, symbol) == held
            position = sum((state.balance(b, symbol) for b in
                            (la.SHARES, la.SHARES_UNSETTLED, la.SHARES_HELD)), D(0))
            assert position == self.fills.get(symbol, D(0)), symbol
        self._check_clearing(from_entries)

    def _check_clearing(self, from_entries: dict[tuple[str, str], Decimal]) -> None:
        """What the clearing accounts hold is what the unsettled lots say settlement will
        move: a settlement moves exactly the lots it drops."""
        expected: dict[tuple[str, str], Decimal] = {}
        for lot in self.state.unsettled_lots.values():
            for asset, amount in ((lot.symbol, lot.sold - lot.bought), (la.USD, lot.cash)):
                key = (lot.clearing_account, asset)
                expected[key] = expected.get(key, D(0)) + amount
        clearing = {key: amount for key, amount in from_entries.items()
                    if key[0].startswith("clearing:")}
        for key in clearing.keys() | expected.keys():
            assert clearing.get(key, D(0)) == expected.get(key, D(0)), key


def _replay(run: Run) -> tuple[list[Output], AccountState]:
    state = AccountState.empty(ACCOUNT)
    outputs: list[Output] = []
    for message, now, market in run.sent:
        state, out = decide(state, message, now, MarketContext(symbol_status=market), LIMITS)
        outputs.extend(out)
    return outputs, state


def _check_run(run: Run) -> None:
    txn_ids = [t.txn_id for t in run.txns]
    assert len(txn_ids) == len(set(txn_ids)), "a txn_id was reused"
    event_ids = [e.event_id for e in run.outputs if isinstance(e, OrderEvent)]
    assert len(event_ids) == len(set(event_ids)), "an order event id was reused"
    outputs, state = _replay(run)
    assert outputs == run.outputs
    assert state_to_builtins(state) == state_to_builtins(run.state)


SETTINGS = settings(max_examples=250, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(actions, min_size=30, max_size=120), st.booleans())
def test_realistic_interleavings_keep_the_books(steps: list[tuple], round_trip: bool) -> None:
    run = Run(hostile=False, round_trip=round_trip)
    run.act(("deposit", "20000.00"))
    for action in steps:
        run.act(action)
    _check_run(run)


@SETTINGS
@given(st.lists(actions, min_size=30, max_size=120))
def test_hostile_market_maker_never_loses_cash_or_shares(steps: list[tuple]) -> None:
    run = Run(hostile=True, round_trip=True)
    run.act(("deposit", "20000.00"))
    for action in steps:
        run.act(action)
    _check_run(run)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(place_actions | fill_actions | fill_actions, min_size=20, max_size=120))
def test_busy_trading_keeps_the_books(steps: list[tuple]) -> None:
    run = Run(hostile=False, round_trip=False)
    run.act(("deposit", "20000.00"))
    for action in steps:
        run.act(action)
    _check_run(run)


def _weighted(*pairs: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked with the given weights (one_of weighs them equally)."""
    return st.sampled_from([s for weight, s in pairs for _ in range(weight)]).flatmap(
        lambda strategy: strategy)


# Dense in replaces of live orders, their answers, pending cancels and settlements across
# days; buys that rest (gtc limits and stops) so there is something to replace.
resting_buys = st.tuples(st.just("place"), st.just("buy"),
                         st.sampled_from(["limit", "stop", "stop_limit", "market"]), quantities,
                         prices, st.sampled_from(SYMBOLS), st.sampled_from(["gtc", "day"]),
                         st.booleans())
replace_heavy_actions = _weighted(
    (3, resting_buys), (1, place_actions), (4, replace_actions), (3, mm_replace_actions),
    (3, fill_actions), (1, mm_actions), (1, st.tuples(st.just("pending_cancel"), index)),
    (1, st.tuples(st.just("cancel"), index)),
    (1, st.tuples(st.just("settle"), st.integers(0, 2))), (1, st.tuples(st.just("expire"),)),
    (1, st.tuples(st.just("wait"), st.sampled_from([1, 86400]))),
    (1, st.tuples(st.just("deposit"), amounts)), (1, st.tuples(st.just("duplicate"), index)),
)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(replace_heavy_actions, min_size=20, max_size=100), st.booleans())
def test_replaces_pending_cancels_and_settlements_keep_the_books(steps: list[tuple],
                                                                 hostile: bool) -> None:
    run = Run(hostile=hostile, round_trip=True)
    run.act(("deposit", "20000.00"))
    for action in steps:
        run.act(action)
    _check_run(run)
