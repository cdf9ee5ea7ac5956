"""Helpers of the whole-stack tests. Running `brokerage up` as a child and killing its
processes moved to compose/chaos/stack_process.py (`brokerage chaos` uses them too); they are
imported from there and re-exported here for the tests that import them from this module."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil

from compose.chaos.stack_process import (
    START_TIMEOUT_S,
    StackProcess,
    freeze_and_kill,
    kill_whole_stack,
    restart_stack,
    start_stack,
    stop_everything,
    write_stack_file,
)

__all__ = ["START_TIMEOUT_S", "Listener", "StackProcess", "eventually", "exchange",
           "freeze_and_kill", "http", "kill_whole_stack", "listeners", "restart_stack",
           "stack_listeners", "start_stack", "stop_everything", "write_stack_file"]


@dataclass(frozen=True)
class Listener:
    """A socket that accepts from the network: TCP listening, or UDP bound and unconnected."""

    process: str
    pid: int
    kind: str
    ip: str
    port: int


def listeners(processes: list[psutil.Process]) -> list[Listener]:
    """Every listening socket of `processes`, IPv4 and IPv6."""
    found = []
    for process in processes:
        try:
            name = " ".join(process.cmdline()[:3])
            sockets = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for sock in sockets:
            tcp = sock.type == socket.SOCK_STREAM
            if (tcp and sock.status == psutil.CONN_LISTEN) or (not tcp and not sock.raddr):
                found.append(Listener(name, process.pid, "tcp" if tcp else "udp",
                                      sock.laddr.ip, sock.laddr.port))
    return found


def stack_listeners(stack: StackProcess) -> list[Listener]:
    """Every listening socket of every process of the stack: `brokerage up` and all below it
    (servers, services and their workers)."""
    try:
        top = psutil.Process(stack.popen.pid)
    except psutil.NoSuchProcess:
        return []
    return listeners([top, *stack.descendants()])


def http(method: str, url: str, body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _content_type, raw = exchange(method, url, body, token, headers)
    return status, json.loads(raw) if raw else None


def exchange(method: str, url: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """One request: the answer's status, content type (without parameters) and bytes."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers.get_content_type(), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read()


def eventually(probe: Any, timeout_s: float = 30.0, interval_s: float = 0.2) -> Any:
    """Poll until `probe()` returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met in {timeout_s} s; last value: {value!r}")
