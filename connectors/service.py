"""The connector runtime: every configured connector runs as a Quix Streams Source (its own
process) producing to `{prefix}<topic>`, its bad ticks to `{prefix}dlq.<topic>`."""

from __future__ import annotations

import logging
import tempfile
import time

from confluent_kafka.admin import AdminClient
from quixstreams import Application
from quixstreams.sources import Source

from connectors.config import ConnectorConfig, ConnectorsConfig
from connectors.exceptions import ConnectorError
from connectors.partitioning import SymbolPartitioner
from connectors.registry import build_connector, parse_settings
from connectors.runtime import SystemClock, drive
from state.topics import Topic, dlq_name

log = logging.getLogger(__name__)

STOP_POLL_S = 0.2
# How long the feed's producer gathers records into one batch per partition. The embedded
# broker (Tansu 0.6.0, memory engine) keeps each batch as one object and lists every object of
# a partition on each fetch that finds new data, and it enforces no retention: its CPU grows
# with (batches per second per partition)^2 x time x consumers, so doubling the linger cuts the
# growth about fourfold. Measured with three tail consumers at 300 quotes/s: one-record batches
# (the feed at 5 ms) fell 30 s behind within 75 s while the broker climbed to 1.2 cores; at
# 250 ms the broker stayed at 0.15 cores. On the idle stack (50 quotes/s, 4 partitions) 500 ms
# let the broker grow from 0.22 to 0.34 cores in an hour. 1 s adds at most that to a quote's
# age, well inside the 2 s the stack is held to (issue 11).
LINGER_MS = 1000


class ConnectorSource(Source):
    """One connector in a Quix source process. When the connector ends (a replay file is
    done) the source idles until stopped, so the service keeps the shape `run until SIGTERM`."""

    def __init__(self, config: ConnectorConfig, topic_prefix: str,
                 hot_symbols: dict[str, int] | None = None, bootstrap_servers: str = "",
                 ) -> None:
        super().__init__(name=config.name, shutdown_timeout=10)
        self.config = config
        self.topic_prefix = topic_prefix
        self.hot_symbols = hot_symbols or {}
        self.bootstrap_servers = bootstrap_servers

    def run(self) -> None:
        topic = self.topic_prefix + self.config.topic
        dlq_topic = self.topic_prefix + dlq_name(self.config.topic)
        partitioner = self._partitioner(topic)

        def produce(target: str, key: str | None, value: bytes) -> None:
            partition = partitioner.partition(key) if partitioner and key and \
                target == topic else None
            self.producer.produce(topic=target, key=key, value=value, partition=partition)

        drive(build_connector(self.config), SystemClock(), produce, topic, dlq_topic,
              lambda: self.running, topic, self.config.name)
        self.flush(self.shutdown_timeout / 2)
        while self.running:
            time.sleep(STOP_POLL_S)

    def _partitioner(self, topic: str) -> SymbolPartitioner | None:
        """Quotes are partitioned explicitly (hot symbols, murmur2 for the rest). Other topics
        keep the client's key partitioning: `market.status` is also written by the ops CLI,
        and one symbol's status must stay in one partition of that compacted topic."""
        if self.config.topic != Topic.QUOTES or not self.bootstrap_servers:
            return None
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ConnectorError(f"topic {topic} does not exist")
        return SymbolPartitioner(len(metadata.partitions), self.hot_symbols)


def build_app(config: ConnectorsConfig) -> Application:
    """A Quix application with one source per connector (no dataframe)."""
    app = Application(
        broker_address=config.bootstrap_servers,
        consumer_group=f"{config.topic_prefix}connectors",
        auto_create_topics=False,
        producer_extra_config={"linger.ms": LINGER_MS, **config.producer_extra},
        consumer_extra_config={"session.timeout.ms": config.session_timeout_ms},
        state_dir=config.state_dir or tempfile.mkdtemp(prefix="brokerage-connectors-"),
    )
    for connector in config.connectors:
        parse_settings(connector)  # fail here, in the parent, not in a source process
        topic = app.topic(config.topic_prefix + connector.topic, key_serializer="str",
                          value_serializer="bytes", key_deserializer="str",
                          value_deserializer="bytes")
        source = ConnectorSource(connector, config.topic_prefix, dict(config.hot_symbols),
                                 config.bootstrap_servers)
        app.add_source(source, topic=topic)
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
