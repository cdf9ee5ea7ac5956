"""`brokerage chaos`: the embedded stack under load, single-component faults at seeded moments,
then an independent audit.

1. `brokerage up` starts as a child on a fresh data dir (free loopback ports, 2 shards).
2. Load: `--workers` clients, each with accounts of its own on every shard, at `--rate`
   operations a second in all (`ChaosClient`: market, limit and stop orders, 1,000-share orders
   filled in parts, cancels, replaces, deposits, withdrawals, ACH returns), every request with
   an idempotency key and retried with it until it gets a definite answer.
3. Faults (compose/chaos/faults.py) at the schedule's moments, one at a time: each is injected,
   its window (if any) ends, and its recovery time is measured: from the fault until a new
   market order on every shard, placed after it, is filled in its shard (probe accounts of
   their own). A fault whose moment comes before the previous one recovered waits for it.
4. The load stops; every request without a definite answer is retried until it has one; the
   run waits until no acknowledged order waits for a decision and the shards stop changing;
   then the auditor (compose/chaos/auditor.py) and `brokerage reconcile` check the records.

The result is one JSON document on standard output; progress goes to standard error (a rich
progress bar on a terminal). Exit 0 only when every fault was injected and recovered, the audit
passed and the stack stopped cleanly. The seed decides the schedule and each client's sequence
of choices: a failing seed replays the same faults at the same moments and the same load (the
machine's timing still varies, so the exact interleaving does not replay).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from compose.chaos.auditor import TERMINAL_STATES, AuditReport, Journal
from compose.chaos.client import ChaosClient, Client
from compose.chaos.faults import Fault, Injection, Injector, parse_faults, plan
from compose.chaos.settle import audit_stack, settle, shard_dsns, wait_for_quotes
from compose.chaos.stack_process import StackProcess, start_stack, stop_everything
from compose.exceptions import ComposeError

SHARDS = 2  # the stack file of compose.chaos.stack_process
START_TIMEOUT_S = 180.0
ACCOUNT_DEPOSIT = Decimal("250000.00")
PROBE_DEPOSIT = Decimal("1000000.00")
PROBE_SYMBOL = "SPY"
RETRY_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 120.0
BACK_TIMEOUT_S = 120.0  # a killed process: how long to look for the one started in its place


@dataclass(frozen=True)
class ChaosOptions:
    seed: int
    minutes: float = 5.0
    faults: str = "all"
    accounts: int = 16
    workers: int = 4
    rate: float = 8.0  # operations a second, every worker together
    data_dir: Path | None = None
    keep: bool = False
    progress: bool = False  # a rich progress bar on standard error
    recovery_timeout_s: float = 180.0

    def command(self) -> str:
        """The command line that replays this run."""
        return (f"brokerage chaos --seed {self.seed} --minutes {self.minutes:g} "
                f"--faults {self.faults} --accounts {self.accounts} --workers {self.workers} "
                f"--rate {self.rate:g}")


# ---- progress --------------------------------------------------------------------------------


class Progress:
    """Lines on standard error, and a rich progress bar over the load's seconds when asked
    and rich is importable (quixstreams brings it)."""

    def __init__(self, total_s: float, bar: bool) -> None:
        self.total_s = total_s
        self._bar: Any = None
        self._task: Any = None
        if bar:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
                from rich.progress import Progress as RichProgress
            except ImportError:
                return
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                                     TimeRemainingColumn(), console=Console(stderr=True),
                                     transient=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Progress]:
        if self._bar is None:
            yield self
            return
        with self._bar:
            self._task = self._bar.add_task("load", total=self.total_s)
            yield self
        self._task = None

    def say(self, line: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def update(self, done_s: float, what: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=min(done_s, self.total_s), description=what)


# ---- the probes: "the stack serves a new order again" -----------------------------------------


@dataclass
class Prober:
    """One probe account per shard; a market buy on each, placed after a fault, must fill."""

    client: Client
    dsns: list[str]
    accounts: dict[int, str] = field(default_factory=dict)  # shard -> account
    _connections: dict[int, psycopg.Connection[Any]] = field(default_factory=dict)

    def served_again(self, since: float, timeout_s: float) -> float | None:
        """Seconds from `since` until a new order on every shard filled; None on timeout."""
        deadline = since + timeout_s
        for shard, account_id in sorted(self.accounts.items()):
            if not self._one_fills(shard, account_id, deadline):
                return None
        return time.monotonic() - since

    def _one_fills(self, shard: int, account_id: str, deadline: float) -> bool:
        while time.monotonic() < deadline:
            placed = self.client.order(account_id, PROBE_SYMBOL, "buy", "market", 1)
            while not placed.definite and time.monotonic() < deadline:
                time.sleep(0.3)
                self.client.send(placed)
            if not placed.acknowledged or not placed.order_id:
                time.sleep(0.5)  # refused (e.g. no reference price yet): a new order
                continue
            state = self._final_state(shard, placed.order_id, deadline)
            if state == "filled":
                return True
        return False

    def _final_state(self, shard: int, order_id: str, deadline: float) -> str | None:
        while time.monotonic() < deadline:
            try:
                conn = self._connections.get(shard)
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsns[shard], connect_timeout=2, autocommit=True)
                    self._connections[shard] = conn
                row = conn.execute("SELECT state FROM orders WHERE order_id = %s",
                                   (order_id,)).fetchone()
            except psycopg.OperationalError:
                row = None  # the shard restarting: connect again next time
                self._close(shard)
            if row is not None and str(row[0]) in TERMINAL_STATES:
                return str(row[0])
            time.sleep(0.2)
        return None

    def _close(self, shard: int) -> None:
        conn = self._connections.pop(shard, None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        for shard in list(self._connections):
            self._close(shard)


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    options: ChaosOptions
    progress: Progress
    schedule: list[Fault]
    stack: StackProcess | None = None
    workers: list[ChaosClient] = field(default_factory=list)
    prober: Prober | None = None
    injections: list[Injection] = field(default_factory=list)
    load_errors: list[str] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    baseline_s: float | None = None
    load_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def say(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.started:6.1f} s] {line}"
        self.timeline.append(stamped)
        self.progress.say(f"chaos: {stamped}")

    # ---- set-up ----------------------------------------------------------------------

    def open_accounts(self, stack: StackProcess) -> None:
        """`accounts` accounts spread over the workers, until every shard has some; one probe
        account per shard. Deposits for all of them, each retried until answered."""
        options = self.options
        producer = KafkaCommandProducer(stack.endpoints()["bootstrap_servers"])
        self.workers = [
            ChaosClient(stack.base_url, random.Random(f"chaos-load:{options.seed}:{n}"),
                        producer=producer)
            for n in range(options.workers)]
        shards: Counter[int] = Counter()
        n = 0
        while (n < options.accounts or len(shards) < SHARDS) and n < options.accounts * 4:
            worker = self.workers[n % len(self.workers)]
            account_id = worker.open_account(f"chaos-w{n % len(self.workers)}", f"acct-{n}")
            shards[worker.account_shards[account_id]] += 1
            n += 1
        probe = Client(stack.base_url, random.Random(f"chaos-probe:{options.seed}"),
                       key_prefix="probe-")
        self.prober = Prober(probe, shard_dsns(stack))
        n = 0
        while len(self.prober.accounts) < SHARDS and n < 40:
            account_id = probe.open_account("chaos-probe", f"probe-acct-{n}")
            self.prober.accounts.setdefault(probe.account_shards[account_id], account_id)
            n += 1
        if len(self.prober.accounts) < SHARDS or len(shards) < SHARDS:
            raise ComposeError(f"accounts on shards {sorted(shards)}, probes on "
                               f"{sorted(self.prober.accounts)}: not every shard has one")
        for worker in self.workers:
            for account_id in worker.journal.accounts:
                worker.new("deposit", account_id, {"amount": str(ACCOUNT_DEPOSIT)})
        for account_id in probe.journal.accounts:
            probe.new("deposit", account_id, {"amount": str(PROBE_DEPOSIT)})
        for client in [*self.workers, probe]:
            client.settle_requests(RETRY_TIMEOUT_S)
        self.say(f"{sum(len(w.journal.accounts) for w in self.workers)} accounts on shards "
                 f"{dict(sorted(shards.items()))} for {len(self.workers)} workers, "
                 f"{len(self.prober.accounts)} probe accounts")

    # ---- the load --------------------------------------------------------------------

    def _work(self, worker: ChaosClient, stop: threading.Event) -> None:
        pace_s = len(self.workers) / self.options.rate if self.options.rate > 0 else 0.0
        try:
            self.ops.append(worker.run(stop, ops_max=10**7, pace_s=pace_s))
        except Exception as error:  # noqa: BLE001 - said in the result, and a failure
            self.load_errors.append(repr(error))

    def run_load_and_faults(self, stack: StackProcess) -> None:
        assert self.prober is not None
        injector = Injector(stack, self.say)
        stop = threading.Event()
        threads = [threading.Thread(target=self._work, args=(w, stop), daemon=True,
                                    name=f"chaos-load-{n}") for n, w in enumerate(self.workers)]
        load_s = self.options.minutes * 60
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            self.baseline_s = self.prober.served_again(time.monotonic(), 60.0)
            self.say(f"load under way; a new order fills on every shard in "
                     f"{_seconds(self.baseline_s)} without faults")
            for fault in self.schedule:
                self._wait_until(t0, fault.planned_at_s, f"next: {fault.describe()}")
                injection = self._inject(injector, fault, t0)
                self.injections.append(injection)
                if injection.error is None and injection.recovery_s is None:
                    self.say("the stack did not serve a new order again: no more faults")
                    break
            self._wait_until(t0, load_s, "load, no more faults")
        finally:
            injector.release_all()
            self.prober.close()
            stop.set()
            for thread in threads:
                thread.join(60.0)
            self.load_s = time.monotonic() - t0
        self.say(f"load stopped after {self.load_s:.0f} s: {sum(self.ops)} operations")

    def _wait_until(self, t0: float, at_s: float, what: str) -> None:
        while (now := time.monotonic() - t0) < at_s:
            self.progress.update(now, what)
            time.sleep(min(0.5, at_s - now))
        self.progress.update(time.monotonic() - t0, what)

    def _inject(self, injector: Injector, fault: Fault, t0: float) -> Injection:
        assert self.prober is not None
        injection = Injection(fault, at_s=time.monotonic() - t0)
        try:
            injector.start(injection)
        except (ComposeError, OSError) as error:
            injection.error = str(error)
            self.say(f"{fault.describe()}: NOT injected: {error}")
            return injection
        since = time.monotonic()
        self.say(f"{fault.describe()} (pid {injection.pid or '-'})")
        window = None
        if fault.window_s:
            window = threading.Timer(fault.window_s, injector.end, args=(injection,))
            window.start()
        watch = None
        if fault.kind.startswith("kill_"):
            watch = threading.Thread(target=self._watch_back, args=(injector, injection, since),
                                     daemon=True)
            watch.start()
        injection.recovery_s = self.prober.served_again(since, self.options.recovery_timeout_s)
        if window is not None:
            window.join()
        if watch is not None:
            watch.join(BACK_TIMEOUT_S)
        self.say(f"{fault.describe()}: "
                 + (f"a new process in {injection.back_after_s:.1f} s, "
                    if injection.back_after_s is not None else "")
                 + f"served a new order again after {_seconds(injection.recovery_s)}")
        return injection

    def _watch_back(self, injector: Injector, injection: Injection, since: float) -> None:
        deadline = since + BACK_TIMEOUT_S
        while time.monotonic() < deadline:
            process = injector.replaced(injection)
            if process is not None:
                injection.new_pid = process.pid
                injection.back_after_s = time.monotonic() - since
                return
            time.sleep(0.1)
        injection.notes.append(f"no new process within {BACK_TIMEOUT_S:.0f} s")

    # ---- the end ---------------------------------------------------------------------

    def journal(self) -> Journal:
        clients: list[Client] = [*self.workers]
        if self.prober is not None:
            clients.append(self.prober.client)
        merged = Journal()
        for client in clients:
            merged.accounts.update(client.journal.accounts)
            merged.requests += client.journal.requests
        return merged

    def settle_and_audit(self, stack: StackProcess) -> AuditReport:
        clients: list[Client] = [*self.workers]
        if self.prober is not None:
            clients.append(self.prober.client)
        retries = [threading.Thread(target=c.settle_requests, args=(RETRY_TIMEOUT_S,),
                                    daemon=True) for c in clients]
        for thread in retries:
            thread.start()
        for thread in retries:
            thread.join(RETRY_TIMEOUT_S + 30)
        journal = self.journal()
        waiting = settle(journal, shard_dsns(stack), SETTLE_TIMEOUT_S)
        self.say(f"settled: {sum(not r.definite for r in journal.requests)} requests without a "
                 f"definite answer, {len(waiting)} acknowledged orders still waiting for a "
                 f"decision {waiting[:5]}")
        self.say("auditing ...")
        return audit_stack(journal, stack, reconcile_timeout_s=120.0)


def _seconds(value: float | None) -> str:
    return "never (timed out)" if value is None else f"{value:.1f} s"


class KafkaCommandProducer:
    """The bank's producer of `ach_return`: keyed by account, partitioned by murmur2 as the
    README asks of every producer of `orders.commands`."""

    def __init__(self, bootstrap: str, prefix: str = "") -> None:
        from confluent_kafka import Producer

        from state.topics import Topic

        self.topic = prefix + Topic.ORDERS_COMMANDS
        # Not the idempotent producer: a broker restarted empty does not know its producer id
        # (the consumer is idempotent by the command's key instead). Quiet: a broker down is
        # one of the faults, and what it costs shows as commands published again.
        self.producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                                  "log_level": 0, "error_cb": lambda error: None})
        self.lock = threading.Lock()

    def publish(self, account_id: str, value: bytes) -> None:
        with self.lock:
            self.producer.produce(self.topic, key=account_id.encode(), value=value)
            self.producer.poll(0)


# ---- figures ---------------------------------------------------------------------------------


def order_states(journal: Journal, dsns: list[str]) -> Counter[str]:
    """How the acknowledged orders of the journal ended, from the shards."""
    states: dict[str, str] = {}
    for dsn in dsns:
        with contextlib.suppress(psycopg.OperationalError), \
                psycopg.connect(dsn, connect_timeout=5) as conn:
            for order_id, state in conn.execute("SELECT order_id, state FROM orders"):
                states[str(order_id)] = str(state)
    return Counter(states.get(r.order_id or "", "missing") for r in journal.requests
                   if r.kind == "order" and r.acknowledged)


def load_figures(journal: Journal, states: Counter[str], load_s: float,
                 ops: int) -> dict[str, Any]:
    kinds = Counter(r.kind for r in journal.requests)
    orders = [r for r in journal.requests if r.kind == "order"]
    types = Counter(f"{r.body['order_type']} {r.body['side']}" for r in orders)
    outcomes: dict[str, Counter[str]] = {kind: Counter() for kind in sorted(kinds)}
    for request in journal.requests:
        outcomes[request.kind]["acknowledged" if request.acknowledged else
                               "refused" if request.definite else "without_answer"] += 1
    return {
        "seconds": round(load_s, 1), "operations": ops,
        "accounts": len(journal.accounts), "requests": len(journal.requests),
        "requests_by_kind": dict(sorted(kinds.items())),
        "outcomes_by_kind": {kind: dict(sorted(counts.items()))
                             for kind, counts in outcomes.items()},
        "attempts": sum(r.attempts for r in journal.requests),
        "retried": sum(r.attempts > 1 for r in journal.requests),
        "orders": len(orders),
        "orders_by_type": dict(sorted(types.items())),
        "orders_1000_shares": sum(Decimal(r.body["quantity"]) >= 1000 for r in orders),
        "orders_acknowledged": sum(r.acknowledged for r in orders),
        "orders_refused": sum(r.definite and not r.acknowledged for r in orders),
        "orders_without_answer": sum(not r.definite for r in orders),
        "acknowledged_orders_ended": dict(sorted(states.items())),
        "answers_by_status": dict(sorted(Counter(str(r.status) for r in journal.requests)
                                         .items())),
    }


def run_chaos(options: ChaosOptions) -> tuple[int, dict[str, Any]]:
    """The whole run; (exit code, the result as JSON-ready data)."""
    chosen = parse_faults(options.faults)
    schedule = plan(options.seed, chosen, options.minutes * 60, SHARDS)
    progress = Progress(options.minutes * 60, options.progress)
    run = Run(options, progress, schedule)
    root = options.data_dir or Path(tempfile.mkdtemp(prefix="brokerage-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "seed": options.seed, "minutes": options.minutes, "faults_asked": options.faults,
        "replay": options.command(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "schedule": [{"kind": f.kind, "target": f.target, "at_s": f.planned_at_s,
                      "window_s": f.window_s or None} for f in schedule],
    }
    report: AuditReport | None = None
    states: Counter[str] = Counter()
    stack: StackProcess | None = None
    stack_code: int | None = None
    problems: list[str] = []
    run.say(f"seed {options.seed}, {options.minutes:g} minutes of load, {len(schedule)} "
            f"faults: {', '.join(f.describe() + f' at {f.planned_at_s:.0f} s' for f in schedule)}")
    try:
        with progress.running():
            stack = start_stack(root / "data")
            stack.read_until("healthy", START_TIMEOUT_S)
            run.say(f"stack healthy on {stack.base_url} (data {stack.data_dir})")
            run.open_accounts(stack)
            wait_for_quotes(run.workers[0])
            run.run_load_and_faults(stack)
            report = run.settle_and_audit(stack)
            states = order_states(run.journal(), shard_dsns(stack))
    except (ComposeError, TimeoutError, ConnectionError, AssertionError) as error:
        problems.append(f"the run stopped: {error}")
        run.say(f"the run stopped: {error}")
    finally:
        if stack is not None:
            run.say("stopping the stack ...")
            stack_code = stop_everything(stack)
    journal = run.journal()
    for injection in run.injections:
        if injection.error is not None:
            problems.append(f"{injection.fault.describe()}: not injected: {injection.error}")
        elif injection.recovery_s is None:
            problems.append(f"{injection.fault.describe()}: the stack did not serve a new "
                            f"order within {options.recovery_timeout_s:.0f} s")
    if len(run.injections) < len(schedule):
        problems.append(f"{len(schedule) - len(run.injections)} faults of the schedule not "
                        f"injected")
    problems += [f"load client error: {error}" for error in run.load_errors]
    if report is None:
        problems.append("no audit")
    elif not report.ok:
        problems.append(f"audit failed: {', '.join(report.failed())}")
    if stack_code != 0:
        problems.append(f"brokerage up exited with {stack_code} when stopped")
    recoveries = [i.recovery_s for i in run.injections if i.recovery_s is not None]
    result.update({
        "injected": [i.as_json() for i in run.injections],
        "recovery_s": {"baseline": None if run.baseline_s is None else round(run.baseline_s, 1),
                       "max": round(max(recoveries), 1) if recoveries else None,
                       "by_fault": {f"{i.fault.kind} {i.fault.target}":
                                    None if i.recovery_s is None else round(i.recovery_s, 1)
                                    for i in run.injections}},
        "load": load_figures(journal, states, run.load_s, sum(run.ops)),
        "checked": [check.name for check in report.checks] if report else [],
        "lost": report.figures.lost if report else None,
        "doubled": report.figures.doubled if report else None,
        "cents_off": int(report.figures.cents_off.to_integral_value()) if report else None,
        "reconcile": _reconcile_verdict(report),
        "audit": report.as_json() if report else None,
        "stack_exit_code": stack_code,
        "elapsed_s": round(time.monotonic() - run.started, 1),
        "problems": problems,
        "passed": not problems,
    })
    if problems or options.keep:
        root.mkdir(parents=True, exist_ok=True)
        journal.save(root / "journal.json")
        if report is not None:
            (root / "audit.txt").write_text(report.text(failures_shown=100_000))
        if stack is not None:
            (root / "brokerage-up.txt").write_text("".join(stack.output))
        (root / "timeline.txt").write_text("\n".join(run.timeline) + "\n")
        (root / "result.json").write_text(json.dumps(result, indent=2, default=str))
        result["kept"] = str(root)
    elif options.data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    if report is not None:
        progress.say(report.text())
    progress.say(f"chaos: seed {options.seed}: {'PASSED' if not problems else 'FAILED'}"
                 + (f" ({'; '.join(problems)})" if problems else "")
                 + (f"; kept {root}" if "kept" in result else "")
                 + f"; replay: {options.command()}")
    return (0 if not problems else 1), result


def _reconcile_verdict(report: AuditReport | None) -> str | None:
    if report is None:
        return None
    for check in report.checks:
        if check.name == "reconcile exits 0":
            return "clean" if not check.failures else "differences"
    return "not run"


def draw_seed() -> int:
    return random.SystemRandom().randrange(1 << 31)


def main_json(options: ChaosOptions, out: Callable[[str], None]) -> int:
    code, result = run_chaos(options)
    out(json.dumps(result, indent=2, default=str))
    return code
