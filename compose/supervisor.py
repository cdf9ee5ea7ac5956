"""Supervised child processes: started in order, restarted when they die, stopped in reverse."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from compose.embedded import _die_with_parent
from compose.services import ServiceSpec

log = logging.getLogger("brokerage.supervisor")

RESTART_DELAY_S_MIN = 0.5
RESTART_DELAY_S_MAX = 30.0


@dataclass
class Supervised:
    spec: ServiceSpec
    spec_path: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float = 0.0
    delay_s: float = RESTART_DELAY_S_MIN
    started_at: float = field(default=0.0)

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Supervisor:
    def __init__(self, specs: list[ServiceSpec], run_dir: Path, log_dir: Path,
                 report: Callable[[str], None] | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self._report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.children: list[Supervised] = []
        for spec in specs:
            spec_path = run_dir / f"{spec.name}.json"
            spec_path.write_bytes(msgspec.json.encode(spec))
            self.children.append(Supervised(spec, spec_path, log_dir / f"{spec.name}.log"))

    def _start(self, child: Supervised) -> None:
        with open(child.log_path, "ab") as out:
            child.popen = subprocess.Popen(
                [sys.executable, "-m", "compose.child", child.name, str(child.spec_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)

    def child(self, name: str) -> Supervised:
        return next(child for child in self.children if child.name == name)

    def poll(self) -> None:
        """Report and restart children that died, with a growing delay while they keep dying."""
        now = time.monotonic()
        for child in self.children:
            if child.popen is None or child.alive():
                if child.alive() and now - child.started_at > 60:
                    child.delay_s = RESTART_DELAY_S_MIN
                continue
            if child.restart_at == 0.0:
                code = child.popen.returncode
                self._report(f"service {child.name} exited with code {code}; restarting in "
                             f"{child.delay_s:.1f} s (log {child.log_path})")
                child.restart_at = now + child.delay_s
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = 0.0
                child.delay_s = min(child.delay_s * 2, RESTART_DELAY_S_MAX)
                self._start(child)

    def stop_all(self, timeout_s: float = 15.0) -> None:
        for child in reversed(self.children):
            if child.alive():
                assert child.popen is not None
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            if child.popen is None:
                continue
            try:
                child.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self._report(f"service {child.name} did not stop in {timeout_s:.0f} s; killed")
                child.popen.kill()
                child.popen.wait(5)
