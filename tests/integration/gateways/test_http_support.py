"""Helpers for the gateway's integration tests (no tests here): the configuration for the
embedded services, and a tiny responder standing in for the account topology."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from compose.embedded import free_port
from gateways.http.config import HttpConfig
from state import topics as t
from state.domain.account import body_digest
from state.domain.risk import Reason
from state.ids import order_id_for
from state.messages import (
    CommandAccepted,
    CommandRejected,
    Deposit,
    Message,
    OrderEvent,
    OrderState,
    OrderType,
    PlaceOrder,
    Quote,
    ReplaceOrder,
    Side,
)

SECRET = "integration-secret-at-least-32-bytes"


def gateway_config(services: Any, prefix: str, dsns: tuple[str, ...], **overrides: Any
                   ) -> HttpConfig:
    values: dict[str, Any] = dict(
        port=free_port(), bootstrap_servers=services.bootstrap_servers, topic_prefix=prefix,
        shard_dsns=dsns, partitions_per_shard=services.partitions_per_shard,
        redis_url=services.redis_url, redis_key_prefix=prefix, demo_login=True,
        token_secret=SECRET)
    values.update(overrides)
    return HttpConfig(**values)


def quote(symbol: str, bid: str, ask: str) -> Quote:
    return Quote(symbol=symbol, bid=Decimal(bid), ask=Decimal(ask), bid_size=Decimal(100),
                 ask_size=Decimal(100), venue_time=dt.datetime.now(dt.UTC))


def answer(command: Any, now: dt.datetime,
           placed: dict[str, PlaceOrder] | None = None) -> Message | None:
    """What the account topology would say first: buys over 1,000 shares are refused, and
    market buys without a reference price (`no_reference_price`), and replaces to more than
    1,000 shares; a replace of an order placed before (`placed`, by order id) takes effect at
    once."""
    if isinstance(command, ReplaceOrder):
        return _answer_replace(command, now, (placed or {}).get(command.order_id))
    if isinstance(command, PlaceOrder):
        order_id = order_id_for(command.account_id, command.idempotency_key)
        reason = _placement_rejection(command)
        rejected = reason is not None
        return OrderEvent(
            event_id=f"{order_id}:1", account_id=command.account_id, order_id=order_id, seq=1,
            state=OrderState.REJECTED if rejected else OrderState.FUNDS_HELD,
            symbol=command.symbol, side=command.side, order_type=command.order_type,
            quantity=command.quantity, time_in_force=command.time_in_force,
            filled_quantity=Decimal(0), occurred_at=now, cause_id=command.idempotency_key,
            idempotency_key=command.idempotency_key, limit_price=command.limit_price,
            reason=reason)
    if isinstance(command, Deposit):
        if command.amount > 5000:
            return CommandRejected(event_id=f"rej:{command.idempotency_key}",
                                   account_id=command.account_id,
                                   idempotency_key=command.idempotency_key,
                                   command_type="deposit", reason="deposit_limit",
                                   occurred_at=now)
        return CommandAccepted(event_id=f"acc:{command.idempotency_key}",
                               account_id=command.account_id,
                               idempotency_key=command.idempotency_key, command_type="deposit",
                               occurred_at=now, amount=command.amount, txn_id="txn_test")
    return None


def _placement_rejection(command: PlaceOrder) -> str | None:
    if command.quantity > 1000:
        return "insufficient_buying_power"
    # As state/domain/risk.py: a market buy needs a recent quote to be held at; a market sell
    # without one goes through (the market maker prices it).
    if (command.order_type is OrderType.MARKET and command.side is Side.BUY
            and command.reference_price is None):
        return str(Reason.NO_REFERENCE_PRICE)
    return None


def replay_of(command: Any, seen: dict[tuple[str, str], str]) -> bool | None:
    """As the account topology's idempotency, by body digest (the client's fields, not the
    gateway's metadata): None for a new key (now remembered), True for the same body again,
    False for another body under a used key."""
    digest = body_digest(command)
    held = seen.setdefault((command.account_id, command.idempotency_key), digest)
    if held is digest:
        return None
    return held == digest


def key_reused(command: Any, now: dt.datetime) -> CommandRejected:
    """The topology's refusal of another body under a used key."""
    order_id = (order_id_for(command.account_id, command.idempotency_key)
                if isinstance(command, PlaceOrder) else None)
    return CommandRejected(
        event_id=f"{command.account_id}:{command.idempotency_key}:rejected:"
                 f"{body_digest(command)[:8]}",
        account_id=command.account_id, idempotency_key=command.idempotency_key,
        command_type=str(type(command).__struct_config__.tag),
        reason=str(Reason.DUPLICATE_IDEMPOTENCY_KEY), occurred_at=now,
        detail="key already used by another command", order_id=order_id)


def _answer_replace(command: ReplaceOrder, now: dt.datetime,
                    order: PlaceOrder | None) -> Message:
    too_big = command.quantity is not None and command.quantity > 1000
    if order is None or too_big:
        return CommandRejected(event_id=f"rej:{command.idempotency_key}",
                               account_id=command.account_id,
                               idempotency_key=command.idempotency_key,
                               command_type="replace_order",
                               reason="insufficient_buying_power" if too_big
                               else "order_not_found", occurred_at=now,
                               order_id=command.order_id)
    return OrderEvent(
        event_id=f"{command.order_id}:2", account_id=command.account_id,
        order_id=command.order_id, seq=2, state=OrderState.FUNDS_HELD, symbol=order.symbol,
        side=order.side, order_type=order.order_type,
        quantity=command.quantity or order.quantity, time_in_force=order.time_in_force,
        filled_quantity=Decimal(0), occurred_at=now, cause_id=command.idempotency_key,
        idempotency_key=order.idempotency_key,
        limit_price=command.limit_price or order.limit_price,
        stop_price=command.stop_price or order.stop_price,
        previous_state=OrderState.FUNDS_HELD)


def _batch(consumer: Consumer) -> list[Any]:
    first = consumer.poll(0.05)
    return [] if first is None else [first, *consumer.consume(499, timeout=0)]


class Responder:
    """Consumes orders.commands from the start and answers on orders.events. Also the record
    of every command that reached the topic. Like the account topology, it answers nothing to
    a command seen before with the same body and refuses another body under a used key."""

    def __init__(self, bootstrap_servers: str, prefix: str, partitions: int,
                 answering: bool = True) -> None:
        self.commands: list[Any] = []
        self.placed: dict[str, PlaceOrder] = {}
        self.digests: dict[tuple[str, str], str] = {}
        self._answering = answering
        self._prefix = prefix
        self._consumer = Consumer({"bootstrap.servers": bootstrap_servers,
                                   "group.id": f"responder-{prefix}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self._consumer.assign([TopicPartition(prefix + t.Topic.ORDERS_COMMANDS, p, 0)
                               for p in range(partitions)])
        self._producer = Producer({"bootstrap.servers": bootstrap_servers,
                                   "partitioner": "murmur2_random", "linger.ms": 0})
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            for record in _batch(self._consumer):
                if record.error():
                    continue
                command = t.decode(t.Topic.ORDERS_COMMANDS, record.value())
                self.commands.append(command)
                if isinstance(command, PlaceOrder):
                    order_id = order_id_for(command.account_id, command.idempotency_key)
                    self.placed.setdefault(order_id, command)
                event = (self._answer(command, dt.datetime.now(dt.UTC))
                         if self._answering else None)
                if event is not None:
                    self._producer.produce(self._prefix + t.Topic.ORDERS_EVENTS,
                                           key=command.account_id.encode(),
                                           value=t.encode(event))
                    self._producer.flush(5)

    def _answer(self, command: Any, now: dt.datetime) -> Message | None:
        replay = replay_of(command, self.digests)
        if replay is True:
            return None  # it already had its effect
        if replay is False:
            return key_reused(command, now)
        return answer(command, now, self.placed)

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self._consumer.close()
