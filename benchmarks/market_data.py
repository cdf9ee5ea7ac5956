"""Market-data read path benchmark; prints one JSON object.

1. Ingest: N synthetic quotes generated, validated and produced as fast as possible (the
   connector's own generator, validation and drive loop, with a plain producer) while the
   market-data topology (its own process) consumes them into Redis and candles. The rate is N
   over the time from the first produce until Redis holds every symbol's last quote.
   Denominator, measured in the same run: N pre-encoded records produced as fast as possible
   while a bare consumer (its own process) reads them, no decoding.
   CPU per quote over the same window (user + system from /proc, all threads): the
   connector (this process, from the first produce to the flush), the market-data topology,
   and the embedded broker and Redis when this script started them (`cpu_us_per_quote`).
2. Quote age: the feed at a fixed rate for a few seconds; a sampler polls Redis and records,
   for each newly visible quote, now - venue_time (venue_time = the instant the feed made it).
   The cache is conflated, so these are the quotes that became visible, not every quote.

Usage: python benchmarks/market_data.py [--quotes N] [--rate R] [--seconds S]
                                     [--partitions P] [--processes W]
The machine is shared: the load average is printed at the start and at the end.
Starts its own broker and Redis on loopback ports (compose.embedded) unless --bootstrap and
--redis-url are given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402

from benchmarks.common import machine, process_cpu_s  # noqa: E402
from connectors.runtime import SystemClock, drive  # noqa: E402
from connectors.synthetic import SyntheticQuotes, SyntheticQuotesSettings  # noqa: E402
from state.quote_cache import QuoteCache, epoch_us  # noqa: E402
from state.topics import topic_specs  # noqa: E402
from topologies.config import KafkaSettings, MarketDataConfig  # noqa: E402

SYMBOLS = ("AAPL", "MSFT", "TSLA", "GME", "SPY", "NVDA", "AMZN", "META", "AMD", "QQQ")
SYMBOL_PARTITIONS = 2  # --partitions
PROCESSES = 1  # --processes: market-data workers in the group


def _run_topology(config: MarketDataConfig) -> None:
    from topologies.market_data import run

    run(config)


def _bare_consumer(bootstrap: str, topic: str, count: int, done_at: Any) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bare",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen = 0
    deadline = time.monotonic() + 300
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            if not message.error():
                seen += 1
    done_at.value = time.time()
    consumer.close()


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                     "queue.buffering.max.messages": 1_000_000})


def _produce_fn(producer: Producer) -> Any:
    def produce(topic: str, key: str | None, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.01)
    return produce


def bare_rate(bootstrap: str, prefix: str, count: int) -> dict[str, float]:
    """Pre-encoded records through the broker to a bare consumer process."""
    topic = prefix + "bare"
    from compose.kafka import create_topics
    from state.topics import TopicSpec

    create_topics(bootstrap, [TopicSpec(topic, SYMBOL_PARTITIONS,
                                        {"retention.ms": "-1", "retention.bytes": "-1",
                                         "cleanup.policy": "delete"})])
    feed = SyntheticQuotes(SyntheticQuotesSettings(symbols=SYMBOLS, rate_per_s=0,
                                                   quotes_max=count))
    records: list[tuple[str, bytes]] = []
    drive(feed, SystemClock(), lambda _t, k, v: records.append((k or "", v)), "x", "y",
          lambda: True, "quotes", "bench")
    done_at = multiprocessing.get_context("spawn").Value("d", 0.0)
    consumer = multiprocessing.get_context("spawn").Process(
        target=_bare_consumer, args=(bootstrap, topic, count, done_at))
    consumer.start()
    time.sleep(3.0)  # let the consumer start and assign before the clock runs
    producer = _producer(bootstrap)
    produce = _produce_fn(producer)
    started = time.time()
    for key, value in records:
        produce(topic, key, value)
    producer.flush(60)
    produced = time.time()
    consumer.join(300)
    return {"produce_per_s": count / (produced - started),
            "produce_consume_per_s": count / (done_at.value - started)}


def _start_topology(bootstrap: str, redis_url: str, prefix: str, state_dir: str,
                    ) -> multiprocessing.process.BaseProcess:
    # The topology's own defaults (a 10 s session: 3 s timed out under load on 2 cores).
    config = MarketDataConfig(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix),
        state_dir=state_dir, redis_url=redis_url, auto_offset_reset="latest",
        processes=PROCESSES)
    process = multiprocessing.get_context("spawn").Process(target=_run_topology,
                                                           args=(config,))
    process.start()
    return process


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive() and process.pid:
        os.kill(process.pid, signal.SIGTERM)
    process.join(20)
    if process.is_alive():
        process.kill()


def _wait_ready(cache: QuoteCache, bootstrap: str, prefix: str) -> None:
    """Quotes at a trickle until the topology has joined its group and writes to Redis."""
    feed = SyntheticQuotes(SyntheticQuotesSettings(symbols=("WARM",), rate_per_s=20))
    producer = _producer(bootstrap)
    deadline = time.monotonic() + 60
    stop = threading.Event()

    def running() -> bool:
        return not stop.is_set() and time.monotonic() < deadline

    thread = threading.Thread(target=drive, args=(
        feed, SystemClock(), _produce_fn(producer), prefix + "quotes", prefix + "dlq.quotes",
        running, "quotes", "warm"), daemon=True)
    thread.start()
    while cache.get("WARM") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join()
    producer.flush(10)
    if cache.get("WARM") is None:
        raise SystemExit("the topology did not start writing to Redis within 60 s")


def _cpu_marks(pids: dict[str, int]) -> dict[str, float]:
    marks = {name: process_cpu_s(pid) for name, pid in pids.items()}
    return {name: mark for name, mark in marks.items() if mark is not None}


def ingest_rate(bootstrap: str, redis_url: str, prefix: str, count: int,
                state_dir: str, server_pids: dict[str, int]) -> dict[str, Any]:
    """`server_pids`: the embedded servers to meter ({"broker": pid, "redis": pid}), if any."""
    cache = QuoteCache(redis_url, prefix)
    topology = _start_topology(bootstrap, redis_url, prefix, state_dir)
    try:
        _wait_ready(cache, bootstrap, prefix)
        feed = SyntheticQuotes(SyntheticQuotesSettings(symbols=SYMBOLS, rate_per_s=0,
                                                       quotes_max=count))
        producer = _producer(bootstrap)
        metered = {"market_data": topology.pid or 0, **server_pids}
        cpu_before = _cpu_marks(metered)
        connector_before = process_cpu_s(os.getpid()) or 0.0
        started = time.time()
        stats = drive(feed, SystemClock(), _produce_fn(producer), prefix + "quotes",
                      prefix + "dlq.quotes", lambda: True, "quotes", "bench")
        producer.flush(60)
        produced = time.time()
        connector_cpu_s = (process_cpu_s(os.getpid()) or 0.0) - connector_before
        # The feed's last quote per symbol was made just before `produced`: wait until Redis
        # holds a quote of every symbol at least that recent.
        cutoff_us = epoch_us(dt.datetime.fromtimestamp(produced, dt.UTC)) - 50_000
        last_us = {symbol: cutoff_us for symbol in SYMBOLS}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            times = cache.venue_times_us()
            if all(times.get(symbol, 0) >= want for symbol, want in last_us.items()):
                break
            time.sleep(0.01)
        finished = time.time()
        cpu_after = _cpu_marks(metered)
        cpu_s = {"connector": connector_cpu_s,
                 **{name: cpu_after[name] - cpu_before[name]
                    for name in cpu_before if name in cpu_after}}
        return {"quotes": stats.published, "produce_per_s": count / (produced - started),
                "ingest_to_redis_per_s": count / (finished - started),
                "cpu_us_per_quote": {name: round(seconds * 1e6 / count, 2)
                                     for name, seconds in cpu_s.items()}}
    finally:
        _stop(topology)
        cache.clear()
        cache.close()


def quote_age(bootstrap: str, redis_url: str, prefix: str, rate: float, seconds: float,
              state_dir: str) -> dict[str, float]:
    cache = QuoteCache(redis_url, prefix)
    topology = _start_topology(bootstrap, redis_url, prefix, state_dir)
    try:
        _wait_ready(cache, bootstrap, prefix)
        feed = SyntheticQuotes(SyntheticQuotesSettings(symbols=SYMBOLS, rate_per_s=rate,
                                                       quotes_max=int(rate * seconds)))
        producer = _producer(bootstrap)
        ages_ms: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            seen: dict[str, int] = {}
            while not stop.is_set():
                times = cache.venue_times_us()
                now_us = epoch_us(dt.datetime.now(dt.UTC))
                for symbol, venue_us in times.items():
                    if symbol in SYMBOLS and seen.get(symbol) != venue_us:
                        seen[symbol] = venue_us
                        ages_ms.append((now_us - venue_us) / 1000)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        stats = drive(feed, SystemClock(), _produce_fn(producer), prefix + "quotes",
                      prefix + "dlq.quotes", lambda: True, "quotes", "bench")
        producer.flush(30)
        achieved = stats.published / (time.monotonic() - started)
        time.sleep(1.0)
        stop.set()
        sampler.join()
        ordered = sorted(ages_ms[len(SYMBOLS):])  # the first sighting may predate the run
        return {
            "rate_target_per_s": rate, "rate_achieved_per_s": achieved,
            "samples": len(ordered),
            "p50_ms": statistics.median(ordered) if ordered else -1,
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1] if ordered else -1,
            "max_ms": ordered[-1] if ordered else -1,
        }
    finally:
        _stop(topology)
        cache.clear()
        cache.close()


def main() -> None:
    global SYMBOL_PARTITIONS, PROCESSES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bootstrap")
    parser.add_argument("--redis-url")
    parser.add_argument("--partitions", type=int, default=SYMBOL_PARTITIONS)
    parser.add_argument("--processes", type=int, default=PROCESSES)
    args = parser.parse_args()
    SYMBOL_PARTITIONS, PROCESSES = args.partitions, args.processes
    load_at_start = os.getloadavg()[0]
    import logging

    logging.basicConfig(level=logging.WARNING)
    servers = None
    work = Path(tempfile.mkdtemp(prefix="bench-md-"))
    bootstrap, redis_url = args.bootstrap, args.redis_url
    if not bootstrap:
        from compose.embedded import free_port, start_broker, start_redis

        broker_port, redis_port = free_port(), free_port()
        servers = [start_broker(broker_port, work / "logs"),
                   start_redis(redis_port, work / "redis", work / "logs")]
        bootstrap, redis_url = f"127.0.0.1:{broker_port}", f"redis://127.0.0.1:{redis_port}/0"
    try:
        from compose.kafka import create_topics

        prefixes = [f"b{uuid.uuid4().hex[:6]}." for _ in range(2)]
        for prefix in prefixes:
            create_topics(bootstrap, topic_specs(prefix, 4, SYMBOL_PARTITIONS))
        bare = bare_rate(bootstrap, prefixes[0], args.quotes)
        server_pids = ({"broker": servers[0].popen.pid, "redis": servers[1].popen.pid}
                       if servers else {})
        ingest = ingest_rate(bootstrap, redis_url, prefixes[0], args.quotes,
                             str(work / "state-ingest"), server_pids)
        age = quote_age(bootstrap, redis_url, prefixes[1], args.rate, args.seconds,
                        str(work / "state-age"))
        print(json.dumps({
            "benchmark": "market_data", "machine": machine(),
            "load_average_1m_at_start": load_at_start,
            "symbols": len(SYMBOLS), "symbol_partitions": SYMBOL_PARTITIONS,
            "processes": PROCESSES,
            "bare": bare, "ingest": ingest,
            "ingest_over_bare": ingest["ingest_to_redis_per_s"] / bare["produce_consume_per_s"],
            "quote_age": age,
        }, indent=2))
    finally:
        for server in servers or []:
            server.stop()


if __name__ == "__main__":
    main()
