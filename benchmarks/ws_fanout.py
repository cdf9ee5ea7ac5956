"""WebSocket quote fan-out benchmark for the HTTP gateway; prints one JSON object.

The gateway (`gateways.http.service.run`) runs in its own process on the embedded broker,
PostgreSQL shards and Redis. A producer process writes quotes for --symbols symbols to the
`quotes` topic at --rate per second, each stamped with venue_time = now. Load-generator
processes open --clients WebSocket connections (a bare asyncio protocol client on uvloop when
it is installed: cheap per frame, so the clients take less of the cores the gateway needs),
authenticate, and subscribe each to --per-client symbols (spread evenly: every symbol has
clients * per_client / symbols watchers). Every frame received is parsed; every quote frame's
venue_time is decoded and its age counted.

Measured over --seconds once every client is subscribed:
- delivered quote updates/s (frames received by all clients) and quotes read by the gateway/s;
- quote age at delivery = receive time - venue_time (p50/p99/max; same machine clock);
- gateway memory per connection = (RSS with the clients connected - RSS before) / clients;
- CPU seconds over the window of the gateway (and of its event-loop thread), the load
  generators, the producer and each embedded server, and the gateway's and the load
  generators' CPU microseconds per delivered update: wall-clock figures depend on who else
  shares the cores, CPU per update much less.

Usage: python benchmarks/ws_fanout.py [--clients N] [--symbols S] [--rate R] [--seconds T]
Every loop is bounded in count and time; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from typing import Any, cast

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
    # Each payload is t.encode(Quote(...)) with venue_time = now; encoded ahead per symbol and
    # price step with a placeholder time that each tick's time replaces, so the producer costs
    # the shared cores little (the same bytes as encoding each quote, a fraction of the CPU).
    rng = random.Random(7)
    placeholder = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    stamp = msgspec.json.encode(placeholder)
    keys = {symbol: symbol.encode() for symbol in symbols}
    variants: dict[str, list[tuple[bytes, bytes]]] = {}
    for symbol in symbols:
        mid = Decimal(rng.randint(2000, 50000)) / 100
        variants[symbol] = []
        for step in range(-50, 51):
            bid = mid + Decimal(step) / 100
            head, tail = t.encode(Quote(
                symbol=symbol, bid=bid, ask=bid + Decimal("0.01"), bid_size=Decimal(100),
                ask_size=Decimal(200), venue_time=placeholder)).split(stamp)
            variants[symbol].append((head, tail))
    tick_s = 0.005
    started = time.monotonic()
    produced = 0
    full = 0
    index = 0
    while not stop.is_set() and time.monotonic() - started < seconds_max:
        due = int((time.monotonic() - started) * rate_per_s) - produced
        now = msgspec.json.encode(dt.datetime.now(dt.UTC))
        for _ in range(max(0, min(due, rate_per_s))):
            symbol = symbols[index % len(symbols)]
            index += 1
            head, tail = variants[symbol][rng.randrange(101)]
            try:
                producer.produce(topic, key=keys[symbol], value=head + now + tail)
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
             open_files: int, seconds_max: float, client_loop: str) -> None:
    _raise_open_files(open_files)
    main = _client_main(url, secret, first, count, symbols, per_client, window, stop, ready,
                        report, seconds_max)
    uvloop = _client_loop() if client_loop == "uvloop" else None
    if uvloop is None:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _client_loop() -> Any:
    """uvloop for the load generators when it is installed (about half the CPU per frame
    received, so the clients take less of the cores the gateway needs), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (RFC 6455 5.3: clients mask every frame)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return header + mask + masked


class _Tally:
    """One load generator's counts, shared by its connections."""

    def __init__(self, count: int, window: Any) -> None:
        self.decoder = msgspec.json.Decoder(_Frame)
        self.window = window
        self.ages = [0] * (AGE_BUCKETS_MS + 1)
        self.stats = {"updates": 0, "updates_in_window": 0, "frames": 0, "errors": 0,
                      "closed": 0, "subscribed": 0, "connect_failures": 0, "protocol_errors": 0}
        self.remaining = count
        self.all_subscribed = asyncio.Event()
        self.stopping = False

    def counted(self, subscribed: bool) -> None:
        self.stats["subscribed" if subscribed else "connect_failures"] += 1
        self.remaining -= 1
        if self.remaining == 0:
            self.all_subscribed.set()


class _StreamClient(asyncio.Protocol):
    """A WebSocket client on a bare asyncio protocol: the upgrade, auth, subscribe, then every
    frame parsed and every quote frame counted and aged (decoded with msgspec, as before). Much
    cheaper per frame than aiohttp's client (no task, queue and message object per frame), so
    the load generators share less of the machine's CPU with the gateway they measure."""

    def __init__(self, tally: _Tally, host: str, path: str, token: str,
                 watched: list[str]) -> None:
        self.tally = tally
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"
                        "\r\n\r\n").encode()
        self.hello = (_masked_frame(0x1, json.dumps({"op": "auth", "token": token}).encode())
                      + _masked_frame(0x1, json.dumps({"op": "subscribe",
                                                        "quotes": watched}).encode()))
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.is_subscribed = False
        self.close_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)  # connect() counts the failure
            return
        if self.upgraded.cancelled() or not self.upgraded.result():
            return  # connect() counts the failure
        if not self.tally.stopping and not self.close_seen:
            self.tally.stats["closed"] += 1
            self.tally.stats["close_none"] = self.tally.stats.get("close_none", 0) + 1
        if not self.is_subscribed:
            self.is_subscribed = True  # counted once, as a failure
            self.tally.counted(False)

    def data_received(self, data: bytes) -> None:
        received = time.time()  # when this process sees the bytes: the age includes our lag
        if self.buffer:
            self.buffer += data
            data = bytes(self.buffer)
            self.buffer.clear()
        if not self.upgraded.done():
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer += data
                return
            ok = data.startswith(b"HTTP/1.1 101")
            data = data[end + 4:]
            self.upgraded.set_result(ok)
            assert self.transport is not None
            if not ok:
                self.transport.close()
                return
            self.transport.write(self.hello)
        used = self._frames(data, received)
        if used < len(data):
            self.buffer += data[used:]

    def _frames(self, data: bytes, received: float) -> int:
        """Handle the whole frames in `data`; how many bytes they took. Every text frame is
        decoded (msgspec, venue_time parsed); a quote's age is counted once in the window."""
        tally = self.tally
        start_s, end_s = tally.window[0], tally.window[1]
        in_window = bool(start_s) and start_s <= received and (not end_s or received <= end_s)
        decode = tally.decoder.decode
        ages = tally.ages
        size = len(data)
        position = quotes = frames = 0
        with memoryview(data) as view:
            while size - position >= 2:
                first, length = data[position], data[position + 1] & 0x7F
                start = position + 2
                if length == 126:
                    length = (data[start] << 8) | data[start + 1]
                    start += 2
                elif length == 127:
                    length = int.from_bytes(data[start:start + 8], "big")
                    start += 8
                end = start + length
                if end > size:
                    break
                position = end
                if first != 0x81:  # not a whole text frame
                    self._control(first, bytes(view[start:end]))
                    continue
                frames += 1
                parsed = decode(view[start:end])
                quote = parsed.quote
                if quote is None:
                    self._message(parsed.type)
                    continue
                quotes += 1
                if in_window:
                    age_ms = int((received - quote.venue_time.timestamp()) * 1000)
                    ages[min(AGE_BUCKETS_MS, max(0, age_ms))] += 1
        stats = tally.stats
        stats["frames"] += frames
        stats["updates"] += quotes
        if in_window:
            stats["updates_in_window"] += quotes
        return position

    def _message(self, kind: str) -> None:
        if kind == "subscribed" and not self.is_subscribed:
            self.is_subscribed = True
            self.tally.counted(True)
        elif kind == "error":
            self.tally.stats["errors"] += 1

    def _control(self, first: int, payload: bytes) -> None:
        tally = self.tally
        opcode = first & 0x0F
        assert self.transport is not None
        if opcode == 0x9:  # ping: pong with its payload, as aiohttp's autoping did
            self.transport.write(_masked_frame(0xA, payload))
        elif opcode == 0x8:
            self.close_seen = True
            if not tally.stopping:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                tally.stats["closed"] += 1
                name = f"close_{code}"
                tally.stats[name] = tally.stats.get(name, 0) + 1
            self.transport.close()
        elif opcode != 0xA:  # fragments, binary or unknown: this server sends none
            tally.stats["protocol_errors"] += 1

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.write(_masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def _client_main(url: str, secret: str, first: int, count: int, symbols: list[str],
                       per_client: int, window: Any, stop: Any, ready: Any, report: Any,
                       seconds_max: float) -> None:
    from urllib.parse import urlsplit

    from gateways.http.auth import issue_token

    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None
    tally = _Tally(count, window)
    deadline = time.monotonic() + seconds_max
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT_MAX)
    clients: list[_StreamClient] = []

    async def connect(index: int) -> None:
        watched = [symbols[(index * per_client + j) % len(symbols)] for j in range(per_client)]
        token = issue_token(secret, f"ws-bench-{index}", int(time.time()), 3600)
        client = _StreamClient(tally, f"{host}:{port}", parts.path, token, watched)
        async with gate:
            try:
                await loop.create_connection(lambda: client, host, port)
                ok = await asyncio.wait_for(client.upgraded, 30)
            except (TimeoutError, OSError):
                ok = False
        if ok:
            clients.append(client)
        else:
            client.close()
            tally.counted(False)

    connects = [asyncio.create_task(connect(first + i)) for i in range(count)]
    try:
        await asyncio.wait_for(tally.all_subscribed.wait(),
                               max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        pass
    ready.put(tally.stats["subscribed"])
    while time.monotonic() < deadline and not stop.is_set():
        await asyncio.sleep(0.2)
    tally.stopping = True
    for task in connects:
        task.cancel()
    await asyncio.gather(*connects, return_exceptions=True)
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)  # the close frames leave
    report.put({"stats": tally.stats, "ages": {i: n for i, n in enumerate(tally.ages) if n}})


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


def _cpu_s(processes: list[Any]) -> float:
    """User + system CPU seconds of these (multiprocessing) processes so far."""
    import psutil

    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(process.pid).cpu_times()
            total += times.user + times.system
    return total


def _thread_cpu_s(process: Any, thread_id: int) -> float:
    """CPU seconds of one thread (the main thread's id is the process id: the event loop)."""
    for thread in process.threads():
        if thread.id == thread_id:
            return float(thread.user_time + thread.system_time)
    return 0.0


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
            redis_url=servers.redis_url, redis_key_prefix=prefix, demo_login=True,
            token_secret="bench-ws-secret-at-least-32-bytes")
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
                ready, reports, open_files, bound_s, args.client_loop))
            loadgen.start()
            processes.append(loadgen)
        subscribed = sum(ready.get(timeout=START_TIMEOUT_S + 10) for _ in range(args.loadgens))
        connect_s = time.monotonic() - connect_started
        time.sleep(2)  # the snapshots and the first fan-out after subscribing settle
        rss_connected = gateway_process.memory_info().rss
        connections = _metric(base, "gateway_ws_connections")

        profiler = _profile(gateway.pid, args.profile, args.seconds)
        others = {"producer": [producer], "loadgens": processes[2:],
                  **{f"server_{child.name}": [child.popen] for child in servers.children}}
        others_before = {name: _cpu_s(group) for name, group in others.items()}
        main_thread_before = _thread_cpu_s(gateway_process, gateway.pid)
        cpu_before = gateway_process.cpu_times()
        received_before = _metric(base, "gateway_quotes_received_total")
        sent_before = _metric(base, "gateway_ws_messages_sent_total", 'kind="quote"')
        window[0] = time.time()
        time.sleep(args.seconds)
        window[1] = time.time()
        received_after = _metric(base, "gateway_quotes_received_total")
        sent_after = _metric(base, "gateway_ws_messages_sent_total", 'kind="quote"')
        cpu_after = gateway_process.cpu_times()
        main_thread_cpu_s = _thread_cpu_s(gateway_process, gateway.pid) - main_thread_before
        others_cpu_s = {name: _cpu_s(group) - others_before[name]
                        for name, group in others.items()}
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
        delivered = totals.get("updates_in_window", 0)
        per_connection_connected = (rss_connected - rss_before) / max(1, args.clients)
        per_connection_end = (rss_end - rss_before) / max(1, args.clients)
        return {
            "benchmark": "ws_fanout", "machine": machine(),
            "setup": {
                "clients": args.clients, "loadgen_processes": args.loadgens,
                "loadgen_event_loop": "uvloop" if args.client_loop == "uvloop" and
                                          _client_loop() else "asyncio",
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
                "cpu_s": round(gateway_cpu_s, 2),
                "event_loop_thread_cpu_s": round(main_thread_cpu_s, 2),
                "cpu_us_per_delivered_update": round(1e6 * gateway_cpu_s / max(1, delivered), 2),
                "rss_before_mb": round(rss_before / 2**20, 1),
                "rss_connected_mb": round(rss_connected / 2**20, 1),
                "rss_end_mb": round(rss_end / 2**20, 1),
                "kb_per_connection_connected": round(per_connection_connected / 1024, 1),
                "kb_per_connection_end": round(per_connection_end / 1024, 1)},
            "load_generators": {
                "cpu_s": round(others_cpu_s["loadgens"], 2),
                "cpu_us_per_delivered_update": round(
                    1e6 * others_cpu_s["loadgens"] / max(1, delivered), 2),
                "producer_cpu_s": round(others_cpu_s["producer"], 2),
                "frames_received": totals.get("frames", 0),
                "protocol_errors": totals.get("protocol_errors", 0)},
            "embedded_servers_cpu_s": {name.removeprefix("server_"): round(cpu_s, 2)
                                       for name, cpu_s in others_cpu_s.items()
                                       if name.startswith("server_")},
            "delivered": {
                "updates_per_s": round(delivered / measured_s, 1),
                "updates_in_window": delivered,
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
    parser.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="load generators' event loop (uvloop falls back to asyncio when "
                             "it is not installed)")
    parser.add_argument("--profile", metavar="PATH",
                        help="py-spy the gateway during the window (collapsed stacks to PATH)")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
