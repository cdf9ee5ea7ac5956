"""The simulator's faults (a misbehaving market maker), switchable while it runs.

The config sets them for the process's life (`SimulatorConfig`: `latency_ms`,
`duplicate_reports`, `out_of_order_reports`, `drop_session_every_reports`). With `faults_file`
set, the simulator also reads that JSON file while it runs (`brokerage chaos` writes it for
fault windows at seeded moments): each field present overrides the config's value, a file
removed or emptied brings the config's values back, and `drop_sessions` is a counter: each
increase drops every logged-on session once (the counterparty logs on again and the FIX
resend recovers what was sent meanwhile). An unreadable file is logged and changes nothing.

    {"latency_ms": 1500, "duplicate_reports": true, "out_of_order_reports": true,
     "drop_session_every_reports": 5, "drop_sessions": 3}
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from gateways.simulator.config import SimulatorConfig

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25


class Faults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    latency_ms: int = 0  # delay before each answer
    duplicate_reports: bool = False  # every report twice (same ExecID)
    out_of_order_reports: bool = False  # the fills of one answer in reverse order
    drop_session_every_reports: int = 0  # disconnect after every this many reports
    drop_sessions: int = 0  # a counter: each increase drops every session once


def faults_of(config: SimulatorConfig) -> Faults:
    return Faults(latency_ms=config.latency_ms, duplicate_reports=config.duplicate_reports,
                  out_of_order_reports=config.out_of_order_reports,
                  drop_session_every_reports=config.drop_session_every_reports)


class FaultSwitch:
    """Reads the faults file when it changed (checked at most every POLL_INTERVAL_S)."""

    def __init__(self, path: Path | None, base: Faults) -> None:
        self.path = path
        self.base = base
        self.current = base
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._checked_at = 0.0

    def poll(self, now: float | None = None) -> tuple[Faults, int] | None:
        """The new faults and how many session drops they ask for, when the file changed;
        None when nothing changed."""
        if self.path is None:
            return None
        now = time.monotonic() if now is None else now
        if now - self._checked_at < POLL_INTERVAL_S:
            return None
        self._checked_at = now
        try:
            stat = self.path.stat()
            seen: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return None
        self._seen = seen
        faults = self.base
        if seen is not None and seen[1] > 0:
            try:
                changes = msgspec.json.decode(self.path.read_bytes(), type=dict)
                faults = msgspec.convert({**msgspec.to_builtins(self.base), **changes}, Faults)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
                log.warning("simulator faults file %s not applied: %s", self.path, error)
                return None
        drops = max(0, faults.drop_sessions - self.current.drop_sessions)
        self.current = faults
        log.warning("simulator faults now %s%s", msgspec.to_builtins(faults),
                    f"; dropping every session ({drops})" if drops else "")
        return faults, drops
