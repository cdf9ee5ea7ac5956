"""Order intake benchmark for the HTTP gateway; prints one JSON object.

POST /v1/orders from a bounded number of concurrent clients, each request timed from send to
its answer (201 = the risk answer came back within the bounded wait). The gateway runs in its
own process (`gateways.http.service.run`) on the embedded broker, PostgreSQL shards and Redis.
The account topology is stood in for by a minimal responder process (consume orders.commands,
produce the first OrderEvent), so the figure is the gateway's request/reply path, not the risk
engine's; `--no-responder` measures the 202 path (produce + bounded wait) instead.

`--stack` measures against the whole system instead: `brokerage up` as a child process (broker,
PostgreSQL shards, Redis, account topology, sinks, FIX gateway, simulator, market data, quote
feed, HTTP gateway) on free loopback ports. It logs in --users users, gives each an account and
a deposit, waits for quotes, then times POST /v1/orders to its accept answer: limit buys far
below the market (they rest at the simulator, so each is one funds hold and no fill). The
per-user (gateway) and per-account (topology) limits of 10 orders/s are respected by spreading
the load over enough users, each with one account: no limit is raised. The load comes from
--client-processes processes (bodies encoded once, keep-alive). The output adds, per service
of the stack and for the load generator, CPU seconds (utime + stime from /proc/<pid>/stat) per
order during the load and per second while idle just before it, and each request's latency
split at its command's broker timestamp (intake: HTTP, auth, Redis, produce call; answer:
the rest: broker, account topology, commit, events tail, reply).

`--stack --order-kind market` sends market buys of 1 share instead: each is held, routed over
FIX, filled by the simulator and booked, and the run also times each order from its send to
its `filled` event in the shard (`fills_booked_in_shard`). `--rate R` makes the load open-loop
(request i due at start + i/R, latency from that due time). The output ends with `goals`:
issue 15's figures this run can speak to (orders/s and fill p99 closed loop, fill p99 at a
light rate, CPU ms per order above idle, idle cores), each with its goal and denominator.

Usage: python benchmarks/http_orders.py [--stack] [--requests N] [--concurrency C] [--seconds S]
       [--order-kind resting|market] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

import aiohttp  # noqa: E402

from benchmarks.common import machine, percentile, process_cpu_s, stop_stack  # noqa: E402
from compose.embedded import free_port, start_embedded_servers  # noqa: E402
from compose.kafka import create_topics  # noqa: E402
from gateways.http.config import HttpConfig  # noqa: E402
from state.messages import Quote  # noqa: E402
from state.quote_cache import QuoteCache  # noqa: E402
from state.shard_store import migrate  # noqa: E402
from state.topics import topic_specs  # noqa: E402

SHARDS = 2
PARTITIONS_PER_SHARD = 2
USERS = 20


def _serve(config_json: bytes) -> None:
    import msgspec

    from gateways.http.service import run

    run(msgspec.json.decode(config_json, type=HttpConfig))


def _respond(bootstrap: str, prefix: str, partitions: int) -> None:
    """The account topology's first answer to each PlaceOrder: funds_held."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from state import topics as t
    from state.ids import order_id_for
    from state.messages import OrderEvent, OrderState, PlaceOrder

    running = True

    def _batch(consumer: Any) -> list[Any]:
        first = consumer.poll(0.05)
        return [] if first is None else [first, *consumer.consume(499, timeout=0)]

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{prefix}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    consumer.assign([TopicPartition(prefix + t.Topic.ORDERS_COMMANDS, p, 0)
                     for p in range(partitions)])
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 1})
    events = prefix + t.Topic.ORDERS_EVENTS
    while running:
        for record in _batch(consumer):
            if record.error():
                continue
            command = t.decode(t.Topic.ORDERS_COMMANDS, record.value())
            if not isinstance(command, PlaceOrder):
                continue
            order_id = order_id_for(command.account_id, command.idempotency_key)
            event = OrderEvent(
                event_id=f"{order_id}:1", account_id=command.account_id, order_id=order_id,
                seq=1, state=OrderState.FUNDS_HELD, symbol=command.symbol, side=command.side,
                order_type=command.order_type, quantity=command.quantity,
                time_in_force=command.time_in_force, filled_quantity=Decimal(0),
                occurred_at=dt.datetime.now(dt.UTC), cause_id=command.idempotency_key,
                idempotency_key=command.idempotency_key, limit_price=command.limit_price)
            producer.produce(events, key=command.account_id.encode(), value=t.encode(event))
        producer.poll(0)
    producer.flush(5)
    consumer.close()


async def _wait_healthy(base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("gateway did not become healthy")


async def _load(base: str, requests: int, concurrency: int, seconds: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        users = []
        for index in range(USERS):
            async with session.post(f"{base}/v1/auth/token",
                                    json={"user_id": f"bench{index}"}) as response:
                auth = {"Authorization": f"Bearer {(await response.json())['token']}"}
            async with session.post(f"{base}/v1/accounts", json={}, headers=auth) as response:
                users.append((auth, (await response.json())["account_id"]))
        return await _post_orders(session, base, users, lambda account_id: {
            "account_id": account_id, "symbol": "AAPL", "side": "buy",
            "order_type": "limit", "quantity": "1", "limit_price": "209.50"},
            requests, concurrency, seconds)


async def _post_orders(session: aiohttp.ClientSession, base: str,
                       users: list[tuple[dict[str, str], str]],
                       body_for: Callable[[str], dict[str, str]], requests: int,
                       concurrency: int, seconds: float) -> dict[str, Any]:
    """POST /v1/orders from `concurrency` clients, round robin over the users, until
    `requests` were sent or `seconds` passed; each request timed to its answer."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(requests))
    deadline = time.monotonic() + seconds

    async def client() -> None:
        for index in counter:
            if time.monotonic() > deadline:
                return
            auth, account_id = users[index % len(users)]
            headers = {**auth, "Idempotency-Key": f"{run_id}-{index}"}
            started = time.perf_counter()
            async with session.post(f"{base}/v1/orders", json=body_for(account_id),
                                    headers=headers) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return _summary(latencies, elapsed, statuses)


def _summary(latencies: list[float], elapsed_s: float, statuses: Counter[int]
             ) -> dict[str, Any]:
    """Requests/s and latency percentiles of one load run."""
    return {"requests": len(latencies), "elapsed_s": round(elapsed_s, 3),
            "requests_per_s": round(len(latencies) / elapsed_s, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


# ---- --stack: the whole system --------------------------------------------------------------

STACK_SYMBOL = "AAPL"
DEPOSIT_USD = "1000000.00"
USER_ORDERS_PER_S_MAX = 10  # the gateway's and the topology's default per-user/account limits


async def _post(session: aiohttp.ClientSession, url: str, body: Any,
                headers: dict[str, str]) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def _stack_user(session: aiohttp.ClientSession, base: str, name: str
                      ) -> tuple[dict[str, str], str]:
    """A logged-in user with one account and a deposit that the topology has booked."""
    status, token = await _post(session, f"{base}/v1/auth/token", {"user_id": name}, {})
    assert status == 201, token
    auth = {"Authorization": f"Bearer {token['token']}"}
    status, account = await _post(session, f"{base}/v1/accounts", {},
                                  {**auth, "Idempotency-Key": f"{name}-account"})
    assert status in (200, 201), account
    account_id = account["account_id"]
    status, deposit = await _post(session, f"{base}/v1/accounts/{account_id}/deposits",
                                  {"amount": DEPOSIT_USD},
                                  {**auth, "Idempotency-Key": f"{name}-deposit"})
    assert status in (200, 201, 202), deposit
    if status == 202:  # booked later (the topology was busy): wait until the shard has it
        await _until_cash(session, base, auth, account_id)
    return auth, account_id


async def _until_cash(session: aiohttp.ClientSession, base: str, auth: dict[str, str],
                      account_id: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with session.get(f"{base}/v1/portfolio?account_id={account_id}",
                               headers=auth) as response:
            body = await response.json(content_type=None)
        if response.status == 200 and Decimal(body.get("cash") or 0) >= Decimal(DEPOSIT_USD):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"deposit to {account_id} not booked within {timeout_s} s")


async def _stack_setup(base: str, users: int, concurrency: int
                       ) -> tuple[list[tuple[dict[str, str], str]], str]:
    """The users, and a limit price far below the market so that every order rests."""
    run_id = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> tuple[dict[str, str], str]:
            async with gate:
                return await _stack_user(s, base, f"bench-{run_id}-{index}")

        made = await asyncio.gather(*(one(i) for i in range(users)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with s.get(f"{base}/v1/quotes?symbols={STACK_SYMBOL}",
                             headers=made[0][0]) as response:
                quotes = (await response.json()).get("quotes") or {}
            if quotes:
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"no quote for {STACK_SYMBOL} within 60 s")
    quote = quotes[STACK_SYMBOL] if isinstance(quotes, dict) else quotes[0]
    limit_price = (Decimal(quote["bid"]) / 2).quantize(Decimal("0.01"))
    return list(made), str(limit_price)


def _order_body(account_id: str, limit_price: str, kind: str) -> bytes:
    """A resting limit buy (one funds hold), or a market buy of 1 share (hold, route, fill at
    the simulator, booking, release)."""
    body = {"account_id": account_id, "symbol": STACK_SYMBOL, "side": "buy",
            "order_type": "market", "quantity": "1", "time_in_force": "day"}
    if kind != "market":
        body |= {"order_type": "limit", "limit_price": limit_price}
    return json.dumps(body).encode()


def _client_worker(base: str, users: list[tuple[dict[str, str], str]], limit_price: str,
                   run_id: str, indexes: range, concurrency: int, start_at: float,
                   deadline: float, kind: str = "resting",
                   rate_per_s: float | None = None) -> dict[str, Any]:
    """One load-generator process: `concurrency` clients on one keep-alive connection pool,
    bodies encoded once per account, each request's wall-clock send and answer times kept
    (to split its latency into stages against the records' broker timestamps). With
    `rate_per_s` the load is open-loop: request i is due at start + i / rate, and its latency
    counts from that due time, so a backlog in the client is counted, not hidden."""
    import asyncio as aio

    bodies = [_order_body(account_id, limit_price, kind) for _auth, account_id in users]
    headers = [{**auth, "Content-Type": "application/json"} for auth, _account in users]
    sent: list[tuple[str, float, float, int]] = []
    statuses: Counter[int] = Counter()

    async def load() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            counter = iter(indexes)
            url = f"{base}/v1/orders"

            async def client() -> None:
                for index in counter:
                    if time.time() > deadline:
                        return
                    user = index % len(users)
                    key = f"{run_id}-{index}"
                    started = time.time()
                    if rate_per_s is not None:
                        due = start_at + index / rate_per_s
                        if due > deadline:
                            return
                        await aio.sleep(max(0.0, due - started))
                        started = due
                    async with session.post(url, data=bodies[user], headers={
                            **headers[user], "Idempotency-Key": key}) as response:
                        await response.read()
                        status = response.status
                    sent.append((key, started, time.time(), status))
                    statuses[status] += 1

            await aio.sleep(max(0.0, start_at - time.time()))
            await aio.gather(*(client() for _ in range(concurrency)))

    cpu_before = time.process_time()
    aio.run(load())
    return {"sent": sent, "statuses": dict(statuses),
            "cpu_s": time.process_time() - cpu_before}


def _stack_load(base: str, users: list[tuple[dict[str, str], str]], limit_price: str,
                requests: int, concurrency: int, seconds: float,
                processes: int, kind: str = "resting",
                rate_per_s: float | None = None) -> dict[str, Any]:
    """POST /v1/orders from `processes` load-generator processes with `concurrency` clients
    in all, round robin over the users, until `requests` were sent or `seconds` passed
    (open-loop at `rate_per_s` when given)."""
    from concurrent.futures import ProcessPoolExecutor

    run_id = uuid.uuid4().hex[:8]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        start_at = time.time() + 1.0 + 0.3 * processes  # after every worker has started
        futures = [pool.submit(_client_worker, base, users, limit_price, run_id,
                               range(worker, requests, processes),
                               concurrency // processes + (worker < concurrency % processes),
                               start_at, start_at + seconds, kind, rate_per_s)
                   for worker in range(processes)]
        parts = [future.result() for future in futures]
    sent = [record for part in parts for record in part["sent"]]
    latencies = [answered - started for _key, started, answered, _status in sent]
    statuses: Counter[int] = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    elapsed = max(answered for _k, _s, answered, _st in sent) - start_at
    return {**_summary(latencies, elapsed, statuses),
            "_sent": sent, "_load_generator_cpu_s": sum(part["cpu_s"] for part in parts)}


def _stages(stack: Any, sent: list[tuple[str, float, float, int]],
            timeout_s: float = 20.0) -> dict[str, Any]:
    """Each request's latency split at the broker timestamps of its PlaceOrder (CreateTime:
    when the gateway produced it) and of its answering event (when the account topology
    produced it): intake (HTTP, auth, Redis, produce call), topology (broker hop + risk
    checks), answer (commit/linger, broker hop, gateway tail, HTTP reply). Same clock: one
    machine."""
    from confluent_kafka import Consumer, TopicPartition

    from state import topics as t
    from state.messages import OrderEvent, PlaceOrder

    endpoints = stack.endpoints()
    prefix = endpoints.get("topic_prefix", "")
    wanted = {key for key, *_ in sent}
    commands_ms: dict[str, int] = {}
    events_ms: dict[str, int] = {}
    consumer = Consumer({"bootstrap.servers": endpoints["bootstrap_servers"],
                         "group.id": f"bench-stages-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        assignment = []
        for family in (t.Topic.ORDERS_COMMANDS, t.Topic.ORDERS_EVENTS):
            name = prefix + family
            partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
            assignment += [TopicPartition(name, p, 0) for p in partitions]
        consumer.assign(assignment)
        families = {prefix + t.Topic.ORDERS_COMMANDS: t.Topic.ORDERS_COMMANDS,
                    prefix + t.Topic.ORDERS_EVENTS: t.Topic.ORDERS_EVENTS}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (len(commands_ms) < len(wanted)
                                               or len(events_ms) < len(wanted)):
            for record in consumer.consume(5000, timeout=0.5):
                if record.error() or b'"idempotency_key"' not in (record.value() or b""):
                    continue
                message = t.decode(families[record.topic()], record.value())
                key = getattr(message, "idempotency_key", None)
                if key not in wanted:
                    continue
                if isinstance(message, PlaceOrder):
                    commands_ms.setdefault(key, record.timestamp()[1])
                elif isinstance(message, OrderEvent):
                    events_ms.setdefault(key, record.timestamp()[1])
    finally:
        consumer.close()
    stages: dict[str, list[float]] = {"intake": [], "topology": [], "answer": []}
    for key, started, answered, _status in sent:
        if key in commands_ms and key in events_ms:
            stages["intake"].append(commands_ms[key] / 1000 - started)
            stages["topology"].append((events_ms[key] - commands_ms[key]) / 1000)
            stages["answer"].append(answered - events_ms[key] / 1000)
    return {"matched": len(stages["intake"]), "ms": {
        name: {"p50": round(percentile(values, 0.5) * 1000, 1),
               "p99": round(percentile(values, 0.99) * 1000, 1),
               "mean": round(statistics.fmean(values) * 1000, 1) if values else None}
        for name, values in stages.items()}}


def _fills_booked(stack: Any, users: list[tuple[dict[str, str], str]],
                  sent: list[tuple[str, float, float, int]],
                  timeout_s: float = 60.0) -> dict[str, Any]:
    """Order placed to fill booked in its shard, per acknowledged market order: the shard's
    `recorded_at` of the order's `filled` event (the sink transaction's start, so a few ms
    early at most) minus the request's send (or due) time. Same clock: one machine. Waits
    (bounded) until every acknowledged order has its fill in the shards. Split at the fill
    event's `occurred_at` (the execution record's time: when the FIX gateway produced the
    market maker's fill): to the fill report (HTTP, topology, route, FIX, market maker), then
    booking (topology, its commit, the sinks' batch, PostgreSQL)."""
    import psycopg

    from state.ids import order_id_for

    accounts = [account_id for _auth, account_id in users]
    started_of: dict[str, float] = {}
    for key, started, _answered, status in sent:
        if status in (201, 202):
            index = int(key.rsplit("-", 1)[1])
            started_of[order_id_for(accounts[index % len(accounts)], key)] = started
    booked: dict[str, float] = {}
    reported: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(booked) < len(started_of):
        wanted = [order_id for order_id in started_of if order_id not in booked]
        for dsn in stack.endpoints()["shard_dsns"]:
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                rows = conn.execute(
                    "SELECT order_id, extract(epoch FROM recorded_at)::float8,"
                    " extract(epoch FROM occurred_at)::float8 FROM order_events"
                    " WHERE order_id = ANY(%s) AND event_type = 'order_event'"
                    " AND state = 'filled'", (wanted,)).fetchall()
            booked.update({order_id: float(at) for order_id, at, _ in rows})
            reported.update({order_id: float(at) for order_id, _, at in rows})
        if len(booked) < len(started_of):
            time.sleep(0.5)
    done = [order_id for order_id in started_of if order_id in booked]
    latencies = [booked[o] - started_of[o] for o in done]
    to_report = [reported[o] - started_of[o] for o in done]
    booking = [booked[o] - reported[o] for o in done]
    return {"acknowledged": len(started_of), "filled_in_shard": len(booked),
            "not_filled": len(started_of) - len(booked), "ms": _p50_p99(latencies),
            "stages_ms": {"to_fill_report": _p50_p99(to_report),
                          "booking": _p50_p99(booking)}}


def _p50_p99(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(percentile(values, 0.5) * 1000, 1),
            "p99": round(percentile(values, 0.99) * 1000, 1),
            "max": round(max(values) * 1000, 1)}


# Issue 15's goals for the whole stack (exactly-once, 2 cores).
GOAL_ORDERS_PER_S_MIN = 1000
GOAL_FILL_P99_MS_MAX = 100  # at that throughput
GOAL_LIGHT_FILL_P99_MS_MAX = 50  # at 200 orders/s, placed to fill booked in the shard
GOAL_CPU_MS_PER_ORDER_ABOVE_IDLE_MAX = 1.2
GOAL_IDLE_CORES_MAX = 0.15


def _goals(args: argparse.Namespace, result: dict[str, Any], cpu: dict[str, Any],
           fills: dict[str, Any] | None) -> dict[str, Any]:
    """Each goal this run can speak to: the figure, the goal, whether it was met, and the
    denominator it came from (all from this run)."""
    goals: dict[str, Any] = {
        "idle_stack_cores": {
            "figure": cpu["total_idle_cpu_s_per_s"], "goal_max": GOAL_IDLE_CORES_MAX,
            "met": cpu["total_idle_cpu_s_per_s"] <= GOAL_IDLE_CORES_MAX,
            "from": f"{cpu['idle_s']} s with no load, every process of the stack"},
        "cpu_ms_per_order_above_idle": {
            "figure": cpu["total_ms_per_order_above_idle"],
            "goal_max": GOAL_CPU_MS_PER_ORDER_ABOVE_IDLE_MAX,
            "met": cpu["total_ms_per_order_above_idle"] <= GOAL_CPU_MS_PER_ORDER_ABOVE_IDLE_MAX,
            "from": f"{cpu['total_cpu_s']} CPU s over {cpu['load_s']} s for {cpu['orders']} "
                    f"orders, less the idle rate"
                    + (" (until every fill was booked)" if args.order_kind == "market"
                       else "")},
    }
    if args.order_kind != "market" or fills is None:
        return goals
    p99 = fills["ms"]["p99"]
    if args.rate is None:
        goals["orders_per_s"] = {
            "figure": result["requests_per_s"], "goal_min": GOAL_ORDERS_PER_S_MIN,
            "met": result["requests_per_s"] >= GOAL_ORDERS_PER_S_MIN,
            "from": f"{result['requests']} orders in {result['elapsed_s']} s, closed loop, "
                    f"{args.concurrency} clients"}
        goals["fill_p99_ms_at_that_rate"] = {
            "figure": p99, "goal_max": GOAL_FILL_P99_MS_MAX,
            "met": p99 is not None and p99 <= GOAL_FILL_P99_MS_MAX and not fills["not_filled"],
            "from": f"{fills['filled_in_shard']} of {fills['acknowledged']} fills booked"}
    else:
        goals[f"fill_p99_ms_at_{args.rate:g}_per_s"] = {
            "figure": p99, "goal_max": GOAL_LIGHT_FILL_P99_MS_MAX if args.rate <= 200 else None,
            "met": (p99 is not None and p99 <= GOAL_LIGHT_FILL_P99_MS_MAX
                    and not fills["not_filled"]) if args.rate <= 200 else None,
            "from": f"{fills['filled_in_shard']} of {fills['acknowledged']} fills booked, "
                    f"open loop at {args.rate:g}/s from each order's due time"}
    return goals


def _stack_services(stack: Any) -> dict[int, str]:
    """pid -> service, for the stack's root and every descendant: a process is named by its
    own command line when it tells (compose.child NAME, tansu, postgres, redis-server), else
    by its nearest named ancestor (e.g. the spawned workers of a service)."""
    import psutil

    names: dict[int, str] = {}
    try:
        root = psutil.Process(stack.popen.pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return names
    for process in processes:  # parents come before their children
        try:
            name = _service_name(process.cmdline())
            parent = process.ppid()
        except psutil.Error:
            continue
        if name.startswith("?") and parent in names:
            name = names[parent]
        names[process.pid] = name
    return names


class CpuMeter:
    """CPU seconds per service between `start` and `stop`, from /proc, for the stack's
    processes and this one (the load generator; its worker processes report their own).
    A process that ends in between loses its share since `start` (postgres backends of
    closed connections: small)."""

    def __init__(self, stack: Any) -> None:
        self._stack = stack
        self._before: dict[int, tuple[str, float]] = {}
        self._started = 0.0

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        services = {**_stack_services(self._stack), os.getpid(): "load-generator"}
        snapshot = {}
        for pid, name in services.items():
            cpu_s = process_cpu_s(pid)
            if cpu_s is not None:
                snapshot[pid] = (name, cpu_s)
        return snapshot

    def start(self) -> None:
        self._before = self._snapshot()
        self._started = time.monotonic()

    def stop(self, extra: dict[str, float] | None = None) -> tuple[dict[str, float], float]:
        """CPU seconds per service since `start` (plus `extra`), and the seconds elapsed."""
        elapsed_s = time.monotonic() - self._started
        totals: dict[str, float] = {}
        for pid, (name, cpu_s) in self._snapshot().items():
            before = self._before.get(pid)
            spent = cpu_s - (before[1] if before and before[0] == name else 0.0)
            totals[name] = totals.get(name, 0.0) + spent
        for name, cpu_s in (extra or {}).items():
            totals[name] = totals.get(name, 0.0) + cpu_s
        return totals, elapsed_s


def _cpu_report(load: dict[str, float], load_s: float, idle: dict[str, float], idle_s: float,
                orders: int) -> dict[str, Any]:
    """Per service: CPU seconds during the load, CPU ms per order, the idle rate (CPU s per s
    with no load: pollers, heartbeats, the quote feed) and the ms per order above that idle
    rate, sorted by cost per order."""
    rows = {}
    for name in sorted(set(load) | set(idle), key=lambda n: -load.get(n, 0.0)):
        cpu_s = load.get(name, 0.0)
        idle_rate = idle.get(name, 0.0) / idle_s if idle_s else 0.0
        rows[name] = {
            "cpu_s": round(cpu_s, 2),
            "ms_per_order": round(cpu_s * 1000 / orders, 3) if orders else None,
            "idle_cpu_s_per_s": round(idle_rate, 3),
            "ms_per_order_above_idle": (round((cpu_s - idle_rate * load_s) * 1000 / orders, 3)
                                        if orders else None),
        }
    total = sum(load.values())
    idle_total = sum(idle.values()) / idle_s if idle_s else 0.0
    return {
        "load_s": round(load_s, 2), "idle_s": round(idle_s, 2), "orders": orders,
        "total_cpu_s": round(total, 2),
        "total_ms_per_order": round(total * 1000 / orders, 3) if orders else None,
        "cores_busy_during_load": round(total / load_s, 2) if load_s else None,
        "total_idle_cpu_s_per_s": round(idle_total, 3),
        "total_ms_per_order_above_idle": (round((total - idle_total * load_s) * 1000 / orders,
                                                3) if orders else None),
        "per_service": rows,
    }


def _profile(stack: Any, services: dict[str, str], seconds: float) -> list[Any]:
    """py-spy (collapsed stacks of the thread holding the GIL) on each named service's process
    during the load: {service: output path}. Only GIL holders, since librdkafka's and psycopg's
    waits release it but py-spy's idle detection counts a thread blocked in C as busy."""
    import subprocess

    profilers = []
    for pid, name in _stack_services(stack).items():
        if name in services and name not in ("postgres", "tansu", "redis-server"):
            profilers.append(subprocess.Popen(
                [_py_spy(), "record", "--pid", str(pid),
                 "--duration", str(int(seconds)), "--rate", "200", "--format", "raw",
                 "--nonblocking", "--gil", "--output", f"{services[name]}.{pid}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    missing = set(services) - set(_stack_services(stack).values())
    if missing:
        raise RuntimeError(f"no {sorted(missing)} among the stack's processes")
    return profilers


def _py_spy() -> str:
    """py-spy of the bench extra: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def _service_name(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "compose.child" in text and len(cmdline) > cmdline.index("compose.child") + 1:
        return cmdline[cmdline.index("compose.child") + 1]
    # The program's own name only: a service's command line may carry a DSN ("postgresql://")
    # or a broker address, which made the sink workers count as postgres.
    program = Path(cmdline[0]).name if cmdline else ""
    for marker in ("tansu", "postgres", "redis-server"):
        if marker in program:
            return marker
    if "compose.cli" in text:
        return "brokerage-up"
    return f"?{cmdline[0] if cmdline else ''}"


def _start_stack(root: Path, guarantee: str, commit_interval_s: float) -> Any:
    """`brokerage up` as tests/integration/compose/stack_process.start_stack runs it, with the
    account topology's processing guarantee and commit interval set in the stack file."""
    import subprocess

    from tests.integration.compose.stack_process import StackProcess, write_stack_file

    data_dir = root / "data"
    stack_file = write_stack_file(root / "stack.toml", free_port())
    with stack_file.open("a") as out:
        out.write(f'\n[accounts]\nprocessing_guarantee = "{guarantee}"\n'
                  f"commit_interval_s = {commit_interval_s}\n")
    http_port = free_port()
    env = {**os.environ, "BROKERAGE_DATA_DIR": str(data_dir),
           "BROKERAGE_HTTP_PORT": str(http_port), "BROKERAGE_STACK": str(stack_file),
           "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen([sys.executable, "-m", "compose.cli", "up"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, stdin=subprocess.DEVNULL)
    return StackProcess(data_dir, http_port, popen), stack_file.read_text()


def run_stack(args: argparse.Namespace) -> dict[str, Any]:
    users_needed = -(-args.target_per_s // USER_ORDERS_PER_S_MAX) * 2
    users_count = max(args.users, users_needed)
    root = Path(tempfile.mkdtemp(prefix="bench-http-stack-"))
    stack, stack_toml = _start_stack(root, args.processing_guarantee, args.commit_interval_s)
    try:
        stack.read_until("healthy", timeout_s=180)
        base = stack.base_url
        setup_started = time.monotonic()
        users, limit_price = asyncio.run(_stack_setup(base, users_count, args.concurrency))
        setup_s = time.monotonic() - setup_started
        _stack_load(base, users, limit_price, args.warmup, args.concurrency, 30,
                    args.client_processes, args.order_kind)
        meter = CpuMeter(stack)
        meter.start()  # the stack's fixed cost: pollers, heartbeats, the quote feed
        time.sleep(args.idle_seconds)
        idle_cpu, idle_s = meter.stop()
        load_average_before = os.getloadavg()
        meter.start()
        profiles = dict(item.split("=", 1) for item in args.profile or [])
        if args.profile_gateway:
            profiles["http"] = args.profile_gateway
        profilers = _profile(stack, profiles, args.seconds)
        result = _stack_load(base, users, limit_price, args.requests, args.concurrency,
                             args.seconds, args.client_processes, args.order_kind, args.rate)
        sent = result.pop("_sent")
        # The CPU the orders cost includes landing their fills, which goes on after the last
        # answer: the meter runs until every fill is booked (less the idle rate meanwhile).
        fills = _fills_booked(stack, users, sent) if args.order_kind == "market" else None
        load_cpu, load_s = meter.stop({"load-generator": result.pop("_load_generator_cpu_s")})
        load_average_after = os.getloadavg()
        for profiler in profilers:
            profiler.wait(args.seconds + 30)
        stages = _stages(stack, sent)
        cpu = _cpu_report(load_cpu, load_s, idle_cpu, idle_s, result["requests"])
        return {
            "benchmark": "http_orders", "mode": "stack", "machine": machine(),
            "setup": {
                "stack": "brokerage up, embedded servers, every service (2 shards x 2 "
                         "partitions); the stack file's settings below",
                "stack_file": stack_toml,
                "account_topology": {"processing_guarantee": args.processing_guarantee,
                                     "commit_interval_s": args.commit_interval_s},
                "concurrency": args.concurrency, "users": users_count,
                "accounts_per_user": 1, "deposit_usd": DEPOSIT_USD,
                "order": (f"market buy 1 {STACK_SYMBOL}, time_in_force day (it fills)"
                          if args.order_kind == "market" else
                          f"limit buy 1 {STACK_SYMBOL} @ {limit_price} (half the bid: it "
                          "rests), time_in_force day"),
                "load": (f"open loop at {args.rate:g} orders/s" if args.rate is not None
                         else f"closed loop, {args.concurrency} clients"),
                "answer": "201 = the account topology's first answering event "
                          "(funds_held) within reply_wait_ms; 202 = none within it",
                "limits": "defaults, none raised: 10 orders/s per user (gateway) and per "
                          "account (topology); the load is spread round-robin over the users",
                "users_setup_s": round(setup_s, 1),
                "load_generator": f"{args.client_processes} processes, aiohttp with "
                                  "keep-alive, bodies encoded once per account",
                "note": "the machine is shared with other engineers' benchmarks: see "
                        "machine.load_average_1m"},
            "post_orders": result,
            "load_average_1m_5m_15m": {"before_load": load_average_before,
                                       "after_load": load_average_after},
            "latency_stages": stages,
            "fills_booked_in_shard": fills,
            "cpu": cpu,
            "goals": _goals(args, result, cpu, fills),
        }
    finally:
        stop_stack(stack, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="upper bound on the load")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--no-responder", action="store_true")
    parser.add_argument("--stack", action="store_true",
                        help="measure against `brokerage up` (the whole system)")
    parser.add_argument("--users", type=int, default=200, help="--stack: users (1 account each)")
    parser.add_argument("--target-per-s", type=int, default=1000,
                        help="--stack: at least 2x this / 10 users, to stay under the limits")
    parser.add_argument("--processing-guarantee", default="exactly-once",
                        choices=("exactly-once", "at-least-once"),
                        help="--stack: the account topology's, set in the stack file")
    parser.add_argument("--commit-interval-s", type=float, default=0.05,
                        help="--stack: the account topology's, set in the stack file")
    parser.add_argument("--order-kind", choices=("resting", "market"), default="resting",
                        help="--stack: resting limit buys (one hold each) or market buys that "
                             "fill (placed to fill booked in the shard is timed)")
    parser.add_argument("--rate", type=float, default=None,
                        help="--stack: open loop at this many orders/s (latency from each "
                             "order's due time) instead of closed loop")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="--stack: load-generator processes (the clients split among them)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="--stack: CPU of the idle stack measured this long before the load")
    parser.add_argument("--profile-gateway", metavar="PATH",
                        help="--stack: py-spy the HTTP gateway during the load (collapsed "
                             "stacks to PATH.<pid>)")
    parser.add_argument("--profile", metavar="SERVICE=PATH", action="append",
                        help="--stack: py-spy SERVICE's processes during the load (collapsed "
                             "stacks to PATH.<pid>); repeatable")
    args = parser.parse_args()
    if args.stack:
        print(json.dumps(run_stack(args), indent=2))
        return
    context = multiprocessing.get_context("spawn")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    servers = start_embedded_servers(data_dir, SHARDS)
    processes: list[Any] = []
    try:
        prefix = f"b{uuid.uuid4().hex[:6]}."
        partitions = SHARDS * PARTITIONS_PER_SHARD
        create_topics(servers.bootstrap_servers, topic_specs(prefix, partitions, 2))
        for dsn in servers.shard_dsns:
            migrate(dsn)
        QuoteCache(servers.redis_url, prefix).put(Quote(
            symbol="AAPL", bid=Decimal("209.40"), ask=Decimal("209.45"), bid_size=Decimal(100),
            ask_size=Decimal(100), venue_time=dt.datetime.now(dt.UTC)))
        config = HttpConfig(
            port=free_port(), bootstrap_servers=servers.bootstrap_servers, topic_prefix=prefix,
            shard_dsns=tuple(servers.shard_dsns), partitions_per_shard=PARTITIONS_PER_SHARD,
            redis_url=servers.redis_url, redis_key_prefix=prefix, demo_login=True,
            token_secret="bench-secret-at-least-32-bytes",
            orders_per_s_max=1_000_000, reply_wait_ms=2000)
        import msgspec

        if not args.no_responder:
            responder = context.Process(target=_respond, daemon=True, args=(
                servers.bootstrap_servers, prefix, partitions))
            responder.start()
            processes.append(responder)
        gateway = context.Process(target=_serve, args=(msgspec.json.encode(config),),
                                  daemon=True)
        gateway.start()
        processes.append(gateway)
        base = f"http://127.0.0.1:{config.port}"
        asyncio.run(_wait_healthy(base, 60))
        asyncio.run(_load(base, args.warmup, args.concurrency, 30))
        result = asyncio.run(_load(base, args.requests, args.concurrency, args.seconds))
        print(json.dumps({
            "benchmark": "http_orders", "machine": machine(),
            "setup": {"concurrency": args.concurrency, "users": USERS,
                      "responder": not args.no_responder, "shards": SHARDS,
                      "gateway_processes": 1, "reply_wait_ms": config.reply_wait_ms,
                      "note": "responder stands in for the account topology"},
            "post_orders": result}, indent=2))
    finally:
        for process in reversed(processes):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
                process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        servers.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
