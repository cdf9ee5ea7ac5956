"""Whole-stack crash tests (issue 10): a load of orders with fills, deposits, withdrawals and
cancels over HTTP, every request with an idempotency key and retried with the same key until it
gets a definite answer; SIGKILL of every process of the stack at once (the `brokerage up`
process, every service, the broker, every PostgreSQL process, Redis) at seeded random moments,
several rounds, each followed by `brokerage up` on the same data dir; then, once the stack has
settled, an independent auditor (compose/chaos/auditor.py) checks what the client was told
against the market maker's own record and the shards' rows, and `brokerage reconcile`. The load
and the auditor live in compose/chaos/, shared with `brokerage chaos` (single-component faults).

The seed is BROKERAGE_CRASH_SEED (`random` draws one; unset, the suite's own; always printed): it
decides the load and the moments of the kills, so a failing seed replays the same requests and
kill offsets (the machine's timing still varies). BROKERAGE_CRASH_ROUNDS sets the number of
kill rounds (default 1, the short version run by `./dev test`; the suite's time is bounded).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from compose.chaos.auditor import AuditReport
from compose.chaos.client import HTTP_TIMEOUT_S, Client
from compose.chaos.settle import (
    SETTLE_TIMEOUT_S,
    audit_stack,
    settle,
    shard_dsns,
    wait_for_quotes,
)
from compose.chaos.stack_process import (
    StackProcess,
    freeze_and_kill,
    kill_whole_stack,
    restart_stack,
    start_stack,
    stop_everything,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ACCOUNTS = 4
START_TIMEOUT_S = 120.0
RETRY_TIMEOUT_S = 90.0
OPS_PER_ROUND_MAX = 120  # bounds a round's load in count; the kill bounds it in time
KILL_AFTER_S = (2.0, 12.0)  # a round's load runs this long (seeded) before the kill
FINAL_OPS = 25  # after the last restart: the stack still works
ROUNDS = int(os.environ.get("BROKERAGE_CRASH_ROUNDS", "1"))


def _load(client: Client, stop: threading.Event, ops: list[int]) -> None:
    ops.append(client.run(stop, OPS_PER_ROUND_MAX))


# ---- the stack -----------------------------------------------------------------------------


def _healthy(stack: StackProcess) -> StackProcess:
    stack.read_until("healthy", START_TIMEOUT_S)
    return stack


def _shard_dsns(stack: StackProcess) -> list[str]:
    return shard_dsns(stack)


def _wait_for_quotes(client: Client, timeout_s: float = 60.0) -> None:
    wait_for_quotes(client, timeout_s)


def _settle(client: Client, stack: StackProcess, timeout_s: float = SETTLE_TIMEOUT_S,
            stalled_s: float = 15.0) -> list[str]:
    return settle(client.journal, shard_dsns(stack), timeout_s, stalled_s)


def _audit(client: Client, stack: StackProcess, reconcile_timeout_s: float = 60.0
           ) -> AuditReport:
    return audit_stack(client.journal, stack, reconcile_timeout_s)


def _stop_and_tell(client: Client, report: AuditReport | None, stack: StackProcess, seed: int,
                   name: str, timeline: list[str], started: float) -> tuple[int | None, Path]:
    """Stop every process of the run, keep its evidence, print what happened and the seed."""
    code = stop_everything(stack)
    kept = _keep(client, report, stack, seed, name)
    print("\n".join(timeline))
    print(f"journal, audit and logs: {kept}")
    if report is not None:
        print(report.text())
    print(f"BROKERAGE_CRASH_SEED={seed}: {time.monotonic() - started:.0f} s in all")
    return code, kept


def _assert_audited(report: AuditReport | None, seed: int, code: int | None,
                    stack: StackProcess, kept: Path) -> None:
    assert report is not None
    assert report.ok, f"BROKERAGE_CRASH_SEED={seed}\n{report.text()}"
    assert code == 0, "".join(stack.output)[-3000:]
    shutil.rmtree(kept, ignore_errors=True)  # kept only for a failure


DEFAULT_SEED = 20261203


def _seed() -> int:
    """BROKERAGE_CRASH_SEED=N replays a run, =random draws a new one; unset, the suite's own
    seed keeps `./dev test` to one known load (the machine's timing still varies)."""
    text = os.environ.get("BROKERAGE_CRASH_SEED", str(DEFAULT_SEED))
    return random.SystemRandom().randrange(1 << 31) if text == "random" else int(text)


def _keep(client: Client, report: AuditReport | None, stack: StackProcess, seed: int,
          name: str) -> Path:
    """The journal, the whole audit and the stack's logs, outside pytest's basetemp (which
    other sessions prune) and outside the server dir (removed after the test), for replaying
    and reading a failure."""
    keep = Path(tempfile.gettempdir()) / f"brokerage-crash-{name}-{seed}"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    client.journal.save(keep / "journal.json")
    if report is not None:
        (keep / "audit.txt").write_text(report.text(failures_shown=100_000))
    (keep / "brokerage-up.txt").write_text("".join(stack.output))
    if (stack.data_dir / "logs").is_dir():
        shutil.copytree(stack.data_dir / "logs", keep / "logs", dirs_exist_ok=True)
    return keep


# ---- the tests -----------------------------------------------------------------------------


@pytest.mark.timeout(300 + 90 * ROUNDS)
def test_whole_stack_sigkill_rounds_lose_nothing_acknowledged(server_dir: Path) -> None:
    seed = _seed()
    rounds = ROUNDS
    print(f"\nBROKERAGE_CRASH_SEED={seed} BROKERAGE_CRASH_ROUNDS={rounds}")
    rng = random.Random(seed)
    started = time.monotonic()
    stack = _healthy(start_stack(server_dir / "data"))
    client = Client(stack.base_url, rng)
    report: AuditReport | None = None
    timeline: list[str] = []
    try:
        client.open_accounts(ACCOUNTS)
        _wait_for_quotes(client)
        for round_ in range(rounds):
            stop = threading.Event()
            ops: list[int] = []
            load = threading.Thread(target=_load, args=(client, stop, ops), daemon=True)
            kill_after_s = rng.uniform(*KILL_AFTER_S)
            load.start()
            load.join(kill_after_s)  # the seeded moment (or earlier, when the load ran out)
            stop.set()  # no new request after the kill; the one in flight meets it
            killed = kill_whole_stack(stack)
            load.join(HTTP_TIMEOUT_S * 3)
            assert not load.is_alive(), "the load did not stop"
            timeline.append(f"round {round_}: {ops[0] if ops else '?'} ops, SIGKILL of "
                            f"{killed} processes after {kill_after_s:.1f} s, "
                            f"{len(client.undecided)} requests without an answer")
            restart_at = time.monotonic()
            stack = _healthy(restart_stack(stack))
            timeline.append(f"round {round_}: healthy again in "
                            f"{time.monotonic() - restart_at:.1f} s")
            _wait_for_quotes(client)
        never = threading.Event()
        client.run(never, FINAL_OPS)
        client.settle_requests(RETRY_TIMEOUT_S)
        waiting = _settle(client, stack)
        timeline.append(f"settled after {time.monotonic() - started:.0f} s; still waiting for "
                        f"a decision: {waiting[:10]}")
        report = _audit(client, stack)
    finally:
        code, kept = _stop_and_tell(client, report, stack, seed, "whole", timeline, started)
    _assert_audited(report, seed, code, stack, kept)


def _broker_process(stack: StackProcess) -> psutil.Process | None:
    for process in stack.descendants():
        try:
            cmdline = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "broker" in cmdline and "--listener-url" in cmdline:
            return process
    return None


def _broker_back(stack: StackProcess, killed_pid: int, timeout_s: float) -> bool:
    """A new broker process serves again and the HTTP gateway says every part is healthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        broker = _broker_process(stack)
        if broker is not None and broker.pid != killed_pid:
            try:
                with urllib.request.urlopen(stack.base_url + "/healthz", timeout=3) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
        time.sleep(0.5)
    return False


def test_broker_sigkill_alone_loses_nothing_acknowledged(server_dir: Path) -> None:
    seed = _seed()
    print(f"\nBROKERAGE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    started = time.monotonic()
    stack = _healthy(start_stack(server_dir / "data"))
    client = Client(stack.base_url, rng)
    report: AuditReport | None = None
    timeline: list[str] = []
    restarted = False
    try:
        client.open_accounts(ACCOUNTS)
        _wait_for_quotes(client)
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(client, stop, []), daemon=True)
        kill_after_s = rng.uniform(*KILL_AFTER_S)
        load.start()
        load.join(kill_after_s)
        broker = _broker_process(stack)
        assert broker is not None, "no broker process under brokerage up"
        freeze_and_kill([broker])
        timeline.append(f"SIGKILL of the broker (pid {broker.pid}) after {kill_after_s:.1f} s")
        # The load goes on while the stack recovers (requests without an answer are retried).
        restarted = _broker_back(stack, broker.pid, timeout_s=45.0)
        timeline.append(f"broker restarted and healthy: {restarted} "
                        f"({time.monotonic() - started:.0f} s)")
        stop.set()
        load.join(HTTP_TIMEOUT_S * 3)
        if restarted:
            _wait_for_quotes(client)
            client.run(threading.Event(), FINAL_OPS)
            client.settle_requests(RETRY_TIMEOUT_S)
            waiting = _settle(client, stack)
            timeline.append(f"still waiting for a decision: {waiting[:10]}")
        # Without a broker reconcile cannot read the stream: give it less time.
        report = _audit(client, stack, reconcile_timeout_s=60.0 if restarted else 30.0)
    finally:
        code, kept = _stop_and_tell(client, report, stack, seed, "broker", timeline, started)
    assert restarted, "the broker was not restarted by brokerage up (issue 10, item 5)"
    _assert_audited(report, seed, code, stack, kept)
