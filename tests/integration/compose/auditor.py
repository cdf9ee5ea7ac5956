"""The auditor moved to compose/chaos/auditor.py (`brokerage chaos` runs it too); re-exported
here for tests that import it from this module."""

from __future__ import annotations

from compose.chaos.auditor import (
    ACKNOWLEDGED,
    TERMINAL_STATES,
    AuditReport,
    Check,
    Journal,
    MMOrder,
    Request,
    ShardRows,
    Sources,
    audit,
    read_shards,
    read_simulator_book,
    run_reconcile,
)

__all__ = ["ACKNOWLEDGED", "TERMINAL_STATES", "AuditReport", "Check", "Journal", "MMOrder",
           "Request", "ShardRows", "Sources", "audit", "read_shards", "read_simulator_book",
           "run_reconcile"]
