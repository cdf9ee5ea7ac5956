"""Running the sink service and waiting for its rows, for the sink tests."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import psycopg
from confluent_kafka import Consumer, Producer

from sinks.config import SinkConfig
from state import topics as t
from state.messages import Message


@contextlib.contextmanager
def running_sink(config: SinkConfig, log_path: Path | None = None
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """The sink service as the supervisor runs it: a child process, stopped with SIGTERM;
    its output goes to `log_path` when given."""
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log_path.open("wb")) if log_path is not None else None
        popen = subprocess.Popen(
            [sys.executable, "-m", "sinks.service", msgspec.json.encode(config).decode()],
            stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        yield from _stopped_on_exit(popen)


def _stopped_on_exit(popen: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield popen
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
            raise AssertionError("the sink service did not stop on SIGTERM") from None
    assert popen.returncode == 0, f"sink service exited with {popen.returncode}"


def produce(bootstrap_servers: str, prefix: str, messages: Sequence[Message],
            extra: Sequence[tuple[str, bytes, bytes]] = ()) -> None:
    """Each message to its topic keyed by account; `extra` is raw (topic, key, value)."""
    producer = Producer({"bootstrap.servers": bootstrap_servers,
                         "partitioner": "murmur2_random"})
    for message in messages:
        account_id: str = getattr(message, "account_id")  # noqa: B009 - account-keyed only
        producer.produce(prefix + t.topic_for(message), key=account_id.encode(),
                         value=t.encode(message))
    for topic, key, value in extra:
        producer.produce(prefix + topic, key=key, value=value)
    assert producer.flush(10) == 0


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError):
            if condition():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def count(dsn: str, query: str, params: Sequence[object] = ()) -> int:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row and row[0] is not None else 0


def read_topic(bootstrap_servers: str, topic: str, expected: int, timeout_s: float = 15.0
               ) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": topic + ".reader",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 3000})
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                seen.append(msg.value())
    finally:
        consumer.close()
    return seen
