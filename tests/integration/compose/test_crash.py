"""Whole-stack crash tests (issue 10): a load of orders with fills, deposits, withdrawals and
cancels over HTTP, every request with an idempotency key and retried with the same key until it
gets a definite answer; SIGKILL of every process of the stack at once (the `brokerage up`
process, every service, the broker, every PostgreSQL process, Redis) at seeded random moments,
several rounds, each followed by `brokerage up` on the same data dir; then, once the stack has
settled, an independent auditor (auditor.py) checks what the client was told against the market
maker's own record and the shards' rows, and `brokerage reconcile`.

The seed is BROKERAGE_CRASH_SEED (`random` draws one; unset, the suite's own; always printed): it
decides the load and the moments of the kills, so a failing seed replays the same requests and
kill offsets (the machine's timing still varies). BROKERAGE_CRASH_ROUNDS sets the number of
kill rounds (default 1, the short version run by `./dev test`; the suite's time is bounded).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.integration.compose.auditor import (
    TERMINAL_STATES,
    AuditReport,
    Journal,
    Request,
    Sources,
    audit,
)
from tests.integration.compose.stack_process import (
    StackProcess,
    freeze_and_kill,
    kill_whole_stack,
    restart_stack,
    start_stack,
    stop_everything,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ACCOUNTS = 4
SYMBOLS = ("AAPL", "MSFT", "GME", "SPY")
FIRST_DEPOSIT = Decimal("60000.00")
HTTP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 90.0
RETRY_TIMEOUT_S = 90.0
OPS_PER_ROUND_MAX = 120  # bounds a round's load in count; the kill bounds it in time
KILL_AFTER_S = (2.0, 12.0)  # a round's load runs this long (seeded) before the kill
FINAL_OPS = 25  # after the last restart: the stack still works
ROUNDS = int(os.environ.get("BROKERAGE_CRASH_ROUNDS", "1"))


# ---- the client ----------------------------------------------------------------------------


@dataclass
class Client:
    """A load client that keeps a journal of what it was told. Requests without a definite
    answer (no answer, 5xx, 429) are kept and retried with the same key and body."""

    base_url: str
    rng: random.Random
    journal: Journal = field(default_factory=Journal)
    tokens: dict[str, str] = field(default_factory=dict)
    undecided: list[Request] = field(default_factory=list)
    resting: list[Request] = field(default_factory=list)  # acknowledged limit orders to cancel
    quotes: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    quotes_at: float = 0.0
    counter: int = 0

    # ---- HTTP --------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, user_id: str | None = None,
              key: str | None = None) -> tuple[int | None, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if user_id is not None:
            request.add_header("Authorization", f"Bearer {self._token(user_id)}")
        if key is not None:
            request.add_header("Idempotency-Key", key)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw) if raw else None
            except ValueError:
                return error.code, raw.decode(errors="replace")
        except (OSError, ValueError) as error:  # refused, reset, timed out, torn answer
            return None, repr(error)

    def _token(self, user_id: str) -> str:
        if user_id not in self.tokens:
            status, body = self._call("POST", "/v1/auth/token", {"user_id": user_id})
            if status not in (200, 201):
                raise ConnectionError(f"login {user_id}: {status} {body}")
            self.tokens[user_id] = body["token"]
        return self.tokens[user_id]

    def send(self, request: Request) -> Request:
        """One attempt; the answer goes into the journal entry."""
        request.attempts += 1
        try:
            status, answer = self._attempt(request)
        except ConnectionError as error:  # the login itself got no answer
            status, answer = None, repr(error)
        if status == 401:
            self.tokens.pop(request.user_id, None)
        if request.kind == "cancel" and status == 404 and request.attempts < 20:
            # An order answered 201 may not have landed in the shard the gateway reads yet:
            # the cancel is retried until the order is found (bounded).
            status = None
        if request.acknowledged and status not in (200, 201, 202):
            # Never downgrade what the client was told: a retry of an acknowledged request
            # does not happen, but keep the rule explicit.
            return request
        request.status, request.answer = status, answer
        if request.kind == "order" and request.acknowledged and isinstance(answer, dict):
            request.order_id = answer.get("order_id")
        if not request.definite and request not in self.undecided:
            self.undecided.append(request)
        if request.definite and request in self.undecided:
            self.undecided.remove(request)
        return request

    def _attempt(self, request: Request) -> tuple[int | None, Any]:
        user = request.user_id
        if request.kind == "order":
            return self._call("POST", "/v1/orders", request.body, user, request.key)
        if request.kind in ("deposit", "withdrawal"):
            path = f"/v1/accounts/{request.account_id}/{request.kind}s"
            return self._call("POST", path, request.body, user, request.key)
        if request.kind == "cancel":
            return self._call("DELETE", f"/v1/orders/{request.order_id}?account_id="
                              f"{request.account_id}", None, user, request.key)
        raise AssertionError(request.kind)

    def new(self, kind: str, account_id: str, body: dict[str, Any],
            order_id: str | None = None) -> Request:
        self.counter += 1
        request = Request(kind=kind, key=f"{kind[:3]}-{self.counter:05d}",
                          account_id=account_id, user_id=self.journal.accounts[account_id],
                          body=body, order_id=order_id)
        self.journal.requests.append(request)
        return self.send(request)

    # ---- setup -------------------------------------------------------------------------

    def open_account(self, user_id: str, n: int) -> str:
        """Account number `n` of `user_id`, opened (retried: the stack is up and healthy
        here) and kept in the journal; returns its id."""
        status, account = None, None
        for _ in range(20):
            status, account = self._call("POST", "/v1/accounts", {}, user_id, f"acct-{n}")
            if status in (200, 201):
                break
            time.sleep(0.5)
        assert status in (200, 201) and isinstance(account, dict), (status, account)
        self.journal.accounts[account["account_id"]] = user_id
        return str(account["account_id"])

    def open_accounts(self, count: int) -> None:
        for n in range(count):
            self.open_account(f"crash-user-{n}", n)
        for account_id in self.journal.accounts:
            self.new("deposit", account_id, {"amount": str(FIRST_DEPOSIT)})

    def refresh_quotes(self, max_age_s: float = 2.0) -> bool:
        if self.quotes and time.monotonic() - self.quotes_at < max_age_s:
            return True
        user = next(iter(self.journal.accounts.values()))
        status, body = self._call("GET", f"/v1/quotes?symbols={','.join(SYMBOLS)}", None, user)
        if status != 200 or not isinstance(body, dict):
            return False
        for quote in body.get("quotes", []):
            self.quotes[quote["symbol"]] = (Decimal(str(quote["bid"])), Decimal(str(quote["ask"])))
        self.quotes_at = time.monotonic()
        return all(symbol in self.quotes for symbol in SYMBOLS)

    # ---- the load ----------------------------------------------------------------------

    def shares_believed(self, account_id: str, symbol: str) -> Decimal:
        """Shares the client thinks it has: acknowledged buys less acknowledged sells (a sell
        beyond what was filled is refused with a reason; that is a definite answer too)."""
        total = Decimal(0)
        for request in self.journal.requests:
            if (request.kind == "order" and request.acknowledged
                    and request.account_id == account_id and request.body["symbol"] == symbol
                    and request.body["order_type"] == "market"):
                sign = 1 if request.body["side"] == "buy" else -1
                total += sign * Decimal(request.body["quantity"])
        return total

    def one_op(self) -> None:
        rng = self.rng
        account_id = rng.choice(sorted(self.journal.accounts))
        symbol = rng.choice(SYMBOLS)
        roll = rng.random()
        self.refresh_quotes()
        bid, ask = self.quotes.get(symbol, (Decimal("20"), Decimal("20")))

        def order(side: str, order_type: str, quantity: int, limit: Decimal | None = None,
                  tif: str = "day") -> Request:
            body: dict[str, Any] = {"account_id": account_id, "symbol": symbol, "side": side,
                                    "order_type": order_type, "quantity": str(quantity),
                                    "time_in_force": tif}
            if limit is not None:
                body["limit_price"] = str(limit.quantize(Decimal("0.01"), ROUND_DOWN))
            return self.new("order", account_id, body)

        if roll < 0.28:
            order("buy", "market", rng.randint(1, 5))
        elif roll < 0.32:
            symbol = "GME"  # at least partial_fill_qty_min: three fills of 40/30/30 %
            order("buy", "market", 1000)
        elif roll < 0.47:
            held = self.shares_believed(account_id, symbol)
            if held >= 1:
                order("sell", "market", rng.randint(1, int(min(held, Decimal(1000)))))
            else:
                order("buy", "market", rng.randint(1, 3))
        elif roll < 0.55:
            order("buy", "limit", rng.randint(1, 3), ask * Decimal("1.02"))  # marketable
        elif roll < 0.70:
            placed = order("buy", "limit", rng.randint(1, 3), bid * Decimal("0.8"), "gtc")
            if placed.acknowledged:
                self.resting.append(placed)
        elif roll < 0.73 and self.shares_believed(account_id, symbol) >= 1:
            placed = order("sell", "limit", 1, ask * Decimal("1.25"), "gtc")
            if placed.acknowledged:
                self.resting.append(placed)
        elif roll < 0.85 and self.resting:
            target = self.resting.pop(rng.randrange(len(self.resting)))
            if target.order_id:
                self.new("cancel", target.account_id, {}, order_id=target.order_id)
        elif roll < 0.95:
            amount = f"{rng.randint(100, 2000)}.{rng.randint(0, 99):02d}"
            self.new("deposit", account_id, {"amount": amount})
        else:
            self.new("withdrawal", account_id, {"amount": f"{rng.randint(1, 50)}.00"})

    def retry_undecided(self, limit: int = 3) -> None:
        for request in list(self.undecided)[:limit]:
            self.send(request)
            if request.status == 429:
                time.sleep(0.2)

    def run(self, stop: threading.Event, ops_max: int) -> int:
        """The load until `stop` (or `ops_max` operations): each operation, then a few retries
        of requests without a definite answer. Returns how many operations ran."""
        done = 0
        while not stop.is_set() and done < ops_max:
            self.retry_undecided()
            if stop.is_set():
                break
            if self.undecided and self.undecided[-1].status is None:
                # The stack does not answer: back off rather than pile up new requests.
                stop.wait(0.5)
                continue
            self.one_op()
            done += 1
        return done

    def settle_requests(self, timeout_s: float) -> None:
        """Retry (same key, same body) every request without a definite answer until it has
        one, bounded in time."""
        deadline = time.monotonic() + timeout_s
        while self.undecided and time.monotonic() < deadline:
            self.retry_undecided(limit=len(self.undecided))
            if self.undecided:
                time.sleep(0.5)


def _load(client: Client, stop: threading.Event, ops: list[int]) -> None:
    ops.append(client.run(stop, OPS_PER_ROUND_MAX))


# ---- the stack -----------------------------------------------------------------------------


def _healthy(stack: StackProcess) -> StackProcess:
    stack.read_until("healthy", START_TIMEOUT_S)
    return stack


def _shard_dsns(stack: StackProcess) -> list[str]:
    return list(stack.endpoints()["shard_dsns"])


def _wait_for_quotes(client: Client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.refresh_quotes(max_age_s=0):
            return
        time.sleep(0.3)
    raise AssertionError(f"no quotes for {SYMBOLS} in {timeout_s} s: {client.quotes}")


def _open_decision(client: Client, shard_dsns: list[str]) -> list[str]:
    """Acknowledged orders still waiting for a decision: missing from the shard, or not
    terminal when they cannot rest (market orders), or not yet past routing."""
    rows: dict[str, tuple[str, str]] = {}
    for dsn in shard_dsns:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            for order_id, state, order_type in conn.execute(
                    "SELECT order_id, state, order_type FROM orders"):
                rows[order_id] = (state, order_type)
    waiting = []
    for request in client.journal.requests:
        if request.kind != "order" or not request.acknowledged or not request.order_id:
            continue
        state, order_type = rows.get(request.order_id, ("missing", request.body["order_type"]))
        if state in TERMINAL_STATES:
            continue
        if order_type == "limit" and state in ("routed", "partially_filled"):
            continue
        waiting.append(f"{request.order_id}:{state}")
    return waiting


def _ledger_size(shard_dsns: list[str]) -> tuple[int, ...]:
    sizes: list[int] = []
    for dsn in shard_dsns:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            for table in ("ledger_transactions", "order_events", "orders"):
                (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
                sizes.append(int(count))
    return tuple(sizes)


def _settle(client: Client, stack: StackProcess, timeout_s: float = SETTLE_TIMEOUT_S,
            stalled_s: float = 15.0) -> list[str]:
    """Wait (bounded) until no acknowledged order waits for a decision and the shards stop
    changing, or until nothing has moved for `stalled_s` (what waits then will not move: the
    auditor says what it means). Returns what still waits."""
    dsns = _shard_dsns(stack)
    deadline = time.monotonic() + timeout_s
    look = (_open_decision(client, dsns), _ledger_size(dsns))
    moved_at = time.monotonic()
    quiet_looks = 0
    while time.monotonic() < deadline and time.monotonic() - moved_at < stalled_s:
        time.sleep(1.0)
        now = (_open_decision(client, dsns), _ledger_size(dsns))
        if now != look:
            look, moved_at, quiet_looks = now, time.monotonic(), 0
            continue
        quiet_looks += 1
        if not now[0] and quiet_looks >= 2:  # nothing waits, and no row came for 2 s
            break
    return look[0]


def _audit(client: Client, stack: StackProcess, reconcile_timeout_s: float = 60.0
           ) -> AuditReport:
    sources = Sources(
        shard_dsns=_shard_dsns(stack),
        simulator_store_dir=stack.data_dir / "fix" / "simulator-sim",
        base_url=stack.base_url,
        reconcile_env={"BROKERAGE_DATA_DIR": str(stack.data_dir),
                       "BROKERAGE_STACK": str(stack.stack_file)},
        reconcile_timeout_s=reconcile_timeout_s)
    return audit(client.journal, sources)


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
