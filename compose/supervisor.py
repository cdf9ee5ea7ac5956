"""Supervised child processes: started in order, restarted when they die, stopped in reverse.

`Supervisor` runs the Python services; `ServerWatch` watches the embedded servers (broker, Redis,
shard PostgreSQLs) that `brokerage up` started and starts one that died again on its port."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import msgspec

from compose.embedded import EmbeddedServers, _die_with_parent
from compose.exceptions import ComposeError
from compose.services import ServiceSpec

log = logging.getLogger("brokerage.supervisor")

RESTART_DELAY_S_MIN = 0.5
RESTART_DELAY_S_MAX = 30.0
# Alive this long after a start: the next death is a new fault, restarted after the least delay.
STABLE_AFTER_S = 60.0


def write_line(line: str, stream: TextIO) -> None:
    """One line to the terminal. After SIGHUP the terminal may be gone and writing fails (EIO):
    that must not break the supervision or the clean stop. Standard output and error then go
    to /dev/null, so that what is still buffered does not fail Python's own flush at exit."""
    try:
        print(line, file=stream, flush=True)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)


def report_to_stderr(line: str) -> None:
    write_line(line, sys.stderr)


def death(why: str) -> dict[str, str]:
    """A process's last error as the stack file records it for `brokerage status`."""
    return {"error": why, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


@dataclass
class Supervised:
    spec: ServiceSpec
    spec_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # added to ours for the child
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float = 0.0
    delay_s: float = RESTART_DELAY_S_MIN
    started_at: float = field(default=0.0)
    last_error: dict[str, str] | None = None  # death(...) of its last unasked exit

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
        self._report = report or report_to_stderr
        self.running = False  # between stop_all and start_all nothing is restarted
        self.children: list[Supervised] = []
        for spec in specs:
            spec_path = run_dir / f"{spec.name}.json"
            spec_path.write_bytes(msgspec.json.encode(spec))
            # Before any service starts: a child that cannot get its environment stops `up`.
            self.children.append(Supervised(spec, spec_path, log_dir / f"{spec.name}.log",
                                            spec.environment()))

    def _start(self, child: Supervised) -> None:
        with open(child.log_path, "ab") as out:
            child.popen = subprocess.Popen(
                [sys.executable, "-m", "compose.child", child.name, str(child.spec_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **child.env} if child.env else None,
                preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()

    def start_all(self) -> None:
        """Start every service (again, after stop_all), each with the least restart delay."""
        for child in self.children:
            child.restart_at = 0.0
            child.delay_s = RESTART_DELAY_S_MIN
            self._start(child)
        self.running = True

    def child(self, name: str) -> Supervised:
        return next(child for child in self.children if child.name == name)

    def poll(self) -> None:
        """Report and restart children that died, with a growing delay while they keep dying."""
        if not self.running:
            return
        now = time.monotonic()
        for child in self.children:
            if child.popen is None or child.alive():
                if child.alive() and now - child.started_at > STABLE_AFTER_S:
                    child.delay_s = RESTART_DELAY_S_MIN
                continue
            if child.restart_at == 0.0:
                code = child.popen.returncode
                child.last_error = death(f"exited with code {code}")
                self._report(f"service {child.name} exited with code {code}; restarting in "
                             f"{child.delay_s:.1f} s (log {child.log_path})")
                child.restart_at = now + child.delay_s
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = 0.0
                child.delay_s = min(child.delay_s * 2, RESTART_DELAY_S_MAX)
                self._start(child)

    def stop_all(self, timeout_s: float = 15.0) -> None:
        self.running = False
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


@dataclass
class WatchedServer:
    name: str
    started_at: float
    restart_at: float = 0.0  # 0: not scheduled
    died_at: float = 0.0
    delay_s: float = RESTART_DELAY_S_MIN
    restarts: int = 0
    last_error: dict[str, str] | None = None  # death(...) of its last death


class ServerWatch:
    """The embedded servers `brokerage up` started. One that died is reaped, reported in one
    line and started again on its port and data dir, with a growing delay while it keeps
    dying. `on_died(name)` runs when the death is seen, before the restart (the stack stops
    what must not meet the new server); `on_started(name)` runs once it listens again (the
    stack prepares it); a ComposeError from `on_started` counts as one more death."""

    def __init__(self, servers: EmbeddedServers,
                 on_died: Callable[[str], None] = lambda name: None,
                 on_started: Callable[[str], None] = lambda name: None,
                 report: Callable[[str], None] | None = None) -> None:
        self.servers = servers
        self._on_died = on_died
        self._on_started = on_started
        self._report = report or report_to_stderr
        now = time.monotonic()
        self.watched = {child.name: WatchedServer(child.name, now) for child in servers.children}

    def poll(self) -> None:
        now = time.monotonic()
        for name, watched in self.watched.items():
            child = self.servers.child(name)
            if child.alive():
                if now - watched.started_at > STABLE_AFTER_S:
                    watched.delay_s = RESTART_DELAY_S_MIN
                continue
            if watched.restart_at == 0.0:
                self._died(watched, f"exited with code {child.popen.poll()}", now)
            elif now >= watched.restart_at:
                self._restart(watched)

    def _died(self, watched: WatchedServer, why: str, now: float) -> None:
        child = self.servers.child(watched.name)
        self._report(f"server {watched.name} {why}; restarting in {watched.delay_s:.1f} s "
                     f"(log {child.log_path})")
        watched.died_at = now
        watched.last_error = death(why)
        self._on_died(watched.name)
        watched.restart_at = time.monotonic() + watched.delay_s
        watched.delay_s = min(watched.delay_s * 2, RESTART_DELAY_S_MAX)

    def _restart(self, watched: WatchedServer) -> None:
        try:
            self.servers.restart(watched.name)
        except ComposeError as error:
            watched.last_error = death(f"did not start again: {error}")
            self._report(f"server {watched.name} did not start again: {error}; retrying in "
                         f"{watched.delay_s:.1f} s")
            watched.restart_at = time.monotonic() + watched.delay_s
            watched.delay_s = min(watched.delay_s * 2, RESTART_DELAY_S_MAX)
            return
        watched.restarts += 1
        watched.started_at = time.monotonic()
        watched.restart_at = 0.0
        try:
            self._on_started(watched.name)
        except ComposeError as error:
            # Not usable: stopped, and treated as one more death (the delay keeps growing).
            self.servers.child(watched.name).kill()
            self._died(watched, f"restarted but not usable: {error}", time.monotonic())
            return
        self._report(f"server {watched.name} is back after "
                     f"{time.monotonic() - watched.died_at:.1f} s")
