"""Request/reply over `orders.events`: a request registers a future for its
(account_id, idempotency_key) BEFORE its command is produced; the events tail resolves it with
the first event that answers it. Listeners (WebSocket connections) get every event of the
accounts they watch."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from state.messages import CommandAccepted, CommandRejected, OrderEvent, OrderState

# Order states that answer a placement: the risk checks have spoken.
_ANSWERING_STATES = frozenset(OrderState) - {OrderState.PENDING, OrderState.VALIDATED}

Key = tuple[str, str]
Predicate = Callable[[Any], bool]
Listener = Callable[[Any], None]


def answers_placement(event: Any) -> bool:
    if isinstance(event, OrderEvent):
        return event.state in _ANSWERING_STATES
    return isinstance(event, CommandRejected)


def answers_money_command(event: Any) -> bool:
    return isinstance(event, CommandAccepted | CommandRejected)


def answers_cancel(event: Any) -> bool:
    return isinstance(event, OrderEvent | CommandRejected)


def caused_by(event: OrderEvent, idempotency_key: str) -> bool:
    """Whether the command with this key caused the event: its cause is the command's key,
    bare or as `cmd:{account_id}:{key}`."""
    return event.cause_id in (idempotency_key, f"cmd:{event.account_id}:{idempotency_key}")


def answers_replace(order_id: str, idempotency_key: str) -> Predicate:
    """The first event of the order that the replace caused, or the replace's rejection."""
    def answers(event: Any) -> bool:
        if isinstance(event, OrderEvent):
            return event.order_id == order_id and caused_by(event, idempotency_key)
        return isinstance(event, CommandRejected)
    return answers


def command_keys(event: Any) -> tuple[str, ...]:
    """The idempotency keys of the requests an event may answer: its own and, for an order
    event caused by a later command (a cancel, a replace), that command's key."""
    key = getattr(event, "idempotency_key", None)
    keys: tuple[str, ...] = (key,) if key is not None else ()
    if isinstance(event, OrderEvent):
        cause = event.cause_id
        prefix = f"cmd:{event.account_id}:"
        cause_key = cause[len(prefix):] if cause.startswith(prefix) else cause
        if cause_key and cause_key != key:
            keys += (cause_key,)
    return keys


class ReplyBook:
    def __init__(self) -> None:
        self._waiters: dict[Key, list[tuple[Predicate, asyncio.Future[Any]]]] = {}
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self.events_seen = 0

    def expect(self, account_id: str, idempotency_key: str,
               predicate: Predicate) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((account_id, idempotency_key), []).append((predicate, future))
        return future

    def forget(self, account_id: str, idempotency_key: str, future: asyncio.Future[Any]) -> None:
        key = (account_id, idempotency_key)
        waiting = [w for w in self._waiters.get(key, []) if w[1] is not future]
        if waiting:
            self._waiters[key] = waiting
        else:
            self._waiters.pop(key, None)

    async def wait(self, future: asyncio.Future[Any], timeout_s: float) -> Any | None:
        """The answer, or None when none came within the bound."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None

    def listen(self, account_id: str, listener: Listener) -> None:
        self._listeners[account_id].add(listener)

    def unlisten(self, account_id: str, listener: Listener) -> None:
        listeners = self._listeners.get(account_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[account_id]

    def deliver(self, events: list[Any]) -> None:
        """Called on the loop by the events tail with a batch of decoded events."""
        for event in events:
            self.events_seen += 1
            account_id = getattr(event, "account_id", None)
            if account_id is None:
                continue
            for key in command_keys(event):
                self._resolve((account_id, key), event)
            for listener in tuple(self._listeners.get(account_id, ())):
                listener(event)

    def _resolve(self, key: Key, event: Any) -> None:
        waiting = self._waiters.get(key)
        if not waiting:
            return
        remaining = []
        for predicate, future in waiting:
            if future.done():
                continue
            if predicate(event):
                future.set_result(event)
            else:
                remaining.append((predicate, future))
        if remaining:
            self._waiters[key] = remaining
        else:
            del self._waiters[key]
