"""The shard sink service: `{prefix}ledger.postings` and `{prefix}orders.events` into the shards.

`run(config)` starts one worker process per shard and supervises them; each worker is a Quix
Streams application with a consumer group of its own (`{consumer_group}.shard{n}`) that reads
both topics and lands the records of its shard's accounts (`sinks.shard_sink.ShardSink`).
One process per shard is the blast-radius boundary: Quix pauses a whole application under
backpressure, so a down shard must pause only the reader of that shard, while the others keep
landing rows. A worker keeps only its shard's partitions of what the group assigns it
(`OwnPartitionsApplication`): the others' records are never fetched, let alone deserialised.

Before it reads, a worker learns the broker's epoch (state/epoch.py), which it records beside
the offsets it lands. A broker without one has not had its topics prepared (`brokerage up` and
`brokerage init` write it): the worker says so and asks again with a bounded backoff rather than
exiting (which would only restart it in a loop).

Run as a program: `python -m sinks.service '<SinkConfig as JSON>'`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
from confluent_kafka import Producer, TopicPartition
from quixstreams import Application
from quixstreams.models import TopicConfig

from sinks.config import SinkConfig
from sinks.shard_sink import ShardSink
from state import topics as t
from state.epoch import epoch_topic, read_epoch
from state.exceptions import EpochUnavailable
from state.fetch_wait import LISTING_WASTES, ListingWatch, measured_wait_ms, probe_consumer
from state.member_id import stable_member_id
from state.router import ShardRouter

log = logging.getLogger(__name__)

INPUT_TOPICS = (t.Topic.LEDGER_POSTINGS, t.Topic.ORDERS_EVENTS)
RESTART_DELAY_S_MIN = 0.5
RESTART_DELAY_S_MAX = 30.0
STOP_TIMEOUT_S = 15.0
EPOCH_RETRY_S_MIN = 0.5
EPOCH_READ_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1


def run(config: SinkConfig) -> None:
    """Block until SIGTERM/SIGINT, landing records in their shards; then stop cleanly."""
    if config.shard is not None:
        run_shard(config, config.shard)
    else:
        _Workers(config).run()


# ---- one shard's worker ------------------------------------------------------------------


class OwnPartitionsApplication(Application):
    """A Quix application that keeps, of what its consumer group assigns it, only the
    partitions in `owned`. Each shard has a group of its own, so every member is offered
    every partition: without this, each worker would fetch and deserialise every shard's
    records only to skip most of them. With several members in one group each owned
    partition still goes to exactly one of them (the group assigns it once).

    Quix exposes no partition filter: this wraps its rebalance callback (checked with Quix
    Streams 3.28; `test_service` exercises it)."""

    def __init__(self, *, owned: frozenset[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owned = owned

    def _get_internal_consumer(self, on_error: Any = None,
                               extra_config_overrides: dict[str, Any] | None = None) -> Any:
        """Quix forces the range assignor (for co-partitioned state, which a sink has none
        of): the assignment strategy of the consumer config stands instead."""
        overrides = dict(extra_config_overrides or {})
        overrides.pop("partition.assignment.strategy", None)
        return super()._get_internal_consumer(on_error=on_error,
                                              extra_config_overrides=overrides)

    def _on_assign(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        kept = [tp for tp in topic_partitions if tp.partition in self._owned]
        if topic_partitions:
            log.info("shard sink %s: assigned %s", self._config.consumer_group,
                     ", ".join(f"{tp.topic}[{tp.partition}]" for tp in kept) or "nothing")
        if topic_partitions and not kept:
            # Quix returns early on an empty list and librdkafka would then assign them all
            self._consumer.assign([])
            return
        super()._on_assign(consumer, kept)


def learn_epoch(config: SinkConfig, stop: threading.Event) -> str | None:
    """The broker's epoch, asked again (0.5 s, 1 s, ... up to `epoch_retry_s_max` apart)
    while the broker is unreachable or has none yet; None when `stop` is set first."""
    delay_s = EPOCH_RETRY_S_MIN
    while not stop.is_set():
        try:
            epoch = read_epoch(config.bootstrap_servers, config.topic_prefix,
                               timeout_s=EPOCH_READ_TIMEOUT_S, extra=config.kafka_extra)
        except EpochUnavailable as error:
            log.warning("shard sink: cannot read the broker's epoch (%s); asking again in "
                        "%.1f s", error, delay_s)
        else:
            if epoch is not None:
                log.info("shard sink: broker epoch %s", epoch)
                return epoch
            log.warning("shard sink: broker %s has no epoch record in %s: its topics were not "
                        "prepared (`brokerage up` or `brokerage init` does it); asking again in "
                        "%.1f s", config.bootstrap_servers, epoch_topic(config.topic_prefix),
                        delay_s)
        stop.wait(delay_s)
        delay_s = min(delay_s * 2, max(config.epoch_retry_s_max, EPOCH_RETRY_S_MIN))
    return None


def input_topics(config: SinkConfig) -> list[str]:
    return [config.topic_prefix + family for family in INPUT_TOPICS]


def fetch_wait_ms(config: SinkConfig) -> int:
    """The configured wait, or room for the broker's listing of the inputs when that is
    wider (state.fetch_wait; issue 11)."""
    return measured_wait_ms(config.bootstrap_servers, input_topics(config),
                            config.fetch_wait_ms, config.kafka_extra)


def build_application(config: SinkConfig, shard: int, state_dir: str, epoch: str
                      ) -> tuple[Application, ShardSink, Producer]:
    assert 0 <= shard < len(config.shard_dsns), (
        f"shard {shard} outside 0..{len(config.shard_dsns) - 1}")
    router = ShardRouter(len(config.shard_dsns), config.partitions_per_shard)
    # librdkafka's default heartbeat interval (3 s) equals a 3 s session timeout: the session
    # would expire between two heartbeats. Beat three times per session.
    group = f"{config.consumer_group}.shard{shard}"
    wait_ms = fetch_wait_ms(config)
    kafka: dict[str, str | int] = {
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": max(config.session_timeout_ms // 3, 100),
        # Round robin over both topics' partitions in order: with several sinks processes
        # in the group each gets some of this shard's partitions (range would give one of
        # them the shard's partitions of both topics and the other only partitions it drops).
        "partition.assignment.strategy": "roundrobin",
        "fetch.wait.max.ms": wait_ms}
    if config.member_dir and config.static_membership:
        kafka["group.instance.id"] = stable_member_id(
            str(Path(config.member_dir) / f"shard{shard}"), group)
    app = OwnPartitionsApplication(
        owned=frozenset(router.partitions_of_shard(shard)),
        broker_address=config.bootstrap_servers,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=config.commit_interval_s,
        consumer_extra_config={**kafka, **config.kafka_extra},
        producer_extra_config=dict(config.kafka_extra),
        processing_guarantee="at-least-once",  # the writes are idempotent
        auto_create_topics=False,  # topics exist (created by `brokerage up` or the fixture)
        use_changelog_topics=False,
        state_dir=state_dir,
        loglevel="WARNING",
    )
    dlq = Producer({"bootstrap.servers": config.bootstrap_servers, **config.kafka_extra})
    sink = ShardSink(shard=shard, dsn=config.shard_dsns[shard], router=router,
                     topic_prefix=config.topic_prefix, dlq_producer=dlq, epoch=epoch,
                     batch_size_max=config.batch_size_max, retry_after_s=config.retry_after_s)
    specs = {spec.name: spec for spec in
             t.topic_specs(config.topic_prefix, router.partitions, 1)}
    for family in INPUT_TOPICS:
        spec = specs[config.topic_prefix + family]
        topic = app.topic(spec.name, value_deserializer="bytes", key_deserializer="bytes",
                          config=TopicConfig(num_partitions=spec.partitions,
                                             replication_factor=1, extra_config=spec.config))
        app.dataframe(topic).sink(sink)
    return app, sink, dlq


def run_shard(config: SinkConfig, shard: int) -> None:
    """One shard's worker in this process, until SIGTERM/SIGINT."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        epoch = learn_epoch(config, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if epoch is None:
        return  # stopped while waiting for the epoch
    with tempfile.TemporaryDirectory(prefix=f"shard-sink{shard}-") as state_dir:
        app, sink, dlq = build_application(config, shard, state_dir, epoch)
        # Quix fixes the consumer's fetch wait at start: outgrown, it is widened by a restart
        # (the supervisor below starts a worker that returned again).
        listings = ListingWatch(
            functools.partial(probe_consumer, config.bootstrap_servers, config.kafka_extra),
            input_topics(config), app_fetch_wait_ms(app), _stop_to_widen(app, shard))
        listings.start()
        try:
            app.run()  # Quix handles SIGTERM/SIGINT: it commits what it has and returns
        finally:
            listings.stop()
            sink.close()
            dlq.flush(10)


def app_fetch_wait_ms(app: Application) -> int:
    return int(app.config.consumer_extra_config["fetch.wait.max.ms"])


def _stop_to_widen(app: Application, shard: int) -> Callable[[float], None]:
    def stop(listing_ms: float) -> None:
        log.warning("shard %d sink: the broker lists an input partition in %.0f ms, more than "
                    "%d %% of the %d ms fetch wait: stopping to start again with a wider one",
                    shard, listing_ms, LISTING_WASTES * 100, app_fetch_wait_ms(app))
        app.stop()

    return stop


# ---- the supervisor of the per-shard workers ---------------------------------------------


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Worker:
    shard: int
    popen: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    delay_s: float = RESTART_DELAY_S_MIN
    started_at: float = 0.0


class _Workers:
    def __init__(self, config: SinkConfig) -> None:
        self._config = config
        self._workers = [_Worker(shard) for shard in range(len(config.shard_dsns))]
        self._stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stopping:
                for worker in self._workers:
                    self._keep_alive(worker)
                time.sleep(0.1)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, worker: _Worker) -> None:
        config = msgspec.structs.replace(self._config, shard=worker.shard)
        worker.popen = subprocess.Popen(
            [sys.executable, "-m", "sinks.service", msgspec.json.encode(config).decode()],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        worker.started_at = time.monotonic()

    def _keep_alive(self, worker: _Worker) -> None:
        if worker.popen is not None and worker.popen.poll() is None:
            if time.monotonic() - worker.started_at > RESTART_DELAY_S_MAX:
                worker.delay_s = RESTART_DELAY_S_MIN  # it ran long enough: forgive
            return
        now = time.monotonic()
        if worker.popen is not None:
            if worker.restart_at == 0.0:
                log.error("shard %d sink exited with %s; restarting in %.1f s", worker.shard,
                          worker.popen.returncode, worker.delay_s)
                worker.restart_at = now + worker.delay_s
                worker.delay_s = min(worker.delay_s * 2, RESTART_DELAY_S_MAX)
            if now < worker.restart_at:
                return
        worker.restart_at = 0.0
        self._start(worker)

    def _stop_all(self) -> None:
        running = [w.popen for w in self._workers if w.popen is not None and w.popen.poll() is None]
        for popen in running:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for popen in running:
            try:
                popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(msgspec.json.decode(argv[1].encode(), type=SinkConfig))


if __name__ == "__main__":
    main(sys.argv)
