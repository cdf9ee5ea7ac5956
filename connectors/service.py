"""The connector runtime: every configured connector runs as a Quix Streams Source (its own
process) producing to `{prefix}<topic>`, its bad ticks to `{prefix}dlq.<topic>`."""

from __future__ import annotations

import logging
import time

from quixstreams import Application
from quixstreams.sources import Source

from connectors.config import ConnectorConfig, ConnectorsConfig
from connectors.registry import build_connector, parse_settings
from connectors.runtime import SystemClock, drive
from state.topics import dlq_name

log = logging.getLogger(__name__)

STOP_POLL_S = 0.2


class ConnectorSource(Source):
    """One connector in a Quix source process. When the connector ends (a replay file is
    done) the source idles until stopped, so the service keeps the shape `run until SIGTERM`."""

    def __init__(self, config: ConnectorConfig, topic_prefix: str) -> None:
        super().__init__(name=config.name, shutdown_timeout=10)
        self.config = config
        self.topic_prefix = topic_prefix

    def run(self) -> None:
        topic = self.topic_prefix + self.config.topic
        dlq_topic = self.topic_prefix + dlq_name(self.config.topic)

        def produce(target: str, key: str | None, value: bytes) -> None:
            self.producer.produce(topic=target, key=key, value=value)

        drive(build_connector(self.config), SystemClock(), produce, topic, dlq_topic,
              lambda: self.running, topic, self.config.name)
        self.flush(self.shutdown_timeout / 2)
        while self.running:
            time.sleep(STOP_POLL_S)


def build_app(config: ConnectorsConfig) -> Application:
    """A Quix application with one source per connector (no dataframe)."""
    app = Application(
        broker_address=config.bootstrap_servers,
        consumer_group=f"{config.topic_prefix}connectors",
        auto_create_topics=False,
        producer_extra_config={"linger.ms": 5, **config.producer_extra},
        consumer_extra_config={"session.timeout.ms": config.session_timeout_ms},
    )
    for connector in config.connectors:
        parse_settings(connector)  # fail here, in the parent, not in a source process
        topic = app.topic(config.topic_prefix + connector.topic, key_serializer="str",
                          value_serializer="bytes", key_deserializer="str",
                          value_deserializer="bytes")
        app.add_source(ConnectorSource(connector, config.topic_prefix), topic=topic)
    return app


def run(config: ConnectorsConfig) -> None:
    """Run every connector until SIGTERM or SIGINT, then stop them cleanly."""
    log.info("connectors: starting %s", ", ".join(c.name for c in config.connectors) or "none")
    if not config.connectors:
        _wait_for_signal()
        return
    build_app(config).run()


def _wait_for_signal() -> None:
    import signal
    import threading

    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(STOP_POLL_S):
        pass
