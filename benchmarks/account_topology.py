"""Account topology benchmark; prints one JSON object.

For each processing guarantee (exactly-once, at-least-once):
1. Bare pass-through (the denominator): a Quix app that copies N records from one topic to
   another with the topology's consumer settings (bytes in, bytes out, no state).
2. Throughput: A accounts x M market buys, each followed by its fill (an ExecutionReport with a
   later timestamp), all produced up front. Each order is 2 input records (the command and the
   fill) and 8 output records (4 order events; hold, fill and release postings; the route).
3. Latency: orders produced at a fixed rate; command-to-event latency = arrival of the order's
   first event in `orders.events` minus the moment it was produced.

Both rates are measured the same way, in the steady state: a reader notes when each counted
output arrives (every copied record for the bare app, each order's `filled` event for the
topology; it polls every 5 ms), and the rate is the count between the 10th and the 90th
percentile arrival over the time between them. An earlier version divided the whole count by the
first-to-last arrival, read in 100 ms batches, with 20,000 bare records: under exactly-once
nothing is readable until the first checkpoint commits, so the first checkpoint's work was
counted but not timed (the bare exactly-once figure came out 4x too low against at-least-once,
which flattered the ratio), the bare app copied its records in a few reader batches (its rate
jumped between ~75k and ~150k/s from run to run), and short runs were dominated by start-up.
The bare app now copies at least 200,000 records. Bare and topology runs alternate `--repeat`
times and the best of each is compared, so a change in the shared machine's load falls on both;
each rate is also given per CPU second of the processing process (from /proc), which a busy
machine distorts less than wall-clock time. The load average is printed at the start and the
end. `input_records_over_bare` is the topology's input records/s over the bare app's records/s;
each topology input also writes about 4 records where the bare app writes one. With
`--orders 40` the timed window is about half a second (about ten 50 ms checkpoints); larger
runs (`--orders 200`) give steadier figures.

Usage: python benchmarks/account_topology.py [--accounts A] [--orders M] [--rate R] [--seconds S]
Starts its own broker on a loopback port (compose.embedded) unless --bootstrap is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from benchmarks.common import machine, percentile, process_cpu_s  # noqa: E402
from compose.kafka import create_topics  # noqa: E402
from state.ids import cl_ord_id_for, order_id_for  # noqa: E402
from state.messages import (  # noqa: E402
    Deposit,
    ExecType,
    ExecutionReport,
    Message,
    OrderType,
    PlaceOrder,
    Side,
)
from state.topics import Topic, TopicSpec, encode, topic_specs  # noqa: E402
from topologies.config import AccountTopologyConfig, KafkaSettings  # noqa: E402

PARTITIONS = 4
# the topology's default consumer poll timeout, for the bare app too
POLL_TIMEOUT_S = AccountTopologyConfig(kafka=KafkaSettings(bootstrap_servers=""), state_dir="",
                                       account_partitions=1).poll_timeout_s


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                     "linger.ms": 5, "batch.num.messages": 10000,
                     "queue.buffering.max.messages": 1000000})


class Arrival(NamedTuple):
    at_s: float  # monotonic
    cpu_s: float  # CPU seconds the processor process had used by then


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads); 0 without one."""
    return (process_cpu_s(pid) if pid is not None else None) or 0.0


def _arrivals(bootstrap: str, topic: str, counted: Any, expected: int, timeout_s: float,
              pid: int | None = None) -> list[Arrival]:
    """Read `topic` from offset 0 until `expected` records for which counted(value) holds have
    arrived; when each arrived and the CPU time process `pid` had used by then."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    arrivals: list[Arrival] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            # a short wait: a batch's records are all stamped when it returns, and consume()
            # waits out its timeout when fewer records than asked for are there
            batch = consumer.consume(2000, 0.005)
            if not batch:
                continue
            arrival = Arrival(time.monotonic(), _cpu_s(pid))
            for msg in batch:
                if not msg.error() and counted(msg.value()):
                    arrivals.append(arrival)
                    if len(arrivals) >= expected:
                        return arrivals
    finally:
        consumer.close()
    raise TimeoutError(f"{topic}: {len(arrivals)} of {expected} in {timeout_s} s")


class Rate(NamedTuple):
    per_s: float  # counted records per second of wall-clock time
    per_cpu_s: float  # per CPU second of the processor (what a busy shared machine distorts less)


def steady_rate(arrivals: list[Arrival], low: float = 0.1, high: float = 0.9) -> Rate:
    """Records per second between the `low` and `high` fractions of the arrivals: start-up,
    the first checkpoint and the tail are left out, the same way for every rate compared."""
    first, last = arrivals[int(len(arrivals) * low)], arrivals[int(len(arrivals) * high) - 1]
    count = int(len(arrivals) * high) - 1 - int(len(arrivals) * low)
    assert count > 0 and last.at_s > first.at_s, "too few arrivals to time"
    cpu_s = last.cpu_s - first.cpu_s
    return Rate(count / (last.at_s - first.at_s), count / cpu_s if cpu_s > 0 else float("nan"))


def _bare(bootstrap: str, prefix: str, guarantee: str, commit_s: float, state_dir: Path
          ) -> None:
    from quixstreams import Application
    from quixstreams.models import TopicConfig

    # the account topology's consumer and producer settings (topologies.accounts)
    # Quix's default state dir is ./state, which from the checkout is the state package.
    app = Application(broker_address=bootstrap, consumer_group=prefix + "bare",
                      state_dir=str(state_dir / (prefix + "bare")),
                      auto_offset_reset="earliest", processing_guarantee=guarantee,  # type: ignore[arg-type]
                      commit_interval=commit_s, loglevel="WARNING",
                      consumer_poll_timeout=POLL_TIMEOUT_S,
                      consumer_extra_config={"session.timeout.ms": 6000,
                                             "heartbeat.interval.ms": 2000,
                                             "fetch.wait.max.ms": 10},
                      producer_extra_config={"partitioner": "murmur2_random"})
    config = TopicConfig(num_partitions=PARTITIONS, replication_factor=1,
                         extra_config={"retention.ms": "-1", "retention.bytes": "-1",
                                       "cleanup.policy": "delete"})
    source = app.topic(prefix + "bare.in", value_deserializer="bytes", config=config)
    sink = app.topic(prefix + "bare.out", value_serializer="bytes", config=config)
    app.dataframe(source).to_topic(sink)
    app.run()


def _topology(config: AccountTopologyConfig) -> None:
    from topologies.accounts import run

    run(config)


def _run_group(prefix: str) -> str:
    """A consumer group of the run's own. Each run's topology is a static member (it has a
    state dir), and the embedded broker never expires a static member that is gone: a second
    run in the first one's group waited forever for it to rejoin and was given nothing."""
    return f"accounts-{prefix.rstrip('.')}"


def _workload(accounts: int, orders: int, t0_ms: int) -> list[tuple[str, Message, int]]:
    """(topic kind, message, timestamp ms): deposits, then each buy followed by its fill."""
    now = dt.datetime.now(dt.UTC)
    records: list[tuple[str, Message, int]] = []
    clock = t0_ms
    for a in range(accounts):
        account = f"acc_bench{a}"
        records.append(("commands", Deposit(account_id=account, idempotency_key="dep",
                                            amount=Decimal("10000000.00"), submitted_at=now),
                        clock))
    for m in range(orders):
        for a in range(accounts):
            clock += 1
            account, key = f"acc_bench{a}", f"buy-{m}"
            order_id = order_id_for(account, key)
            records.append(("commands", PlaceOrder(
                account_id=account, idempotency_key=key, symbol="AAPL", side=Side.BUY,
                order_type=OrderType.MARKET, quantity=Decimal(1), submitted_at=now,
                reference_price=Decimal("100.00"), reference_time=now,
                time_in_force="gtc"), clock))  # type: ignore[arg-type]
            records.append(("executions", ExecutionReport(
                account_id=account, exec_id=f"x-{order_id}", order_id=order_id,
                cl_ord_id=cl_ord_id_for(order_id), exec_type=ExecType.TRADE, symbol="AAPL",
                side=Side.BUY, last_qty=Decimal(1), last_px=Decimal("100.00"),
                cum_qty=Decimal(1), leaves_qty=Decimal(0), transact_time=now,
                market_maker="bench"), clock + 1))
    return records


def _start(target: Any, *args: Any) -> BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


def _stop(process: BaseProcess) -> None:
    process.terminate()
    process.join(20)
    if process.is_alive():
        process.kill()


def run_bare(bootstrap: str, guarantee: str, commit_s: float, count: int, state_dir: Path
             ) -> Rate:
    prefix = f"b{uuid.uuid4().hex[:6]}."
    spec = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
    create_topics(bootstrap, [TopicSpec(prefix + "bare.in", PARTITIONS, spec),
                              TopicSpec(prefix + "bare.out", PARTITIONS, spec)])
    producer = _producer(bootstrap)
    payload = encode(Deposit(account_id="acc_x", idempotency_key="k", amount=Decimal("1"),
                             submitted_at=dt.datetime.now(dt.UTC)))
    for i in range(count):
        producer.produce(prefix + "bare.in", key=f"acc_{i % 64}".encode(),
                         value=payload.replace(b'"k"', f'"k{i}"'.encode()))
        producer.poll(0)
    producer.flush(60)
    process = _start(_bare, bootstrap, prefix, guarantee, commit_s, state_dir)
    try:
        arrivals = _arrivals(bootstrap, prefix + "bare.out", lambda _: True, count, 300,
                             process.pid)
    finally:
        _stop(process)
    return steady_rate(arrivals)


def run_throughput(bootstrap: str, guarantee: str, commit_s: float, accounts: int,
                   orders: int, state_dir: Path) -> dict[str, float]:
    prefix = f"a{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, topic_specs(prefix, PARTITIONS, 1))
    producer = _producer(bootstrap)
    records = _workload(accounts, orders, int(time.time() * 1000))
    for kind, message, ts in records:
        topic = prefix + (Topic.ORDERS_COMMANDS if kind == "commands" else Topic.EXECUTIONS)
        producer.produce(topic, key=message.account_id.encode(),  # type: ignore[attr-defined]
                         value=encode(message), timestamp=ts)
        producer.poll(0)
    producer.flush(60)
    config = AccountTopologyConfig(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix,
                            session_timeout_ms=6000),
        state_dir=str(state_dir / prefix), account_partitions=PARTITIONS,
        processing_guarantee=guarantee, commit_interval_s=commit_s,
        order_rate_per_s_max=1_000_000, notional_usd_max=Decimal("1e12"),
        consumer_group=_run_group(prefix))
    process = _start(_topology, config)
    total = accounts * orders
    try:
        arrivals = _arrivals(bootstrap, prefix + Topic.ORDERS_EVENTS,
                             lambda value: b'"state":"filled"' in value, total, 600, process.pid)
    finally:
        _stop(process)
    rate = steady_rate(arrivals)
    inputs_per_order = len(records) / total  # the deposits spread over the orders
    return {"orders": total, "input_records": len(records),
            "orders_per_s": round(rate.per_s, 1),
            "input_records_per_s": round(rate.per_s * inputs_per_order, 1),
            "orders_per_cpu_s": round(rate.per_cpu_s, 1),
            "input_records_per_cpu_s": round(rate.per_cpu_s * inputs_per_order, 1)}


def run_latency(bootstrap: str, guarantee: str, commit_s: float, rate: float, seconds: float,
                state_dir: Path) -> dict[str, float]:
    prefix = f"l{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, topic_specs(prefix, PARTITIONS, 1))
    config = AccountTopologyConfig(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix,
                            session_timeout_ms=6000),
        state_dir=str(state_dir / prefix), account_partitions=PARTITIONS,
        processing_guarantee=guarantee, commit_interval_s=commit_s,
        order_rate_per_s_max=1_000_000, consumer_group=_run_group(prefix))
    producer = _producer(bootstrap)
    now = dt.datetime.now(dt.UTC)
    accounts = [f"acc_lat{i}" for i in range(32)]
    for account in accounts:
        producer.produce(prefix + Topic.ORDERS_COMMANDS, key=account.encode(), value=encode(
            Deposit(account_id=account, idempotency_key="dep", amount=Decimal("1e9"),
                    submitted_at=now)))
    producer.flush(10)
    process = _start(_topology, config)
    sent: dict[str, float] = {}
    latencies_ms: list[float] = []
    stop = threading.Event()

    def collect() -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"l{uuid.uuid4()}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        topic = prefix + Topic.ORDERS_EVENTS
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        while not stop.is_set():
            for msg in consumer.consume(1000, 0.05):
                if msg.error():
                    continue
                event = json.loads(msg.value())
                started = sent.pop(event.get("order_id", ""), None)
                if started is not None:
                    latencies_ms.append((time.monotonic() - started) * 1000)
        consumer.close()

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        _arrivals(bootstrap, prefix + Topic.ORDERS_EVENTS, lambda v: True, 1, 120)  # warm
        interval = 1 / rate
        next_at = time.monotonic()
        count = int(rate * seconds)
        for i in range(count):
            account, key = accounts[i % len(accounts)], f"o{i}"
            message = PlaceOrder(account_id=account, idempotency_key=key, symbol="AAPL",
                                 side=Side.BUY, order_type=OrderType.LIMIT, quantity=Decimal(1),
                                 limit_price=Decimal("100.00"),
                                 submitted_at=dt.datetime.now(dt.UTC))
            sent[order_id_for(account, key)] = time.monotonic()
            producer.produce(prefix + Topic.ORDERS_COMMANDS, key=account.encode(),
                             value=encode(message))
            producer.poll(0)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        producer.flush(10)
        deadline = time.monotonic() + 30
        while sent and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        collector.join(10)
        _stop(process)
    return {"rate_per_s": rate, "orders": len(latencies_ms), "unanswered": len(sent),
            "p50_ms": round(percentile(latencies_ms, 0.50), 1),
            "p99_ms": round(percentile(latencies_ms, 0.99), 1)}


def _compare(bootstrap: str, guarantee: str, args: argparse.Namespace, work: Path
             ) -> dict[str, Any]:
    """Bare and topology runs alternated (so a change in the machine's load falls on both),
    the best run of each compared, then the latency phase."""
    # enough records that the timed window spans about a second of copying at ~150k/s
    count = max(args.accounts * args.orders * 2, 200_000)
    bares: list[Rate] = []
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        bares.append(run_bare(bootstrap, guarantee, args.commit_interval_s, count, work))
        runs.append(run_throughput(bootstrap, guarantee, args.commit_interval_s,
                                   args.accounts, args.orders, work))
    bare = max(bares, key=lambda rate: rate.per_s)
    best = max(runs, key=lambda run: run["orders_per_s"])
    latency = run_latency(bootstrap, guarantee, args.commit_interval_s, args.rate,
                          args.seconds, work)
    return {
        "bare_passthrough_records_per_s": round(bare.per_s, 1),
        "bare_passthrough_records_per_cpu_s": round(bare.per_cpu_s, 1),
        **best,
        "input_records_over_bare": round(best["input_records_per_s"] / bare.per_s, 3),
        "input_records_over_bare_per_cpu_s": round(
            best["input_records_per_cpu_s"] / bare.per_cpu_s, 3),
        "runs_orders_per_s": [run["orders_per_s"] for run in runs],
        "runs_bare_records_per_s": [round(rate.per_s, 1) for rate in bares],
        "latency": latency,
        "goals": _goals(best, bare),
    }


# Issue 15's goals for the account topology alone, in one process.
GOAL_ORDERS_PER_S_MIN = 6000  # orders with their fills
GOAL_INPUT_OVER_BARE_MIN = 0.30


def _goals(best: dict[str, Any], bare: Rate) -> dict[str, Any]:
    over_bare = best["input_records_per_s"] / bare.per_s
    return {
        "orders_with_fills_per_s": {
            "figure": best["orders_per_s"], "goal_min": GOAL_ORDERS_PER_S_MIN,
            "met": best["orders_per_s"] >= GOAL_ORDERS_PER_S_MIN,
            "from": "the best topology run, each order a command and its fill"},
        "input_records_over_bare_passthrough": {
            "figure": round(over_bare, 3), "goal_min": GOAL_INPUT_OVER_BARE_MIN,
            "met": over_bare >= GOAL_INPUT_OVER_BARE_MIN,
            "from": f"{best['input_records_per_s']} input records/s over the bare app's "
                    f"{round(bare.per_s, 1)} records/s, measured alternately in this run"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--orders", type=int, default=40, help="orders per account")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase orders/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency phase length")
    parser.add_argument("--commit-interval-s", type=float, default=0.05)
    parser.add_argument("--guarantees", default="exactly-once,at-least-once")
    parser.add_argument("--repeat", type=int, default=2,
                        help="bare and topology runs, alternated; the best of each is reported")
    args = parser.parse_args()
    broker = None
    work = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    bootstrap = args.bootstrap
    if bootstrap is None:
        from compose.embedded import free_port, start_broker

        port = free_port()
        broker = start_broker(port, work / "logs")
        bootstrap = f"127.0.0.1:{port}"
    results: dict[str, Any] = {"benchmark": "account_topology", "machine": machine(),
                               "commit_interval_s": args.commit_interval_s,
                               "partitions": PARTITIONS}
    try:
        for guarantee in args.guarantees.split(","):
            results[guarantee] = _compare(bootstrap, guarantee, args, work)
    finally:
        if broker is not None:
            broker.stop()
    results["load_average_1m_end"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
