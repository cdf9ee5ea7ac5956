"""An auditor of a whole stack after crashes, independent of the services' code paths.

It compares three records kept by different parties and never computes an expectation with the
system's own domain code:
- the client's journal: what the load was told over HTTP (orders answered 200/201/202, money
  commands accepted or pending, and what got no definite answer);
- the market maker's own record: the simulator's order book in its SQLite store
  (gateways/simulator/store.py), which holds each order's cumulative quantity and notional;
- the shards' rows (PostgreSQL): orders, ledger transactions and entries, order events.

Checks (each failure names its order or account):
1. every order the client saw acknowledged exists (shard row, or GET /v1/orders/{id}) and is
   terminal, or open and open at the market maker;
2. the market maker's fills equal the ledger's fills, order by order (quantity, and cash =
   notional to the cent), and the shard's `filled_quantity` agrees;
3. no fill booked twice (execution ids unique across the ledger);
4. every ledger transaction balances per asset;
5. each account's cash and shares equal its deposits, withdrawals and the market maker's fills;
6. no funds held for an order the market maker does not have open, and every order open at the
   market maker is open in the shard;
7. every acknowledged money command was decided (booked or refused) by the account's shard;
8. `brokerage reconcile` exits 0.

Run standalone on a stack that is up: `python -m compose.chaos.auditor --journal J --data-dir D
--stack S --http URL` (`brokerage chaos` keeps the journal of a failed run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import psycopg

CENT = Decimal("0.01")
TERMINAL_STATES = frozenset({"filled", "cancelled", "rejected", "expired", "failed"})
# FIX OrdStatus (39) of an order the market maker still works: new, partially filled.
MM_OPEN_STATUSES = frozenset({"0", "1"})
ACKNOWLEDGED = frozenset({200, 201, 202})


def cents(amount: Decimal) -> Decimal:
    """A trade's cash value: notional to the cent, half-even (the brokerage's stated rule)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def order_id_of_cl_ord_id(cl_ord_id: str) -> str:
    """ClOrdIDs on the wire are `<order_id>` or `<order_id>.<suffix>` (the FIX contract)."""
    return cl_ord_id.split(".", 1)[0]


# ---- the client's journal ------------------------------------------------------------------


@dataclass
class Request:
    """One client request and the last answer it got (status None: no answer at all)."""

    kind: str  # order | deposit | withdrawal | cancel | replace | ach_return
    key: str
    account_id: str
    user_id: str
    body: dict[str, Any]
    status: int | None = None
    answer: Any = None
    attempts: int = 0
    order_id: str | None = None  # orders: from the answer; cancels: the order cancelled

    @property
    def acknowledged(self) -> bool:
        return self.status in ACKNOWLEDGED

    @property
    def definite(self) -> bool:
        """An answer the client will not retry: acknowledged, or refused for good (4xx other
        than 408/425/429)."""
        return self.status is not None and (
            self.acknowledged or (400 <= self.status < 500
                                  and self.status not in (408, 425, 429)))


@dataclass
class Journal:
    accounts: dict[str, str] = field(default_factory=dict)  # account_id -> user_id
    requests: list[Request] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"accounts": self.accounts,
                                    "requests": [asdict(r) for r in self.requests]},
                                   default=str, indent=1))

    @classmethod
    def load(cls, path: Path) -> Journal:
        raw = json.loads(path.read_text())
        return cls(raw["accounts"], [Request(**r) for r in raw["requests"]])


# ---- the market maker's record -------------------------------------------------------------


@dataclass(frozen=True)
class MMOrder:
    cl_ord_id: str
    order_id: str  # the brokerage's order id the ClOrdID names
    account_id: str
    symbol: str
    side: str
    quantity: Decimal
    cum_qty: Decimal
    notional: Decimal
    ord_status: str

    @property
    def open(self) -> bool:
        return self.ord_status in MM_OPEN_STATUSES


def read_simulator_book(store_dir: Path) -> list[MMOrder]:
    """The simulator's book as it stands on disk. The simulator holds its SQLite file under an
    exclusive lock while it runs, so the database and its WAL are copied and the copy read
    (opening it recovers the WAL's committed transactions, as a restart of the simulator would)."""
    source = store_dir / "book.sqlite"
    if not source.exists():
        return []
    with tempfile.TemporaryDirectory(prefix="audit-book-") as tmp:
        for suffix in ("", "-wal"):
            if Path(f"{source}{suffix}").exists():
                shutil.copyfile(f"{source}{suffix}", Path(tmp) / f"book.sqlite{suffix}")
        db = sqlite3.connect(Path(tmp) / "book.sqlite")
        try:
            rows = [json.loads(state) for (state,) in db.execute("SELECT state FROM orders")]
        finally:
            db.close()
    orders = []
    for row in rows:
        request = row["request"]
        orders.append(MMOrder(
            cl_ord_id=request["cl_ord_id"], order_id=order_id_of_cl_ord_id(request["cl_ord_id"]),
            account_id=request["account"], symbol=request["symbol"], side=request["side"],
            quantity=Decimal(str(request["quantity"])), cum_qty=Decimal(str(row["cum_qty"])),
            notional=Decimal(str(row["notional"])), ord_status=str(row["ord_status"])))
    return orders


# ---- the shards' rows ----------------------------------------------------------------------


@dataclass
class ShardRows:
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    # order_id -> list of (txn_id, exec cause, user USD amount, user shares amount)
    fills: dict[str, list[tuple[str, str, Decimal, Decimal]]] = field(
        default_factory=lambda: defaultdict(list))
    unbalanced: list[tuple[str, str, Decimal]] = field(default_factory=list)
    # account -> asset -> balance over every user bucket
    holdings: dict[str, dict[str, Decimal]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))
    # account -> asset -> balance in the held buckets only
    held: dict[str, dict[str, Decimal]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))
    # (account, idempotency key) -> "accepted" | "rejected"
    decisions: dict[tuple[str, str], str] = field(default_factory=dict)
    booked_money: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    # (account, idempotency key) -> how many money transactions that command booked
    money_bookings: dict[tuple[str, str], int] = field(default_factory=dict)
    alerts: list[tuple[str, str, str | None]] = field(default_factory=list)
    transactions: int = 0
    accounts_on: dict[str, int] = field(default_factory=dict)


def read_shards(shard_dsns: list[str]) -> ShardRows:
    """Every shard's rows, each shard read in one snapshot (REPEATABLE READ): its sink lands
    batches meanwhile, and a fill counted in one query but not the next would be a difference
    that is none."""
    rows = ShardRows()
    for shard, dsn in enumerate(shard_dsns):
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            for (account_id,) in conn.execute("SELECT account_id FROM accounts"):
                rows.accounts_on[account_id] = shard
            columns = ("order_id", "account_id", "symbol", "side", "order_type", "quantity",
                       "limit_price", "state", "filled_quantity", "held_amount", "reason")
            for values in conn.execute(f"SELECT {', '.join(columns)} FROM orders"):
                rows.orders[values[0]] = dict(zip(columns, values, strict=True))
            (count,) = conn.execute("SELECT count(*) FROM ledger_transactions").fetchone() or (0,)
            rows.transactions += int(count)
            for txn_id, asset, total in conn.execute(
                    "SELECT txn_id, asset, sum(amount) FROM ledger_entries"
                    " GROUP BY txn_id, asset HAVING sum(amount) <> 0"):
                rows.unbalanced.append((txn_id, asset, total))
            # headers without any entry are unbalanced too
            for (txn_id,) in conn.execute(
                    "SELECT t.txn_id FROM ledger_transactions t WHERE NOT EXISTS"
                    " (SELECT 1 FROM ledger_entries e WHERE e.txn_id = t.txn_id)"):
                rows.unbalanced.append((txn_id, "(no entries)", Decimal(0)))
            for txn_id, cause_id, order_id, usd, shares in conn.execute(
                    "SELECT t.txn_id, t.cause_id, t.order_id,"
                    " coalesce(sum(e.amount) FILTER (WHERE e.asset = 'USD'"
                    "   AND e.ledger_account LIKE 'user:%%'), 0),"
                    " coalesce(sum(e.amount) FILTER (WHERE e.asset <> 'USD'"
                    "   AND e.ledger_account LIKE 'user:%%'), 0)"
                    " FROM ledger_transactions t JOIN ledger_entries e USING (txn_id)"
                    " WHERE t.kind = 'fill' GROUP BY t.txn_id, t.cause_id, t.order_id"):
                rows.fills[order_id or f"(no order: {txn_id})"].append(
                    (txn_id, cause_id, usd, shares))
            for ledger_account, asset, total in conn.execute(
                    "SELECT ledger_account, asset, sum(amount) FROM ledger_entries"
                    " WHERE ledger_account LIKE 'user:%%' GROUP BY ledger_account, asset"):
                _, account_id, bucket = ledger_account.split(":")
                rows.holdings[account_id][asset] += total
                if bucket in ("cash_held", "shares_held"):
                    rows.held[account_id][asset] += total
            for account_id, key, event_type in conn.execute(
                    "SELECT account_id, idempotency_key, event_type FROM order_events"
                    " WHERE event_type IN ('command_accepted', 'command_rejected')"
                    " AND idempotency_key IS NOT NULL"):
                decided = "accepted" if event_type == "command_accepted" else "rejected"
                rows.decisions.setdefault((account_id, key), decided)
            for account_id, cause_id, usd, bookings in conn.execute(
                    "SELECT t.account_id, t.cause_id, sum(e.amount), count(DISTINCT t.txn_id)"
                    " FROM ledger_transactions t JOIN ledger_entries e USING (txn_id)"
                    " WHERE t.kind IN ('deposit', 'withdrawal', 'ach_return')"
                    "   AND e.asset = 'USD' AND e.ledger_account LIKE 'user:%%'"
                    " GROUP BY t.account_id, t.cause_id"):
                # cause of a command's transaction: cmd:<account>:<idempotency key>
                key = cause_id.split(":", 2)[2] if cause_id.startswith("cmd:") else cause_id
                rows.booked_money[(account_id, key)] = usd
                rows.money_bookings[(account_id, key)] = int(bookings)
            for account_id, code, order_id in conn.execute(
                    "SELECT account_id, reason, order_id FROM order_events"
                    " WHERE event_type = 'alert' AND payload->>'severity' = 'critical'"):
                rows.alerts.append((account_id, code, order_id))
    return rows


# ---- the report ----------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.failures.append(text)


@dataclass
class Figures:
    """What a client would call the damage: acknowledged and not there (lost), booked more
    than once (doubled), and the cash differences summed (cents off)."""

    lost: int = 0
    doubled: int = 0
    cents_off: Decimal = Decimal(0)


@dataclass
class AuditReport:
    checks: list[Check]
    notes: list[str] = field(default_factory=list)
    figures: Figures = field(default_factory=Figures)

    def as_json(self, failures_shown: int = 20) -> dict[str, Any]:
        return {"passed": self.ok, "lost": self.figures.lost,
                "doubled": self.figures.doubled,
                "cents_off": int(self.figures.cents_off.to_integral_value()),
                "checks": [{"name": check.name, "checked": check.checked,
                            "failed": len(check.failures),
                            "failures": check.failures[:failures_shown]}
                           for check in self.checks],
                "notes": self.notes}

    @property
    def ok(self) -> bool:
        return all(not check.failures for check in self.checks)

    def failed(self) -> list[str]:
        return [check.name for check in self.checks if check.failures]

    def text(self, failures_shown: int = 15) -> str:
        lines = ["audit: " + ("PASSED" if self.ok else f"FAILED ({', '.join(self.failed())})")
                 + f"; lost {self.figures.lost}, doubled {self.figures.doubled}, cents off "
                 f"{self.figures.cents_off.to_integral_value()}"]
        for check in self.checks:
            verdict = "ok" if not check.failures else f"{len(check.failures)} FAILED"
            lines.append(f"  {check.name}: {check.checked} checked, {verdict}")
            for failure in check.failures[:failures_shown]:
                lines.append(f"    - {failure}")
            if len(check.failures) > failures_shown:
                lines.append(f"    ... and {len(check.failures) - failures_shown} more")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---- the audit -----------------------------------------------------------------------------


@dataclass
class Sources:
    """Where the audited stack keeps its records."""

    shard_dsns: list[str]
    simulator_store_dir: Path
    base_url: str | None = None  # the HTTP API, for orders the shard rows lack
    tokens: dict[str, str] = field(default_factory=dict)  # user_id -> bearer token
    reconcile_env: dict[str, str] | None = None  # BROKERAGE_DATA_DIR / BROKERAGE_STACK
    reconcile_timeout_s: float = 60.0  # after a restart it should answer in seconds (issue 10)


def _token(sources: Sources, user_id: str) -> str | None:
    """A bearer token from the public dev login (POST /v1/auth/token)."""
    if user_id not in sources.tokens and sources.base_url is not None:
        request = urllib.request.Request(
            f"{sources.base_url}/v1/auth/token", data=json.dumps({"user_id": user_id}).encode(),
            method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                sources.tokens[user_id] = json.loads(answer.read())["token"]
        except OSError:
            return None
    return sources.tokens.get(user_id)


def _get_order(sources: Sources, user_id: str, order_id: str, account_id: str
               ) -> tuple[int, Any]:
    token = _token(sources, user_id)
    if sources.base_url is None or token is None:
        return 0, None
    request = urllib.request.Request(
        f"{sources.base_url}/v1/orders/{order_id}?account_id={account_id}",
        headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError as error:
        return 0, str(error)


def run_reconcile(env: dict[str, str], timeout_s: float = 120.0) -> tuple[int, str]:
    try:
        result = subprocess.run([sys.executable, "-m", "compose.cli", "reconcile"],
                                capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        partial = [part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                   for part in (error.stdout, error.stderr)]
        return -1, f"no answer in {timeout_s:.0f} s: {''.join(partial)}"
    return result.returncode, (result.stdout + result.stderr).strip()


def audit(journal: Journal, sources: Sources, attempts: int = 3,
          pause_s: float = 3.0) -> AuditReport:
    """The checks on the records as they stand, then reconcile. A stack that still trades (a
    resting stop order triggers) moves between the reads: the market maker's book is read
    before and after the shards, and the records are audited again (up to `attempts` times,
    `pause_s` apart) while the book moved meanwhile or a check failed: a fill in flight lands,
    what is lost or doubled stays so. The report says how many reads it took."""
    report = AuditReport([])
    for attempt in range(1, attempts + 1):
        before = read_simulator_book(sources.simulator_store_dir)
        shards = read_shards(sources.shard_dsns)
        book = read_simulator_book(sources.simulator_store_dir)
        report = audit_records(journal, shards, book, sources)
        still = book == before
        if (report.ok and still) or attempt == attempts:
            if attempt > 1:
                report.notes.append(f"records read {attempt} times (the stack was still "
                                    f"moving between reads)")
            break
        time.sleep(pause_s)
    if sources.reconcile_env is not None:
        check = Check("reconcile exits 0", 1)
        code, output = run_reconcile(sources.reconcile_env, sources.reconcile_timeout_s)
        if code != 0:
            check.fail(f"exit {code}: {output[-1500:]}")
        report.checks.append(check)
    return report


def audit_records(journal: Journal, shards: ShardRows, book: list[MMOrder],
                  sources: Sources | None = None) -> AuditReport:
    """Every check but reconcile, on records already read (`sources` for orders the shard
    rows lack, looked up over HTTP)."""
    sources = sources or Sources(shard_dsns=[], simulator_store_dir=Path("."))
    mm_by_order: dict[str, list[MMOrder]] = defaultdict(list)
    for mm_order in book:
        mm_by_order[mm_order.order_id].append(mm_order)
    our_accounts = set(journal.accounts)
    report = AuditReport([])
    report.notes.append(
        f"journal: {len(journal.accounts)} accounts, {len(journal.requests)} requests "
        f"({sum(r.acknowledged for r in journal.requests)} acknowledged, "
        f"{sum(not r.definite for r in journal.requests)} without a definite answer); "
        f"market maker: {len(book)} orders; shards: {len(shards.orders)} orders, "
        f"{sum(len(f) for f in shards.fills.values())} fills")

    report.checks.append(_acknowledged_orders(journal, shards, mm_by_order, sources,
                                              report.figures))
    report.checks.append(_market_maker_orders_known(shards, mm_by_order, our_accounts))
    report.checks.append(_fills_match(shards, mm_by_order, our_accounts, report.figures))
    report.checks.append(_exec_ids_unique(shards, report.figures))
    report.checks.append(_balanced(shards))
    report.checks.append(_money_decided(journal, shards, report.figures))
    expected = _expected_holdings(journal, shards, book)
    report.checks.append(_positions(journal, shards, expected))
    report.checks.append(_cash(journal, shards, expected, report.figures))
    report.checks.append(_totals(journal, shards, expected))
    report.checks.append(_holds(shards, mm_by_order, our_accounts))
    if shards.alerts:
        report.notes.append(f"{len(shards.alerts)} critical alerts in order_events, e.g. "
                            f"{shards.alerts[:5]}")
    return report


def _acknowledged_orders(journal: Journal, shards: ShardRows,
                         mm_by_order: dict[str, list[MMOrder]], sources: Sources,
                         figures: Figures) -> Check:
    check = Check("acknowledged orders exist and are terminal or open at the market maker")
    for request in journal.requests:
        if request.kind != "order" or not request.acknowledged:
            continue
        check.checked += 1
        order_id = request.order_id
        assert order_id, f"acknowledged order without an id: {request}"
        row = shards.orders.get(order_id)
        if row is None:
            code, found = _get_order(sources, request.user_id, order_id, request.account_id)
            if code == 200 and isinstance(found, dict):
                row = found
            else:
                mm = mm_by_order.get(order_id, [])
                filled = sum((m.cum_qty for m in mm), Decimal(0))
                figures.lost += 1
                check.fail(f"{order_id} ({request.body.get('side')} {request.body.get('quantity')}"
                           f" {request.body.get('symbol')} {request.body.get('order_type')},"
                           f" answered {request.status}) is missing (GET answered {code});"
                           f" market maker: {len(mm)} orders, {filled} filled")
                continue
        state = str(row["state"])
        if state in TERMINAL_STATES:
            continue
        working = [m for m in mm_by_order.get(order_id, []) if m.open]
        if not working:
            mm_states = [m.ord_status for m in mm_by_order.get(order_id, [])]
            check.fail(f"{order_id} ({row.get('order_type')}) is {state} in the shard but the "
                       f"market maker has it {'nowhere' if not mm_states else mm_states}")
    return check


def _market_maker_orders_known(shards: ShardRows, mm_by_order: dict[str, list[MMOrder]],
                               accounts: set[str]) -> Check:
    check = Check("orders open at the market maker are open in the shard")
    for order_id, mm_orders in sorted(mm_by_order.items()):
        working = [m for m in mm_orders if m.open and m.account_id in accounts]
        if not working:
            continue
        check.checked += 1
        row = shards.orders.get(order_id)
        if row is None or str(row["state"]) in TERMINAL_STATES:
            first = working[0]
            check.fail(f"{order_id} ({first.side} {first.quantity} {first.symbol}) works at the "
                       f"market maker as {first.cl_ord_id} but is "
                       f"{'unknown to the shard' if row is None else row['state'] + ' there'}")
    return check


def _fills_match(shards: ShardRows, mm_by_order: dict[str, list[MMOrder]],
                 accounts: set[str], figures: Figures) -> Check:
    check = Check("market maker's fills equal the ledger's, order by order")
    order_ids = {o for o, mm in mm_by_order.items() if any(m.account_id in accounts for m in mm)}
    order_ids |= {o for o, f in shards.fills.items()
                  if (shards.orders.get(o) or {}).get("account_id") in accounts
                  or o.startswith("(no order")}
    for order_id in sorted(order_ids):
        check.checked += 1
        mm = mm_by_order.get(order_id, [])
        mm_qty = sum((m.cum_qty for m in mm), Decimal(0))
        mm_cash = cents(sum((m.notional for m in mm), Decimal(0)))
        fills = shards.fills.get(order_id, [])
        ledger_qty = abs(sum((shares for _, _, _, shares in fills), Decimal(0)))
        ledger_cash = abs(sum((usd for _, _, usd, _ in fills), Decimal(0)))
        row = shards.orders.get(order_id)
        what = (f"{order_id} ({mm[0].side} {mm[0].symbol})" if mm
                else f"{order_id} ({row['side']} {row['symbol']})" if row else order_id)
        if (mm_qty, mm_cash) != (ledger_qty, ledger_cash):
            if ledger_qty > mm_qty:
                figures.doubled += 1
            elif ledger_qty < mm_qty:
                figures.lost += 1
            check.fail(f"{what}: market maker filled {mm_qty} for {mm_cash}, ledger booked "
                       f"{ledger_qty} for {ledger_cash} in {len(fills)} fills"
                       f"{'' if row else '; no order row in the shard'}")
        elif row is not None and Decimal(row["filled_quantity"]) != mm_qty:
            check.fail(f"{what}: order row says filled {row['filled_quantity']}, market maker "
                       f"and ledger {mm_qty}")
    return check


def _exec_ids_unique(shards: ShardRows, figures: Figures) -> Check:
    check = Check("no fill booked twice (execution ids unique)")
    seen: dict[str, str] = {}
    for order_id, fills in shards.fills.items():
        for txn_id, cause_id, _, _ in fills:
            check.checked += 1
            # cause of a fill: exec:<market maker>:<ExecID>
            exec_id = cause_id.split(":", 2)[-1]
            if exec_id in seen:
                figures.doubled += 1
                check.fail(f"ExecID {exec_id} booked by {seen[exec_id]} and {txn_id} "
                           f"(order {order_id})")
            seen[exec_id] = txn_id
    return check


def _balanced(shards: ShardRows) -> Check:
    check = Check("every ledger transaction balances per asset")
    check.checked = shards.transactions
    for txn_id, asset, total in shards.unbalanced:
        check.fail(f"{txn_id}: {asset} sums to {total}")
    return check


MONEY_KINDS = ("deposit", "withdrawal", "ach_return")
# How each money command moves the account's cash, by the amount in its body (an ACH return's
# body carries the returned deposit's amount).
MONEY_SIGN = {"deposit": 1, "withdrawal": -1, "ach_return": -1}


def _money_decided(journal: Journal, shards: ShardRows, figures: Figures) -> Check:
    check = Check("money commands: acknowledged ones decided in the shard, refused ones not "
                  "booked, none booked twice")
    for request in journal.requests:
        if request.kind not in MONEY_KINDS:
            continue
        what = (f"{request.kind} {request.key} of {request.body.get('amount')} on "
                f"{request.account_id}")
        bookings = shards.money_bookings.get((request.account_id, request.key), 0)
        if bookings > 1:
            figures.doubled += 1
            check.fail(f"{what} booked {bookings} times")
        if request.definite and not request.acknowledged:
            check.checked += 1
            if bookings:
                check.fail(f"{what} answered {request.status} (refused) but booked")
            continue
        if not request.acknowledged:
            continue
        check.checked += 1
        decided = shards.decisions.get((request.account_id, request.key))
        if request.status in (200, 201) and not bookings:
            figures.lost += 1
            check.fail(f"{what} answered {request.status} but not in the ledger")
        elif request.status == 202 and decided is None and not bookings:
            figures.lost += 1
            check.fail(f"{what} answered 202 (pending) and never decided")
    return check


def _money_done(request: Request, shards: ShardRows) -> bool:
    """Whether a money command took effect, by what the client was told; for a pending (202)
    or unanswered one, by the shard's decision (the client was not told an outcome). An
    acknowledged deposit is always valid, so it counts as done even if the shard lost it."""
    if request.status in (200, 201):
        return True
    if request.definite and not request.acknowledged:
        return False  # refused: a booking anyway is the money check's failure
    booked = (request.account_id, request.key) in shards.booked_money
    if request.status == 202 and request.kind == "deposit":
        return True
    return booked


def _expected_holdings(journal: Journal, shards: ShardRows,
                       book: list[MMOrder]) -> dict[str, dict[str, Decimal]]:
    """Per account and asset, what the client's record and the market maker's book say it
    holds: money commands by their outcome, shares and cash by the market maker's fills."""
    expected: dict[str, dict[str, Decimal]] = {a: defaultdict(Decimal) for a in journal.accounts}
    for request in journal.requests:
        if request.kind in MONEY_KINDS and _money_done(request, shards):
            amount = Decimal(str(request.body["amount"]))
            expected[request.account_id]["USD"] += MONEY_SIGN[request.kind] * amount
    per_order: dict[str, list[MMOrder]] = defaultdict(list)
    for mm_order in book:
        if mm_order.account_id in expected:
            per_order[mm_order.order_id].append(mm_order)
    for mm_orders in per_order.values():
        first = mm_orders[0]
        qty = sum((m.cum_qty for m in mm_orders), Decimal(0))
        cash = cents(sum((m.notional for m in mm_orders), Decimal(0)))
        sign = 1 if first.side == "buy" else -1
        expected[first.account_id][first.symbol] += sign * qty
        expected[first.account_id]["USD"] -= sign * cash
    return expected


def _differences(actual: dict[str, Decimal], wanted: dict[str, Decimal]) -> dict[str, str]:
    return {a: f"ledger {actual.get(a, 0)} expected {wanted.get(a, 0)}"
            for a in sorted(set(actual) | set(wanted)) if actual.get(a, 0) != wanted.get(a, 0)}


def _positions(journal: Journal, shards: ShardRows,
               expected: dict[str, dict[str, Decimal]]) -> Check:
    check = Check("each account's positions equal the market maker's fills")
    for account_id in sorted(journal.accounts):
        check.checked += 1
        actual = {a: v for a, v in shards.holdings.get(account_id, {}).items()
                  if v != 0 and a != "USD"}
        wanted = {a: v for a, v in expected[account_id].items() if v != 0 and a != "USD"}
        if actual != wanted:
            check.fail(f"{account_id}: {_differences(actual, wanted)}")
    return check


def _cash(journal: Journal, shards: ShardRows, expected: dict[str, dict[str, Decimal]],
          figures: Figures) -> Check:
    check = Check("each account's cash equals deposits, withdrawals, ACH returns and fills")
    for account_id in sorted(journal.accounts):
        check.checked += 1
        actual = shards.holdings.get(account_id, {}).get("USD", Decimal(0))
        wanted = expected[account_id].get("USD", Decimal(0))
        if actual != wanted:
            figures.cents_off += abs(actual - wanted) * 100
            check.fail(f"{account_id}: USD ledger {actual} expected {wanted}")
    return check


def _totals(journal: Journal, shards: ShardRows,
            expected: dict[str, dict[str, Decimal]]) -> Check:
    check = Check("totals across accounts: USD and shares per symbol equal deposits, "
                  "withdrawals, ACH returns and fills")
    actual: dict[str, Decimal] = defaultdict(Decimal)
    wanted: dict[str, Decimal] = defaultdict(Decimal)
    for account_id in journal.accounts:
        for asset, amount in shards.holdings.get(account_id, {}).items():
            actual[asset] += amount
        for asset, amount in expected[account_id].items():
            wanted[asset] += amount
    for asset in sorted(set(actual) | set(wanted)):
        check.checked += 1
        if actual[asset] != wanted[asset]:
            check.fail(f"{asset}: ledger {actual[asset]} across {len(journal.accounts)} "
                       f"accounts, expected {wanted[asset]}")
    return check


def _holds(shards: ShardRows, mm_by_order: dict[str, list[MMOrder]],
           accounts: set[str]) -> Check:
    check = Check("no funds held for an order the market maker does not have open")
    open_by_account: dict[str, list[str]] = defaultdict(list)
    for order_id, row in shards.orders.items():
        if row["account_id"] not in accounts:
            continue
        if str(row["state"]) not in TERMINAL_STATES:
            open_by_account[row["account_id"]].append(order_id)
            check.checked += 1
            held = Decimal(row["held_amount"] or 0)
            known = any(m.open for m in mm_by_order.get(order_id, []))
            if held > 0 and not known:
                check.fail(f"{order_id} ({row['state']}) holds {held} but the market maker "
                           f"does not have it open")
    for account_id in sorted(accounts):
        check.checked += 1
        holding = {a: v for a, v in shards.held.get(account_id, {}).items() if v != 0}
        if holding and not open_by_account.get(account_id):
            check.fail(f"{account_id} holds {holding} with no open order")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--stack", type=Path, required=True, help="the stack file")
    parser.add_argument("--http", help="the HTTP API base URL (optional)")
    parser.add_argument("--simulator", default="sim", help="market maker name")
    args = parser.parse_args(argv)
    endpoints = json.loads((args.data_dir / "stack.json").read_text())
    sources = Sources(
        shard_dsns=endpoints["shard_dsns"],
        simulator_store_dir=args.data_dir / "fix" / f"simulator-{args.simulator}",
        base_url=args.http,
        reconcile_env={"BROKERAGE_DATA_DIR": str(args.data_dir),
                       "BROKERAGE_STACK": str(args.stack)})
    report = audit(Journal.load(args.journal), sources)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
