"""Topic administration against any Kafka-compatible broker."""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient, NewTopic

from compose.exceptions import ServiceStartError
from state.epoch import ensure_epoch
from state.exceptions import EpochUnavailable
from state.topics import TopicSpec


def prepare_topics(bootstrap_servers: str, topic_prefix: str, specs: list[TopicSpec],
                   timeout_s: float = 30.0) -> str:
    """Every topic created, and the broker's epoch (written when the broker has none: a new
    cluster, or a broker that forgot its data). Returns the epoch id."""
    create_topics(bootstrap_servers, specs, timeout_s)
    try:
        return ensure_epoch(bootstrap_servers, topic_prefix, timeout_s=timeout_s)
    except EpochUnavailable as error:
        raise ServiceStartError(str(error)) from error


def create_topics(bootstrap_servers: str, specs: list[TopicSpec], timeout_s: float = 30.0) -> None:
    """Create every missing topic with its explicit configs; existing topics are left alone."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 3})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except Exception as error:  # noqa: BLE001 - the broker may still be starting
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"broker {bootstrap_servers}: cannot list topics: {error}") from error
            time.sleep(0.2)
    missing = [NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=-1,
                        config=spec.config) for spec in specs if spec.name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as error:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(error):
                raise ServiceStartError(
                    f"broker {bootstrap_servers}: cannot create topic {name}: {error}") from error
