"""What one account holds between messages, and how it is stored.

The state (`AccountState`), the records it keeps (idempotency keys, deposits, day trades), the
retention bounds `state.domain.account` prunes it to, and its stored forms. No decision lives
here: `state.domain.step` builds a decision on this state, and `state.domain.account` (with
`replace`, `pending_cancel`, `settlement`) decides.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from decimal import Decimal

import msgspec

from state import ledger_accounts as la
from state.domain.lots import SettlementLot
from state.domain.money import ZERO
from state.domain.orders import Order

IDEMPOTENCY_RETENTION = dt.timedelta(days=3)
IDEMPOTENCY_KEYS_MAX = 500
ORDER_RETENTION = dt.timedelta(days=3)
CLOSED_ORDERS_MAX = 50
DEPOSIT_RETENTION = dt.timedelta(days=60)
DEPOSITS_MAX = 1000
DAY_TRADES_RETENTION = dt.timedelta(days=14)  # covers any 5-business-day window
ORPHAN_EXECS_MAX = 1000
EXEC_IDS_PER_ORDER_MAX = 10_000
RATE_WINDOW = dt.timedelta(seconds=1)  # the per-account order rate is counted over this


class CommandRecord(msgspec.Struct, frozen=True, array_like=True):
    """An idempotency key seen: which command, a digest of its body, when it was processed
    (our clock) and submitted (the producer's clock, preserved by a replay)."""

    command_type: str
    digest: str
    seen_at: dt.datetime
    submitted_at: dt.datetime


class DepositRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Decimal
    deposited_at: dt.datetime
    returned: bool = False


class DayTrade(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    day: dt.date
    order_id: str


class AccountState(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    account_id: str
    # The user's own ledger balances: bucket (la.CASH, ...) -> asset -> amount.
    balances: dict[str, dict[str, Decimal]] = msgspec.field(default_factory=dict)
    open_orders: dict[str, Order] = msgspec.field(default_factory=dict)
    closed_orders: dict[str, Order] = msgspec.field(default_factory=dict)  # first closed first
    commands: dict[str, CommandRecord] = msgspec.field(default_factory=dict)  # by idempotency key
    deposits: dict[str, DepositRecord] = msgspec.field(default_factory=dict)  # by idempotency key
    order_times: list[dt.datetime] = msgspec.field(default_factory=list)  # recent place_orders
    filled_net: dict[str, Decimal] = msgspec.field(default_factory=dict)  # bought - sold, by symbol
    last_prices: dict[str, Decimal] = msgspec.field(default_factory=dict)  # for equity (PDT)
    bought_on: dict[str, dt.date] = msgspec.field(default_factory=dict)  # last buy fill day
    day_trades: list[DayTrade] = msgspec.field(default_factory=list)
    # executions of unknown orders: exec key -> transact_time
    orphan_execs: dict[str, dt.datetime] = msgspec.field(default_factory=dict)
    commands_forgotten_until: dt.datetime | None = None
    executions_forgotten_until: dt.datetime | None = None
    version: int = 1
    # trades not yet settled, by (trade date, clearing account, symbol): state.domain.lots
    unsettled_lots: dict[str, SettlementLot] = msgspec.field(default_factory=dict)

    @classmethod
    def empty(cls, account_id: str) -> AccountState:
        return cls(account_id=account_id)

    def balance(self, bucket: str, asset: str = la.USD) -> Decimal:
        return self.balances.get(bucket, {}).get(asset, ZERO)

    def order(self, order_id: str) -> Order | None:
        return self.open_orders.get(order_id) or self.closed_orders.get(order_id)

    def store(self, order: Order) -> None:
        """Keep the order where it belongs: open, or closed (in the order orders closed)."""
        if order.is_open:
            self.open_orders[order.order_id] = order
            return
        assert not order.reserve, f"{order.state} order {order.order_id} still holds"
        self.open_orders.pop(order.order_id, None)
        self.closed_orders[order.order_id] = order

    def clone(self) -> AccountState:
        """A copy that `decide` may change without touching the caller's state (orders and
        records are frozen, so sharing them is safe)."""
        return msgspec.structs.replace(
            self,
            balances={bucket: dict(assets) for bucket, assets in self.balances.items()},
            open_orders=dict(self.open_orders),
            closed_orders=dict(self.closed_orders),
            commands=dict(self.commands),
            deposits=dict(self.deposits),
            order_times=list(self.order_times),
            filled_net=dict(self.filled_net),
            last_prices=dict(self.last_prices),
            bought_on=dict(self.bought_on),
            day_trades=list(self.day_trades),
            orphan_execs=dict(self.orphan_execs),
            unsettled_lots=dict(self.unsettled_lots),
        )


def state_to_builtins(state: AccountState) -> dict:
    """JSON-ready builtins (Decimals and datetimes as strings) for the shell's state store."""
    data = msgspec.to_builtins(state)
    assert isinstance(data, dict)
    return data


def state_from_builtins(data: dict) -> AccountState:
    return msgspec.convert(data, AccountState)


_STATE_ENCODER = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(AccountState)


# Closed orders are most of an account's stored bytes and hardly ever change (frozen, kept for
# days): each is encoded once and its bytes reused while the same object is kept. Keyed by
# identity; the entry holds the order, so its id cannot be reused while the entry lives. The
# oldest entry goes first, from an OrderedDict: popping the front of a full plain dict scans
# the slots freed before it, tens of µs per closed order once the cache had filled.
_ENCODED_ORDERS_MAX = 50_000  # a few hundred bytes each, beside orders kept anyway
_encoded_orders: OrderedDict[int, tuple[Order, msgspec.Raw]] = OrderedDict()


def _encoded(order: Order) -> msgspec.Raw:
    entry = _encoded_orders.get(id(order))
    if entry is not None and entry[0] is order:
        return entry[1]
    raw = msgspec.Raw(_STATE_ENCODER.encode(order))
    if len(_encoded_orders) >= _ENCODED_ORDERS_MAX:
        _encoded_orders.popitem(last=False)
    _encoded_orders[id(order)] = (order, raw)
    return raw


def state_to_bytes(state: AccountState) -> bytes:
    """The compact stored form (MessagePack): an order of magnitude cheaper than builtins+JSON
    for the state store, which reads and writes the whole account on every message. The
    bytes are those of encoding `state` as it is; closed orders come pre-encoded."""
    closed = {order_id: _encoded(order) for order_id, order in state.closed_orders.items()}
    return _STATE_ENCODER.encode(msgspec.structs.replace(state, closed_orders=closed))


def state_from_bytes(raw: bytes) -> AccountState:
    return _STATE_DECODER.decode(raw)


def is_restricted(state: AccountState) -> bool:
    """Closing trades only: some cash balance of the account is negative."""
    return state.balance(la.CASH) < 0 or state.balance(la.CASH_HELD) < 0
