"""`brokerage up` supervises the embedded servers it started: a shard PostgreSQL, Redis or the
broker killed with SIGKILL is started again on its port and data dir, and the stack goes on
(a new broker is a new epoch). SIGHUP, the terminal closed, stops the stack cleanly."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from compose.embedded import free_port
from state.epoch import read_epoch
from tests.integration.compose.stack_process import (
    StackProcess,
    eventually,
    http,
    start_stack,
    write_stack_file,
)

pytestmark = pytest.mark.integration

# Generous: the machine is shared and loaded.
RECOVERY_TIMEOUT_S = 120.0
DECIDED_STATES = {"funds_held", "routed", "partially_filled", "filled", "cancelled",
                  "rejected", "expired", "failed"}


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    """One stack for the fault tests of this module, which run in order against it."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="brokerage-srv-"))
    running = start_stack(root / "data")
    try:
        running.read_until("healthy")
        yield running
    finally:
        code = running.stop()
        leftovers = [p for p in running.descendants() if p.is_running()]
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, "".join(running.output)
    assert not leftovers, leftovers


def _server(stack: StackProcess, match: Any) -> psutil.Process:
    """The embedded server (a direct child of `brokerage up`) whose argv matches."""
    for child in psutil.Process(stack.popen.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and match(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no such server among {psutil.Process(stack.popen.pid).children()}")


def _postmaster(stack: StackProcess, shard: int) -> psutil.Process:
    return _server(stack, lambda argv: argv and argv[0].endswith("/postgres")
                   and f"-D {stack.data_dir / f'shard{shard}'}" in " ".join(argv))


def _broker(stack: StackProcess) -> psutil.Process:
    return _server(stack, lambda argv: "--listener-url" in argv)


def _redis(stack: StackProcess) -> psutil.Process:
    # redis-server rewrites its argv to "redis-server 127.0.0.1:PORT"
    return _server(stack, lambda argv: argv and "redis-server" in argv[0])


def _kill_and_wait_back(stack: StackProcess, server: psutil.Process, name: str) -> float:
    """SIGKILL the server; returns the seconds until `brokerage up` says it is back."""
    seen = len(stack.output)
    killed_at = time.monotonic()
    server.send_signal(signal.SIGKILL)
    marker = f"server {name} is back"
    eventually(lambda: any(marker in line for line in stack.output[seen:]),
               timeout_s=RECOVERY_TIMEOUT_S)
    back_s = time.monotonic() - killed_at
    print(f"{name}: back {back_s:.1f} s after SIGKILL")
    assert not server.is_running(), f"{name}: the dead server was not reaped"
    return back_s


def _login(stack: StackProcess) -> str:
    def token() -> str | None:
        status, body = http("POST", f"{stack.base_url}/v1/auth/token", {"user_id": "sup"})
        return body["token"] if status in (200, 201) else None

    return eventually(token, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)


def _healthy(stack: StackProcess) -> bool:
    try:
        return http("GET", f"{stack.base_url}/healthz")[0] == 200
    except OSError:
        return False


def _post_until_answered(stack: StackProcess, path: str, body: dict[str, Any], token: str,
                         key: str) -> tuple[int, Any]:
    """POST with one idempotency key, retried while the stack cannot answer (503, refused)."""
    def answer() -> tuple[int, Any] | None:
        try:
            status, found = http("POST", f"{stack.base_url}{path}", body, token,
                                 {"Idempotency-Key": key})
        except OSError:
            return None
        return (status, found) if status < 500 else None

    return eventually(answer, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)


def _account(stack: StackProcess, token: str, cash: str) -> dict[str, Any]:
    status, account = _post_until_answered(stack, "/v1/accounts", {}, token,
                                           f"acct-{uuid.uuid4().hex[:8]}")
    assert status in (200, 201), account
    status, deposit = _post_until_answered(
        stack, f"/v1/accounts/{account['account_id']}/deposits", {"amount": cash}, token,
        f"dep-{uuid.uuid4().hex[:8]}")
    assert status in (200, 201, 202), deposit

    def funded() -> bool:
        code, body = http("GET", f"{stack.base_url}/v1/portfolio?account_id="
                          f"{account['account_id']}", token=token)
        return code == 200 and Decimal(body["cash"]) == Decimal(cash)

    eventually(funded, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    return account


def _resting_buy(account_id: str) -> dict[str, Any]:
    return {"account_id": account_id, "symbol": "AAPL", "side": "buy", "order_type": "limit",
            "quantity": "1", "limit_price": "1.00", "time_in_force": "day"}


def _shard_of(stack: StackProcess, account_id: str) -> int:
    for shard, dsn in enumerate(stack.endpoints()["shard_dsns"]):
        with psycopg.connect(dsn) as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE account_id = %s",
                            (account_id,)).fetchone():
                return shard
    raise AssertionError(f"account {account_id} is in no shard")


def _order_state_in_shard(dsn: str, order_id: str) -> str | None:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT state FROM orders WHERE order_id = %s",
                               (order_id,)).fetchone()
    except psycopg.OperationalError:
        return None
    return None if row is None else str(row[0])


def test_a_killed_shard_postgres_is_restarted_and_takes_orders(stack: StackProcess) -> None:
    token = _login(stack)
    account = _account(stack, token, "1000.00")
    shard = _shard_of(stack, account["account_id"])
    postmaster = _postmaster(stack, shard)

    _kill_and_wait_back(stack, postmaster, f"shard{shard}")
    assert _postmaster(stack, shard).pid != postmaster.pid
    eventually(lambda: _healthy(stack), timeout_s=RECOVERY_TIMEOUT_S)

    started = time.monotonic()
    status, order = _post_until_answered(stack, "/v1/orders", _resting_buy(account["account_id"]),
                                         token, f"after-pg-{uuid.uuid4().hex[:8]}")
    assert status in (201, 202), order
    dsn = stack.endpoints()["shard_dsns"][shard]
    state = eventually(lambda: _order_state_in_shard(dsn, order["order_id"]),
                       timeout_s=RECOVERY_TIMEOUT_S)
    print(f"shard{shard}: order landed in its shard {time.monotonic() - started:.1f} s after "
          f"it was placed ({state})")


def test_a_killed_redis_is_restarted_and_quotes_come_back(stack: StackProcess) -> None:
    token = _login(stack)
    _kill_and_wait_back(stack, _redis(stack), "redis")

    def quotes() -> bool:
        try:
            code, body = http("GET", f"{stack.base_url}/v1/quotes?symbols=AAPL", token=token)
        except OSError:
            return False
        return code == 200 and bool(body["quotes"])

    eventually(quotes, timeout_s=RECOVERY_TIMEOUT_S)

    def redis_ok() -> bool:
        code, body = http("GET", f"{stack.base_url}/healthz")
        return code == 200 and body["checks"]["redis"] == "ok"

    eventually(redis_ok, timeout_s=RECOVERY_TIMEOUT_S)


def test_a_killed_broker_is_a_new_epoch_and_orders_are_decided(stack: StackProcess) -> None:
    endpoints = stack.endpoints()
    before = read_epoch(endpoints["bootstrap_servers"], endpoints["topic_prefix"])
    assert before is not None
    token = _login(stack)
    account = _account(stack, token, "1000.00")

    killed_at = time.monotonic()
    _kill_and_wait_back(stack, _broker(stack), "broker")
    stack.read_until("broker epoch", timeout_s=RECOVERY_TIMEOUT_S)
    after = read_epoch(endpoints["bootstrap_servers"], endpoints["topic_prefix"])
    assert after is not None and after != before
    eventually(lambda: _healthy(stack), timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    healthy_s = time.monotonic() - killed_at

    # The account was rebuilt from its shard: the cash deposited before still buys.
    status, order = _post_until_answered(stack, "/v1/orders", _resting_buy(account["account_id"]),
                                         token, f"after-broker-{uuid.uuid4().hex[:8]}")
    assert status in (201, 202), order

    def decided() -> dict[str, Any] | None:
        if status == 201:
            return order
        code, found = http("GET", f"{stack.base_url}/v1/orders/{order['order_id']}"
                           f"?account_id={account['account_id']}", token=token)
        return found if code == 200 and found.get("state") in DECIDED_STATES else None

    final = eventually(decided, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    state = final["state"]
    # Refused for want of a fresh quote is fair right after a reset; refused for want of
    # cash, or as older than the account's memory, would be an account lost with the broker.
    assert final.get("reason") not in ("insufficient_buying_power", "command_too_old"), final
    print(f"broker: healthy {healthy_s:.1f} s after SIGKILL, an order decided "
          f"({state} {final.get('reason') or ''}) {time.monotonic() - killed_at:.1f} s after "
          f"SIGKILL")


def test_the_renewed_broker_is_a_new_epoch_and_the_books_go_on(stack: StackProcess) -> None:
    """SIGUSR1 asks `brokerage up` for the daily renewal now (compose/renewal.py): services
    stopped cleanly, the broker started empty. A resting order from before is still open with
    its funds held, and a new one is decided against the cash that is left."""
    endpoints = stack.endpoints()
    before = read_epoch(endpoints["bootstrap_servers"], endpoints["topic_prefix"])
    old_broker = _broker(stack)
    token = _login(stack)
    account = _account(stack, token, "100.00")
    account_id = account["account_id"]
    status, resting = _post_until_answered(stack, "/v1/orders", _resting_buy(account_id), token,
                                           f"before-renewal-{uuid.uuid4().hex[:8]}")
    assert status in (201, 202), resting

    def state_of(order_id: str) -> str | None:
        code, found = http("GET", f"{stack.base_url}/v1/orders/{order_id}"
                           f"?account_id={account_id}", token=token)
        return found.get("state") if code == 200 else None

    eventually(lambda: state_of(resting["order_id"]) == "routed", timeout_s=RECOVERY_TIMEOUT_S,
               interval_s=0.5)

    def held() -> tuple[Decimal, Decimal] | None:
        code, portfolio = http("GET", f"{stack.base_url}/v1/portfolio?account_id={account_id}",
                               token=token)
        return (Decimal(portfolio["cash"]), Decimal(portfolio["cash_held"])) \
            if code == 200 else None

    cash_before = eventually(held, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    assert sum(cash_before) == Decimal("100.00") and cash_before[1] > 0, cash_before

    seen = len(stack.output)
    asked_at = time.monotonic()
    os.kill(stack.popen.pid, signal.SIGUSR1)
    # Lines from this renewal on: the killed-broker test above printed a "broker epoch" too.
    for marker in ("renewing the embedded broker", "broker epoch"):
        eventually(lambda marker=marker: any(marker in line for line in stack.output[seen:]),
                   timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.2)
    assert not old_broker.is_running()
    after = read_epoch(endpoints["bootstrap_servers"], endpoints["topic_prefix"])
    assert after is not None and after != before
    eventually(lambda: _healthy(stack), timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    healthy_s = time.monotonic() - asked_at
    assert not any("exited with code" in line for line in stack.output[seen:]
                   if "service " in line), "a service died instead of being stopped"

    # The account as the shard had it: cash and the resting buy's hold.
    eventually(lambda: held() == cash_before, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    status, second = _post_until_answered(
        stack, "/v1/orders", {**_resting_buy(account_id), "limit_price": "0.50"}, token,
        f"after-renewal-{uuid.uuid4().hex[:8]}")
    assert status in (201, 202), second
    eventually(lambda: state_of(second["order_id"]) == "routed", timeout_s=RECOVERY_TIMEOUT_S,
               interval_s=0.5)
    assert state_of(resting["order_id"]) == "routed"
    print(f"renewal: healthy {healthy_s:.1f} s after SIGUSR1, two resting orders routed")


# ---- the watch alone -----------------------------------------------------------------------


def test_a_server_that_cannot_start_again_is_retried_with_a_growing_delay(
        server_dir: Path) -> None:
    """Redis killed while something else took its port: each failed start is one line and the
    next try waits longer; once the port is free, Redis is back on it."""
    import socket

    from compose.embedded import LOOPBACK, port_open, start_embedded_servers
    from compose.supervisor import ServerWatch

    servers = start_embedded_servers(server_dir, 0, broker=False, redis=True)
    reports: list[str] = []
    started: list[str] = []
    watch = ServerWatch(servers, on_started=started.append, report=reports.append)
    squatter = socket.socket()
    try:
        redis = servers.child("redis")
        redis.popen.kill()
        redis.popen.wait(5)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((LOOPBACK, servers.redis_port))
        squatter.listen()

        def failed_twice() -> bool:
            watch.poll()
            return sum("did not start again" in line for line in reports) >= 2

        eventually(failed_twice, timeout_s=30, interval_s=0.05)
        assert "server redis exited with code -9; restarting in 0.5 s" in reports[0], reports
        assert "already in use; retrying in 1.0 s" in reports[1], reports
        assert "retrying in 2.0 s" in reports[2], reports
        squatter.close()

        def back() -> bool:
            watch.poll()
            return servers.child("redis").alive() and port_open(servers.redis_port)

        eventually(back, timeout_s=30, interval_s=0.05)
        assert started == ["redis"] and watch.watched["redis"].restarts == 1
        assert reports[-1].startswith("server redis is back after"), reports
    finally:
        squatter.close()
        servers.stop()


# ---- SIGHUP --------------------------------------------------------------------------------


def _take_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty on stdin."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_closing_the_terminal_stops_the_stack_and_removes_the_stack_file(
        server_dir: Path) -> None:
    """`brokerage up` in a terminal that is closed: the kernel sends SIGHUP to it, and writes
    to the terminal fail from then on."""
    data_dir = server_dir / "data"
    http_port = free_port()
    stack_file = write_stack_file(server_dir / "stack.toml", free_port(), ["http"])
    env = {**os.environ, "BROKERAGE_DATA_DIR": str(data_dir),
           "BROKERAGE_HTTP_PORT": str(http_port), "BROKERAGE_STACK": str(stack_file),
           "PYTHONUNBUFFERED": "1"}
    master, slave = os.openpty()
    popen = subprocess.Popen([sys.executable, "-m", "compose.cli", "up"], stdin=slave,
                             stdout=slave, stderr=slave, env=env, preexec_fn=_take_terminal)
    os.close(slave)
    output: list[bytes] = []
    reading = threading.Event()
    reading.set()

    def read() -> None:
        while reading.is_set():
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                output.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        eventually(lambda: b"healthy" in b"".join(output) or popen.poll() is not None,
                   timeout_s=RECOVERY_TIMEOUT_S)
        assert popen.poll() is None, b"".join(output).decode(errors="replace")
        assert (data_dir / "stack.json").exists()
        servers = psutil.Process(popen.pid).children(recursive=True)
        assert servers
    finally:
        reading.clear()
        reader.join(5)
        os.close(master)  # the terminal is closed
    try:
        code = popen.wait(RECOVERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(10)
        raise
    assert code == 0, b"".join(output).decode(errors="replace")
    assert not (data_dir / "stack.json").exists()
    assert not [p for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
