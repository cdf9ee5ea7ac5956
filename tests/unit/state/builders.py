"""Message builders and a small driver for the account core's tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from state import ledger_accounts as la
from state.domain.account import AccountState, MarketContext, Output, RiskLimits, decide
from state.ids import order_id_for
from state.messages import (
    AchReturn,
    CancelOrder,
    Command,
    Deposit,
    ExecType,
    ExecutionReport,
    ExpireOrders,
    LedgerTransaction,
    OrderEvent,
    OrderType,
    PlaceOrder,
    ReplaceOrder,
    SettleTrades,
    Side,
    TimeInForce,
    Withdraw,
)

ACCOUNT = "acc_test1"
T0 = dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC)  # a Monday, market hours
D = Decimal


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def deposit(key: str, amount: str, when: dt.datetime = T0) -> Deposit:
    return Deposit(account_id=ACCOUNT, idempotency_key=key, amount=D(amount), submitted_at=when)


def withdraw(key: str, amount: str, when: dt.datetime = T0) -> Withdraw:
    return Withdraw(account_id=ACCOUNT, idempotency_key=key, amount=D(amount), submitted_at=when)


def ach_return(key: str, deposit_key: str, when: dt.datetime = T0) -> AchReturn:
    return AchReturn(account_id=ACCOUNT, idempotency_key=key, deposit_idempotency_key=deposit_key,
                     submitted_at=when)


def place(key: str, side: Side | str = Side.BUY, quantity: str = "10", *,
          order_type: OrderType | str = OrderType.MARKET, symbol: str = "AAPL",
          limit: str | None = None, stop: str | None = None, reference: str | None = "100",
          reference_time: dt.datetime | None = T0, tif: TimeInForce | str = TimeInForce.DAY,
          when: dt.datetime = T0) -> PlaceOrder:
    return PlaceOrder(
        account_id=ACCOUNT, idempotency_key=key, symbol=symbol, side=Side(side),
        order_type=OrderType(order_type), quantity=D(quantity), submitted_at=when,
        time_in_force=TimeInForce(tif), limit_price=D(limit) if limit else None,
        stop_price=D(stop) if stop else None,
        reference_price=D(reference) if reference else None,
        reference_time=reference_time if reference else None,
    )


def cancel(key: str, order_key: str, when: dt.datetime = T0) -> CancelOrder:
    return CancelOrder(account_id=ACCOUNT, idempotency_key=key,
                       order_id=order_id_for(ACCOUNT, order_key), submitted_at=when)


def expire(day: dt.date, when: dt.datetime = T0) -> ExpireOrders:
    return ExpireOrders(account_id=ACCOUNT, idempotency_key=f"eod-{day}", trading_day=day,
                        submitted_at=when)


def report(order_key: str, exec_id: str, exec_type: ExecType | str = ExecType.TRADE, *,
           qty: str = "0", px: str = "0", cum: str = "0", leaves: str = "0",
           side: Side | str = Side.BUY, symbol: str = "AAPL", mm: str = "mm1",
           when: dt.datetime = T0, order_id: str | None = None, cl_ord_id: str | None = None,
           orig_cl_ord_id: str | None = None) -> ExecutionReport:
    oid = order_id or order_id_for(ACCOUNT, order_key)
    return ExecutionReport(
        account_id=ACCOUNT, exec_id=exec_id, order_id=oid, cl_ord_id=cl_ord_id or oid,
        exec_type=ExecType(exec_type), symbol=symbol, side=Side(side), last_qty=D(qty),
        last_px=D(px), cum_qty=D(cum), leaves_qty=D(leaves), transact_time=when,
        market_maker=mm, orig_cl_ord_id=orig_cl_ord_id,
    )


def replace(key: str, order_key: str, quantity: str | None = None, *, limit: str | None = None,
            stop: str | None = None, when: dt.datetime = T0) -> ReplaceOrder:
    return ReplaceOrder(account_id=ACCOUNT, idempotency_key=key,
                        order_id=order_id_for(ACCOUNT, order_key), submitted_at=when,
                        quantity=D(quantity) if quantity else None,
                        limit_price=D(limit) if limit else None,
                        stop_price=D(stop) if stop else None)


def settle(day: dt.date, when: dt.datetime = T0) -> SettleTrades:
    return SettleTrades(account_id=ACCOUNT, idempotency_key=f"settle-{day}", settle_date=day,
                        submitted_at=when)


class Driver:
    """Feeds messages through `decide`, keeping the state and every output."""

    def __init__(self, limits: RiskLimits | None = None, market: MarketContext | None = None):
        self.state = AccountState.empty(ACCOUNT)
        self.limits = limits or RiskLimits()
        self.market = market or MarketContext()
        self.outputs: list[Output] = []

    def send(self, message: Command | ExecutionReport, now: dt.datetime | None = None
             ) -> list[Output]:
        when = now or getattr(message, "submitted_at", None) or message.transact_time  # type: ignore[union-attr]
        self.state, out = decide(self.state, message, when, self.market, self.limits)
        self.outputs.extend(out)
        return out

    def cash(self, bucket: str = la.CASH) -> Decimal:
        return self.state.balance(bucket)

    def shares(self, bucket: str = la.SHARES_UNSETTLED, symbol: str = "AAPL") -> Decimal:
        return self.state.balance(bucket, symbol)

    def order(self, key: str) -> Any:
        order = self.state.order(order_id_for(ACCOUNT, key))
        assert order is not None, key
        return order


def of_type(outputs: list[Output], kind: type) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def states(outputs: list[Output]) -> list[str]:
    return [o.state for o in outputs if isinstance(o, OrderEvent)]


def txns(outputs: list[Output]) -> list[LedgerTransaction]:
    return of_type(outputs, LedgerTransaction)
