"""Waiting on a stack's conditions after faults, and auditing it: shared by `brokerage chaos`
and the whole-stack crash tests."""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg

from compose.chaos.auditor import TERMINAL_STATES, AuditReport, Journal, Sources, audit
from compose.chaos.client import SYMBOLS, Client
from compose.chaos.stack_process import StackProcess

SETTLE_TIMEOUT_S = 90.0


def shard_dsns(stack: StackProcess) -> list[str]:
    return list(stack.endpoints()["shard_dsns"])


def wait_for_quotes(client: Client, timeout_s: float = 60.0) -> None:
    """Until the quote cache has a quote for every symbol the load trades."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.refresh_quotes(max_age_s=0):
            return
        time.sleep(0.3)
    raise TimeoutError(f"no quotes for {SYMBOLS} in {timeout_s} s: {client.quotes}")


def open_decision(journal: Journal, dsns: Sequence[str]) -> list[str]:
    """Acknowledged orders still waiting for a decision: missing from the shard, or not
    terminal when they cannot rest (market orders), or not yet past routing."""
    rows: dict[str, tuple[str, str]] = {}
    for dsn in dsns:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            for order_id, state, order_type in conn.execute(
                    "SELECT order_id, state, order_type FROM orders"):
                rows[order_id] = (state, order_type)
    waiting = []
    for request in journal.requests:
        if request.kind != "order" or not request.acknowledged or not request.order_id:
            continue
        state, order_type = rows.get(request.order_id, ("missing", request.body["order_type"]))
        if state in TERMINAL_STATES:
            continue
        if order_type in ("limit", "stop", "stop_limit") and state in (
                "routed", "partially_filled"):
            continue
        waiting.append(f"{request.order_id}:{state}")
    return waiting


def ledger_size(dsns: Sequence[str]) -> tuple[int, ...]:
    sizes: list[int] = []
    for dsn in dsns:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            for table in ("ledger_transactions", "order_events", "orders"):
                (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
                sizes.append(int(count))
    return tuple(sizes)


def settle(journal: Journal, dsns: Sequence[str], timeout_s: float = SETTLE_TIMEOUT_S,
           stalled_s: float = 15.0) -> list[str]:
    """Wait (bounded) until no acknowledged order waits for a decision and the shards stop
    changing, or until nothing has moved for `stalled_s` (what waits then will not move: the
    auditor says what it means). Returns what still waits."""
    deadline = time.monotonic() + timeout_s
    look = (open_decision(journal, dsns), ledger_size(dsns))
    moved_at = time.monotonic()
    quiet_looks = 0
    while time.monotonic() < deadline and time.monotonic() - moved_at < stalled_s:
        time.sleep(1.0)
        try:
            now = (open_decision(journal, dsns), ledger_size(dsns))
        except psycopg.OperationalError:  # a shard restarting: look again
            continue
        if now != look:
            look, moved_at, quiet_looks = now, time.monotonic(), 0
            continue
        quiet_looks += 1
        if not now[0] and quiet_looks >= 2:  # nothing waits, and no row came for 2 s
            break
    return look[0]


def audit_stack(journal: Journal, stack: StackProcess,
                reconcile_timeout_s: float = 60.0) -> AuditReport:
    """The independent audit of `journal` against the stack's market maker and shards."""
    sources = Sources(
        shard_dsns=shard_dsns(stack),
        simulator_store_dir=stack.data_dir / "fix" / "simulator-sim",
        base_url=stack.base_url,
        reconcile_env={"BROKERAGE_DATA_DIR": str(stack.data_dir),
                       "BROKERAGE_STACK": str(stack.stack_file)},
        reconcile_timeout_s=reconcile_timeout_s)
    return audit(journal, sources)
