"""In-memory stand-ins for the gateway's stores and Kafka clients (helpers, no tests here):
the HTTP surface tested without servers; the integration tests use the real ones."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateways.http.bus import BrokerUnavailable
from gateways.http.config import HttpConfig
from gateways.http.context import GATEWAY
from gateways.http.problems import Problem
from gateways.http.websocket import StreamHub
from state.exceptions import ShardUnavailable
from state.intake_journal import JournalEntry
from state.messages import Message, Quote
from state.router import ShardRouter

NOW = dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC)
SECRET = "unit-test-secret-at-least-32-bytes"


def config(**overrides: Any) -> HttpConfig:
    values: dict[str, Any] = dict(
        port=0, bootstrap_servers="127.0.0.1:1", shard_dsns=("a", "b"), partitions_per_shard=2,
        redis_url="redis://127.0.0.1:1/0", demo_login=True, token_secret=SECRET,
        reply_wait_ms=200)
    values.update(overrides)
    return HttpConfig(**values)


def quote(symbol: str, bid: str, ask: str, last: str | None = None) -> Quote:
    return Quote(symbol=symbol, bid=Decimal(bid), ask=Decimal(ask), bid_size=Decimal(100),
                 ask_size=Decimal(100), venue_time=NOW, last=None if last is None
                 else Decimal(last))


def shard_order(account_id: str, order_id: str, **columns: Any) -> dict[str, Any]:
    """An order as `ShardReader.order` returns it: every column of its row (its latest
    event's figures and bookkeeping), and its event rows."""
    row: dict[str, Any] = {
        "order_id": order_id, "account_id": account_id, "symbol": "AAPL", "side": "buy",
        "order_type": "limit", "time_in_force": "day", "quantity": Decimal(10),
        "limit_price": Decimal("209.50"), "stop_price": None, "state": "funds_held",
        "filled_quantity": Decimal(0), "average_fill_price": None,
        "held_amount": Decimal("2095.00"), "reason": None, "idempotency_key": "k1", "seq": 2,
        "last_event_id": f"{order_id}:2", "created_at": NOW, "updated_at": NOW, "events": []}
    row.update(columns)
    return row


class FakeReader:
    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.orders_by_id: dict[tuple[str, str], dict[str, Any]] = {}
        self.portfolios: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[tuple[str, str], dict[str, Any]] = {}
        self.journaled_orders: dict[tuple[str, str], dict[str, Any]] = {}
        # The journal's rows, as the shard holds them (Fakes wires the FakeJournal's in).
        self.journal_entries: Callable[[], list[JournalEntry]] = list

    async def create_account(self, user_id: str, account_id: str, shard: int) -> dict[str, Any]:
        account = self.accounts.setdefault(account_id, {
            "account_id": account_id, "user_id": user_id, "shard": shard, "created_at": NOW})
        return account

    async def account(self, account_id: str) -> dict[str, Any] | None:
        return self.accounts.get(account_id)

    async def accounts_of_user(self, user_id: str) -> list[dict[str, Any]]:
        return [a for a in self.accounts.values() if a["user_id"] == user_id]

    async def portfolio(self, account_id: str) -> dict[str, Any]:
        return self.portfolios.get(account_id) or {
            "account_id": account_id, "cash": Decimal(0), "cash_held": Decimal(0),
            "buying_power": Decimal(0), "positions": [], "as_of": None, "ledger_seq": None}

    async def orders(self, account_id: str, limit: int) -> list[dict[str, Any]]:
        return [o for (a, _), o in self.orders_by_id.items() if a == account_id][:limit]

    async def order(self, account_id: str, order_id: str) -> dict[str, Any] | None:
        return self.orders_by_id.get((account_id, order_id))

    async def journaled_order(self, account_id: str, order_id: str) -> dict[str, Any] | None:
        found = self.journaled_orders.get((account_id, order_id))
        if found is None and any(entry.order_id == order_id and entry.account_id == account_id
                                 for entry in self.journal_entries()):
            return {"order_id": order_id, "account_id": account_id, "state": "pending"}
        return found

    async def command_outcome(self, account_id: str, key: str) -> dict[str, Any] | None:
        return self.outcomes.get((account_id, key))

    async def activities(self, account_id: str, as_of: Any) -> list[dict[str, Any]]:
        return []


class FakeQuotes:
    def __init__(self) -> None:
        self.quotes: dict[str, Quote] = {}

    async def get_many(self, symbols: list[str]) -> dict[str, Quote]:
        return {s: self.quotes[s] for s in symbols if s in self.quotes}

    async def get(self, symbol: str) -> Quote | None:
        return self.quotes.get(symbol)


class FakeProducer:
    """Records what was produced; `respond` turns a command into the events that answer it."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, str, Any]] = []
        self.failing = False
        self.respond: Callable[[Message], list[Any]] | None = None
        self.deliver: Callable[[list[Any]], None] | None = None

    async def produce(self, topic: str, key: str, message: Message) -> None:
        if self.failing:
            raise BrokerUnavailable("delivery failed: fake broker down")
        self.produced.append((topic, key, message))
        if self.respond is not None and self.deliver is not None:
            events = self.respond(message)
            if events:
                asyncio.get_running_loop().call_soon(self.deliver, events)

    def broker_reachable(self, timeout_s: float) -> bool:
        return not self.failing


class FakeJournal:
    """The intake journal's rules in memory: one row per (account, key), the first body kept,
    the latest request's claim; `failing` as a shard that cannot be written."""

    def __init__(self, producer: FakeProducer, reader: FakeReader) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.failing = False
        self._producer = producer
        self._reader = reader

    async def write(self, entry: JournalEntry, claim: str) -> dict[str, Any] | None:
        if self.failing:
            raise ShardUnavailable("journal: fake shard down")
        order = self._reader.orders_by_id.get((entry.account_id, entry.order_id or ""))
        if order is not None:  # the key named an order on record: not journaled
            terms = {name: order[name] for name in (
                "symbol", "side", "order_type", "time_in_force", "quantity", "limit_price",
                "stop_price")}
            return {**terms, "replaced": any(event.get("reason") == "replaced"
                                             for event in order["events"])}
        row = self.rows.setdefault((entry.account_id, entry.idempotency_key), {
            "entry": entry, "decided": False, "published": 0,
            "produced_before": len(self._producer.produced)})
        row["claim"] = claim
        return None

    async def withdraw(self, account_id: str, key: str, claim: str) -> bool:
        row = self.rows.get((account_id, key))
        if row is None or row["claim"] != claim or row["published"] or row["decided"]:
            return False
        del self.rows[(account_id, key)]
        return True

    async def mark_decided(self, account_id: str, key: str) -> None:
        if (account_id, key) in self.rows:
            self.rows[(account_id, key)]["decided"] = True


class FakeLimiter:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}

    async def hit(self, user_id: str, bucket: str, limit_per_s: int, now_ms: int) -> None:
        key = (user_id, bucket, now_ms // 1000)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] > limit_per_s:
            raise Problem(429, "rate_limited", "too many", headers={"Retry-After": "1"})


class FakeIdempotency:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], str] = {}

    async def claim(self, scope: str, key: str, fingerprint: str) -> bool:
        held = self.records.setdefault((scope, key), fingerprint)
        if held != fingerprint:
            raise Problem(409, "idempotency_key_reused", "reused")
        return held is fingerprint

    async def release(self, scope: str, key: str, fingerprint: str) -> None:
        if self.records.get((scope, key)) == fingerprint:
            del self.records[(scope, key)]


class FakeRedis:
    async def ping(self) -> bool:
        return True


class Fakes:
    def __init__(self) -> None:
        self.reader = FakeReader()
        self.quotes = FakeQuotes()
        self.producer = FakeProducer()
        self.limiter = FakeLimiter()
        self.idempotency = FakeIdempotency()
        self.journal = FakeJournal(self.producer, self.reader)
        self.reader.journal_entries = lambda: [row["entry"] for row in self.journal.rows.values()]

    async def backends(self, app: web.Application) -> AsyncIterator[None]:
        gateway = app[GATEWAY]
        gateway.reader = self.reader
        gateway.router = ShardRouter(2, 2)
        gateway.quotes = self.quotes
        gateway.redis = FakeRedis()
        gateway.producer = self.producer
        gateway.limiter = self.limiter
        gateway.idempotency = self.idempotency
        gateway.journal = self.journal
        gateway.hub = StreamHub()
        gateway.clock = lambda: NOW
        self.producer.deliver = gateway.replies.deliver
        self.gateway = gateway
        yield
