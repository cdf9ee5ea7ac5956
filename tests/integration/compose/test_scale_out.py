"""Scale-out inside a consumer group (issue 12, item 3): two account-topology processes, two
sink processes and two HTTP gateways (one port, SO_REUSEPORT) under a steady load of orders
over many accounts on every partition of both shards; SIGKILL of one of each at the same
moment; the survivors take the dead ones' partitions over and keep deciding, landing and
answering; then the independent auditor (the crash tests') finds nothing lost or doubled.

`brokerage up` restarts a dead service at once (0.5-1 s), and a restarted account or sink
process would rejoin and could take its partitions back before the survivor ever held them.
So the dead processes are kept down for a while: each replacement the supervisor starts is
frozen (SIGSTOP) the moment it appears, before it has imported anything, let alone joined a
group or taken its member lock; to the broker and to its siblings it does not exist. While
they are down the test requires, from outside:
- the surviving account process logs an assignment of every partition (it gained the dead
  one's);
- an order placed after the kill on an account of each partition lands in its shard: decided
  by the only live account process and landed by the only live sink process;
- requests are answered 2xx after the kill: by the only live HTTP gateway process.
Then the replacements run (SIGCONT), rejoin (their logs show assignments again), the load goes
on, every acknowledged order is decided, and the auditor checks everything against the market
maker's own book and the shards' rows.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from compose.chaos.auditor import AuditReport, Request
from compose.chaos.client import FIRST_DEPOSIT, Client
from compose.chaos.stack_process import (
    StackProcess,
    freeze_and_kill,
    start_stack,
    write_stack_file,
)
from compose.embedded import free_port
from state.router import account_partition
from tests.integration.compose.test_crash import (
    RETRY_TIMEOUT_S,
    _assert_audited,
    _audit,
    _healthy,
    _seed,
    _settle,
    _shard_dsns,
    _stop_and_tell,
    _wait_for_quotes,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

SHARDS, PARTITIONS_PER_SHARD = 2, 2
PARTITIONS = SHARDS * PARTITIONS_PER_SHARD
ACCOUNTS_PER_PARTITION = 3
ACCOUNTS_MAX = 40  # bounds the opening of accounts (new ones land on random partitions)
VICTIMS = ("accounts-1", "sinks-1", "http-1")
LOAD_BEFORE_KILL_S = 5.0
TAKEOVER_TIMEOUT_S = 45.0
REJOIN_TIMEOUT_S = 60.0
LOAD_AFTER_REJOIN_S = 4.0
LOAD_OPS_MAX = 1_500  # bounds the load in count; the phases bound it in time
ASSIGNED = re.compile(r"account topology member \S+: assigned partitions \[([0-9, ]*)\]")
SINK_ASSIGNED = re.compile(r"shard sink (\S+): assigned (.*)")


@dataclass
class TimedClient(Client):
    """The crash tests' client, with the time of each answer (for what answered when)."""

    answered: list[tuple[float, int | None]] = field(default_factory=list)

    def send(self, request: Request) -> Request:
        result = super().send(request)
        self.answered.append((time.monotonic(), request.status))
        return result


def _child(process: psutil.Process) -> str | None:
    """The service name of a supervised child (`python -m compose.child NAME SPEC`)."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return None
    if "compose.child" in cmdline and len(cmdline) > cmdline.index("compose.child") + 1:
        return cmdline[cmdline.index("compose.child") + 1]
    return None


def _service(stack: StackProcess, name: str) -> psutil.Process:
    for process in stack.descendants():
        if _child(process) == name:
            return process
    raise AssertionError(f"no {name} service under brokerage up")


class ReplacementFreezer:
    """Freezes (SIGSTOP) each process the supervisor starts for a killed service, as soon as
    it appears, until `release`: the dead stay down without the supervisor being touched."""

    def __init__(self, stack: StackProcess, names: tuple[str, ...], killed: set[int]) -> None:
        self._stack = stack
        self._names = names
        self._killed = killed
        self.frozen: dict[str, tuple[psutil.Process, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.frozen) < len(self._names):
            for process in self._stack.descendants():
                name = _child(process)
                if name in self._names and name not in self.frozen \
                        and process.pid not in self._killed:
                    try:
                        process.send_signal(signal.SIGSTOP)
                    except psutil.NoSuchProcess:
                        continue
                    self.frozen[name] = (process, time.monotonic())
            self._stop.wait(0.02)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for process, _at in self.frozen.values():
            try:
                process.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass


def _served_connections(process: psutil.Process, port: int, seconds: float) -> int:
    """Client connections seen open on `process`'s side of `port` while sampling for
    `seconds`: with two gateways on one port, proof that this one was serving."""
    peers: set[tuple[str, int]] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for conn in process.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.raddr \
                    and conn.status == psutil.CONN_ESTABLISHED:
                peers.add((conn.raddr.ip, conn.raddr.port))
        time.sleep(0.02)
    return len(peers)


def _log(stack: StackProcess, name: str) -> Path:
    return stack.data_dir / "logs" / f"{name}.log"


def _log_since(stack: StackProcess, name: str, offset: int) -> str:
    path = _log(stack, name)
    if not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _log_size(stack: StackProcess, name: str) -> int:
    path = _log(stack, name)
    return path.stat().st_size if path.exists() else 0


def _account_assignments(text: str) -> list[set[int]]:
    return [{int(p) for p in match.group(1).split(",") if p.strip()}
            for match in ASSIGNED.finditer(text)]


def _sink_assignments(text: str) -> dict[str, set[str]]:
    """The latest assignment of each shard's group in a sinks log: {group: {"topic[p]"}}."""
    latest: dict[str, set[str]] = {}
    for match in SINK_ASSIGNED.finditer(text):
        latest[match.group(1)] = set() if match.group(2) == "nothing" else {
            part.strip() for part in match.group(2).split(",")}
    return latest


def _lines(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if any(word in line for word in words)]


def _open_accounts_on_every_partition(client: Client) -> dict[int, list[str]]:
    """Open accounts until every partition of both shards has ACCOUNTS_PER_PARTITION of them
    (a new account's partition within its shard is random); each gets its first deposit."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for n in range(ACCOUNTS_MAX):
        if all(len(ids) >= ACCOUNTS_PER_PARTITION for ids in by_partition.values()):
            break
        account_id = client.open_account(f"scale-user-{n}", f"acct-{n}")
        by_partition[account_partition(account_id, PARTITIONS)].append(account_id)
    assert all(by_partition.values()), f"a partition without accounts: {by_partition}"
    for account_id in client.journal.accounts:
        client.new("deposit", account_id, {"amount": str(FIRST_DEPOSIT)})
    return by_partition


def _landed(stack: StackProcess, order_ids: list[str]) -> set[str]:
    """The orders among `order_ids` that have a row in their shard (which only the sink
    writes, from the account topology's events)."""
    found: set[str] = set()
    for dsn in _shard_dsns(stack):
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            rows = conn.execute("SELECT order_id FROM orders WHERE order_id = ANY(%s)",
                                (order_ids,)).fetchall()
        found.update(str(row[0]) for row in rows)
    return found


def _orders_since(client: Client, first: int) -> dict[int, list[str]]:
    """Order ids acknowledged for requests from index `first` on, by partition."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for request in client.journal.requests[first:]:
        if request.kind == "order" and request.acknowledged and request.order_id:
            by_partition[account_partition(request.account_id, PARTITIONS)].append(
                request.order_id)
    return by_partition


def _wait(probe: Any, timeout_s: float, interval_s: float = 0.5) -> float | None:
    """Seconds until `probe()` is true, or None when it was not within `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if probe():
            return time.monotonic() - started
        time.sleep(interval_s)
    return None


@pytest.mark.timeout(360)
def test_survivors_take_over_the_partitions_of_killed_processes(server_dir: Path) -> None:
    seed = _seed()
    started = time.monotonic()
    data_dir = server_dir / "data"
    stack_file = write_stack_file(
        server_dir / "data.toml", free_port(), http={"processes": 2},
        sections={"accounts": {"processes": 2}, "sinks": {"processes": 2}})
    stack = _healthy(start_stack(data_dir, stack_file=stack_file))
    client = TimedClient(stack.base_url, random.Random(seed))
    report: AuditReport | None = None
    timeline: list[str] = []
    freezer: ReplacementFreezer | None = None
    took_over: dict[str, Any] = {}
    quiet: dict[str, list[set[int]]] = {}
    quiet_sinks = False
    try:
        accounts = _open_accounts_on_every_partition(client)
        timeline.append(f"{len(client.journal.accounts)} accounts, by partition: "
                        f"{ {p: len(ids) for p, ids in accounts.items()} }")
        _wait_for_quotes(client)
        before = {name: _account_assignments(_log_since(stack, name, 0))
                  for name in ("accounts", "accounts-1")}
        assert before["accounts"] and before["accounts-1"], f"not both assigned: {before}"
        timeline.append(f"before the kill: accounts holds {sorted(before['accounts'][-1])}, "
                        f"accounts-1 holds {sorted(before['accounts-1'][-1])}")
        assert before["accounts-1"][-1], "the process to kill holds no partition"

        stop = threading.Event()
        load = threading.Thread(target=client.run, args=(stop, LOAD_OPS_MAX), daemon=True)
        load.start()
        # The load is under way when the kill comes; meanwhile, both gateways serve it.
        served = {name: _served_connections(_service(stack, name), stack.http_port,
                                            LOAD_BEFORE_KILL_S / 2)
                  for name in ("http", "http-1")}
        timeline.append(f"connections served before the kill: {served}")
        took_over["served_by_dead"] = served["http-1"]

        victims = [_service(stack, name) for name in VICTIMS]
        victims += [child for victim in victims for child in victim.children(recursive=True)]
        offsets = {name: _log_size(stack, name) for name in ("accounts", "accounts-1",
                                                             "sinks", "sinks-1")}
        first_after_kill = len(client.journal.requests)
        killed = {process.pid for process in victims}
        freezer = ReplacementFreezer(stack, VICTIMS, killed)
        freezer.start()
        freeze_and_kill(victims)
        killed_at = time.monotonic()
        timeline.append(f"{time.strftime('%H:%M:%S')} SIGKILL of {', '.join(VICTIMS)} "
                        f"({len(victims)} processes with the sink workers) after "
                        f"{first_after_kill} requests")

        def survivor_holds_all() -> bool:
            held = _account_assignments(_log_since(stack, "accounts", offsets["accounts"]))
            return bool(held) and held[-1] == set(range(PARTITIONS))

        def every_partition_landed() -> bool:
            orders = _orders_since(client, first_after_kill)
            if not all(orders.values()):
                return False
            landed = _landed(stack, [o for ids in orders.values() for o in ids])
            return all(landed & set(ids) for ids in orders.values())

        dead_sink = _sink_assignments(_log_since(stack, "sinks-1", 0))

        def survivor_sinks_hold_all() -> bool:
            held = _sink_assignments(_log_since(stack, "sinks", offsets["sinks"]))
            return all(parts <= held.get(group, set()) for group, parts in dead_sink.items())

        def since_kill(probe: Any) -> float | None:
            waited = _wait(probe, TAKEOVER_TIMEOUT_S - (time.monotonic() - killed_at))
            return None if waited is None else round(time.monotonic() - killed_at, 1)

        took_over["accounts"] = since_kill(survivor_holds_all)
        took_over["sinks"] = since_kill(survivor_sinks_hold_all)
        took_over["landed"] = since_kill(every_partition_landed)
        window_s = time.monotonic() - killed_at
        timeline.append(f"the dead sink process held {dead_sink}")
        timeline += [f"survivor: {line}" for line in _lines(
            _log_since(stack, "accounts", offsets["accounts"]) + "\n"
            + _log_since(stack, "sinks", offsets["sinks"]), "assigned", "fenced", "revoked")]
        timeline.append(f"seconds after the kill: the surviving account process holds every "
                        f"partition {took_over['accounts']}, the surviving sink process the "
                        f"dead one's partitions {took_over['sinks']}, orders placed after the "
                        f"kill landed on every partition {took_over['landed']}")
        answered = [status for at, status in client.answered
                    if at > killed_at and status is not None and 200 <= status < 300]
        took_over["answered"] = len(answered)
        frozen_in = {name: round(at - killed_at, 2) for name, (_p, at) in
                     freezer.frozen.items()}
        timeline.append(f"{len(answered)} requests answered 2xx after the kill; replacements "
                        f"frozen {frozen_in} s after it; released after {window_s:.1f} s")
        # While they were down, nothing of the dead ones ran: no assignment in their logs.
        quiet = {name: _account_assignments(_log_since(stack, name, offsets[name]))
                 for name in ("accounts-1",)}
        quiet_sinks = "assigned" in _log_since(stack, "sinks-1", offsets["sinks-1"])
        assert set(freezer.frozen) == set(VICTIMS), f"not every replacement seen: {frozen_in}"
        freezer.release()
        released_at = time.monotonic()
        timeline.append(f"{time.strftime('%H:%M:%S')} SIGCONT of the replacements")

        def rejoined() -> bool:
            back = _account_assignments(_log_since(stack, "accounts-1", offsets["accounts-1"]))
            sinks_back = "assigned" in _log_since(stack, "sinks-1", offsets["sinks-1"])
            http_back = any(c.status == psutil.CONN_LISTEN and c.laddr.port == stack.http_port
                            for c in _service(stack, "http-1").net_connections("tcp"))
            return bool(back) and bool(back[-1]) and sinks_back and http_back

        took_over["rejoined"] = _wait(rejoined, REJOIN_TIMEOUT_S)
        timeline.append(f"the restarted processes rejoined {took_over['rejoined']} s after "
                        f"SIGCONT ({time.monotonic() - released_at:.1f} s)")
        timeline += [f"after SIGCONT: {line}" for line in _lines(
            _log_since(stack, "accounts", offsets["accounts"]) + "\n"
            + _log_since(stack, "accounts-1", offsets["accounts-1"]) + "\n"
            + _log_since(stack, "sinks-1", offsets["sinks-1"]), "assigned", "fenced",
            "revoked", "Traceback", "Error")[-20:]]
        time.sleep(LOAD_AFTER_REJOIN_S)  # the load goes on over the full group again
        stop.set()
        load.join(60.0)
        assert not load.is_alive(), "the load did not stop"
        client.settle_requests(RETRY_TIMEOUT_S)
        waiting = _settle(client, stack)
        timeline.append(f"{len(client.journal.requests)} requests; settled "
                        f"{time.monotonic() - started:.0f} s after the start; still waiting "
                        f"for a decision: {waiting[:10]}")
        report = _audit(client, stack)
    finally:
        if freezer is not None:
            freezer.release()
        code, kept = _stop_and_tell(client, report, stack, seed, "scale-out", timeline, started)
    assert took_over["accounts"] is not None, \
        "the surviving account process never held every partition while the other was down"
    assert took_over["sinks"] is not None, \
        "the surviving sink process never held the dead one's partitions while it was down"
    assert took_over["landed"] is not None, \
        "orders placed after the kill did not land on every partition while the dead were down"
    assert took_over["answered"] > 0, "no request answered while one HTTP gateway was dead"
    assert took_over["served_by_dead"] > 0, "the gateway killed served nothing before"
    assert not any(quiet.values()) and not quiet_sinks, \
        f"a frozen replacement joined its group while it should have been down: {quiet}"
    assert took_over["rejoined"] is not None, "the restarted processes did not rejoin"
    _assert_audited(report, seed, code, stack, kept)
