"""The HTTP answers built from what the stores and the topics hold, as the body types of
`gateways.http.schemas`: a handler encodes one of these structs, so what it answers is what the
OpenAPI document (generated from the same types) says. Store rows carry bookkeeping columns
(`last_event_id`, the source offsets, an event's raw payload) that are not API; they stop here.
Figures are written at their scale (`state.domain.money`)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gateways.http import schemas as s
from state import ledger_accounts as la
from state.domain.money import money_text, price_text, shares_text
from state.messages import Candle, OrderEvent, OrderState, Quote, Side

Row = Mapping[str, Any]


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _shares(value: Any) -> str | None:
    number = _decimal(value)
    return None if number is None else shares_text(number)


def _price(value: Any) -> str | None:
    number = _decimal(value)
    return None if number is None else price_text(number)


def _holds(side: Side | str, held: Any) -> tuple[str | None, str | None]:
    """The order's initial hold under the name of its unit: USD for a buy, shares for a sell
    (the topics' `held_amount` is either; no answer field is)."""
    amount = _decimal(held)
    if amount is None or amount.is_zero():
        return None, None
    if Side(side) is Side.BUY:
        return money_text(amount), None
    return None, shares_text(amount)


def account(row: Row) -> s.Account:
    return s.Account(account_id=row["account_id"], user_id=row["user_id"], shard=row["shard"],
                     status=row.get("status", "active"), created_at=row.get("created_at"))


def order(row: Row, with_events: bool = True) -> s.Order:
    """An order from its shard row (with its event rows) or from its journaled command."""
    events = row.get("events")
    held_usd, held_shares = _holds(row["side"], row.get("held_amount"))
    return s.Order(
        order_id=row["order_id"], account_id=row["account_id"], symbol=row["symbol"],
        side=Side(row["side"]), order_type=row["order_type"],
        quantity=shares_text(Decimal(str(row["quantity"]))),
        time_in_force=row["time_in_force"], state=OrderState(row["state"]),
        filled_quantity=shares_text(Decimal(str(row.get("filled_quantity") or 0))),
        idempotency_key=row["idempotency_key"], seq=row.get("seq"),
        limit_price=_price(row.get("limit_price")), stop_price=_price(row.get("stop_price")),
        average_fill_price=_price(row.get("average_fill_price")),
        held_usd=held_usd, held_shares=held_shares,
        reason=row.get("reason"), detail=row.get("detail"), created_at=row.get("created_at"),
        updated_at=row.get("updated_at"),
        events=None if events is None or not with_events
        else [order_event(event) for event in events if _is_transition(event)])


def _is_transition(event: Row) -> bool:
    # A refused cancel or replace and an alert name the order too, but are not its states.
    return event.get("event_type", "order_event") == "order_event"


def order_event(row: Row) -> s.OrderEventView:
    """One of an order's event rows; the fill figures are in its payload (the event as it
    was on the topic)."""
    payload = row.get("payload") or {}
    return s.OrderEventView(
        event_id=row["event_id"], seq=row["seq"], state=OrderState(row["state"]),
        occurred_at=row["occurred_at"],
        filled_quantity=shares_text(Decimal(str(payload.get("filled_quantity") or 0))),
        previous_state=row.get("previous_state"), reason=row.get("reason"),
        detail=row.get("detail"),
        last_fill_quantity=_shares(payload.get("last_fill_quantity")),
        last_fill_price=_price(payload.get("last_fill_price")))


def order_from_event(event: OrderEvent) -> s.Order:
    """The order as the event that answered a request leaves it."""
    held_usd, held_shares = _holds(event.side, event.held_amount)
    return s.Order(
        order_id=event.order_id, account_id=event.account_id, symbol=event.symbol,
        side=event.side, order_type=event.order_type, quantity=shares_text(event.quantity),
        time_in_force=event.time_in_force, state=event.state,
        filled_quantity=shares_text(event.filled_quantity),
        idempotency_key=event.idempotency_key, seq=event.seq,
        limit_price=_price(event.limit_price), stop_price=_price(event.stop_price),
        average_fill_price=_price(event.average_fill_price),
        held_usd=held_usd, held_shares=held_shares,
        reason=event.reason, detail=event.detail, updated_at=event.occurred_at)


def quote(found: Quote) -> s.QuoteView:
    """A quote without its topic envelope (`type`, `v`)."""
    return s.QuoteView(
        symbol=found.symbol, bid=str(found.bid), ask=str(found.ask),
        bid_size=str(found.bid_size), ask_size=str(found.ask_size),
        venue_time=found.venue_time, last=None if found.last is None else str(found.last),
        last_size=None if found.last_size is None else str(found.last_size))


def candle(found: Candle) -> s.CandleView:
    return s.CandleView(
        start=found.start, end=found.end, open=str(found.open), high=str(found.high),
        low=str(found.low), close=str(found.close), volume=shares_text(found.volume),
        vwap=price_text(found.vwap), trades=found.trades)


def _amount(asset: str, value: Any) -> str:
    number = Decimal(str(value))
    return money_text(number) if asset == la.USD else shares_text(number)


def activity(row: Row) -> s.Activity:
    asset = row["asset"]
    return s.Activity(
        txn_id=row["txn_id"], leg=row["leg"], kind=row["kind"], cause_id=row["cause_id"],
        ledger_account=row["ledger_account"], bucket=row.get("bucket"), asset=asset,
        amount=_amount(asset, row["amount"]),
        balance_after=_amount(asset, row["balance_after"]),
        occurred_at=row["occurred_at"], ledger_seq=row["ledger_seq"],
        order_id=row.get("order_id"))
