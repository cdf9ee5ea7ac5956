"""The supervisor restarts what dies; `brokerage up` refuses bad starts with one line and
leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from compose.embedded import LOOPBACK, EmbeddedServers, data_dir_lock, free_port
from compose.exceptions import DataDirBusy
from compose.services import Endpoints, ServiceSpec
from compose.stack import load_stack
from compose.supervisor import Supervisor
from compose.up import RunningStack
from tests.integration.compose.stack_process import eventually, write_stack_file

pytestmark = pytest.mark.integration


def test_a_child_that_dies_is_reported_and_restarted(server_dir: Path) -> None:
    spec = ServiceSpec("sleeper", "compose.stack:RedisSection",
                       "tests.integration.compose.sleeper:run", {})
    reports: list[str] = []
    supervisor = Supervisor([spec], server_dir / "run", server_dir / "logs", reports.append)
    supervisor.start_all()
    try:
        child = supervisor.child("sleeper")
        first = child.popen
        assert first is not None
        first.kill()
        first.wait(5)

        def restarted() -> bool:
            supervisor.poll()
            return child.alive() and child.popen is not first

        eventually(restarted, timeout_s=10)
        assert child.restarts == 1
        assert any("sleeper exited with code -9" in line for line in reports), reports
        assert child.last_error is not None
        assert child.last_error["error"] == "exited with code -9"
    finally:
        supervisor.stop_all()
    assert not child.alive()


def test_the_stack_file_records_each_process_for_status(server_dir: Path) -> None:
    """`brokerage status` reads the supervised processes from the stack file: pid, running,
    restarts and last error, kept up to date as they die and come back."""
    spec = ServiceSpec("sleeper", "compose.stack:RedisSection",
                       "tests.integration.compose.sleeper:run", {})
    supervisor = Supervisor([spec], server_dir / "run", server_dir / "logs", lambda line: None)
    supervisor.start_all()
    stack_file = server_dir / "stack.json"
    running = RunningStack(load_stack(None, environ={}), Endpoints("b", (), "r", "s"),
                           supervisor, EmbeddedServers(0, 0, []), stack_file, {"pid": 1})
    try:
        recorded = json.loads(stack_file.read_text())
        first = supervisor.child("sleeper").popen
        assert first is not None
        assert recorded == {"pid": 1, "servers": [], "services": [
            {"name": "sleeper", "pid": first.pid, "running": True, "restarts": 0,
             "last_error": None}]}
        first.kill()
        first.wait(5)

        def restarted() -> dict | None:
            running.poll()
            (entry,) = json.loads(stack_file.read_text())["services"]
            return entry if entry["restarts"] == 1 and entry["running"] else None

        entry = eventually(restarted, timeout_s=10)
        assert entry["pid"] != first.pid
        assert entry["last_error"]["error"] == "exited with code -9"
    finally:
        supervisor.stop_all()


def _up(server_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compose.cli", "up", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def _stack_env(server_dir: Path, http_port: int) -> dict[str, str]:
    stack_file = write_stack_file(server_dir / "stack.toml", free_port())
    return {"BROKERAGE_DATA_DIR": str(server_dir / "data"), "BROKERAGE_HTTP_PORT": str(http_port),
            "BROKERAGE_STACK": str(stack_file)}


def _our_servers(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(process)
    return found


def test_a_port_in_use_is_one_line_and_nothing_starts(server_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        result = _up(server_dir, _stack_env(server_dir, busy.getsockname()[1]), "--check")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0] and "already in use" in lines[0], result.stderr
    assert not _our_servers(server_dir / "data")


def test_a_data_dir_held_by_another_stack_is_refused(server_dir: Path) -> None:
    with data_dir_lock(server_dir / "data"):
        result = _up(server_dir, _stack_env(server_dir, free_port()), "--check")
        with pytest.raises(DataDirBusy):
            with data_dir_lock(server_dir / "data"):
                pass
    assert result.returncode == 1
    assert "held by another stack" in result.stderr and len(result.stderr.splitlines()) == 1
    time.sleep(0.2)
    assert not _our_servers(server_dir / "data")


def test_a_bad_stack_file_names_the_field(server_dir: Path) -> None:
    stack_file = server_dir / "bad.toml"
    stack_file.write_text("[stack]\nshards = 2\nshard_count = 3\n")
    result = _up(server_dir, {"BROKERAGE_STACK": str(stack_file),
                            "BROKERAGE_DATA_DIR": str(server_dir / "data")})
    assert result.returncode == 1
    assert "shard_count" in result.stderr and str(stack_file) in result.stderr


def test_a_broker_that_does_not_come_up_is_one_line_and_nothing_stays(server_dir: Path) -> None:
    env = {**_stack_env(server_dir, free_port()), "CALF_TANSU_BIN": "/bin/false"}
    result = _up(server_dir, env, "--check")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brokerage: broker: exited with code 1"), \
        result.stderr
    assert not _our_servers(server_dir / "data")


def test_a_failure_midway_stops_what_already_started(server_dir: Path) -> None:
    """Shard 1's data dir is in use by a server of its own: the broker, Redis and shard 0 that
    `up` started before finding out are stopped again."""
    from compose.embedded import start_postgres

    data_dir = server_dir / "data"
    squatter = start_postgres("squatter", data_dir / "shard1", free_port(), server_dir / "logs")
    try:
        result = _up(server_dir, _stack_env(server_dir, free_port()), "--check")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "shard1" in lines[0] and "in use" in lines[0], result.stderr
        ours = {squatter.popen.pid} | {c.pid for c in psutil.Process(squatter.popen.pid)
                                       .children(recursive=True)}
        assert [p for p in _our_servers(data_dir) if p.pid not in ours] == []
    finally:
        squatter.stop()
