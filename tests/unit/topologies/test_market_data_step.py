"""The per-quote step: dead letters for bad payloads, cache offers, candle outputs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from unittest import mock

import msgspec
import pytest

from state.exceptions import StoreError
from state.messages import Candle, DeadLetter, Quote
from state.quote_cache import QuoteCache
from state.topics import Topic, decode, encode
from topologies.exceptions import TopologyError
from topologies.market_data import CANDLE, DEAD, ConflatingQuoteWriter, QuoteStep

T0 = dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC)


class FakeState:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


class ListSink:
    def __init__(self) -> None:
        self.quotes: list[Quote] = []

    def put(self, quote: Quote) -> None:
        self.quotes.append(quote)


def quote(seconds: float, symbol: str = "TSLA") -> Quote:
    return Quote(symbol=symbol, bid=Decimal("248.70"), ask=Decimal("248.74"),
                 bid_size=Decimal(300), ask_size=Decimal(200),
                 venue_time=T0 + dt.timedelta(seconds=seconds))


@pytest.fixture
def context() -> Any:
    fake = mock.Mock(partition=1, offset=42)
    with mock.patch("topologies.market_data.message_context", return_value=fake):
        yield fake


def test_malformed_payloads_become_dead_letters(context: Any) -> None:
    step = QuoteStep(ListSink(), ("1m",), "p.quotes", lambda: T0)
    for raw in (b"{not json", b'{"type":"quote","v":1}', None):
        ((kind, payload),) = step(raw, "TSLA", 0, None, FakeState())  # type: ignore[arg-type]
        assert kind == DEAD
        letter = msgspec.json.decode(payload, type=DeadLetter)
        assert (letter.source_topic, letter.partition, letter.offset) == ("p.quotes", 1, 42)
        assert letter.original == (raw or b"") and letter.key == "TSLA" and letter.error


def test_a_good_quote_goes_to_the_cache_and_closes_candles(context: Any) -> None:
    sink, state = ListSink(), FakeState()
    step = QuoteStep(sink, ("1m",), "p.quotes", lambda: T0)
    assert step(encode(quote(0)), "TSLA", 0, None, state) == []  # type: ignore[arg-type]
    ((kind, payload),) = step(encode(quote(60)), "TSLA", 0, None, state)  # type: ignore[arg-type]
    assert kind == CANDLE
    candle = decode(Topic.CANDLES, payload)
    assert isinstance(candle, Candle) and candle.start == T0 and candle.symbol == "TSLA"
    assert [q.venue_time for q in sink.quotes] == [T0, T0 + dt.timedelta(seconds=60)]


def test_unknown_intervals_are_refused() -> None:
    with pytest.raises(TopologyError, match="2m"):
        QuoteStep(ListSink(), ("1m", "2m"), "quotes", lambda: T0)


def test_the_writer_conflates_and_survives_a_redis_outage() -> None:
    cache = mock.Mock(spec=QuoteCache)
    writer = ConflatingQuoteWriter(cache, flush_interval_ms=10_000)
    for seconds in (1, 3, 2):
        writer.put(quote(seconds))
    writer.put(quote(1, "GME"))
    cache.put_many.side_effect = StoreError("down")
    writer.flush()  # fails: the quotes are kept
    cache.put_many.side_effect = None
    writer.flush()
    sent = {q.symbol: q.venue_time for q in cache.put_many.call_args.args[0]}
    assert sent == {"TSLA": T0 + dt.timedelta(seconds=3), "GME": T0 + dt.timedelta(seconds=1)}
