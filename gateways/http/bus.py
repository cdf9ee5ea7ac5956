"""The gateway's Kafka clients: one producer for commands, and topic tails (one consumer per
process per topic, assigned every partition from the end) that hand decoded records to the
event loop in batches.

confluent-kafka is blocking; each client gets a small thread and talks to asyncio only through
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from gateways.exceptions import GatewayError
from state import topics as t
from state.exceptions import DecodeError
from state.fetch_wait import WideningReader, probe_consumer
from state.messages import Message

log = logging.getLogger(__name__)


class BrokerUnavailable(GatewayError):
    """The broker did not take a record (produce error or delivery timeout)."""


class CommandProducer:
    """Produces account-keyed commands and awaits the broker's acknowledgement.

    Acknowledgements are settled on the event loop in batches: the poll thread collects the
    delivery reports of one poll and hands them over with one loop wake-up, not one each."""

    def __init__(self, bootstrap_servers: str, delivery_timeout_ms: int,
                 linger_ms: int = 1) -> None:
        self._producer: Producer | None = Producer({
            "bootstrap.servers": bootstrap_servers,
            "partitioner": "murmur2_random",  # accounts stay in their shard's partitions
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "delivery.timeout.ms": delivery_timeout_ms,
        })
        self._settled: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="http-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        producer = self._live()
        while self._running:
            producer.poll(0.05)
            self._hand_over()

    def _live(self) -> Producer:
        if self._producer is None:
            raise BrokerUnavailable("the command producer is closed")
        return self._producer

    def _hand_over(self) -> None:
        settled, self._settled = self._settled, []
        if settled and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_settle_all, settled)

    async def produce(self, topic: str, key: str, message: Message) -> None:
        """Return once the broker has the record; BrokerUnavailable otherwise."""
        await self.produce_raw(topic, key, t.encode(message))

    async def produce_raw(self, topic: str, key: str, value: bytes,
                          timestamp_ms: int = 0) -> None:
        """`produce` of an encoded message (the journal replays the bytes it stored, stamped
        with the time they were first accepted: the account topology decides at the record's
        time, so a replay is decided as the original would have been)."""
        loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(error: KafkaError | None, _record: Any) -> None:
            self._settled.append((done, error))  # on the poll thread, inside poll()

        try:
            self._live().produce(topic, key=key.encode(), value=value,
                                 on_delivery=on_delivery, timestamp=timestamp_ms)
        except (BufferError, KafkaException) as error:
            raise BrokerUnavailable(f"broker refused the record: {error}") from error
        await done

    def broker_reachable(self, timeout_s: float) -> bool:
        try:
            self._live().list_topics(timeout=timeout_s)
        except (KafkaException, BrokerUnavailable):
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        if self._producer is None:
            return
        self._producer.flush(timeout_s)
        self._running = False
        self._thread.join(timeout_s)
        self._hand_over()
        # Dropping the handle destroys it (and its broker threads): the object itself may
        # outlive the app (aiohttp caches handlers per app object).
        self._producer = None


def _settle_all(settled: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for done, error in settled:
        _settle(done, error)


def _settle(done: asyncio.Future[None], error: KafkaError | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(BrokerUnavailable(f"delivery failed: {error}"))


Deliver = Callable[[list[Any]], None]


class TopicTail:
    """Reads one topic from its end on every partition and delivers decoded messages, in
    batches, to `deliver` on the event loop. Records that do not decode are logged and counted:
    the topic's own processors send them to the dead-letter topic.

    `latest_per_key` (a topic whose readers want only each key's newest record, e.g. quotes
    for a conflating fan-out): of each batch only the last record per key is decoded and
    delivered, and `batch_wait_s` lets a batch gather for that long, so a busy feed costs
    a decode and a loop wake-up per key per batch instead of per record."""

    def __init__(self, bootstrap_servers: str, topic: str, family: t.Topic,
                 deliver: Deliver, loop: asyncio.AbstractEventLoop,
                 session_timeout_ms: int, *, latest_per_key: bool = False,
                 batch_wait_s: float = 0.0, fetch_wait_ms: int = 10) -> None:
        self._topic = topic
        self._family = family
        self._deliver = deliver
        self._loop = loop
        self._latest_per_key = latest_per_key
        self._batch_wait_s = batch_wait_s
        self.malformed = 0
        self.records_read = 0
        # Starts at `fetch_wait_ms` and widens when the broker starves it (issue 11).
        self._reader = WideningReader(
            topic, functools.partial(_tail_consumer, bootstrap_servers, session_timeout_ms),
            fetch_wait_ms, probe=functools.partial(probe_consumer, bootstrap_servers))
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"tail-{family}", daemon=True)

    def start(self, timeout_s: float) -> None:
        """Assign every partition at its current end; afterwards nothing produced is missed."""
        metadata = self._consumer.list_topics(self._topic, timeout=timeout_s)
        partitions = metadata.topics[self._topic].partitions
        if not partitions:
            raise GatewayError(f"topic {self._topic} has no partitions (not created?)")
        # Explicit start offsets from ListOffsets(latest): some brokers answer a little below
        # the true end, which only replays a few old records (harmless: nobody waits on them);
        # never above it.
        starts = {}
        for partition in partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, partition), timeout=timeout_s)
            starts[(self._topic, partition)] = high
        self._reader.assign(starts)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            try:
                records = self._next_batch()
            except KafkaException as error:  # transient: keep tailing
                log.warning("tail %s: %s", self._topic, error)
                time.sleep(0.2)
                continue
            self._reader.after_poll(bool(records))
            records = [record for record in records if not record.error()]
            self.records_read += len(records)
            if self._latest_per_key:
                records = list({record.key(): record for record in records}.values())
            batch = []
            for record in records:
                try:
                    batch.append(t.decode(self._family, record.value()))
                except DecodeError as error:
                    self.malformed += 1
                    log.warning("tail %s: skipping malformed record at %s/%s: %s",
                                self._topic, record.partition(), record.offset(), error)
            if batch and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._deliver, batch)

    def _next_batch(self) -> list[Any]:
        """Wait for one record, then take whatever else is already fetched: a batch `consume`
        with a timeout waits out the whole timeout unless the batch fills, adding latency."""
        first = self._consumer.poll(0.1)
        if first is None:
            return []
        if self._batch_wait_s:
            return [first, *self._consumer.consume(num_messages=4999,
                                                   timeout=self._batch_wait_s)]
        return [first, *self._consumer.consume(num_messages=499, timeout=0)]

    @property
    def _consumer(self) -> Consumer:
        return self._reader.consumer

    def close(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(5)
        self._reader.close()


def _tail_consumer(bootstrap_servers: str, session_timeout_ms: int, fetch_wait_ms: int
                   ) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"http-gateway-tail-{uuid.uuid4().hex}",  # never joined: we assign
        "enable.auto.commit": False,
        "session.timeout.ms": session_timeout_ms,
        "fetch.wait.max.ms": fetch_wait_ms,
        "fetch.error.backoff.ms": 50,
    })
