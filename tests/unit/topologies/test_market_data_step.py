"""The batch step: dead letters for bad payloads, the newest quote per symbol, candle outputs,
checkpoints and restores of the candle state; the Redis writer."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from unittest import mock

import msgspec
import pytest

from state.exceptions import StoreError
from state.messages import DeadLetter, Quote
from state.quote_cache import QuoteCache
from state.topics import encode
from topologies.exceptions import TopologyError
from topologies.market_data import ConflatingQuoteWriter, QuoteBatchStep

from .fakes import FakeRecord

T0 = dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC)


def quote(seconds: float, symbol: str = "TSLA") -> Quote:
    return Quote(symbol=symbol, bid=Decimal("248.70"), ask=Decimal("248.74"),
                 bid_size=Decimal(300), ask_size=Decimal(200),
                 venue_time=T0 + dt.timedelta(seconds=seconds))


def records(*quotes: Quote, first_offset: int = 0) -> list[FakeRecord]:
    return [FakeRecord(encode(q), first_offset + i, key_=q.symbol.encode())
            for i, q in enumerate(quotes)]


def test_malformed_payloads_become_dead_letters() -> None:
    step = QuoteBatchStep(("1m",), "p.quotes", lambda: T0)
    bad = [b"{not json", b'{"type":"quote","v":1}', None, b"x" * 70_000]
    out = step.process([FakeRecord(raw, 42 + i) for i, raw in enumerate(bad)])
    assert out.quotes == {} and out.closed == []
    letters = [msgspec.json.decode(payload, type=DeadLetter) for payload in out.dead_letters]
    assert [(d.source_topic, d.partition, d.offset) for d in letters] == [
        ("p.quotes", 1, 42 + i) for i in range(len(bad))]
    for letter, raw in zip(letters, bad, strict=True):
        assert letter.original == (raw or b"") and letter.key == "TSLA" and letter.error
    assert out.next_offsets == {1: 46}  # bad records are consumed, not retried


def test_a_batch_conflates_quotes_and_closes_candles() -> None:
    step = QuoteBatchStep(("1m",), "p.quotes", lambda: T0)
    out = step.process(records(quote(0), quote(30), quote(60), quote(1, "GME")))
    assert {s: q.venue_time for s, q in out.quotes.items()} == {
        "TSLA": T0 + dt.timedelta(seconds=60), "GME": T0 + dt.timedelta(seconds=1)}
    ((partition, candle),) = out.closed
    assert partition == 1 and candle.start == T0 and candle.symbol == "TSLA"
    assert out.touched == {"TSLA", "GME"}
    assert [c.start for c in step.open_candles(["TSLA"])] == [T0 + dt.timedelta(minutes=1)]


def test_a_replayed_batch_changes_nothing() -> None:
    step = QuoteBatchStep(("1m",), "p.quotes", lambda: T0)
    batch = records(quote(0), quote(30), quote(60))
    step.process(batch)
    again = step.process(batch)
    assert again.quotes == {} and again.closed == [] and again.touched == set()


def test_checkpoint_and_restore_carry_the_open_candles() -> None:
    step = QuoteBatchStep(("1m", "5m"), "p.quotes", lambda: T0)
    step.process(records(quote(0), quote(10), quote(5, "GME")))
    saved = step.checkpoint()
    assert sorted(symbol for _, symbol, _ in saved) == ["GME", "TSLA"]
    assert step.checkpoint() == []  # only what changed since

    restored = QuoteBatchStep(("1m", "5m"), "p.quotes", lambda: T0)
    for partition, symbol, raw in saved:
        restored.restore(partition, symbol, raw)
    assert restored.open_candles(["TSLA"]) == step.open_candles(["TSLA"])
    assert restored.process(records(quote(10))).quotes == {}  # already folded in
    out = restored.process(records(quote(61)))
    assert [c.start for _, c in out.closed] == [T0]
    restored.forget([1])
    assert restored.states == {}


def test_unknown_intervals_are_refused() -> None:
    with pytest.raises(TopologyError, match="2m"):
        QuoteBatchStep(("1m", "2m"), "quotes", lambda: T0)


def test_the_writer_conflates_and_survives_a_redis_outage() -> None:
    cache = mock.Mock(spec=QuoteCache)
    writer = ConflatingQuoteWriter(cache, flush_interval_ms=10_000)
    for seconds in (1, 3, 2):
        writer.put(quote(seconds))
    writer.put(quote(1, "GME"))
    step = QuoteBatchStep(("1m",), "p.quotes", lambda: T0)
    step.process(records(quote(0), quote(5)))
    writer.put_batch((), step.open_candles(["TSLA"]))
    step.process(records(quote(7), first_offset=2))
    writer.put_batch((), step.open_candles(["TSLA"]))  # replaces the same bar
    cache.write.side_effect = StoreError("down")
    writer.flush()  # fails: the quotes and candles are kept
    cache.write.side_effect = None
    writer.flush()
    quotes, candles = cache.write.call_args.args
    assert {q.symbol: q.venue_time for q in quotes} == {
        "TSLA": T0 + dt.timedelta(seconds=3), "GME": T0 + dt.timedelta(seconds=1)}
    (candle,) = candles
    assert candle.start == T0 and candle.close == Decimal("248.72")
    writer.flush()
    assert cache.write.call_count == 2  # nothing pending: no round trip
