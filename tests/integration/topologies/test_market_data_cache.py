"""The Redis side of the read path: candles for charts, and reads that degrade but never
block when Redis is down or stalled, or when the market-data topology is stopped."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compose.embedded import ChildProcess, free_port, start_redis
from state.exceptions import StoreError
from state.messages import Candle, Quote
from state.quote_cache import AsyncQuoteCache, QuoteCache

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 5, 14, 30, tzinfo=dt.UTC)
TIMEOUT_S = 0.5
# One retry of one socket timeout each, plus slack for a loaded machine.
BOUND_S = 2 * TIMEOUT_S + 1.5


def candle(minute: int, close: str = "100.00", symbol: str = "AAPL") -> Candle:
    start = T0 + dt.timedelta(minutes=minute)
    price = Decimal(close)
    return Candle(symbol=symbol, interval="1m", start=start,
                  end=start + dt.timedelta(minutes=1), open=price, high=price, low=price,
                  close=price, volume=Decimal(10), vwap=price, trades=1)


def quote(seconds: int, symbol: str = "AAPL") -> Quote:
    return Quote(symbol=symbol, bid=Decimal("100.00"), ask=Decimal("100.02"),
                 bid_size=Decimal(100), ask_size=Decimal(100),
                 venue_time=T0 + dt.timedelta(seconds=seconds))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[ChildProcess, str]]:
    """A Redis of this test's own, so stopping it leaves the shared one alone."""
    port = free_port()
    server = start_redis(port, tmp_path / "redis", tmp_path / "logs")
    try:
        yield server, f"redis://127.0.0.1:{port}/0"
    finally:
        if server.popen.poll() is None:
            os.kill(server.popen.pid, signal.SIGCONT)
        server.stop()


def test_candles_are_kept_capped_and_replaced_by_start(services: Any) -> None:
    prefix = f"c{uuid.uuid4().hex[:6]}."
    cache = QuoteCache(services.redis_url, prefix, candles_max=5)
    try:
        cache.write([quote(1)], [candle(m) for m in range(8)])
        cache.put_candles([candle(7, "101.50")])  # the open bar grew: replaced, not added
        stored = cache.candles("AAPL", "1m", 100)
        assert [c.start for c in stored] == [T0 + dt.timedelta(minutes=m) for m in range(3, 8)]
        assert stored[-1].close == Decimal("101.50")
        assert cache.candles("AAPL", "1m", 2) == stored[-2:]
        assert cache.candles("AAPL", "5m", 10) == [] and cache.candles("MSFT", "1m", 10) == []
        assert cache.get("AAPL") == quote(1)

        async def read() -> list[Candle]:
            reader = AsyncQuoteCache(services.redis_url, prefix)
            try:
                return await reader.candles("AAPL", "1m", 3)
            finally:
                await reader.close()

        assert asyncio.run(read()) == stored[-3:]
    finally:
        cache.clear()
        assert cache.candles("AAPL", "1m", 10) == []
        cache.close()


def _timed(call: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - the test inspects it
        return time.monotonic() - started, error
    return time.monotonic() - started, None


async def _async_calls(url: str) -> list[tuple[float, BaseException | None]]:
    reader = AsyncQuoteCache(url, "p.", socket_timeout_s=TIMEOUT_S)
    results: list[tuple[float, BaseException | None]] = []
    try:
        for call in (lambda: reader.get_many(["AAPL"]), lambda: reader.candles("AAPL", "1m", 5)):
            started = time.monotonic()
            try:
                await asyncio.wait_for(call(), 30)
                results.append((time.monotonic() - started, None))
            except BaseException as error:  # noqa: BLE001
                results.append((time.monotonic() - started, error))
    finally:
        await reader.close()
    return results


def _assert_bounded_failures(url: str) -> None:
    cache = QuoteCache(url, "p.", socket_timeout_s=TIMEOUT_S)
    try:
        results = [_timed(lambda: cache.get("AAPL")),
                   _timed(lambda: cache.write([quote(2)], [candle(1)])),
                   _timed(lambda: cache.candles("AAPL", "1m", 5)),
                   _timed(lambda: cache.stale_symbols(T0, 1000))]
    finally:
        cache.close()
    results += asyncio.run(_async_calls(url))
    for elapsed_s, error in results:
        assert isinstance(error, StoreError), error
        assert "quote cache" in str(error)
        assert elapsed_s < BOUND_S, elapsed_s


def test_reads_fail_fast_and_clearly_when_redis_is_down(
        redis_server: tuple[ChildProcess, str]) -> None:
    server, url = redis_server
    cache = QuoteCache(url, "p.", socket_timeout_s=TIMEOUT_S)
    cache.write([quote(1)], [candle(0)])
    cache.close()
    server.stop()
    _assert_bounded_failures(url)


def test_reads_are_bounded_when_redis_is_stalled(
        redis_server: tuple[ChildProcess, str]) -> None:
    server, url = redis_server
    os.kill(server.popen.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        _assert_bounded_failures(url)
    finally:
        os.kill(server.popen.pid, signal.SIGCONT)
    cache = QuoteCache(url, "p.", socket_timeout_s=TIMEOUT_S)
    try:
        cache.write([quote(3)], [])  # and it recovers once Redis answers again
        assert cache.get("AAPL") == quote(3)
    finally:
        cache.close()


def test_a_stopped_topology_leaves_reads_answering_with_stale_quotes(services: Any) -> None:
    """Nothing feeds the cache: reads still answer at once, and staleness is visible."""
    prefix = f"s{uuid.uuid4().hex[:6]}."
    cache = QuoteCache(services.redis_url, prefix)
    try:
        cache.write([quote(0), quote(50, "MSFT")], [])
        now = T0 + dt.timedelta(seconds=60)
        elapsed_s, error = _timed(lambda: cache.get_many(["AAPL", "MSFT", "TSLA"]))
        assert error is None and elapsed_s < 1.0
        assert sorted(cache.get_many(["AAPL", "MSFT", "TSLA"])) == ["AAPL", "MSFT"]
        assert cache.stale_symbols(now, 30_000) == {"AAPL": 60_000.0}
    finally:
        cache.clear()
        cache.close()
