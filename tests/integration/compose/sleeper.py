"""A service that only waits: for supervisor tests."""

from __future__ import annotations

import signal
import threading

from compose.stack import RedisSection


def run(config: RedisSection) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait(600)
