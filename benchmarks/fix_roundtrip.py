"""FIX round trips through the gateway with the simulator as peer, on the embedded broker.

Prints JSON: round trips/s for a burst of market orders (orders.route -> gateway ->
NewOrderSingle -> simulator -> fill -> executions), and p50/p99 latencies for paced orders:
end to end (route record produced -> fill record read) and inside the gateway
(NewOrderSingle sent -> fill received, from the gateway's best-execution figures).

    python benchmarks/fix_roundtrip.py [--burst 2000] [--paced 500] [--rate 200] [--py-spy DIR]

With --py-spy, py-spy samples the gateway and the simulator during the burst and writes
collapsed stacks (flamegraph input) to DIR/gateway.txt and DIR/simulator.txt.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, process_cpu_s  # noqa: E402
from compose.embedded import free_port, start_embedded_servers  # noqa: E402
from compose.kafka import create_topics  # noqa: E402
from gateways.fix.config import FixGatewayConfig, MarketMakerConfig  # noqa: E402
from gateways.fix.harness import TopicReader, launch, produce, quote  # noqa: E402
from gateways.fix.store import GatewayStore  # noqa: E402
from gateways.simulator.config import SimulatorConfig  # noqa: E402
from state.ids import account_id_for, order_id_for  # noqa: E402
from state.messages import (  # noqa: E402
    ExecType,
    OrderType,
    RouteNewOrder,
    Side,
    TimeInForce,
)
from state.topics import Topic, topic_specs  # noqa: E402

SHARDS, PARTITIONS_PER_SHARD = 2, 2


def orders(tag: str, count: int, accounts: list[str]) -> list[tuple[str, RouteNewOrder]]:
    out = []
    for i in range(count):
        account = accounts[i % len(accounts)]
        order_id = order_id_for(account, f"{tag}-{i}")
        out.append((account, RouteNewOrder(
            account_id=account, order_id=order_id, cl_ord_id=order_id, symbol="AAPL",
            side=Side.BUY if i % 2 else Side.SELL, order_type=OrderType.MARKET,
            quantity=Decimal(10), time_in_force=TimeInForce.DAY,
            routed_at=dt.datetime.now(dt.UTC), reference_price=Decimal("210.00"))))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


def wait_fills(reader: TopicReader, count: int, timeout_s: float,
               seen_at: dict[str, float]) -> None:
    deadline = time.monotonic() + timeout_s
    while len(seen_at) < count and time.monotonic() < deadline:
        for report in reader.executions(until=10_000, timeout_s=0.05):
            if report.exec_type is ExecType.TRADE and report.leaves_qty == 0:
                seen_at.setdefault(report.order_id, time.time())


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process so far."""
    seconds = process_cpu_s(pid)
    assert seconds is not None, f"process {pid} is gone"
    return seconds


def start_profilers(out_dir: Path | None, gateway_pid: int,
                    simulator_pid: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on both processes (collapsed stacks, idle threads left out)."""
    if out_dir is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--format", "raw",
                              "--rate", "250", "--threads", "--nonblocking",
                              "-o", str(out_dir / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in (("gateway", gateway_pid), ("simulator", simulator_pid))]


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for profiler in profilers:
        profiler.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--paced", type=int, default=500)
    parser.add_argument("--rate", type=int, default=200, help="paced orders per second")
    parser.add_argument("--window", type=int, default=None,
                        help="the gateway's max_in_flight_per_session (default: its own)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="profile both processes during the burst into DIR")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fixbench-"))
    servers = start_embedded_servers(work, 0, redis=False)
    bootstrap = servers.bootstrap_servers
    prefix = "bench."
    create_topics(bootstrap, topic_specs(prefix, SHARDS * PARTITIONS_PER_SHARD, 2))
    port = free_port()
    simulator = launch("gateways.simulator", SimulatorConfig(
        bootstrap_servers=bootstrap, topic_prefix=prefix, port=port,
        store_dir=str(work / "sim")), work / "sim.log")
    gateway = launch("gateways.fix", FixGatewayConfig(
        bootstrap_servers=bootstrap, topic_prefix=prefix, store_dir=str(work / "gw"),
        market_makers=(MarketMakerConfig(name="sim", host="127.0.0.1", port=port,
                                         sender_comp_id="BROKER", target_comp_id="MM1"),),
        **({"max_in_flight_per_session": args.window} if args.window else {})),
        work / "gw.log")
    reader = TopicReader(bootstrap, prefix + Topic.EXECUTIONS)
    accounts = [account_id_for(f"bench{i}", i % SHARDS, SHARDS, PARTITIONS_PER_SHARD)
                for i in range(16)]
    result: dict[str, object] = {}
    try:
        produce(bootstrap, prefix + Topic.QUOTES, [("AAPL", quote("AAPL", "209.90", "210.00"))])
        # Warm up: group join, logon, first round trip.
        warm: dict[str, float] = {}
        produce(bootstrap, prefix + Topic.ORDERS_ROUTE, orders("warm", 10, accounts))
        wait_fills(reader, 10, 60, warm)
        if len(warm) < 10:
            raise SystemExit(f"warm-up failed: {gateway.log_tail()}\n{simulator.log_tail()}")

        burst = orders("burst", args.burst, accounts)
        fills: dict[str, float] = {}
        profilers = start_profilers(args.py_spy, gateway.popen.pid, simulator.popen.pid)
        cpu_before = {"gateway": cpu_s(gateway.popen.pid),
                      "simulator": cpu_s(simulator.popen.pid)}
        started = time.time()
        produce(bootstrap, prefix + Topic.ORDERS_ROUTE, burst)
        wait_fills(reader, args.burst, 120, fills)
        # CPU per round trip is what the code costs; orders/s also depends on what else
        # the machine's two cores are running.
        cpu_ms = {name: round((cpu_s(proc.popen.pid) - cpu_before[name]) * 1000
                              / max(len(fills), 1), 3)
                  for name, proc in (("gateway", gateway), ("simulator", simulator))}
        stop_profilers(profilers)
        elapsed = max(fills.values()) - started if fills else float("nan")

        paced: dict[str, float] = {}
        sent_at: dict[str, float] = {}
        from confluent_kafka import Producer

        from state.topics import encode
        producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                             "linger.ms": 0})
        interval = 1.0 / args.rate
        next_send = time.monotonic()
        for account, order in orders("paced", args.paced, accounts):
            while time.monotonic() < next_send:
                for report in reader.executions(until=10_000, timeout_s=0.0005):
                    if report.exec_type is ExecType.TRADE and report.leaves_qty == 0:
                        paced.setdefault(report.order_id, time.time())
            sent_at[order.order_id] = time.time()
            producer.produce(prefix + Topic.ORDERS_ROUTE, key=account.encode(),
                             value=encode(order))
            producer.poll(0)
            next_send += interval
        producer.flush(10)
        wait_fills(reader, args.paced, 60, paced)
        latencies = [(paced[o] - sent_at[o]) * 1000 for o in paced if o in sent_at]
    finally:
        reader.close()
        gateway.stop()
        simulator.stop()
        servers.stop()
    stats = GatewayStore(work / "gw").stats().get("sim")
    gateway_fill_ms = [float(v) for v in (stats.fill_ms if stats else [])][-args.paced:]
    result = {
        "benchmark": "fix_roundtrip",
        "machine": machine(),
        "burst": {"orders": args.burst, "filled": len(fills),
                  "seconds": round(elapsed, 3),
                  "round_trips_per_s": round(len(fills) / elapsed, 1) if fills else 0,
                  "cpu_ms_per_round_trip": cpu_ms},
        "paced": {"orders": args.paced, "rate_per_s": args.rate, "filled": len(latencies),
                  "route_to_fill_record_ms": {
                      "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                      "mean": round(statistics.fmean(latencies), 3) if latencies else 0.0},
                  "gateway_new_order_to_fill_ms": {
                      "p50": percentile(gateway_fill_ms, 0.5),
                      "p99": percentile(gateway_fill_ms, 0.99),
                      "resolution_ms": 1}},
        "notes": "market orders of 10 shares; the simulator with file store, file log and "
                 "data-dictionary validation on both sides; everything on one machine",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
