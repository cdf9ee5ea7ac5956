"""The bad-input corpus (tests/bad_input.py) against one whole stack (`brokerage up`): HTTP
(cases schemathesis generates from the gateway's OpenAPI document, and hand-made ones), the
raw HTTP parser, the WebSocket, `orders.commands`, FIX execution reports from the market
maker, and connector files. Every input gets its clear error, nothing changes the books, and
the stack serves a good request afterwards. It prints one JSON line: inputs per entry point,
how each was answered, and the failures (none).

The market maker is a scripted FIX acceptor in this process (from test_fix_bad_input), so
it can send what a simulator never would. `BROKERAGE_BAD_INPUT_SEED` and
`BROKERAGE_BAD_INPUT_EXAMPLES` (per operation and mode) choose the generated HTTP cases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from state.ids import cl_ord_id_for
from state.router import account_partition
from tests import bad_input as corpus
from tests.integration.compose.stack_process import (
    StackProcess,
    eventually,
    exchange,
    start_stack,
    stop_everything,
)
from tests.integration.gateways.test_fix_bad_input import (
    PEER_COMP_ID,
    ScriptedPeer,
    malformed_reports,
)
from tests.openapi_answers import checked_http

pytestmark = pytest.mark.integration

SECRET = "bad-input-corpus-secret-of-at-least-32-bytes"
SEED = int(os.environ.get("BROKERAGE_BAD_INPUT_SEED", "1"))
EXAMPLES = int(os.environ.get("BROKERAGE_BAD_INPUT_EXAMPLES", "12"))
MM = "scripted"
http = checked_http(exchange)


def write_stack_file(path: Path, peer_port: int) -> Path:
    """Demo login with a known key (the corpus signs tokens with it that must still be
    refused), budgets no corpus reaches, and the scripted market maker."""
    path.write_text("\n".join([
        "[stack]", "shards = 2", "partitions_per_shard = 2", "",
        "[http]", "demo_login = true", f'token_secret = "{SECRET}"',
        "orders_per_s_max = 100000", "reads_per_s_max = 100000", "",
        "[[market_makers]]", f'name = "{MM}"', 'host = "127.0.0.1"', f"port = {peer_port}",
        'sender_comp_id = "BROKER"', f'target_comp_id = "{PEER_COMP_ID}"', ""]))
    return path


def login(base: str, user: str) -> str:
    status, body = http("POST", f"{base}/v1/auth/token", {"user_id": user})
    assert status == 201, body
    return str(body["token"])


def open_account(base: str, token: str) -> str:
    status, body = http("POST", f"{base}/v1/accounts", {}, token)
    assert status == 201, body
    return str(body["account_id"])


def books(base: str, token: str, account: str) -> dict[str, Any]:
    """What bad input must not change: the ledger's figures and every order that lived (an
    order refused at birth, as a bad command on the topic is, is its refusal, not a change)."""
    status, portfolio = http("GET", f"{base}/v1/portfolio?account_id={account}", token=token)
    assert status == 200, portfolio
    status, listed = http("GET", f"{base}/v1/orders?account_id={account}&limit=500",
                          token=token)
    assert status == 200, listed
    return {
        "cash": portfolio["cash"], "cash_held": portfolio["cash_held"],
        "buying_power": portfolio["buying_power"],
        "withdrawable_cash": portfolio["withdrawable_cash"],
        "positions": sorted((p["symbol"], p["quantity"]) for p in portfolio["positions"]),
        "orders": sorted((o["order_id"], o["state"], o["filled_quantity"])
                         for o in listed["orders"] if o["state"] != "rejected"),
    }


def order_state(base: str, token: str, account: str, order_id: str) -> dict[str, Any] | None:
    status, order = http("GET", f"{base}/v1/orders/{order_id}?account_id={account}",
                         token=token)
    return order if status == 200 else None


def test_bad_input_corpus_changes_nothing_and_the_stack_serves_on(
        server_dir: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    peer = ScriptedPeer(tmp_path)
    peer.start()
    stack = start_stack(server_dir / "data",
                        stack_file=write_stack_file(tmp_path / "stack.toml", peer.port))
    tally = corpus.Tally()
    try:
        stack.read_until("ready:")
        assert peer.app.logged_on.wait(30), stack.logs()
        base = stack.base_url
        victim, attacker = login(base, corpus.VICTIM), login(base, corpus.ATTACKER)
        account, attacker_account = open_account(base, victim), open_account(base, attacker)
        status, deposit = http("POST", f"{base}/v1/accounts/{account}/deposits",
                               {"amount": "1000.00"}, victim, {"Idempotency-Key": "dep-1"})
        assert status in (200, 201, 202), deposit
        status, order = http("POST", f"{base}/v1/orders", {
            "account_id": account, "symbol": "AAPL", "side": "buy", "order_type": "limit",
            "quantity": "1", "limit_price": "1.00"}, victim, {"Idempotency-Key": "open-1"})
        assert status in (201, 202), order
        order_id = order["order_id"]
        eventually(lambda: (order_state(base, victim, account, order_id) or {}).get("state")
                   == "routed", timeout_s=30)
        # the deposit and the order's hold both landed (cash counts held cash or not)
        eventually(lambda: (lambda b: b["cash_held"] == "1.00" and b["cash"] in (
            "999.00", "1000.00"))(books(base, victim, account)), timeout_s=30)
        before = books(base, victim, account), books(base, attacker, attacker_account)
        log_sizes = {log: log.stat().st_size for log in (stack.data_dir / "logs").glob("*.log")}

        target = corpus.Target(account, order_id, attacker_account, SECRET, int(time.time()))
        document = json.loads(exchange("GET", f"{base}/v1/openapi.json")[2])
        cases = corpus.hand_made_http_cases(target)
        generated = corpus.openapi_http_cases(document, target, EXAMPLES, SEED)
        tokens = {corpus.VICTIM: victim, corpus.ATTACKER: attacker}
        asyncio.run(corpus.run_http(base, cases + generated, tokens, document, tally))
        corpus.run_protocol("127.0.0.1", stack.http_port, tally)
        asyncio.run(corpus.run_ws(f"{base}/v1/stream".replace("http", "ws", 1),
                                  corpus.ws_cases(SECRET, corpus.VICTIM, target.now_s),
                                  victim, tally))
        endpoints = stack.endpoints()
        partitions = 4  # shards x partitions_per_shard, as the stack file says
        corpus.run_commands(endpoints["bootstrap_servers"], "", corpus.command_records(
            account, attacker_account, account_partition(account, partitions), partitions,
            dt.datetime.now(dt.UTC)), tally)
        run_fix(peer, endpoints["bootstrap_servers"], account, attacker_account, order_id,
                tally)
        corpus.run_connector_files(tmp_path / "connectors", tally)
        up_refuses_a_bad_connector_file(tmp_path, tally)

        # Nothing changed: the books of both users, and the victim's order is still open.
        after = books(base, victim, account), books(base, attacker, attacker_account)
        tally.record("books", "victim and attacker", "unchanged" if after == before
                     else "changed", None if after == before else f"{before} -> {after}")
        for log, size in sorted(log_sizes.items()):
            with log.open("rb") as handle:
                handle.seek(size)
                written = handle.read().decode(errors="replace")
            traces = written.count("Traceback (most recent call last)")
            tally.record("logs", log.name, f"{traces} tracebacks",
                         None if traces == 0 else f"{traces} tracebacks in {log.name}: "
                         f"{written[written.index('Traceback'):][:600]}")
        # The stack serves on: a deposit, an order filled and booked, a stream with quotes.
        serves_a_good_request_after(stack, victim, account, before[0])
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stop_everything(stack)
        peer.stop()
        summary = {"seed": SEED, "examples_per_operation": EXAMPLES, **tally.summary(),
                   "elapsed_s": round(time.monotonic() - started, 1)}
        print(json.dumps(summary, sort_keys=True))
    assert not tally.failures, "\n".join(tally.failures)


def run_fix(peer: ScriptedPeer, bootstrap: str, account: str, attacker_account: str,
            order_id: str, tally: corpus.Tally) -> None:
    """Each report sent for the victim's open order, one at a time: the session's Reject
    back, or the alert that says it was not booked."""
    from tests.integration.kafka_io import read_topic

    cl_ord_id = cl_ord_id_for(order_id)
    # test_fix_bad_input's own malformed reports first: the session refuses each.
    for number, (reason, message) in enumerate(malformed_reports(cl_ord_id, account)):
        peer.app.send(message)
        kinds = peer.kinds_until(lambda got: "3" in got, timeout_s=10)
        tally.record("fix", f"malformed:{number}:{reason}",
                     "session Reject" if "3" in kinds else "no Reject",
                     None if "3" in kinds else f"no session Reject: {kinds}")
    for index, case in enumerate(corpus.fix_cases(attacker_account)):
        exec_id = f"bad-{index}-{case.name}"
        peer.app.send(corpus.fix_report(case, cl_ord_id, account, "AAPL", exec_id))
        if case.refused_by == corpus.SESSION:
            kinds = peer.kinds_until(lambda got: "3" in got, timeout_s=10)
            tally.record("fix", case.name, "session Reject" if "3" in kinds else "no Reject",
                         None if "3" in kinds else f"no session Reject: {kinds}")
            continue
        wanted = f"{MM}:{exec_id}"

        def alert(records: list[Any], wanted: str = wanted) -> bool:
            return any(json.loads(r.value).get("exec_id") == wanted for r in records)

        try:
            records = read_topic(bootstrap, "orders.events", until=alert, timeout_s=20)
        except AssertionError:
            tally.record("fix", case.name, "no alert", "no alert in 20 s")
            continue
        codes = {json.loads(r.value)["code"] for r in records
                 if json.loads(r.value).get("exec_id") == wanted}
        tally.record("fix", case.name, f"alert {','.join(sorted(codes))}",
                     None if codes & case.refused_by
                     else f"alerts {sorted(codes)}, expected one of {sorted(case.refused_by)}")
    assert peer.app.errors == [], peer.app.errors


def up_refuses_a_bad_connector_file(tmp_path: Path, tally: corpus.Tally) -> None:
    """`brokerage up` with a bad connector file: one line naming it, before any server."""
    folder = tmp_path / "bad-connectors"
    folder.mkdir()
    (folder / "feed.toml").write_text('name = "feed"\nconnector = "synthetic_quotes"\n'
                                      'topic = "quotes"\n[settings]\nsymbols = ["AAPL"]\n'
                                      "rate_per_s = nan\n")
    data_dir = tmp_path / "never-started"
    result = subprocess.run(
        [sys.executable, "-m", "compose.cli", "up"], capture_output=True, text=True,
        timeout=60, env={**{k: v for k, v in os.environ.items() if k != "BROKERAGE_STACK"},
                         "BROKERAGE_DATA_DIR": str(data_dir),
                         "BROKERAGE_CONNECTORS_DIR": str(folder)})
    lines = result.stderr.strip().splitlines()
    failure = None
    if result.returncode != 1 or len(lines) != 1 or "feed.toml" not in lines[0] \
            or "rate_per_s" not in lines[0]:
        failure = f"exit {result.returncode}: {result.stderr[-500:]!r}"
    elif data_dir.exists():
        failure = "servers were started before the file was read"
    tally.record("connector_files", "brokerage_up", f"exit {result.returncode}, one line",
                 failure)


def serves_a_good_request_after(stack: StackProcess, token: str, account: str,
                                before: dict[str, Any]) -> None:
    base = stack.base_url
    status, deposit = http("POST", f"{base}/v1/accounts/{account}/deposits",
                           {"amount": "10.00"}, token, {"Idempotency-Key": "dep-after"})
    assert status in (200, 201), deposit
    status, order = http("POST", f"{base}/v1/orders", {
        "account_id": account, "symbol": "FILL", "side": "buy", "order_type": "limit",
        "quantity": "1", "limit_price": "101.00"}, token, {"Idempotency-Key": "fill-after"})
    assert status in (201, 202), order
    eventually(lambda: (order_state(base, token, account, order["order_id"]) or {})
               .get("state") == "filled", timeout_s=30)
    # The scripted market maker fills at 100.01: the books moved by that and the deposit only.
    expected_cash = Decimal(before["cash"]) + Decimal("10.00") - Decimal("100.01")
    final = eventually(lambda: (lambda b: b if Decimal(b["cash"]) == expected_cash
                                and ("FILL", "1.000000") in b["positions"] else None)(
        books(base, token, account)), timeout_s=30)
    assert final["cash_held"] == before["cash_held"], (before, final)

    async def stream_quotes() -> None:
        import aiohttp

        url = f"{base}/v1/stream".replace("http", "ws", 1)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"op": "auth", "token": token}))
            await ws.send_str('{"op":"subscribe","quotes":["AAPL"]}')
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                frame = json.loads((await ws.receive(timeout=20)).data)
                if frame["type"] == "quote":
                    return
            raise AssertionError("no quote on the stream after the corpus")

    asyncio.run(stream_quotes())
    status, health = http("GET", f"{base}/healthz")
    assert status == 200, health
