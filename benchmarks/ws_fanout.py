"""WebSocket quote fan-out benchmark for the HTTP gateway; prints one JSON object.

The gateway (`gateways.http.service.run`) runs in its own process on the embedded broker,
PostgreSQL shards and Redis. A producer process writes quotes for --symbols symbols to the
`quotes` topic at --rate per second, each stamped with venue_time = now. Load-generator
processes open --clients WebSocket connections (aiohttp), authenticate, and subscribe each to
--per-client symbols (spread evenly: every symbol has clients * per_client / symbols watchers).

Measured over --seconds once every client is subscribed:
- delivered quote updates/s (frames received by all clients) and quotes read by the gateway/s;
- quote age at delivery = receive time - venue_time (p50/p99/max; same machine clock);
- gateway memory per connection = (RSS with the clients connected - RSS before) / clients.

Usage: python benchmarks/ws_fanout.py [--clients N] [--symbols S] [--rate R] [--seconds T]
Every loop is bounded in count and time; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

import msgspec  # noqa: E402

from benchmarks.common import machine  # noqa: E402

SHARDS = 2
PARTITIONS_PER_SHARD = 2
SYMBOL_PARTITIONS = 4
AGE_BUCKETS_MS = 60_000  # ages are counted per millisecond up to a minute
CONNECTS_IN_FLIGHT_MAX = 100
START_TIMEOUT_S = 120.0


def _raise_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _symbols(count: int) -> list[str]:
    return [f"S{index:03d}" for index in range(count)]


# ---- the gateway ---------------------------------------------------------------------------


def _serve(config_json: bytes, open_files: int) -> None:
    from gateways.http.config import HttpConfig
    from gateways.http.service import run

    _raise_open_files(open_files)
    run(msgspec.json.decode(config_json, type=HttpConfig))


# ---- the quote producer --------------------------------------------------------------------


def _produce(bootstrap: str, topic: str, symbols: list[str], rate_per_s: int,
             stop: Any, seconds_max: float, report: Any) -> None:
    """Quotes at `rate_per_s`, in 5 ms ticks, until `stop` is set or `seconds_max` passes."""
    from confluent_kafka import Producer

    from state import topics as t
    from state.messages import Quote

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 500000,
                         "compression.type": "none", "acks": 1})
    rng = random.Random(7)
    mids = {symbol: Decimal(rng.randint(2000, 50000)) / 100 for symbol in symbols}
    tick_s = 0.005
    started = time.monotonic()
    produced = 0
    full = 0
    index = 0
    while not stop.is_set() and time.monotonic() - started < seconds_max:
        due = int((time.monotonic() - started) * rate_per_s) - produced
        now = dt.datetime.now(dt.UTC)
        for _ in range(max(0, min(due, rate_per_s))):
            symbol = symbols[index % len(symbols)]
            index += 1
            mid = mids[symbol] + Decimal(rng.randint(-50, 50)) / 100
            quote = Quote(symbol=symbol, bid=mid, ask=mid + Decimal("0.01"),
                          bid_size=Decimal(100), ask_size=Decimal(200), venue_time=now)
            try:
                producer.produce(topic, key=symbol.encode(), value=t.encode(quote))
            except BufferError:
                full += 1
                producer.poll(0.01)
                continue
            produced += 1
        producer.poll(0)
        time.sleep(tick_s)
    elapsed = time.monotonic() - started
    producer.flush(10)
    report.put({"produced": produced, "seconds": round(elapsed, 2),
                "rate_per_s": round(produced / elapsed, 1), "queue_full": full})


# ---- the WebSocket clients -----------------------------------------------------------------


class _QuoteBody(msgspec.Struct):
    venue_time: dt.datetime


class _Frame(msgspec.Struct):
    type: str
    quote: _QuoteBody | None = None


def _clients(url: str, secret: str, first: int, count: int, symbols: list[str],
             per_client: int, window: Any, stop: Any, ready: Any, report: Any,
             open_files: int, seconds_max: float) -> None:
    _raise_open_files(open_files)
    asyncio.run(_client_main(url, secret, first, count, symbols, per_client, window, stop,
                             ready, report, seconds_max))


async def _client_main(url: str, secret: str, first: int, count: int, symbols: list[str],
                       per_client: int, window: Any, stop: Any, ready: Any, report: Any,
                       seconds_max: float) -> None:
    import aiohttp

    from gateways.http.auth import issue_token

    decoder = msgspec.json.Decoder(_Frame)
    ages = [0] * (AGE_BUCKETS_MS + 1)
    stats = {"updates": 0, "updates_in_window": 0, "errors": 0, "closed": 0, "subscribed": 0,
             "connect_failures": 0}
    deadline = time.monotonic() + seconds_max
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT_MAX)
    subscribed = asyncio.Event()
    remaining = [count]

    def counted() -> None:
        stats["subscribed"] += 1
        remaining[0] -= 1
        if remaining[0] == 0:
            subscribed.set()

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        watched = [symbols[(index * per_client + j) % len(symbols)] for j in range(per_client)]
        token = issue_token(secret, f"ws-bench-{index}", int(time.time()), 3600)
        try:
            async with gate:
                ws = await session.ws_connect(url, heartbeat=None, autoping=True,
                                              max_msg_size=0)
                await ws.send_str(json.dumps({"op": "auth", "token": token}))
                await ws.send_str(json.dumps({"op": "subscribe", "quotes": watched}))
        except (TimeoutError, aiohttp.ClientError, OSError):
            stats["connect_failures"] += 1
            counted()
            return
        is_subscribed = False
        try:
            while True:  # ends when the watcher cancels this task (stop or deadline)
                message = await ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    stats["closed"] += 1
                    code = f"close_{ws.close_code}"
                    stats[code] = stats.get(code, 0) + 1
                    break
                received = time.time()
                parsed = decoder.decode(message.data)
                if parsed.quote is not None:
                    stats["updates"] += 1
                    start, end = window[0], window[1]
                    if start and start <= received and (not end or received <= end):
                        stats["updates_in_window"] += 1
                        age_ms = int((received - parsed.quote.venue_time.timestamp()) * 1000)
                        ages[min(AGE_BUCKETS_MS, max(0, age_ms))] += 1
                elif parsed.type == "subscribed" and not is_subscribed:
                    is_subscribed = True
                    counted()
                elif parsed.type == "error":
                    stats["errors"] += 1
        finally:
            if not is_subscribed:
                counted()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    async def watch(tasks: list[asyncio.Task[None]]) -> None:
        while time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(client(session, first + i)) for i in range(count)]
        watcher = asyncio.create_task(watch(tasks))
        try:
            await asyncio.wait_for(subscribed.wait(), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
        ready.put(stats["subscribed"] - stats["connect_failures"])
        await asyncio.gather(*tasks, return_exceptions=True)
        await watcher
    report.put({"stats": stats, "ages": {i: n for i, n in enumerate(ages) if n}})


# ---- the run -------------------------------------------------------------------------------


def _metric(base: str, name: str, label: str = "") -> float:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name) and label in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_healthy(base: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError("gateway did not become healthy")


def _age_percentiles(ages: dict[int, int]) -> dict[str, float | None]:
    total = sum(ages.values())
    if not total:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(ages.items())
    result: dict[str, float | None] = {}
    for name, fraction in (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99)):
        rank = max(1, round(fraction * total))
        seen = 0
        for age, n in ordered:
            seen += n
            if seen >= rank:
                result[name] = age
                break
    result["max_ms"] = ordered[-1][0]
    return result


def _profile(pid: int, output: str | None, seconds: float) -> Any:
    """py-spy on the gateway during the measured window (collapsed stacks), if asked."""
    import subprocess

    if not output:
        return None
    return subprocess.Popen(
        [shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--duration",
         str(int(seconds)), "--rate", "200", "--format", "raw", "--nonblocking", "--output",
         output], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(process: Any, timeout_s: float = 15.0) -> None:
    if process.is_alive():
        os.kill(process.pid, signal.SIGTERM)
        process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from compose.embedded import free_port, start_embedded_servers
    from compose.kafka import create_topics
    from gateways.http.config import HttpConfig
    from state.shard_store import migrate
    from state.topics import Topic, topic_specs

    open_files = _raise_open_files(args.clients + 2048)
    context = multiprocessing.get_context("spawn")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    servers = start_embedded_servers(data_dir, SHARDS)
    processes: list[Any] = []
    stop = context.Event()
    try:
        prefix = f"w{uuid.uuid4().hex[:6]}."
        create_topics(servers.bootstrap_servers,
                      topic_specs(prefix, SHARDS * PARTITIONS_PER_SHARD, SYMBOL_PARTITIONS))
        for dsn in servers.shard_dsns:
            migrate(dsn)
        config = HttpConfig(
            port=free_port(), bootstrap_servers=servers.bootstrap_servers, topic_prefix=prefix,
            shard_dsns=tuple(servers.shard_dsns), partitions_per_shard=PARTITIONS_PER_SHARD,
            redis_url=servers.redis_url, redis_key_prefix=prefix, token_secret="bench-ws")
        gateway = context.Process(target=_serve, daemon=True,
                                  args=(msgspec.json.encode(config), open_files))
        gateway.start()
        processes.append(gateway)
        base = f"http://127.0.0.1:{config.port}"
        _wait_healthy(base, 60)
        assert gateway.pid is not None
        gateway_process = psutil.Process(gateway.pid)

        symbols = _symbols(args.symbols)
        bound_s = args.seconds + START_TIMEOUT_S + 30
        reports = context.Queue()
        producer = context.Process(target=_produce, daemon=True, args=(
            servers.bootstrap_servers, prefix + Topic.QUOTES, symbols, args.rate, stop,
            bound_s, reports))
        producer.start()
        processes.append(producer)
        time.sleep(3)  # the gateway's quote path warm before the baseline
        rss_before = gateway_process.memory_info().rss

        window = context.Array("d", 2, lock=False)
        ready = context.Queue()
        url = base.replace("http", "ws", 1) + "/v1/stream"
        per_process = -(-args.clients // args.loadgens)
        connect_started = time.monotonic()
        for number in range(args.loadgens):
            first = number * per_process
            count = min(per_process, args.clients - first)
            loadgen = context.Process(target=_clients, daemon=True, args=(
                url, config.token_secret, first, count, symbols, args.per_client, window, stop,
                ready, reports, open_files, bound_s))
            loadgen.start()
            processes.append(loadgen)
        subscribed = sum(ready.get(timeout=START_TIMEOUT_S + 10) for _ in range(args.loadgens))
        connect_s = time.monotonic() - connect_started
        time.sleep(2)  # the snapshots and the first fan-out after subscribing settle
        rss_connected = gateway_process.memory_info().rss
        connections = _metric(base, "gateway_ws_connections")

        profiler = _profile(gateway.pid, args.profile, args.seconds)
        cpu_before = gateway_process.cpu_times()
        received_before = _metric(base, "gateway_quotes_received_total")
        sent_before = _metric(base, "gateway_ws_messages_sent_total", 'kind="quote"')
        window[0] = time.time()
        time.sleep(args.seconds)
        window[1] = time.time()
        received_after = _metric(base, "gateway_quotes_received_total")
        sent_after = _metric(base, "gateway_ws_messages_sent_total", 'kind="quote"')
        cpu_after = gateway_process.cpu_times()
        rss_end = gateway_process.memory_info().rss
        if profiler is not None:
            profiler.wait(args.seconds + 30)
        measured_s = window[1] - window[0]

        stop.set()
        results = [reports.get(timeout=60) for _ in range(args.loadgens + 1)]
        produced = next(r for r in results if "produced" in r)
        clients = [r for r in results if "stats" in r]
        ages: dict[int, int] = {}
        totals: dict[str, int] = {}
        for result in clients:
            for age, n in result["ages"].items():
                ages[int(age)] = ages.get(int(age), 0) + n
            for name, value in result["stats"].items():
                totals[name] = totals.get(name, 0) + value
        gateway_cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        per_connection_connected = (rss_connected - rss_before) / max(1, args.clients)
        per_connection_end = (rss_end - rss_before) / max(1, args.clients)
        return {
            "benchmark": "ws_fanout", "machine": machine(),
            "setup": {
                "clients": args.clients, "loadgen_processes": args.loadgens,
                "symbols": args.symbols, "symbols_per_client": args.per_client,
                "watchers_per_symbol": args.clients * args.per_client // args.symbols,
                "quote_rate_per_s_target": args.rate, "measured_s": round(measured_s, 2),
                "gateway_processes": 1, "symbol_partitions": SYMBOL_PARTITIONS,
                "note": "gateway, broker, Redis, 2 PostgreSQL shards, the quote producer and "
                        "the load generators share this machine, which other engineers' "
                        "benchmarks share too: see machine.load_average_1m"},
            "connect": {"subscribed_clients": subscribed, "seconds": round(connect_s, 1),
                        "gateway_connections": connections,
                        "connect_failures": totals.get("connect_failures", 0),
                        "closed_early": totals.get("closed", 0),
                        "close_codes": {k: v for k, v in totals.items()
                                        if k.startswith("close_")},
                        "error_frames": totals.get("errors", 0)},
            "producer": produced,
            "gateway": {
                "quotes_read_per_s": round((received_after - received_before) / measured_s, 1),
                "quote_frames_sent_per_s": round((sent_after - sent_before) / measured_s, 1),
                "cpu_percent": round(100 * gateway_cpu_s / measured_s, 1),
                "rss_before_mb": round(rss_before / 2**20, 1),
                "rss_connected_mb": round(rss_connected / 2**20, 1),
                "rss_end_mb": round(rss_end / 2**20, 1),
                "kb_per_connection_connected": round(per_connection_connected / 1024, 1),
                "kb_per_connection_end": round(per_connection_end / 1024, 1)},
            "delivered": {
                "updates_per_s": round(totals.get("updates_in_window", 0) / measured_s, 1),
                "updates_in_window": totals.get("updates_in_window", 0),
                "quote_age_ms": _age_percentiles(ages)},
            "targets": {"p99_age_ms_max": 500, "kb_per_connection_max": 50},
        }
    finally:
        stop.set()
        for process in reversed(processes):
            _stop(process)
        servers.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=3, help="symbols per client")
    parser.add_argument("--rate", type=int, default=20000, help="quotes per second produced")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--loadgens", type=int, default=2, help="load-generator processes")
    parser.add_argument("--profile", metavar="PATH",
                        help="py-spy the gateway during the window (collapsed stacks to PATH)")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
