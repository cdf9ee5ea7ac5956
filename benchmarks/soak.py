"""Soak: run the whole embedded stack (`brokerage up` as a child) for N minutes under steady
quotes (the synthetic feed) and, optionally, steady orders; print one JSON line per minute:

- quote age p99 per symbol, from /v1/quotes sampled every second (now - venue_time);
- per consumer group: lag, records committed during the minute, the stuck verdict
  (state.liveness: behind and committed still for 60 s);
- orders: count, POST p99, decision p99 (POST until the order is filled or rejected);
- CPU (cores, averaged over the minute) and RSS per process of the stack, broker included;
- /healthz status, and the machine.

    python -m benchmarks.soak --minutes 60 [--orders-per-s 2] [--grow-per-s 300]

`--grow-per-s` adds one-record batches of quotes for a symbol of its own at that rate, to
make the broker's data grow fast (the short CI version). Bounded: everything stops after
`--minutes`, and the stack is stopped with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import machine, percentile
from state.liveness import GroupSampler, Sample, Tracker
from tests.integration.compose.stack_process import (
    StackProcess,
    eventually,
    http,
    start_stack,
)

SYMBOLS = ("AAPL", "MSFT", "TSLA", "GME", "SPY")
QUOTE_SAMPLE_INTERVAL_S = 1.0
GROUP_SAMPLE_INTERVAL_S = 10.0
DECISION_TIMEOUT_S = 15.0
DEPOSIT_AMOUNT = "500000.00"
DEPOSIT_EVERY_ORDERS = 500
TOKEN_RENEW_S = 300.0  # well inside the gateway's default token lifetime (900 s)


def _process_name(process: psutil.Process) -> str:
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "gone"
    text = " ".join(cmdline)
    if "compose.child" in cmdline:
        return cmdline[cmdline.index("compose.child") + 1]
    if "tansu" in text:
        return "broker"
    if "redis-server" in text:
        return "redis"
    if "postgres" in text:
        return "postgres"
    if "compose.cli" in text:
        return "up"
    try:  # a worker process (multiprocessing) is named after its parent
        parent = process.parent()
    except psutil.Error:
        parent = None
    return f"{_process_name(parent)}/worker" if parent is not None else process.name()


class ProcessMeter:
    """CPU cores and RSS per named process (postgres backends summed) between two reads."""

    def __init__(self, stack: StackProcess) -> None:
        self._stack = stack
        self._last: dict[int, float] = {}
        self._last_s = time.monotonic()

    def read(self) -> dict[str, dict[str, float]]:
        now_s = time.monotonic()
        processes = [psutil.Process(self._stack.popen.pid), *self._stack.descendants()]
        totals: dict[str, dict[str, float]] = defaultdict(lambda: {"cores": 0.0, "rss_mb": 0.0})
        seen: dict[int, float] = {}
        for process in processes:
            try:
                times = process.cpu_times()
                cpu_s = times.user + times.system
                rss_mb = process.memory_info().rss / 2**20
            except psutil.Error:
                continue
            seen[process.pid] = cpu_s
            row = totals[_process_name(process)]
            row["cores"] += (cpu_s - self._last.get(process.pid, cpu_s)) / (now_s - self._last_s)
            row["rss_mb"] += rss_mb
        self._last, self._last_s = seen, now_s
        return {name: {k: round(v, 2) for k, v in row.items()} for name, row in totals.items()}


class Soak:
    def __init__(self, stack: StackProcess, orders_per_s: float, grow_per_s: float) -> None:
        self.stack = stack
        self.base = stack.base_url
        self.orders_per_s = orders_per_s
        self.grow_per_s = grow_per_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ages: dict[str, list[float]] = defaultdict(list)
        self.missing: dict[str, int] = defaultdict(int)
        self.post_ms: list[float] = []
        self.decided_ms: list[float] = []
        self.outcomes: dict[str, int] = defaultdict(int)
        self.bootstrap = stack.endpoints()["bootstrap_servers"]
        self.sampler = GroupSampler(self.bootstrap)
        self.tracker = Tracker(stall_s=60.0)
        self.token = ""
        self.token_at = 0.0

    def log_in(self) -> None:
        code, body = http("POST", f"{self.base}/v1/auth/token", {"user_id": "soak"})
        assert code in (200, 201), body
        self.token, self.token_at = body["token"], time.monotonic()

    # ---- load ----------------------------------------------------------------------------

    def quotes_loop(self) -> None:
        query = ",".join(SYMBOLS)
        while not self.stop.wait(QUOTE_SAMPLE_INTERVAL_S):
            if time.monotonic() - self.token_at > TOKEN_RENEW_S:
                self.log_in()  # an hour outlives a token: a 401 would read as missing quotes
            code, body = http("GET", f"{self.base}/v1/quotes?symbols={query}", token=self.token)
            now = dt.datetime.now(dt.UTC)
            found = {q["symbol"]: q for q in (body or {}).get("quotes", [])} if code == 200 \
                else {}
            with self.lock:
                for symbol in SYMBOLS:
                    quote = found.get(symbol)
                    if quote is None:
                        self.missing[symbol] += 1
                        continue
                    venue = dt.datetime.fromisoformat(quote["venue_time"].replace("Z", "+00:00"))
                    self.ages[symbol].append((now - venue).total_seconds())

    def orders_loop(self, account_id: str) -> None:
        n = 0
        started = time.monotonic()
        while not self.stop.is_set():
            due_s = started + n / self.orders_per_s
            if self.stop.wait(max(due_s - time.monotonic(), 0)):
                return
            if n % DEPOSIT_EVERY_ORDERS == 0:  # keep the cash ahead of the buys
                http("POST", f"{self.base}/v1/accounts/{account_id}/deposits",
                     {"amount": DEPOSIT_AMOUNT}, self.token, {"Idempotency-Key": f"soak-dep-{n}"})
            # Buys only: a sell may overtake the buy it would close and be refused.
            body = {"account_id": account_id, "symbol": SYMBOLS[n % len(SYMBOLS)], "side": "buy",
                    "order_type": "market", "quantity": "1", "time_in_force": "day"}
            n += 1
            sent = time.monotonic()
            code, answer = http("POST", f"{self.base}/v1/orders", body, self.token,
                                {"Idempotency-Key": f"soak-{uuid.uuid4().hex}"})
            posted = time.monotonic()
            with self.lock:
                self.post_ms.append((posted - sent) * 1000)
            if code not in (200, 201, 202) or not answer or "order_id" not in answer:
                with self.lock:
                    reason = (answer or {}).get("reason") or (answer or {}).get("code")
                    self.outcomes[f"http_{code}:{reason}"] += 1
                continue
            threading.Thread(target=self._await_decision, daemon=True,
                             args=(account_id, answer["order_id"], sent)).start()

    def _await_decision(self, account_id: str, order_id: str, sent: float) -> None:
        url = f"{self.base}/v1/orders/{order_id}?account_id={account_id}"
        while time.monotonic() - sent < DECISION_TIMEOUT_S and not self.stop.is_set():
            code, body = http("GET", url, token=self.token)
            state = (body or {}).get("state") if code == 200 else None
            if state in ("filled", "rejected", "canceled", "expired"):
                with self.lock:
                    self.decided_ms.append((time.monotonic() - sent) * 1000)
                    self.outcomes[state] += 1
                return
            time.sleep(0.05)
        with self.lock:
            self.outcomes["undecided"] += 1

    def grow_loop(self) -> None:
        from confluent_kafka import Producer

        # One record per batch, like the feed at its rate: the broker keeps one object each.
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0,
                             "batch.num.messages": 1})
        n = 0
        started = time.monotonic()
        while not self.stop.wait(0.01):
            due = int((time.monotonic() - started) * self.grow_per_s) - n
            for _ in range(due):
                now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
                value = json.dumps({"type": "quote", "v": 1, "symbol": "ZZGROW", "bid": "10.00",
                                    "ask": "10.01", "bid_size": "100", "ask_size": "100",
                                    "venue_time": now}).encode()
                try:
                    producer.produce("quotes", key="ZZGROW", value=value, partition=n % 4)
                except BufferError:
                    producer.poll(0.05)
                n += 1
            producer.poll(0)
        producer.flush(5)

    def groups_loop(self) -> None:
        while not self.stop.wait(GROUP_SAMPLE_INTERVAL_S):
            try:
                samples = self.sampler.sample(time.monotonic())
            except Exception as error:  # noqa: BLE001 - report and sample again
                print(json.dumps({"group_sample_error": str(error)}), file=sys.stderr)
                continue
            with self.lock:
                for group, sample in samples.items():
                    self.tracker.add(group, sample)

    # ---- the per-minute report -----------------------------------------------------------

    def minute(self, index: int, meter: ProcessMeter,
               committed_before: dict[str, dict[Any, int]]) -> dict[str, Any]:
        with self.lock:
            ages, self.ages = self.ages, defaultdict(list)
            missing, self.missing = self.missing, defaultdict(int)
            post, self.post_ms = self.post_ms, []
            decided, self.decided_ms = self.decided_ms, []
            outcomes, self.outcomes = self.outcomes, defaultdict(int)
            statuses = {s.group: s for s in self.tracker.statuses()}
            newest: dict[str, Sample] = {g: h[-1] for g, h in self.tracker.history.items() if h}
        groups = {}
        for group, sample in newest.items():
            before = committed_before.get(group, {})
            moved = sum(max(o - before.get(k, o), 0) for k, o in sample.committed.items())
            status = statuses.get(group)
            groups[group] = {"lag": status.lag if status else None, "committed_moved": moved,
                             "stuck": bool(status and status.stuck)}
            committed_before[group] = dict(sample.committed)
        code, health = http("GET", f"{self.base}/healthz")
        return {
            "minute": index,
            "quote_age_p99_s": {s: round(percentile(ages[s], 0.99), 3) if ages[s] else None
                                for s in SYMBOLS},
            "quote_missing_samples": dict(missing),
            "groups": groups,
            "orders": {"n": len(post), "post_p99_ms": round(percentile(post, 0.99), 1)
                       if post else None,
                       "decided_p99_ms": round(percentile(decided, 0.99), 1) if decided else None,
                       "outcomes": dict(outcomes)},
            "processes": meter.read(),
            "healthz": {"status": code, "detail": (health or {}).get("detail")},
            "machine": machine(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--orders-per-s", type=float, default=0.0)
    parser.add_argument("--grow-per-s", type=float, default=0.0)
    parser.add_argument("--data-dir", default="")
    args = parser.parse_args()
    # Stopped with SIGTERM, the soak still stops the stack it started (the finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        data_dir = Path(args.data_dir) if args.data_dir else Path(scratch) / "data"
        stack = start_stack(data_dir)
        try:
            run(stack, args)
        finally:
            code = stack.stop()
            print(json.dumps({"stack_exit_code": code}), flush=True)


def run(stack: StackProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Soak a started stack for `args.minutes`; prints and returns one row per minute."""
    stack.read_until("healthy")
    soak = Soak(stack, args.orders_per_s, args.grow_per_s)
    soak.log_in()

    def quoted() -> bool:  # orders before the first quotes are refused no_reference_price
        code, body = http("GET", f"{soak.base}/v1/quotes?symbols={','.join(SYMBOLS)}",
                          token=soak.token)
        return code == 200 and len(body["quotes"]) == len(SYMBOLS)

    eventually(quoted, timeout_s=60)
    threads = [threading.Thread(target=soak.quotes_loop, daemon=True),
               threading.Thread(target=soak.groups_loop, daemon=True)]
    if args.orders_per_s > 0:
        code, account = http("POST", f"{soak.base}/v1/accounts", {}, soak.token)
        assert code in (200, 201), account
        threads.append(threading.Thread(target=soak.orders_loop, daemon=True,
                                        args=(account["account_id"],)))
    if args.grow_per_s > 0:
        threads.append(threading.Thread(target=soak.grow_loop, daemon=True))
    meter = ProcessMeter(stack)
    committed_before: dict[str, dict[Any, int]] = {}
    for thread in threads:
        thread.start()
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        for index in range(1, int(args.minutes) + 1):
            time.sleep(max(started + 60 * index - time.monotonic(), 0))
            rows.append(soak.minute(index, meter, committed_before))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        soak.stop.set()
        for thread in threads:
            thread.join(10)
    return rows


if __name__ == "__main__":
    main()
