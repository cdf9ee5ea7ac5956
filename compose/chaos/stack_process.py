"""`brokerage up` as a real child process on free loopback ports, and the signals a fault run
sends its processes: used by `brokerage chaos` and by the whole-stack tests
(tests/integration/compose/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from compose.embedded import free_port

START_TIMEOUT_S = 120.0


def write_stack_file(path: Path, fix_port: int, services: list[str] | None = None,
                     http: dict[str, Any] | None = None,
                     sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """A stack file on loopback with the demo login on (the tests sign in with it); `http`
    adds settings of its [http] section, `sections` other sections (e.g. `{"accounts":
    {"processes": 2}}`)."""
    lines = [
        "[stack]",
        "shards = 2",
        "partitions_per_shard = 2",
    ]
    if services is not None:
        lines.append(f"services = {json.dumps(services)}")
    lines += ["", "[http]"]
    lines += [f"{name} = {json.dumps(value)}"
              for name, value in {"demo_login": True, **(http or {})}.items()]
    for section, settings in (sections or {}).items():
        lines += ["", f"[{section}]"]
        lines += [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    lines += [
        "",
        "[[market_makers]]",
        'name = "sim"',
        'host = "127.0.0.1"',
        f"port = {fix_port}",
        'sender_comp_id = "BROKER"',
        'target_comp_id = "MM1"',
        "simulator = true",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class StackProcess:
    data_dir: Path
    http_port: int
    popen: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    stack_file: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def endpoints(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "stack.json").read_text())

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)

    def read_until(self, marker: str, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = "".join(self.output)
            if marker in text:
                return text
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no {marker!r} from brokerage up (exit {self.popen.poll()}):\n"
                             f"{''.join(self.output)}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGINT, as Ctrl-C does; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


def start_stack(data_dir: Path, *args: str, services: list[str] | None = None,
                http_port: int | None = None, stack_file: Path | None = None) -> StackProcess:
    """`brokerage up` on `data_dir`; a restart passes the previous run's port and stack file."""
    http_port = http_port or free_port()
    stack_file = stack_file or write_stack_file(data_dir.parent / f"{data_dir.name}.toml",
                                                free_port(), services)
    env = {**os.environ, "BROKERAGE_DATA_DIR": str(data_dir),
           "BROKERAGE_HTTP_PORT": str(http_port), "BROKERAGE_STACK": str(stack_file),
           "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen([sys.executable, "-m", "compose.cli", "up", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, stdin=subprocess.DEVNULL)
    return StackProcess(data_dir, http_port, popen, stack_file=stack_file)


def restart_stack(previous: StackProcess, *args: str) -> StackProcess:
    """`brokerage up` again on the same data dir, HTTP port and stack file."""
    return start_stack(previous.data_dir, *args, http_port=previous.http_port,
                       stack_file=previous.stack_file)


def freeze_and_kill(processes: list[psutil.Process], timeout_s: float = 30.0) -> int:
    """SIGKILL `processes` as at one instant: SIGSTOP each first (so none runs, notices the
    others dying or starts anything while the rest are being killed), then SIGKILL each, then
    wait until every one is gone. Returns how many were killed."""
    alive = []
    for process in processes:
        try:
            process.send_signal(signal.SIGSTOP)
            alive.append(process)
        except psutil.NoSuchProcess:
            pass
    for process in alive:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout_s
    still = alive
    while still and time.monotonic() < deadline:
        still = [p for p in still if _running(p)]
        if still:
            time.sleep(0.05)
    assert not still, f"still running after SIGKILL: {still}"
    return len(alive)


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps it, not for us)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_whole_stack(stack: StackProcess, timeout_s: float = 30.0) -> int:
    """SIGKILL `brokerage up` and every process below it (services, broker, every PostgreSQL
    process, Redis) at once, as a power cut of the machine would. The tree is frozen top down
    first, and looked at again until nothing new appears, so a process forked meanwhile (a
    PostgreSQL backend) is caught too."""
    try:
        top = psutil.Process(stack.popen.pid)
    except psutil.NoSuchProcess:
        return 0
    frozen: dict[int, psutil.Process] = {}
    for _ in range(20):  # bounded: a frozen tree stops growing at once
        found = [top, *stack.descendants()]
        new = [p for p in found if p.pid not in frozen]
        if not new:
            break
        for process in new:
            try:
                process.send_signal(signal.SIGSTOP)
                frozen[process.pid] = process
            except psutil.NoSuchProcess:
                pass
    killed = freeze_and_kill(list(frozen.values()), timeout_s)
    stack.popen.wait(timeout_s)
    # The orphans' zombies are reaped by init, not at once: until then their pids still answer
    # kill(pid, 0), and `brokerage up` would take a zombie postmaster for a live one. A
    # machine that crashed has no such zombies; wait (bounded) until they are gone.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in frozen):
        time.sleep(0.05)
    return killed


def stop_everything(stack: StackProcess, timeout_s: float = 60.0) -> int | None:
    """Stop a stack however it is: SIGINT and wait; whatever of its tree is left is killed.
    Returns the exit code of `brokerage up` (None when it had to be killed)."""
    tree = [*stack.descendants()]
    code: int | None = None
    if stack.popen.poll() is None:
        stack.popen.send_signal(signal.SIGINT)
        try:
            code = stack.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
    else:
        code = stack.popen.returncode
    leftovers = [p for p in tree + stack.descendants() if _running(p)]
    if stack.popen.poll() is None:
        leftovers.append(psutil.Process(stack.popen.pid))
    if leftovers:
        freeze_and_kill(leftovers)
        if stack.popen.poll() is None:
            stack.popen.wait(10)
    return code
