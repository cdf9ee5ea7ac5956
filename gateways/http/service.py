"""The gateway as a long-running service: `run(config)` serves until SIGTERM or SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateways.http.app import create_app
from gateways.http.config import HttpConfig


class ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs every request its parser refuses (not HTTP, a header over 8 KiB, a NUL in
    a header) as an ERROR with a traceback, before the app sees it: anyone could fill the log
    with tracebacks. The client's mistake is a one-line warning instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "refused a malformed request (%s): %s"
            record.args = (type(error).__name__, str(error).replace("\n", " ")[:300])
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def run(config: HttpConfig) -> None:
    """Serve on config.host:config.port; web.run_app turns SIGTERM/SIGINT into a clean
    shutdown (cleanup contexts close the stores and Kafka clients)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(ClientErrorsInOneLine())
    web.run_app(create_app(config), host=config.host, port=config.port,
                reuse_port=config.reuse_port or None, print=None, shutdown_timeout=5.0,
                handle_signals=True,
                access_log=None)  # per-request log lines cost more than the request
