"""An account as the state store keeps it: in parts, so that a message writes what it changed.

An active account holds hundreds of idempotency records and tens of closed orders; stored as
one value (as before) every message rewrote all of it, to the store and to its changelog topic
(~150 kB a message). In parts:

- `core` (CORE_KEY): the account without `commands` and `closed_orders` (balances, open orders,
  deposits, ...), one value, written only when its bytes changed;
- two rings, one per insertion-ordered dict pruned first in first out (`commands`,
  `closed_orders`): entry n under its own key (`c/<n>`: (idempotency key, record);
  `o/<n>`: (order id, order)), the live entries n in [tail, head). An append writes one entry,
  a prune deletes from the tail, a value replaced under its key rewrites that entry; any other
  change (a key deleted from the middle, one moved) rewrites the ring, past its old head;
- `meta` (META_KEY): the rings' bounds, the account's write count and the writer's stamp,
  written on every write: the shell trusts a decoded account it keeps in memory only while the
  store's meta is exactly the one it wrote (`Stored.meta_bytes`);
- forgotten keys (`k/<idempotency key>`): the record of each idempotency key the commands ring
  dropped, written once as it is dropped and never deleted. The ring is bounded (the account
  decodes it on every read); this is not, but it is read one key at a time, only for a command
  whose key the ring does not hold, so that a key used again after the ring forgot it is still
  known (the ids of a command derive from its key: a second command under it would reuse the
  first one's order, event and transaction ids).

Pure: the shell (topologies.accounts) reads with a `get` it passes in and applies a `Plan`'s
sets and deletes. There is no iteration over a store's keys, hence the explicit bounds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, NamedTuple, TypeVar

import msgspec

from state.domain.account import AccountState, CommandRecord
from state.domain.orders import Order

META_KEY = "meta"
CORE_KEY = "core"
SINGLE_VALUE_KEY = "account"  # the whole account as one value (`state_to_bytes`), before parts
COMMANDS_PREFIX = "c/"
CLOSED_ORDERS_PREFIX = "o/"
FORGOTTEN_PREFIX = "k/"

_V = TypeVar("_V")


class Meta(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Which ring entries are live ([tail, head) each) and which write this is: `writes`
    counts the account's writes; `stamp` is the writer's, unique per write (the shell's), so
    equal meta bytes mean the same write, hence the same parts."""

    writes: int
    stamp: bytes
    commands: tuple[int, int]
    closed_orders: tuple[int, int]


class Stored(NamedTuple):
    """An account and the form the store holds it in: what the next write is computed from."""

    state: AccountState
    meta: Meta
    meta_bytes: bytes
    core_bytes: bytes


class Plan(NamedTuple):
    """What to write for a new state: `sets` then `deletes` (no key in both), and the account
    as stored once they are applied."""

    sets: list[tuple[str, bytes]]
    deletes: list[str]
    stored: Stored


class _RingChange(NamedTuple):
    bounds: tuple[int, int]
    writes: list[tuple[int, tuple[str, Any]]]  # (n, entry)
    deletes: range
    dropped: list[str]  # keys the ring held and no longer holds


_ENCODER = msgspec.msgpack.Encoder()
_META_DECODER = msgspec.msgpack.Decoder(Meta)
_CORE_DECODER = msgspec.msgpack.Decoder(AccountState)
_COMMAND_DECODER = msgspec.msgpack.Decoder(tuple[str, CommandRecord])
_CLOSED_ORDER_DECODER = msgspec.msgpack.Decoder(tuple[str, Order])
_RECORD_DECODER = msgspec.msgpack.Decoder(CommandRecord)


def command_key(n: int) -> str:
    return f"{COMMANDS_PREFIX}{n}"


def closed_order_key(n: int) -> str:
    return f"{CLOSED_ORDERS_PREFIX}{n}"


def forgotten_key(idempotency_key: str) -> str:
    return f"{FORGOTTEN_PREFIX}{idempotency_key}"


def forgotten_sets(records: dict[str, CommandRecord], keys: list[str]
                   ) -> list[tuple[str, bytes]]:
    """The writes that keep `keys` (with their records) as forgotten keys."""
    return [(forgotten_key(key), _ENCODER.encode(records[key])) for key in keys]


def core_bytes(state: AccountState) -> bytes:
    """The account without its two rings (they are stored entry by entry)."""
    return _ENCODER.encode(msgspec.structs.replace(state, commands={}, closed_orders={}))


# ---- writing ----------------------------------------------------------------------------


def plan(before: Stored | None, after: AccountState, stamp: bytes) -> Plan | None:
    """The writes that turn the store holding `before` into one holding `after`; None when
    `after` is stored as `before` is (nothing to write). `before` None: nothing is stored in
    parts yet (a new, rebuilt or single-value account), so every part is written.

    Ring values are compared by identity: `decide` shares the values it does not replace, and
    an equal value is not always equal bytes (Decimal("1.0") == Decimal("1.00"))."""
    core = core_bytes(after)
    if before is None:
        commands = _ring_change({}, after.commands, (0, 0))
        closed = _ring_change({}, after.closed_orders, (0, 0))
        writes = 1
    else:
        commands = _ring_change(before.state.commands, after.commands, before.meta.commands)
        closed = _ring_change(before.state.closed_orders, after.closed_orders,
                              before.meta.closed_orders)
        if (core == before.core_bytes and _unchanged(commands, before.meta.commands)
                and _unchanged(closed, before.meta.closed_orders)):
            return None
        writes = before.meta.writes + 1
    meta = Meta(writes=writes, stamp=stamp, commands=commands.bounds,
                closed_orders=closed.bounds)
    meta_bytes = _ENCODER.encode(meta)
    sets = [(META_KEY, meta_bytes)]
    if before is None or core != before.core_bytes:
        sets.append((CORE_KEY, core))
    sets += [(command_key(n), _ENCODER.encode(entry)) for n, entry in commands.writes]
    sets += [(closed_order_key(n), _ENCODER.encode(entry)) for n, entry in closed.writes]
    if before is not None:
        sets += forgotten_sets(before.state.commands, commands.dropped)
    deletes = [command_key(n) for n in commands.deletes]
    deletes += [closed_order_key(n) for n in closed.deletes]
    return Plan(sets, deletes, Stored(after, meta, meta_bytes, core))


def _unchanged(change: _RingChange, bounds: tuple[int, int]) -> bool:
    return not change.writes and not change.deletes and change.bounds == bounds


def _ring_change(old: dict[str, _V], new: dict[str, _V], bounds: tuple[int, int]
                 ) -> _RingChange:
    """How the ring holding `old` at `bounds` comes to hold `new`: the entries pruned from
    its front deleted, those appended written past its head, values replaced under their key
    rewritten where they are; anything else rewrites the ring."""
    tail, head = bounds
    assert head - tail == len(old), f"ring [{tail}, {head}) holds {len(old)} entries"
    pruned = 0
    for key in old:  # pruning drops from the front: this stops at the first key kept
        if key in new:
            break
        pruned += 1
    kept = len(old) - pruned
    appended = len(new) - kept
    new_keys = list(new)
    if appended < 0 or new_keys[:kept] != list(islice(old, pruned, None)):
        return _rewrite(old, new, bounds)
    new_values = list(new.values())
    old_values = islice(old.values(), pruned, None)
    writes: list[tuple[int, tuple[str, Any]]] = []
    if not all(map(operator.is_, new_values[:kept], old_values)):
        old_values = islice(old.values(), pruned, None)
        writes = [(tail + pruned + i, (new_keys[i], value)) for i, (value, was) in
                  enumerate(zip(new_values[:kept], old_values, strict=True)) if value is not was]
    writes += [(head + i, (new_keys[kept + i], new_values[kept + i])) for i in range(appended)]
    return _RingChange((tail + pruned, head + appended), writes, range(tail, tail + pruned),
                       list(islice(old, pruned)))


def _rewrite(old: dict[str, _V], new: dict[str, _V], bounds: tuple[int, int]) -> _RingChange:
    """The ring written afresh past its old head (so no entry is both written and deleted)."""
    tail, head = bounds
    writes = [(head + i, entry) for i, entry in enumerate(new.items())]
    return _RingChange((head, head + len(new)), writes, range(tail, head),
                       [key for key in old if key not in new])


# ---- reading ----------------------------------------------------------------------------


def load(meta_bytes: bytes, get: Callable[[str], bytes | None]) -> Stored:
    """The account stored in parts under `meta_bytes`, its rings in their stored order."""
    meta = _META_DECODER.decode(meta_bytes)
    core = get(CORE_KEY)
    assert core is not None, f"meta of write {meta.writes} stored without a core"
    state = _CORE_DECODER.decode(core)
    assert not state.commands and not state.closed_orders, "rings stored inside the core"
    state.commands = _ring(get, command_key, meta.commands, _COMMAND_DECODER)
    state.closed_orders = _ring(get, closed_order_key, meta.closed_orders,
                                _CLOSED_ORDER_DECODER)
    return Stored(state, meta, meta_bytes, core)


def forgotten(get: Callable[[str], bytes | None], idempotency_key: str) -> CommandRecord | None:
    """The record of a key the commands ring dropped, if it ever held it."""
    raw = get(forgotten_key(idempotency_key))
    return None if raw is None else _RECORD_DECODER.decode(raw)


def _ring(get: Callable[[str], bytes | None], key_of: Callable[[int], str],
          bounds: tuple[int, int], decoder: msgspec.msgpack.Decoder[tuple[str, _V]]
          ) -> dict[str, _V]:
    tail, head = bounds
    ring = dict(_entries(get, key_of, tail, head, decoder))
    assert len(ring) == head - tail, f"ring {key_of(tail)}..{key_of(head)} repeats a key"
    return ring


def _entries(get: Callable[[str], bytes | None], key_of: Callable[[int], str], tail: int,
             head: int, decoder: msgspec.msgpack.Decoder[tuple[str, _V]]
             ) -> Iterator[tuple[str, _V]]:
    for n in range(tail, head):
        raw = get(key_of(n))
        assert raw is not None, f"ring entry {key_of(n)} of [{tail}, {head}) missing"
        yield decoder.decode(raw)
