"""Run the gateway and the simulator as child processes, for tests and benchmarks.

The supervisor in compose/ runs the services in production; this is the small equivalent the
tests and `benchmarks/fix_roundtrip.py` use, with the same `run(config)` entry points.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from gateways.simulator import bind_host
from gateways.simulator.config import SimulatorConfig
from state.messages import ExecutionReport, Message, Quote
from state.topics import Topic, decode, encode

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ServiceProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time; returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def launch(module: str, config: msgspec.Struct, log_path: Path) -> ServiceProcess:
    """`python -m module CONFIG_JSON` in a child that dies with us. A simulator gets the
    bind-host shim, as the supervisor gives it, so that it listens on its config's host."""
    extra = bind_host.environment(config.host) if isinstance(config, SimulatorConfig) else {}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, msgspec.json.encode(config).decode()],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **extra} if extra else None, preexec_fn=_die_with_parent)
    return ServiceProcess(module, popen, log_path)


def produce(bootstrap_servers: str, topic: str, messages: Sequence[tuple[str, Message]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap_servers,
                         "partitioner": "murmur2_random", "linger.ms": 1})
    for key, message in messages:
        producer.produce(topic, key=key.encode(), value=encode(message))
    producer.flush(10)


def quote(symbol: str, bid: str, ask: str) -> Quote:
    return Quote(symbol=symbol, bid=Decimal(bid), ask=Decimal(ask), bid_size=Decimal(100),
                 ask_size=Decimal(100), venue_time=dt.datetime.now(dt.UTC))


class TopicReader:
    """Reads every partition of a topic from the start, without a consumer group."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap_servers,
                                  "group.id": f"reader-{topic}", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 1})
        metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                              for p in metadata.partitions])

    def poll(self, timeout_s: float) -> list[tuple[str, bytes]]:
        records = self.consumer.consume(num_messages=1000, timeout=timeout_s)
        return [((r.key() or b"").decode(), r.value() or b"") for r in records
                if r.error() is None]

    def executions(self, until: int, timeout_s: float) -> Iterator[ExecutionReport]:
        """Execution reports as they come, until `until` were seen or the time is up."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while seen < until and time.monotonic() < deadline:
            # consume() waits for its whole timeout unless the batch fills: keep it short.
            for _, value in self.poll(min(0.05, max(deadline - time.monotonic(), 0.0005))):
                report = decode(Topic.EXECUTIONS, value)
                seen += 1
                yield report

    def close(self) -> None:
        self.consumer.close()
