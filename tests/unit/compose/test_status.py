"""`brokerage status`: the report from what was observed, its table, its JSON and its exit code;
and a data dir without a running stack answered in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from compose.embedded import free_port
from compose.status import (
    NOT_OK_EXIT,
    NOT_RUNNING,
    OK_EXIT,
    HealthAnswer,
    Observed,
    build_report,
    exit_code,
    render_table,
    shown_dsn,
    shown_url,
)

HEALTHY_CHECKS = {"broker": "ok", "redis": "ok", "shard0": "ok", "shard1": "ok",
                  "stage:accounts": "ok", "stage:sink-0": "ok"}


def _process(name: str, pid: int, **changes: Any) -> dict[str, Any]:
    return {"name": name, "pid": pid, "running": True, "restarts": 0, "last_error": None,
            **changes}


def observed(**changes: Any) -> Observed:
    """A healthy embedded stack as `status` would see it."""
    fields: dict[str, Any] = {
        "server_errors": {"broker": None, "redis": None, "shard0": None, "shard1": None},
        "endpoints": {"broker": "127.0.0.1:9092", "redis": "redis://127.0.0.1:6379/0",
                      "shard0": "127.0.0.1:5432/postgres", "shard1": "127.0.0.1:5433/postgres"},
        "processes": {"servers": [_process("broker", 10), _process("redis", 11),
                                  _process("shard0", 12), _process("shard1", 13)],
                      "services": [_process("http", 20), _process("accounts", 21)]},
        "pids_alive": {pid: True for pid in (10, 11, 12, 13, 20, 21)},
        "healthz": HealthAnswer(200, {"status": "ok", "checks": HEALTHY_CHECKS}),
        "lags": {"accounts": 0, "sink-0": 3},
    }
    return Observed(**{**fields, **changes})


def _component(report: Any, kind: str, name: str) -> Any:
    return next(c for c in report.components if (c.kind, c.name) == (kind, name))


def test_a_healthy_stack_is_every_component_up_and_exit_0() -> None:
    report = build_report(observed())
    assert exit_code(report) == OK_EXIT
    assert [(c.kind, c.name) for c in report.components] == [
        ("server", "broker"), ("server", "redis"), ("server", "shard0"), ("server", "shard1"),
        ("service", "http"), ("service", "accounts"), ("gateway", "/healthz"),
        ("group", "accounts"), ("group", "sink-0")]
    assert all(c.ok for c in report.components)
    assert _component(report, "group", "sink-0").lag == 3
    lines = render_table(report)
    assert lines[0].split() == ["COMPONENT", "STATE", "RESTARTS", "LAG", "DETAIL"]
    assert len(lines) == 1 + len(report.components) + 1
    assert lines[-1] == "ok: all 9 components up"
    # columns line up: every row's state starts where the header's does
    column = lines[0].index("STATE")
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines[1:-1])


def test_json_says_each_component_and_the_exit_code() -> None:
    body = json.loads(json.dumps(build_report(observed()).to_builtins()))
    assert body["running"] is True and body["ok"] is True and body["exit_code"] == 0
    assert body["problems"] == []
    broker = body["components"][0]
    assert broker == {"kind": "server", "name": "broker", "state": "up", "ok": True,
                      "detail": "127.0.0.1:9092; pid 10", "last_error": None, "pid": 10,
                      "restarts": 0, "lag": None, "endpoint": "127.0.0.1:9092"}


def test_a_shard_that_does_not_answer_is_down_with_its_error_and_exit_1() -> None:
    errors = {"broker": None, "redis": None, "shard0": "connection refused", "shard1": None}
    shard0 = _process("shard0", 12, restarts=2, running=False,
                      last_error={"error": "exited with code -9", "at": "2026-12-04T10:00:00Z"})
    report = build_report(observed(
        server_errors=errors,
        processes={"servers": [shard0], "services": []},
        healthz=HealthAnswer(503, {"code": "unhealthy", "detail": "down: shard0",
                                   "down": ["shard0"], "checks": {**HEALTHY_CHECKS,
                                                                  "shard0": "down"}})))
    assert exit_code(report) == NOT_OK_EXIT
    down = _component(report, "server", "shard0")
    assert (down.state, down.ok, down.restarts) == ("down", False, 2)
    assert "not answering: connection refused" in down.detail
    assert down.last_error == "exited with code -9 (at 2026-12-04T10:00:00Z)"
    gateway = _component(report, "gateway", "/healthz")
    assert (gateway.state, gateway.ok, gateway.detail) == ("unhealthy", False,
                                                           "503: down: shard0")
    assert report.problems == ["server shard0 down", "gateway /healthz unhealthy"]
    table = render_table(report)
    assert table[-1] == "not ok: server shard0 down, gateway /healthz unhealthy"
    assert any("last error: exited with code -9" in line for line in table)


def test_redis_down_is_not_ok_even_though_healthz_calls_it_degraded() -> None:
    errors = {"broker": None, "redis": "Connection refused", "shard0": None, "shard1": None}
    report = build_report(observed(
        server_errors=errors,
        healthz=HealthAnswer(200, {"status": "degraded",
                                   "checks": {**HEALTHY_CHECKS, "redis": "degraded"}})))
    assert exit_code(report) == NOT_OK_EXIT
    assert report.problems == ["server redis down", "gateway /healthz degraded"]


def test_a_stuck_stage_is_named_with_the_gateway_verdict() -> None:
    verdict = "stuck: orders.commands[0] 12 behind, committed still for 40 s"
    report = build_report(observed(
        healthz=HealthAnswer(503, {"detail": "stuck: accounts", "down": ["accounts"],
                                   "checks": {**HEALTHY_CHECKS, "stage:accounts": verdict}}),
        lags={"accounts": 12, "sink-0": 0}))
    assert exit_code(report) == NOT_OK_EXIT
    stuck = _component(report, "group", "accounts")
    assert (stuck.state, stuck.ok, stuck.lag, stuck.last_error) == ("stuck", False, 12, verdict)
    assert "group accounts stuck" in report.problems


def test_a_service_whose_process_is_gone_is_down_with_its_restarts() -> None:
    report = build_report(observed(pids_alive={10: True, 11: True, 12: True, 13: True,
                                               20: True, 21: False}))
    accounts = _component(report, "service", "accounts")
    assert (accounts.state, accounts.ok) == ("down", False)
    assert "not running" in accounts.detail
    assert exit_code(report) == NOT_OK_EXIT
    recorded_dead = build_report(observed(processes={"servers": [], "services": [
        _process("accounts", 21, running=False, restarts=3)]}))
    assert _component(recorded_dead, "service", "accounts").restarts == 3
    assert exit_code(recorded_dead) == NOT_OK_EXIT


def test_a_gateway_that_does_not_answer_leaves_groups_unjudged() -> None:
    report = build_report(observed(
        healthz=HealthAnswer(None, error="http://127.0.0.1:1/healthz: connection refused")))
    gateway = _component(report, "gateway", "/healthz")
    assert (gateway.state, gateway.ok) == ("down", False)
    assert gateway.last_error == "http://127.0.0.1:1/healthz: connection refused"
    group = _component(report, "group", "accounts")
    assert (group.state, group.ok, group.lag) == ("unknown", True, 0)
    assert "not judged" in group.detail
    assert exit_code(report) == NOT_OK_EXIT


def test_a_stack_without_http_gateway_or_process_list_says_so() -> None:
    report = build_report(observed(healthz=None, processes=None, lags=None,
                                   lags_error="the broker does not answer"))
    assert [c.kind for c in report.components] == ["server"] * 4
    assert exit_code(report) == OK_EXIT
    assert any("no process list" in note for note in report.notes)
    assert any("lag not sampled" in note for note in report.notes)
    assert any(line.startswith("note: ") for line in render_table(report))


def test_addresses_are_shown_without_passwords() -> None:
    assert shown_dsn("postgresql://postgres:secret@db:5433/ledger") == "db:5433/ledger"
    assert shown_dsn("host=db port=5433 dbname=ledger password=secret") == "db:5433/ledger"
    assert shown_url("redis://:secret@cache:6379/0") == "redis://cache:6379/0"


# ---- a data dir without a running stack ------------------------------------------------------


def _status(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKERAGE_DATA_DIR": str(data_dir)}
    for name in ("BROKERAGE_STACK", "BROKERAGE_KAFKA_BOOTSTRAP", "BROKERAGE_SHARD_DSNS",
                 "BROKERAGE_REDIS_URL"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "compose.cli", "status", *args],
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def test_no_running_stack_is_one_line_and_exit_3(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left_behind = tmp_path / "killed"
    left_behind.mkdir()
    (left_behind / "stack.json").write_text(json.dumps({
        "bootstrap_servers": f"127.0.0.1:{free_port()}", "shard_dsns": [], "redis_url": "x",
        "pid": dead.pid}))
    for data_dir in (tmp_path / "never", left_behind):
        answer = _status(data_dir)
        assert answer.returncode == NOT_RUNNING, answer
        assert answer.stdout == "" and answer.stderr.count("\n") == 1, answer
        assert answer.stderr.startswith("brokerage: no running stack in"), answer.stderr
        as_json = _status(data_dir, "--json")
        assert as_json.returncode == NOT_RUNNING and as_json.stdout.count("\n") == 1, as_json
        body = json.loads(as_json.stdout)
        assert body["running"] is False and body["exit_code"] == NOT_RUNNING
        assert "no running stack" in body["error"]


def test_servers_that_are_down_are_a_table_not_a_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "stack.json").write_text(json.dumps({
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "shard_dsns": [f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"],
        "redis_url": f"redis://127.0.0.1:{free_port()}/0", "topic_prefix": "",
        "pid": os.getpid(), "http_url": f"http://127.0.0.1:{free_port()}",
        "services": [_process("http", os.getpid())], "servers": []}))
    answer = _status(data_dir, "--json")
    assert answer.returncode == NOT_OK_EXIT, answer
    assert "Traceback" not in answer.stderr, answer.stderr
    body = json.loads(answer.stdout)
    states = {(c["kind"], c["name"]): c["state"] for c in body["components"]}
    assert states == {("server", "broker"): "down", ("server", "redis"): "down",
                      ("server", "shard0"): "down", ("service", "http"): "up",
                      ("gateway", "/healthz"): "down"}
