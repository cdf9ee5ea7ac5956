"""One real market buy from HTTP to PostgreSQL rows, through every real component:
HTTP gateway -> orders.commands -> account topology -> orders.route -> FIX gateway (QuickFIX
initiator) -> simulator (QuickFIX acceptor, fills at the quote) -> executions -> account
topology -> ledger.postings -> shard sink -> PostgreSQL -> GET /v1/portfolio."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from compose.embedded import LOOPBACK
from compose.stack import SERVICE_NAMES, load_stack
from tests.integration.compose.stack_process import (
    StackProcess,
    eventually,
    exchange,
    stack_listeners,
    start_stack,
)
from tests.openapi_answers import checked_http

pytestmark = pytest.mark.integration
# Every answer this test gets is checked against the OpenAPI document the stack publishes.
http = checked_http(exchange)


def _login(base: str, user_id: str) -> str:
    status, body = http("POST", f"{base}/v1/auth/token", {"user_id": user_id})
    assert status in (200, 201), body
    return body["token"]


def test_market_buy_from_http_to_postgres(server_dir: Path) -> None:
    stack = start_stack(server_dir / "data")
    try:
        banner = stack.read_until("healthy")
        assert "http" in banner and "shard1" in banner
        base = stack.base_url
        # every HTTP address `up` prints answers (the page, the API base, the OpenAPI document)
        printed = re.findall(r"(http://\S+)", banner)
        assert {f"{base}/", f"{base}/v1", f"{base}/v1/openapi.json"} <= set(printed), banner
        for url in printed:
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200, url
        token = _login(base, "alice")

        status, account = http("POST", f"{base}/v1/accounts", {}, token)
        assert status in (200, 201), account
        account_id = account["account_id"]

        status, deposit = http("POST", f"{base}/v1/accounts/{account_id}/deposits",
                               {"amount": "10000.00"}, token,
                               {"Idempotency-Key": "dep-1"})
        assert status in (200, 201, 202), deposit

        eventually(lambda: http("GET", f"{base}/v1/quotes?symbols=AAPL", token=token)[1]
                   ["quotes"], timeout_s=30)

        order_body = {"account_id": account_id, "symbol": "AAPL", "side": "buy",
                      "order_type": "market", "quantity": "10", "time_in_force": "day"}
        key = f"ord-{uuid.uuid4().hex[:8]}"
        status, order = http("POST", f"{base}/v1/orders", order_body, token,
                             {"Idempotency-Key": key})
        assert status in (200, 201, 202), order
        order_id = order["order_id"]

        def filled() -> dict | None:
            code, body = http("GET", f"{base}/v1/orders/{order_id}?account_id={account_id}",
                              token=token)
            return body if code == 200 and body.get("state") == "filled" else None

        final = eventually(filled, timeout_s=60)
        assert Decimal(final["filled_quantity"]) == Decimal("10")
        _every_listener_binds_where_the_stack_file_says(stack)

        def position() -> dict | None:
            code, body = http("GET", f"{base}/v1/portfolio?account_id={account_id}",
                              token=token)
            if code != 200:
                return None
            rows = [p for p in body["positions"] if p["symbol"] == "AAPL"]
            return body if rows and Decimal(rows[0]["quantity"]) == Decimal("10") else None

        portfolio = eventually(position, timeout_s=30)
        cost = Decimal(10) * Decimal(final["average_fill_price"])
        assert Decimal(portfolio["cash"]) == Decimal("10000.00") - cost

        _check_shard_rows(stack.endpoints()["shard_dsns"], account_id, cost)
        _check_best_execution(stack, base)
        _day_end_expires_resting_orders(stack, base, token, account_id)
        _settlement_settles_todays_trades(stack, base, token, account_id)
        _reconcile_is_clean(stack)
        _status_says_every_component_is_up(stack)
    finally:
        code = stack.stop()
        leftovers = [p for p in stack.descendants() if p.is_running()]
    assert code == 0, "".join(stack.output)
    assert not leftovers, leftovers
    _status_of_a_stopped_stack_is_one_line(stack)
    _second_up_reuses_the_shards(server_dir / "data", account_id)


def _every_listener_binds_where_the_stack_file_says(stack: StackProcess) -> None:
    """Issue 14, item 3: no process of the stack listens beyond the host the stack file gives
    (the QuickFIX acceptor of the simulator bound 0.0.0.0). The embedded servers, which the
    stack file gives no host, listen on loopback."""
    assert stack.stack_file is not None
    config = load_stack(stack.stack_file, environ={})
    hosts = {config.http.host, LOOPBACK, *(mm.host for mm in config.market_makers)}
    assert hosts == {"127.0.0.1"}, hosts  # what the stack file under test says
    endpoints = stack.endpoints()
    expected = {stack.http_port, *(mm.port for mm in config.market_makers),
                int(endpoints["bootstrap_servers"].rsplit(":", 1)[1]),
                urllib.parse.urlsplit(endpoints["redis_url"]).port,
                *(urllib.parse.urlsplit(dsn).port for dsn in endpoints["shard_dsns"])}
    found = stack_listeners(stack)
    assert expected <= {listener.port for listener in found}, (expected, found)
    elsewhere = [listener for listener in found if listener.ip not in hosts]
    assert not elsewhere, f"listening beyond {sorted(hosts)}: {elsewhere}"


def _check_best_execution(stack, base: str) -> None:  # noqa: ANN001
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'fix_orders_filled_total{market_maker="sim"} 1' in metrics, metrics[-2000:]
    report = subprocess.run(
        [sys.executable, "-m", "compose.cli", "report", "--json"], capture_output=True,
        text=True, timeout=60, env={**os.environ, "BROKERAGE_DATA_DIR": str(stack.data_dir)})
    assert report.returncode == 0, report.stderr
    (row,) = json.loads(report.stdout)
    assert row["market_maker"] == "sim" and row["filled"] == 1


def _day_end_expires_resting_orders(stack, base: str, token: str,  # noqa: ANN001
                                     account_id: str) -> None:
    body = {"account_id": account_id, "symbol": "AAPL", "side": "buy", "order_type": "limit",
            "quantity": "5", "limit_price": "1.00", "time_in_force": "day"}
    status, order = http("POST", f"{base}/v1/orders", body, token, {"Idempotency-Key": "rest"})
    assert status in (200, 201, 202), order

    def state_of(order_id: str) -> str | None:
        code, found = http("GET", f"{base}/v1/orders/{order_id}?account_id={account_id}",
                           token=token)
        return found.get("state") if code == 200 else None

    eventually(lambda: state_of(order["order_id"]) == "routed", timeout_s=30)
    held = http("GET", f"{base}/v1/portfolio?account_id={account_id}", token=token)[1]
    assert Decimal(held["cash_held"]) == Decimal("5.00")
    result = subprocess.run(
        [sys.executable, "-m", "compose.cli", "expire"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "BROKERAGE_DATA_DIR": str(stack.data_dir)})
    assert result.returncode == 0, result.stderr
    eventually(lambda: state_of(order["order_id"]) == "expired", timeout_s=30)
    eventually(lambda: Decimal(http("GET", f"{base}/v1/portfolio?account_id={account_id}",
                                    token=token)[1]["cash_held"]) == 0, timeout_s=30)


def _settlement_settles_todays_trades(stack, base: str, token: str,  # noqa: ANN001
                                      account_id: str) -> None:
    def next_business_day(day: dt.date) -> dt.date:
        day += dt.timedelta(days=1)
        while day.weekday() >= 5:
            day += dt.timedelta(days=1)
        return day

    today = dt.datetime.now(dt.UTC).date()
    trade_date = today if today.weekday() < 5 else next_business_day(today)
    settle_date = next_business_day(trade_date)
    result = subprocess.run(
        [sys.executable, "-m", "compose.cli", "settle", "--date", settle_date.isoformat()],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "BROKERAGE_DATA_DIR": str(stack.data_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "AAPL" in result.stdout, result.stdout  # the netting names today's symbol

    def settled() -> bool:
        body = http("GET", f"{base}/v1/portfolio?account_id={account_id}", token=token)[1]
        rows = [p for p in body["positions"] if p["symbol"] == "AAPL"]
        return bool(rows) and Decimal(rows[0]["quantity_settled"]) == Decimal(10) \
            and Decimal(rows[0]["quantity_unsettled"]) == 0

    eventually(settled, timeout_s=30)


def _reconcile_is_clean(stack) -> None:  # noqa: ANN001
    result = subprocess.run(
        [sys.executable, "-m", "compose.cli", "reconcile"], capture_output=True, text=True,
        timeout=120, env={**os.environ, "BROKERAGE_DATA_DIR": str(stack.data_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shard 0: clean" in result.stdout and "shard 1: clean" in result.stdout


def _status(stack, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "compose.cli", "status", *args], capture_output=True, text=True,
        timeout=60, env={**os.environ, "BROKERAGE_DATA_DIR": str(stack.data_dir)})


def _status_says_every_component_is_up(stack) -> None:  # noqa: ANN001
    result = _status(stack, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and not report["problems"], report
    states = {(c["kind"], c["name"]): c["state"] for c in report["components"]}
    servers = {name for kind, name in states if kind == "server"}
    assert servers == {"broker", "redis", "shard0", "shard1"}, states
    services = {name for kind, name in states if kind == "service"}
    assert services == set(SERVICE_NAMES), states  # each of the default stack's services
    assert all(state == "up" for (kind, _), state in states.items()
               if kind in ("server", "service")), states
    assert states[("gateway", "/healthz")] == "ok", states
    groups = [c for c in report["components"] if c["kind"] == "group"]
    assert groups and all(c["state"] in ("ok", "unknown") and isinstance(c["lag"], int)
                          for c in groups), groups
    table = _status(stack)
    assert table.returncode == 0, table.stdout + table.stderr
    assert table.stdout.splitlines()[-1] == f"ok: all {len(states)} components up", table.stdout
    print(table.stdout)


def _status_of_a_stopped_stack_is_one_line(stack) -> None:  # noqa: ANN001
    result = _status(stack)
    assert result.returncode == 3, result
    assert result.stdout == "" and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("brokerage: no running stack in"), result.stderr


def _second_up_reuses_the_shards(data_dir: Path, account_id: str) -> None:
    again = start_stack(data_dir)
    try:
        again.read_until("healthy")
        token = _login(again.base_url, "alice")
        status, account = http("GET", f"{again.base_url}/v1/accounts/{account_id}", token=token)
        assert status == 200, account
        status, orders = http("GET", f"{again.base_url}/v1/orders?account_id={account_id}",
                              token=token)
        assert status == 200 and orders, orders
        # The new broker holds no stream state: the topology rebuilds the account from its
        # shard, so the cash deposited before the restart still buys.
        eventually(lambda: http("GET", f"{again.base_url}/v1/quotes?symbols=AAPL",
                                token=token)[1]["quotes"], timeout_s=30)
        body = {"account_id": account_id, "symbol": "AAPL", "side": "buy",
                "order_type": "limit", "quantity": "100", "limit_price": "20.00",
                "time_in_force": "gtc"}
        status, order = http("POST", f"{again.base_url}/v1/orders", body, token,
                             {"Idempotency-Key": "after-restart"})
        assert status == 201 and order["state"] in ("funds_held", "routed"), order
    finally:
        assert again.stop() == 0, "".join(again.output)


def _check_shard_rows(shard_dsns: list[str], account_id: str, cost: Decimal) -> None:
    owning = []
    for dsn in shard_dsns:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT t.txn_id, e.asset, sum(e.amount) FROM ledger_transactions t "
                "JOIN ledger_entries e USING (txn_id) WHERE t.account_id = %s "
                "GROUP BY t.txn_id, e.asset", (account_id,)).fetchall()
            if rows:
                owning.append(dsn)
            assert all(total == 0 for _, _, total in rows), rows
            per_asset = conn.execute(
                "SELECT asset, sum(amount) FROM ledger_entries GROUP BY asset").fetchall()
            assert all(total == 0 for _, total in per_asset), per_asset
            if not rows:
                continue
            kinds = {kind for (kind,) in conn.execute(
                "SELECT DISTINCT kind FROM ledger_transactions WHERE account_id = %s",
                (account_id,))}
            assert {"deposit", "fill"} <= kinds, kinds
            shares = conn.execute(
                "SELECT sum(amount) FROM ledger_entries WHERE asset = 'AAPL' "
                "AND ledger_account LIKE %s", (f"user:{account_id}:%",)).fetchone()[0]
            assert shares == Decimal(10)
            cash = conn.execute(
                "SELECT sum(amount) FROM ledger_entries WHERE asset = 'USD' "
                "AND ledger_account LIKE %s", (f"user:{account_id}:%",)).fetchone()[0]
            assert cash == Decimal("10000.00") - cost
    assert len(owning) == 1, f"account rows on {len(owning)} shards"


def test_up_check_starts_verifies_and_stops(server_dir: Path) -> None:
    stack = start_stack(server_dir / "data", "--check")
    try:
        stack.read_until("check passed")
        code = stack.popen.wait(60)
    finally:
        stack.stop()
    assert code == 0, "".join(stack.output)
    assert not [p for p in stack.descendants() if p.is_running()]
