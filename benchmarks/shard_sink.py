"""Shard sink benchmark; prints one JSON object.

1. Through the sink: N ledger transactions per shard (deposits and fills, 3 entries each on
   average, over many accounts) are produced to `ledger.postings` first; then the sink service
   (one worker process per shard, as deployed) starts and lands them. A sampler counts
   `ledger_entries` per shard; the rate is the entries landed between the sample where 10 %
   had landed and the one where all had, over that time (so process start-up and the consumer
   group join are excluded, the steady state is not).
2. Direct: the same transactions through `write_batch` from this process, no broker (the
   database side of the sink alone).
3. Denominator, in the same run: the same entry rows COPYed as fast as psycopg can (binary
   format, psycopg's C dumpers; the sink writes the same way) into a table of the same shape
   and indexes as `ledger_entries` (no triggers, no staging, no balances), one shard at a
   time, before and after the sink (the machine is shared: the denominator is the mean of the
   two); and once more with every shard's COPY at the same time, one process each, as the
   sink runs.
4. CPU, because the machine is shared and wall-clock rates move with everyone's load: CPU
   seconds per entry (user + system, from /proc/<pid>/stat) of the sink's worker process and
   of its PostgreSQL backend over the same window as the rate, and of the raw COPY's client
   process and backend. `sink_vs_raw_copy_cpu` is the ratio of entries per CPU-second.

Usage: python benchmarks/shard_sink.py [--transactions N] [--accounts A]
Starts its own broker and one PostgreSQL per shard on loopback ports (compose.embedded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
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
import psycopg  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from benchmarks.common import machine, process_cpu_s  # noqa: E402
from compose.embedded import start_embedded_servers  # noqa: E402
from compose.kafka import prepare_topics  # noqa: E402
from sinks.config import SinkConfig  # noqa: E402
from state import ledger_accounts as la  # noqa: E402
from state import topics as t  # noqa: E402
from state.ids import account_id_for, txn_id_for  # noqa: E402
from state.messages import LedgerEntry, LedgerTransaction  # noqa: E402
from state.shard_store import migrate, write_batch  # noqa: E402

SHARDS = 2
PARTITIONS_PER_SHARD = 2
T0 = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA", "SPY")


def _transactions(shard: int, count: int, accounts: int) -> list[LedgerTransaction]:
    ids = [account_id_for(f"bench{shard}-{i}", shard, SHARDS, PARTITIONS_PER_SHARD)
           for i in range(accounts)]
    out: list[LedgerTransaction] = []
    for n in range(count):
        account = ids[n % accounts]
        when = T0 + dt.timedelta(milliseconds=n)
        if n % 2 == 0:  # a deposit: 2 entries
            amount = Decimal(1000 + n % 97)
            entries: tuple[LedgerEntry, ...] = (LedgerEntry(la.BANK_ACH, la.USD, -amount),
                       LedgerEntry(la.user(account, la.CASH), la.USD, amount))
            kind = "deposit"
        else:  # a buy fill: 4 entries
            symbol, qty = SYMBOLS[n % len(SYMBOLS)], Decimal(1 + n % 5)
            cash = qty * Decimal("101.25")
            entries = (LedgerEntry(la.user(account, la.CASH), la.USD, -cash),
                       LedgerEntry(la.clearing("mm1"), la.USD, cash),
                       LedgerEntry(la.clearing("mm1"), symbol, -qty),
                       LedgerEntry(la.user(account, la.SHARES_UNSETTLED), symbol, qty))
            kind = "fill"
        cause = f"bench:{shard}:{n}"
        out.append(LedgerTransaction(txn_id=txn_id_for(cause, kind), account_id=account,
                                     kind=kind, cause_id=cause, occurred_at=when,
                                     entries=entries))
    return out


def _fresh_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_dsn.rsplit("/", 1)[0] + f"/{name}"


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()
    return int(row[0]) if row else 0


def _backend_pids(conn: psycopg.Connection) -> list[int]:
    """The other client backends of this database (the sink's connections)."""
    return [row[0] for row in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")]


def _worker_pids(supervisor: int, shards: int) -> dict[int, int]:
    """shard -> pid of the sink's worker processes (children of the supervisor)."""
    workers: dict[int, int] = {}
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return workers
    for child in map(int, children):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            shard = msgspec.json.decode(argv[-2] or argv[-1]).get("shard")
        except (OSError, IndexError, msgspec.DecodeError, AttributeError):
            continue
        if isinstance(shard, int) and 0 <= shard < shards:
            workers[shard] = child
    return workers


class _CpuMeter:
    """CPU seconds of a changing set of processes between two marks: a process seen late
    counts from its first sighting, one gone early up to its last."""

    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            cpu = process_cpu_s(pid)
            if cpu is not None:
                self._first.setdefault(pid, cpu)
                self._last[pid] = cpu

    def snapshot(self) -> dict[int, float]:
        return dict(self._last)

    def between(self, start: dict[int, float], end: dict[int, float]) -> float:
        return sum(cpu - start.get(pid, self._first[pid]) for pid, cpu in end.items())


def _through_sink(bootstrap: str, prefix: str, dsns: list[str], expected: list[int],
                  timeout_s: float) -> list[dict[str, Any]]:
    config = SinkConfig(bootstrap_servers=bootstrap, topic_prefix=prefix, shard_dsns=tuple(dsns),
                        partitions_per_shard=PARTITIONS_PER_SHARD, consumer_group=prefix + "sink")
    popen = subprocess.Popen([sys.executable, "-m", "sinks.service",
                              msgspec.json.encode(config).decode()],
                             cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL)
    # (time, entries landed, worker CPU so far, backend CPU by pid) per shard
    samples: list[list[tuple[float, int, dict[int, float], dict[int, float]]]] = [
        [] for _ in dsns]
    workers = [_CpuMeter() for _ in dsns]
    backends = [_CpuMeter() for _ in dsns]
    counters = [psycopg.connect(dsn, autocommit=True) for dsn in dsns]
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            worker_pids = _worker_pids(popen.pid, len(dsns))
            for shard, conn in enumerate(counters):
                if not samples[shard] or samples[shard][-1][1] < expected[shard]:
                    row = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()
                    workers[shard].sample([worker_pids[shard]] if shard in worker_pids else [])
                    backends[shard].sample(_backend_pids(conn))
                    samples[shard].append((time.monotonic(), int(row[0]) if row else 0,
                                           workers[shard].snapshot(),
                                           backends[shard].snapshot()))
            if all(s and s[-1][1] >= e for s, e in zip(samples, expected, strict=True)):
                break
            time.sleep(0.05)
    finally:
        for conn in counters:
            conn.close()
        popen.send_signal(signal.SIGTERM)
        popen.wait(30)
    results = []
    for shard, points in enumerate(samples):
        done = points[-1]
        assert done[1] >= expected[shard], f"shard {shard}: {done[1]} of {expected[shard]}"
        first = next(p for p in points if p[1] >= expected[shard] * 0.1)
        elapsed = max(done[0] - first[0], 1e-6)
        landed = max(done[1] - first[1], 1)
        worker_s = workers[shard].between(first[2], done[2])
        backend_s = backends[shard].between(first[3], done[3])
        results.append({"entries": expected[shard],
                        "entries_per_s": round((done[1] - first[1]) / elapsed),
                        "seconds_from_start": round(done[0] - started, 2),
                        "cpu_us_per_entry": {"worker": round(worker_s / landed * 1e6, 2),
                                             "backend": round(backend_s / landed * 1e6, 2),
                                             "total": round((worker_s + backend_s) / landed
                                                            * 1e6, 2)}})
    return results


def _direct(dsn: str, postings: list[LedgerTransaction], batch: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for first in range(0, len(postings), batch):
            write_batch(conn, postings[first:first + batch], [])
    return time.perf_counter() - started


class _Timed(msgspec.Struct, frozen=True):
    seconds: float
    client_cpu_s: float
    backend_cpu_s: float


def _raw_copy(dsn: str, postings: list[LedgerTransaction], table: str = "raw_entries"
              ) -> _Timed:
    with psycopg.connect(dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (LIKE ledger_entries INCLUDING ALL)")
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        conn.commit()
        started, client_before = time.perf_counter(), time.process_time()
        backend_before = process_cpu_s(backend) or 0.0
        with conn.cursor() as cur, cur.copy(
                f"COPY {table} (txn_id, leg, ledger_account, asset, amount, account_id, "
                "occurred_at) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "int2", "text", "text", "numeric", "text", "timestamptz"])
            for posting in postings:
                for leg, entry in enumerate(posting.entries):
                    copy.write_row((posting.txn_id, leg, entry.ledger_account, entry.asset,
                                    entry.amount, posting.account_id, posting.occurred_at))
        conn.commit()
        return _Timed(time.perf_counter() - started, time.process_time() - client_before,
                      (process_cpu_s(backend) or 0.0) - backend_before)


def _raw_copy_of_shard(dsn: str, shard: int, transactions: int, accounts: int) -> float:
    """In a process of its own (the same data, regenerated), for the concurrent raw COPY."""
    return _raw_copy(dsn, _transactions(shard, transactions, accounts),
                     "raw_concurrent").seconds


def _raw_copy_concurrent(dsns: list[str], transactions: int, accounts: int) -> list[float]:
    """Raw COPY into every shard at once, one process per shard: the sink's concurrency."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(dsns)) as pool:
        return pool.starmap(_raw_copy_of_shard, [(dsn, shard, transactions, accounts)
                                                 for shard, dsn in enumerate(dsns)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Enough for the steady state to dominate: with a few seconds of work, the first rows
    # land before reading has warmed up, or (writing only at checkpoints) after most records
    # were read already, and the 10 % .. 100 % window measures either start-up or the
    # database alone.
    parser.add_argument("--transactions", type=int, default=100_000, help="per shard")
    parser.add_argument("--accounts", type=int, default=500, help="per shard")
    parser.add_argument("--batch", type=int, default=5000, help="write_batch size (direct)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    data = [_transactions(shard, args.transactions, args.accounts) for shard in range(SHARDS)]
    entries = [sum(len(p.entries) for p in postings) for postings in data]
    with tempfile.TemporaryDirectory(prefix="bench-shard-sink-") as tmp:
        servers = start_embedded_servers(Path(tmp), SHARDS)
        try:
            prefix = f"b{uuid.uuid4().hex[:6]}."
            # the sink waits for the broker's epoch record (state/epoch.py) before it reads
            prepare_topics(servers.bootstrap_servers, prefix,
                           t.topic_specs(prefix, SHARDS * PARTITIONS_PER_SHARD, 1))
            producer = Producer({"bootstrap.servers": servers.bootstrap_servers,
                                 "partitioner": "murmur2_random", "linger.ms": 20,
                                 "queue.buffering.max.messages": 1_000_000})
            for postings in data:
                for posting in postings:
                    producer.produce(prefix + t.Topic.LEDGER_POSTINGS,
                                     key=posting.account_id.encode(), value=t.encode(posting))
                    producer.poll(0)
            assert producer.flush(60) == 0
            sink_dsns, direct_dsns, raw_dsns = [], [], []
            for dsn in servers.shard_dsns:
                sink_dsns.append(_fresh_database(dsn, "bench_sink"))
                direct_dsns.append(_fresh_database(dsn, "bench_direct"))
                raw_dsns.append(_fresh_database(dsn, "bench_raw"))
            for dsn in sink_dsns + direct_dsns + raw_dsns:
                migrate(dsn)
            # The machine is shared: raw COPY is measured before and after the sink, and the
            # denominator is their mean.
            raw_before_all = [_raw_copy(raw_dsns[shard], data[shard], "raw_before")
                          for shard in range(SHARDS)]
            sink = _through_sink(servers.bootstrap_servers, prefix, sink_dsns, entries,
                                 args.timeout)
            rows: list[dict[str, Any]] = []
            for shard in range(SHARDS):
                direct_s = _direct(direct_dsns[shard], data[shard], args.batch)
                raw_after = _raw_copy(raw_dsns[shard], data[shard], "raw_after")
                raw_before = raw_before_all[shard]
                raw_rate = entries[shard] * 2 / (raw_before.seconds + raw_after.seconds)
                raw_cpu = {
                    "client": (raw_before.client_cpu_s + raw_after.client_cpu_s)
                    / (2 * entries[shard]) * 1e6,
                    "backend": (raw_before.backend_cpu_s + raw_after.backend_cpu_s)
                    / (2 * entries[shard]) * 1e6}
                raw_cpu["total"] = raw_cpu["client"] + raw_cpu["backend"]
                sink_cpu = sink[shard]["cpu_us_per_entry"]
                rows.append({
                    "shard": shard,
                    "sink_entries_per_s": sink[shard]["entries_per_s"],
                    "sink_seconds_from_start": sink[shard]["seconds_from_start"],
                    "direct_write_batch_entries_per_s": round(entries[shard] / direct_s),
                    "raw_copy_entries_per_s": round(raw_rate),
                    "raw_copy_before_after_entries_per_s": [
                        round(entries[shard] / raw_before.seconds),
                        round(entries[shard] / raw_after.seconds)],
                    "sink_vs_raw_copy": round(sink[shard]["entries_per_s"] / raw_rate, 3),
                    "direct_vs_raw_copy": round(entries[shard] / direct_s / raw_rate, 3),
                    "sink_cpu_us_per_entry": sink_cpu,
                    "raw_copy_cpu_us_per_entry": {k: round(v, 2) for k, v in raw_cpu.items()},
                    "sink_vs_raw_copy_cpu": round(raw_cpu["total"] / sink_cpu["total"], 3)
                    if sink_cpu["total"] else None,
                })
            concurrent_s = _raw_copy_concurrent(raw_dsns, args.transactions, args.accounts)
            for row, seconds, count in zip(rows, concurrent_s, entries, strict=True):
                rate = count / seconds
                row["raw_copy_all_shards_at_once_entries_per_s"] = round(rate)
                row["sink_vs_raw_copy_all_shards_at_once"] = round(
                    row["sink_entries_per_s"] / rate, 3)
        finally:
            servers.stop()
    print(json.dumps({
        "benchmark": "shard_sink", "machine": machine(),
        "load_average_1m_at_start": load_at_start, "shards": SHARDS,
        "partitions_per_shard": PARTITIONS_PER_SHARD,
        "transactions_per_shard": args.transactions, "entries_per_shard": entries,
        "accounts_per_shard": args.accounts, "batch_size_max": args.batch,
        "note": "sink and raw COPY share the machine with the broker and both PostgreSQL "
                "servers; the sink runs both shards at once; raw_copy_entries_per_s (the "
                "denominator of sink_vs_raw_copy) is one shard at a time, the mean of a run "
                "before and one after the sink; raw_copy_all_shards_at_once runs every "
                "shard's COPY at the same time, as the sink does. Wall-clock rates move with "
                "the machine's load; the *_cpu_us_per_entry figures (worker process + its "
                "PostgreSQL backend; raw COPY client + backend) do much less, and "
                "sink_vs_raw_copy_cpu is their ratio (entries per CPU-second). The broker's "
                "CPU is in neither.",
        "results": rows}, indent=2))


if __name__ == "__main__":
    main()
