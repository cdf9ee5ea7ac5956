"""Topic names, their payload families, their creation configs, and the serdes.

Every payload is JSON with `type` and `v`. `decode(topic, raw)` either returns a typed message
or raises `DecodeError` with a reason fit for the dead-letter topic `dlq.<topic>`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from state.domain.money import MAGNITUDE_DIGITS_MAX
from state.exceptions import DecodeError
from state.messages import (
    AccountEvent,
    Alert,
    Candle,
    Command,
    CommandAccepted,
    CommandRejected,
    DeadLetter,
    ExecutionReport,
    LedgerTransaction,
    MarketStatus,
    Message,
    OrderEvent,
    Quote,
    RouteCancel,
    RouteNewOrder,
    RouteReplace,
    RouteRequest,
    RouteStatusRequest,
    decimal_fields,
)

PAYLOAD_BYTES_MAX = 64 * 1024  # the broker does not enforce max.message.bytes; we do


class Topic(StrEnum):
    ORDERS_COMMANDS = "orders.commands"
    ORDERS_ROUTE = "orders.route"
    EXECUTIONS = "executions"
    ORDERS_EVENTS = "orders.events"
    LEDGER_POSTINGS = "ledger.postings"
    QUOTES = "quotes"
    MARKET_STATUS = "market.status"
    CANDLES = "candles"


ACCOUNT_KEYED = (
    Topic.ORDERS_COMMANDS,
    Topic.ORDERS_ROUTE,
    Topic.EXECUTIONS,
    Topic.ORDERS_EVENTS,
    Topic.LEDGER_POSTINGS,
)
SYMBOL_KEYED = (Topic.QUOTES, Topic.MARKET_STATUS, Topic.CANDLES)

_PAYLOAD_TYPES: dict[Topic, Any] = {
    Topic.ORDERS_COMMANDS: Command,
    Topic.ORDERS_ROUTE: RouteRequest,
    Topic.EXECUTIONS: ExecutionReport,
    Topic.ORDERS_EVENTS: AccountEvent,
    Topic.LEDGER_POSTINGS: LedgerTransaction,
    Topic.QUOTES: Quote,
    Topic.MARKET_STATUS: MarketStatus,
    Topic.CANDLES: Candle,
}
_DECODERS = {topic: msgspec.json.Decoder(kind) for topic, kind in _PAYLOAD_TYPES.items()}
_ENCODER = msgspec.json.Encoder()

_OUTPUT_TOPIC: dict[type, Topic] = {
    RouteNewOrder: Topic.ORDERS_ROUTE,
    RouteCancel: Topic.ORDERS_ROUTE,
    RouteReplace: Topic.ORDERS_ROUTE,
    RouteStatusRequest: Topic.ORDERS_ROUTE,
    OrderEvent: Topic.ORDERS_EVENTS,
    CommandAccepted: Topic.ORDERS_EVENTS,
    CommandRejected: Topic.ORDERS_EVENTS,
    Alert: Topic.ORDERS_EVENTS,
    LedgerTransaction: Topic.LEDGER_POSTINGS,
    ExecutionReport: Topic.EXECUTIONS,
    Quote: Topic.QUOTES,
    MarketStatus: Topic.MARKET_STATUS,
    Candle: Topic.CANDLES,
}


def payload_type(topic: Topic) -> Any:
    return _PAYLOAD_TYPES[topic]


def topic_for(message: Message) -> Topic:
    """The topic a message belongs on."""
    return _OUTPUT_TOPIC[type(message)]


def encode(message: Message) -> bytes:
    return _ENCODER.encode(message)


def decode(topic: Topic, raw: bytes | None) -> Any:
    """Decode a payload of `topic`, or raise DecodeError with a reason."""
    if raw is None:
        raise DecodeError("empty payload (tombstone)")
    if len(raw) > PAYLOAD_BYTES_MAX:
        raise DecodeError(f"payload of {len(raw)} bytes exceeds {PAYLOAD_BYTES_MAX}")
    try:
        message = _DECODERS[topic].decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise DecodeError(str(error)) from error
    except RecursionError as error:
        # A value nested thousands deep before the `type` tag: msgspec skips it recursively.
        # Uncaught, it stopped the reader on this record.
        raise DecodeError("JSON is malformed: nested too deeply") from error
    if topic in _EXTERNALLY_PRODUCED:
        _require_decimal_strings(message, raw)
    return message


# Topics that producers outside the project write to directly: their payloads are held to the
# letter of the contract (msgspec would also read a JSON number into a Decimal field).
_EXTERNALLY_PRODUCED = frozenset({Topic.ORDERS_COMMANDS})
_UNTYPED = msgspec.json.Decoder(dict[str, Any])


def _require_decimal_strings(message: Any, raw: bytes) -> None:
    """Money, prices and quantities are decimal strings in JSON, never numbers: a number may
    already have lost digits in the producer's float (0.1 + 0.2)."""
    names = [name for name in decimal_fields(type(message)) if getattr(message, name) is not None]
    if not names:
        return
    fields = _UNTYPED.decode(raw)
    for name in names:
        if not isinstance(fields.get(name), str):
            raise DecodeError(f"`{name}` must be a decimal string (e.g. \"10.50\"), "
                              f"not a JSON {type(fields.get(name)).__name__}")
        value = getattr(message, name)
        # "NaN", "Infinity" and "1e400" are decimal strings to msgspec: refused orders carried
        # them into the shard, and every read of the account's orders was a 500 after.
        if not value.is_finite() or (value and value.adjusted() >= MAGNITUDE_DIGITS_MAX):
            raise DecodeError(f"`{name}` must be a decimal string of a finite number below "
                              f"1e{MAGNITUDE_DIGITS_MAX} (e.g. \"10.50\"), not "
                              f"{fields[name][:40]!r}")


def dead_letter(
    topic: str, partition: int, offset: int, key: bytes | str | None, raw: bytes | None,
    error: str, now: dt.datetime,
) -> DeadLetter:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return DeadLetter(
        source_topic=topic, partition=partition, offset=offset, key=key, error=error,
        original=raw or b"", failed_at=now,
    )


def dlq_name(topic: str) -> str:
    return f"dlq.{topic}"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


_RETAIN_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
# quotes: only the newest quote per symbol matters downstream (the cache, candle state
# restored from its own changelog); an hour covers a restart of market data with room to spare,
# and 256 MiB per partition bounds a hot symbol's partition. candles: a copy of what Redis
# serves for charts; a day is enough to rebuild it.
# The embedded broker (Tansu 0.6.0 memory engine) enforces neither (its maintain() does
# nothing, DeleteRecords is todo!() and drops the connection, a topic created with
# retention.ms=1 kept every record); Apache Kafka and Redpanda do. On the embedded broker
# `brokerage up` renews the whole broker daily (compose/renewal.py), so it holds at most a day;
# see connectors/service.py LINGER_MS for what keeps the cost of a day's quotes down.
_RETAIN_QUOTES = {"retention.ms": str(3600 * 1000), "retention.bytes": str(256 * 2**20),
                  "cleanup.policy": "delete"}
_RETAIN_CANDLES = {"retention.ms": str(24 * 3600 * 1000), "retention.bytes": str(64 * 2**20),
                   "cleanup.policy": "delete"}
_COMPACTED = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "compact"}


def topic_specs(prefix: str, account_partitions: int, symbol_partitions: int) -> list[TopicSpec]:
    """Every topic the system uses, each with explicit configs: Quix reads `retention.ms` of
    input topics, and some brokers describe only the configs given at creation.
    Account-keyed topics share one partition count so the account topology can join them."""
    specs: list[TopicSpec] = []
    for topic in ACCOUNT_KEYED:
        specs.append(TopicSpec(prefix + topic, account_partitions, dict(_RETAIN_FOREVER)))
    for topic in SYMBOL_KEYED:
        config = {Topic.MARKET_STATUS: _COMPACTED, Topic.QUOTES: _RETAIN_QUOTES,
                  Topic.CANDLES: _RETAIN_CANDLES}[topic]
        specs.append(TopicSpec(prefix + topic, symbol_partitions, dict(config)))
    for spec in list(specs):
        specs.append(TopicSpec(prefix + dlq_name(spec.name.removeprefix(prefix)), 1,
                               dict(_RETAIN_FOREVER)))
    return specs
