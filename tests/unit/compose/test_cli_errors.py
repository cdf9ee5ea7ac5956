"""Every command answers a mistake or a stack that is down in one line, naming what and where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compose.cli import main
from compose.embedded import free_port


@pytest.mark.parametrize("command", [["settle", "--date", "12/04/2026"],
                                     ["expire", "--date", "2026-13-01"]])
def test_a_bad_date_names_the_flag_and_the_expected_form(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "argument --date: expected a date as YYYY-MM-DD" in error


def test_a_time_without_its_offset_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["topics", "replay", "quotes", "--to", "x", "--from-time", "2026-12-04T14:30"])
    assert "argument --from-time: expected an RFC 3339 time with its offset" in (
        capsys.readouterr().err)


def _brokerage(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKERAGE_DATA_DIR": str(data_dir)}
    env.pop("BROKERAGE_STACK", None)
    return subprocess.run([sys.executable, "-m", "compose.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def _stack_file(data_dir: Path, pid: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "stack.json").write_text(json.dumps({
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "shard_dsns": [f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"] * 2,
        "redis_url": f"redis://127.0.0.1:{free_port()}/0", "topic_prefix": "", "pid": pid}))


def test_a_stack_file_left_by_a_killed_stack_is_not_taken_for_a_running_stack(
        tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _stack_file(tmp_path / "data", dead.pid)
    for command in (["reconcile"], ["topics", "list"]):
        answer = _brokerage(tmp_path / "data", *command)
        assert answer.returncode == 1
        assert answer.stderr.strip().count("\n") == 0, answer.stderr
        assert "no running stack in" in answer.stderr and "Traceback" not in answer.stderr


def test_servers_that_are_down_are_one_line(tmp_path: Path) -> None:
    _stack_file(tmp_path / "data", os.getpid())  # a live pid, servers gone
    answer = _brokerage(tmp_path / "data", "reconcile")
    assert answer.returncode == 1, answer
    assert "Traceback" not in answer.stderr, answer.stderr
    assert answer.stderr.startswith("brokerage: ") and "broker" in answer.stderr
    assert answer.stderr.strip().count("\n") == 0, answer.stderr
