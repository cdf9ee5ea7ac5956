"""A wedged consumer group heals itself (issue 11): under a steady load of orders, the account
topology is frozen (SIGSTOP) well past its group session timeout and a shard's PostgreSQL is
killed (SIGKILL) meanwhile. `/healthz` must name the stuck stage while it stands still; once the
process runs again the pipeline must decide new orders within a minute and `/healthz` must say
ok again; and the independent auditor (the same as the crash tests') must find nothing lost or
doubled. The recovery time is printed.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest

from compose.chaos.auditor import TERMINAL_STATES, AuditReport
from compose.chaos.client import Client
from compose.chaos.stack_process import StackProcess, start_stack
from tests.integration.compose.test_crash import (
    ACCOUNTS,
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

# Past the group's 3 s session timeout many times over, and past /healthz's 30 s stall verdict
# (sampled every 10 s).
FREEZE_S = 50.0
RECOVERY_S_MAX = 60.0
STUCK_SEEN_TIMEOUT_S = FREEZE_S + 20.0
LOAD_OPS_MAX = 2_000  # bounds the load in count; the test's phases bound it in time


def _service_process(stack: StackProcess, name: str) -> psutil.Process:
    for process in stack.descendants():
        try:
            cmdline = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "compose.child" in cmdline and cmdline[cmdline.index("compose.child") + 1] == name:
            return process
    raise AssertionError(f"no {name} service under brokerage up")


def _shard_postmaster(stack: StackProcess, shard: int) -> psutil.Process:
    port = psycopg.conninfo.conninfo_to_dict(_shard_dsns(stack)[shard])["port"]
    for process in stack.descendants():
        try:
            cmdline = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if cmdline and cmdline[0].endswith("postgres") and str(port) in cmdline:
            return process
    raise AssertionError(f"no PostgreSQL of shard {shard} (port {port}) under brokerage up")


def _health(stack: StackProcess) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(stack.base_url + "/healthz", timeout=5) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return None, repr(error)


def _wait_for(probe: object, timeout_s: float, interval_s: float = 1.0) -> float | None:
    """Seconds until `probe()` is true, or None when it was not within `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if probe():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(interval_s)
    return None


def _order_state(stack: StackProcess, order_id: str) -> str | None:
    for dsn in _shard_dsns(stack):
        try:
            with psycopg.connect(dsn, connect_timeout=3) as conn:
                row = conn.execute("SELECT state FROM orders WHERE order_id = %s",
                                   (order_id,)).fetchone()
        except psycopg.OperationalError:
            continue
        if row is not None:
            return str(row[0])
    return None


def _decides_new_orders(client: Client, stack: StackProcess) -> bool:
    """A market order placed now is decided (filled or refused) and lands in its shard."""
    account_id = sorted(client.journal.accounts)[0]
    probe = client.new("order", account_id, {
        "account_id": account_id, "symbol": "SPY", "side": "buy", "order_type": "market",
        "quantity": "1", "time_in_force": "day"})
    if not probe.acknowledged or not probe.order_id:
        return False
    return _wait_for(lambda: _order_state(stack, probe.order_id) in TERMINAL_STATES,
                     timeout_s=10.0, interval_s=0.5) is not None


@pytest.mark.timeout(420)
def test_a_frozen_account_topology_and_a_killed_shard_heal_within_a_minute(
        server_dir: Path) -> None:
    seed = _seed()
    started = time.monotonic()
    stack = _healthy(start_stack(server_dir / "data"))
    client = Client(stack.base_url, random.Random(seed))
    report: AuditReport | None = None
    timeline: list[str] = []
    stuck_seen_s = recovered_s = healthy_s = None
    try:
        client.open_accounts(ACCOUNTS)
        _wait_for_quotes(client)
        stop = threading.Event()
        load = threading.Thread(target=client.run, args=(stop, LOAD_OPS_MAX), daemon=True)
        load.start()
        time.sleep(3.0)  # the load is under way when the faults come

        accounts = _service_process(stack, "accounts")
        accounts.suspend()
        frozen_at = time.monotonic()
        timeline.append(f"SIGSTOP of the account topology (pid {accounts.pid})")
        try:
            time.sleep(5.0)
            shard = _shard_postmaster(stack, 0)
            shard.kill()
            timeline.append(f"SIGKILL of shard 0's PostgreSQL (pid {shard.pid}), 5 s later")
            answers: list[tuple[int | None, str]] = []
            stuck_seen_s = _wait_for(
                lambda: (answers.append(_health(stack)) or answers[-1][0] == 503
                         and "accounts" in answers[-1][1]),
                timeout_s=STUCK_SEEN_TIMEOUT_S)
            timeline.append(f"/healthz named the stuck account stage: {stuck_seen_s is not None}"
                            f" ({time.monotonic() - frozen_at:.0f} s after the freeze): "
                            f"{answers[-1] if answers else None}")
            time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))
        finally:
            accounts.resume()
        timeline.append(f"SIGCONT after {time.monotonic() - frozen_at:.0f} s")
        stop.set()  # the probes below use the client: one thread at a time
        load.join(60.0)
        assert not load.is_alive(), "the load did not stop"

        recovered_s = _wait_for(lambda: _decides_new_orders(client, stack), RECOVERY_S_MAX)
        timeline.append(f"a new order was decided {recovered_s} s after SIGCONT")
        healthy_s = _wait_for(lambda: _health(stack)[0] == 200, RECOVERY_S_MAX)
        timeline.append(f"/healthz 200 {healthy_s} s after that")
        client.settle_requests(RETRY_TIMEOUT_S)
        waiting = _settle(client, stack)
        timeline.append(f"{len(client.journal.requests)} requests; still waiting for a "
                        f"decision: {waiting[:10]}")
        report = _audit(client, stack)
    finally:
        code, kept = _stop_and_tell(client, report, stack, seed, "wedge", timeline, started)
    assert stuck_seen_s is not None, "/healthz never named the frozen account stage"
    assert recovered_s is not None, f"no new order decided within {RECOVERY_S_MAX} s"
    assert healthy_s is not None, f"/healthz not ok within {RECOVERY_S_MAX} s of recovery"
    _assert_audited(report, seed, code, stack, kept)
