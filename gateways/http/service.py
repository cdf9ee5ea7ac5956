"""The gateway as a long-running service: `run(config)` serves until SIGTERM or SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from gateways.http.app import create_app
from gateways.http.config import HttpConfig


def run(config: HttpConfig) -> None:
    """Serve on config.host:config.port; web.run_app turns SIGTERM/SIGINT into a clean
    shutdown (cleanup contexts close the stores and Kafka clients)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    web.run_app(create_app(config), host=config.host, port=config.port,
                reuse_port=config.reuse_port or None, print=None, shutdown_timeout=5.0,
                handle_signals=True,
                access_log=None)  # per-request log lines cost more than the request
