"""What the account step writes to its state store per order; prints one JSON object.

One account through `topologies.accounts.AccountStep` with a dict for Quix's `State` (no
broker, no RocksDB): a deposit, then market buys (place_order, the market maker's `new`, its
fill) until the account's rings are full (500 idempotency records, 50 closed orders), then
`--orders` more, measured. Every write to the store is also a record of its changelog topic,
so the bytes written are what the changelog (and the in-memory broker) grows by.

The same messages go through two steps:
- `single_value`: the account stored as one value (`state_to_bytes`), as before
  `state.account_parts` (decoded accounts cached beside those bytes, as then);
- `parts`: the step as it is (a core, two rings of entries, a meta).

Figures per order (three messages): value bytes written, records written and deleted (a
delete is a changelog tombstone, a key and no value), and µs per message of the step (decode,
decide, store, encode the outputs), mean and p50/p99 over the measured messages.

Usage: python benchmarks/state_bytes.py [--orders N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import time
from contextvars import copy_context
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quixstreams.context import set_message_context  # noqa: E402
from quixstreams.models import MessageContext  # noqa: E402

from benchmarks.common import machine, percentile  # noqa: E402
from state import account_parts as parts  # noqa: E402
from state import topics as t  # noqa: E402
from state.domain.account import (  # noqa: E402
    CLOSED_ORDERS_MAX,
    IDEMPOTENCY_KEYS_MAX,
    AccountState,
    RiskLimits,
    check_invariants,
    state_from_bytes,
    state_to_bytes,
)
from state.ids import cl_ord_id_for, order_id_for  # noqa: E402
from state.messages import (  # noqa: E402
    Deposit,
    ExecType,
    ExecutionReport,
    Message,
    OrderType,
    PlaceOrder,
    Side,
)
from topologies.accounts import AccountStep, StateCache, _Loaded  # noqa: E402

PREFIX = "bench."
ACCOUNT = "acc_bench_state_bytes"
T0 = dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC)
LIMITS = RiskLimits(notional_usd_max=Decimal("1e12"), quantity_max=Decimal("1e6"),
                    order_rate_per_s_max=1_000_000)
ORDER_SPACING = dt.timedelta(seconds=1)  # 500 orders stay well within the 3-day retentions


class DictState:
    """Quix's `State` of one record key: a dict of its stored values (bytes stay bytes, as the
    account topology's store dumps them), noting what each call wrote. The unit tests of the
    account step use it too."""

    def __init__(self, store: dict[str, bytes] | None = None) -> None:
        self.store: dict[str, bytes] = {} if store is None else store
        self.sets: list[tuple[str, bytes]] = []
        self.deletes: list[str] = []

    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        return self.store.get(key, default)

    def set(self, key: str, value: bytes) -> None:
        assert isinstance(value, bytes), f"{key}: {type(value)} stored"
        self.store[key] = value
        self.sets.append((key, value))

    def delete(self, key: str) -> None:
        self.store.pop(key, None)
        self.deletes.append(key)

    def exists(self, key: str) -> bool:
        return key in self.store


class SingleValueStep(AccountStep):
    """The step as it stored an account before parts: the whole account as one value, the
    decoded account cached beside exactly those bytes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._single: StateCache[AccountState] = StateCache(2048)

    def _load(self, account_id: str, state: Any, now: dt.datetime) -> _Loaded | None:
        raw = state.get(parts.SINGLE_VALUE_KEY)
        if raw is None:
            return _Loaded(AccountState.empty(account_id), None, single_value=True)
        account = self._single.get(account_id, raw)
        if account is None:
            account = state_from_bytes(raw)
            check_invariants(account)
        return _Loaded(account, None, single_value=True)

    def _store(self, account_id: str, state: Any, loaded: _Loaded,
               account: AccountState) -> None:
        raw = state_to_bytes(account)
        state.set(parts.SINGLE_VALUE_KEY, raw)
        self._single.put(account_id, raw, account)


def _uuid(text: str) -> str:
    """A UUID-shaped id, as clients send (the stored keys are that long)."""
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def order_messages(n: int, at: dt.datetime) -> list[tuple[Message, dt.datetime]]:
    """A market buy, its acknowledgement and its fill, each with its record time."""
    key = _uuid(f"order-{n}")
    order_id = order_id_for(ACCOUNT, key)
    place = PlaceOrder(account_id=ACCOUNT, idempotency_key=key, symbol="AAPL", side=Side.BUY,
                       order_type=OrderType.MARKET, quantity=Decimal(1), submitted_at=at,
                       reference_price=Decimal("187.23"), reference_time=at,
                       time_in_force="day")  # type: ignore[arg-type]

    def report(exec_type: ExecType, qty: str, later: dt.datetime) -> ExecutionReport:
        return ExecutionReport(
            account_id=ACCOUNT, exec_id=_uuid(f"exec-{n}-{exec_type}"), order_id=order_id,
            cl_ord_id=cl_ord_id_for(order_id), exec_type=exec_type, symbol="AAPL",
            side=Side.BUY, last_qty=Decimal(qty), last_px=Decimal("187.25") if qty != "0"
            else Decimal(0), cum_qty=Decimal(qty), leaves_qty=Decimal(1) - Decimal(qty),
            transact_time=later, market_maker="mm_citadel")

    new_at, fill_at = at + dt.timedelta(milliseconds=5), at + dt.timedelta(milliseconds=40)
    return [(place, at), (report(ExecType.NEW, "0", new_at), new_at),
            (report(ExecType.TRADE, "1", fill_at), fill_at)]


def workload(orders_before: int, orders: int) -> list[tuple[Message, dt.datetime]]:
    messages: list[tuple[Message, dt.datetime]] = [(Deposit(
        account_id=ACCOUNT, idempotency_key=_uuid("deposit"), amount=Decimal("10000000.00"),
        submitted_at=T0), T0)]
    for n in range(orders_before + orders):
        messages += order_messages(n, T0 + (n + 1) * ORDER_SPACING)
    return messages


def _run(step: AccountStep, state: Any, message: Message, at: dt.datetime) -> float:
    """The step on one record of `message`; the µs it took."""
    topic = t.Topic.EXECUTIONS if isinstance(message, ExecutionReport) else t.Topic.ORDERS_COMMANDS
    context = copy_context()
    context.run(set_message_context, MessageContext(PREFIX + topic, 0, 0, 0))
    raw, at_ms = t.encode(message), int(at.timestamp() * 1000)
    started = time.perf_counter_ns()
    context.run(step, raw, ACCOUNT, at_ms, None, state)
    return (time.perf_counter_ns() - started) / 1000


def measure(step: AccountStep, messages: list[tuple[Message, dt.datetime]], warm: int,
            orders: int) -> dict[str, Any]:
    state = DictState()
    for message, at in messages[:warm]:
        _run(step, state, message, at)
    sets_before, deletes_before = len(state.sets), len(state.deletes)
    micros = [_run(step, state, message, at) for message, at in messages[warm:]]
    measured_sets = state.sets[sets_before:]
    value_bytes = sum(len(value) for _, value in measured_sets)
    sets, deletes = len(measured_sets), len(state.deletes) - deletes_before
    return {
        "bytes_per_order": round(value_bytes / orders),
        "records_written_per_order": round(sets / orders, 2),
        "records_deleted_per_order": round(deletes / orders, 2),
        "us_per_message": round(sum(micros) / len(micros), 1),
        "us_per_message_p50": round(percentile(micros, 0.5), 1),
        "us_per_message_p99": round(percentile(micros, 0.99), 1),
        "stored_bytes": sum(len(value) for value in state.store.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=300, help="orders measured")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each step; the fastest run's µs are reported")
    args = parser.parse_args()
    # each order adds one idempotency record and one closed order: fill the larger ring
    orders_before = max(IDEMPOTENCY_KEYS_MAX, CLOSED_ORDERS_MAX)
    messages = workload(orders_before, args.orders)
    warm = 1 + 3 * orders_before
    results: dict[str, Any] = {"benchmark": "state_bytes", "machine": machine(),
                               "orders": args.orders, "messages_per_order": 3,
                               "commands_kept": IDEMPOTENCY_KEYS_MAX,
                               "closed_orders_kept": CLOSED_ORDERS_MAX}
    for name, kind in (("single_value", SingleValueStep), ("parts", AccountStep)):
        runs = [measure(kind(PREFIX, None, LIMITS), messages, warm, args.orders)
                for _ in range(args.repeat)]
        results[name] = min(runs, key=lambda run: run["us_per_message"])
    results["bytes_per_order_ratio"] = round(
        results["single_value"]["bytes_per_order"] / results["parts"]["bytes_per_order"], 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
