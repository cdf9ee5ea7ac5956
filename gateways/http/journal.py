"""Durable intake: every command the gateway acknowledges is journaled in the account's shard
first (`ShardJournal`), and re-published by `JournalReplayer` until the shard shows its outcome
(see state.intake_journal for the table and the rules).

The replayer runs in each gateway process (an aiohttp cleanup context, its state under
`REPLAYER`). Per pass it reads the broker's epoch, then per shard: marks entries the shard
shows decided, re-produces the undecided ones that are due (all of them after an epoch change,
otherwise those older than `journal_replay_after_s` and not re-published within their backoff)
with their original key and bytes, in journal order, and prunes decided entries past the
retention. Work per pass is bounded (`journal_replay_batch_max` per shard). Two gateway
processes replaying the same entry publish it twice: harmless, the topology decides a key once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateways.http.bus import BrokerUnavailable
from gateways.http.config import HttpConfig
from state import intake_journal as ij
from state.epoch import read_epoch
from state.exceptions import EpochUnavailable, ShardUnavailable
from state.router import ShardRouter
from state.shard_reader import close_pools, open_shard_pools
from state.topics import Topic

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 2
EPOCH_READ_TIMEOUT_S = 5.0
PRUNE_BATCH_MAX = 1000


# What a journal write resolves to: None, or the terms of the order already on record.
_Written = asyncio.Future[dict[str, Any] | None]


class ShardJournal:
    """The journal tables of every shard, one small connection pool each. A shard that cannot
    be written raises ShardUnavailable (a StoreError: the gateway answers 503)."""

    def __init__(self, shard_dsns: Sequence[str], partitions_per_shard: int) -> None:
        self._dsns = tuple(shard_dsns)
        self.router = ShardRouter(len(self._dsns), partitions_per_shard)
        self._pools: list[AsyncConnectionPool] = []
        # The broker epoch the gateway last read: stored with each new entry, so that the
        # replayer re-publishes at once what was produced under an older one.
        self.epoch: str | None = None
        # Group commit per shard: entries waiting for the commit in flight to finish.
        self._waiting: list[list[tuple[ij.JournalEntry, str, _Written]]] = [
            [] for _ in self._dsns]
        self._committing = [False] * len(self._dsns)

    @property
    def shards(self) -> int:
        return len(self._dsns)

    async def open(self) -> None:
        self._pools = await open_shard_pools(self._dsns, "journal",
                                             pool_timeout_s=POOL_TIMEOUT_S,
                                             connect_timeout_s=CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        await close_pools(self._pools)
        self._pools = []

    def connection(self, shard: int) -> Any:
        assert self._pools, "ShardJournal.open() was not called"
        return self._pools[shard].connection()

    async def _run(self, account_id: str, call: Any, *args: Any) -> Any:
        shard = self.router.shard_of_account(account_id)
        try:
            async with self.connection(shard) as conn:
                return await call(conn, *args)
        except (psycopg.Error, PoolTimeout) as error:
            raise ShardUnavailable(f"journal of shard {shard}: {error}") from error

    async def write(self, entry: ij.JournalEntry, claim: str) -> dict[str, Any] | None:
        """Journal the entry; returns once it is committed: None, or for a place order whose
        order is already on record, that order's terms (the entry is not journaled). Entries
        of one shard that arrive while a commit is in flight wait for it and then go in
        together, in one database transaction (group commit): one WAL flush for many requests
        under load, no added wait when idle."""
        shard = self.router.shard_of_account(entry.account_id)
        done: _Written = asyncio.get_running_loop().create_future()
        self._waiting[shard].append((entry, claim, done))
        if not self._committing[shard]:
            self._committing[shard] = True
            asyncio.get_running_loop().create_task(self._commit_waiting(shard))
        return await done

    async def _commit_waiting(self, shard: int) -> None:
        try:
            while self._waiting[shard]:
                batch, self._waiting[shard] = self._waiting[shard], []
                try:
                    async with self.connection(shard) as conn:
                        on_record = await ij.journal_many(
                            conn, [(e, c) for e, c, _ in batch], self.epoch)
                except Exception as error:  # noqa: BLE001 - every waiter gets the failure
                    failure: Exception = error
                    if isinstance(error, psycopg.Error | PoolTimeout):
                        failure = ShardUnavailable(f"journal of shard {shard}: {error}")
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(failure)
                    continue
                for entry, _, done in batch:
                    if not done.done():
                        done.set_result(on_record.get(entry.order_id or ""))
        finally:
            self._committing[shard] = False

    async def withdraw(self, account_id: str, key: str, claim: str) -> bool:
        return bool(await self._run(account_id, ij.withdraw, account_id, key, claim))

    async def mark_decided(self, account_id: str, key: str) -> None:
        await self._run(account_id, ij.mark_decided, account_id, key)


@dataclass
class ReplayerStats:
    passes: int = 0
    republished: int = 0
    decided: int = 0
    pruned: int = 0
    last_error: str | None = None
    epoch: str | None = None


class JournalReplayer:
    """Built empty by `create_app`; `run_replayer` runs it once the backends opened the
    journal and the producer."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.journal: ShardJournal | None = None
        self.producer: Any = None  # gateways.http.bus.CommandProducer (produce_raw)
        self.stats = ReplayerStats()

    async def run(self) -> None:
        interval_s = self.config.journal_replay_interval_s
        while True:
            try:
                await self.replay_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a pass fails, the next one tries again
                self.stats.last_error = str(error)
                log.warning("journal replay pass failed: %s", error)
            await asyncio.sleep(interval_s)

    async def read_epoch(self) -> str | None:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            return await loop.run_in_executor(None, lambda: read_epoch(
                config.bootstrap_servers, config.topic_prefix, timeout_s=EPOCH_READ_TIMEOUT_S))
        except EpochUnavailable as error:
            self.stats.last_error = str(error)
            return None

    async def replay_once(self) -> None:
        """One pass over every shard. Without a readable epoch (broker down, topics not
        prepared yet) nothing is published: the topics may not exist."""
        journal = self.journal
        assert journal is not None, "the replayer runs once the journal is open"
        epoch = await self.read_epoch()
        if epoch is None:
            return
        journal.epoch = self.stats.epoch = epoch
        for shard in range(journal.shards):
            try:
                await self._replay_shard(journal, shard, epoch)
            except (psycopg.Error, PoolTimeout) as error:
                self.stats.last_error = f"shard {shard}: {error}"
                log.warning("journal replay of shard %s: %s", shard, error)
        self.stats.passes += 1

    async def _replay_shard(self, journal: ShardJournal, shard: int, epoch: str) -> None:
        config = self.config
        async with journal.connection(shard) as conn:
            due = await ij.due_entries(conn, epoch, config.journal_replay_after_s,
                                       config.journal_replay_batch_max)
            decided = [e for e in due if e.decided]
            await ij.note_decided(conn, decided)
            self.stats.decided += len(decided)
            published = await self._publish([e for e in due if not e.decided])
            await ij.note_published(conn, published, epoch)
            self.stats.republished += len(published)
            self.stats.pruned += await ij.prune(conn, config.journal_retention_s,
                                                PRUNE_BATCH_MAX)
        if published:
            log.info("journal: re-published %d command(s) of shard %s under epoch %s",
                     len(published), shard, epoch)

    async def _publish(self, entries: list[ij.DueEntry]) -> list[ij.DueEntry]:
        """Produce every entry, in journal order (one account's commands keep their order on
        its partition: each produce call is made before the next task starts); the entries
        the broker took."""
        if not entries:
            return []
        topic = self.config.topic_prefix + Topic.ORDERS_COMMANDS
        results = await asyncio.gather(
            *(self.producer.produce_raw(topic, e.account_id, e.payload,
                                        int(e.journaled_at.timestamp() * 1000))
              for e in entries),
            return_exceptions=True)
        taken = []
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, BrokerUnavailable):
                self.stats.last_error = str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                taken.append(entry)
        return taken


REPLAYER = web.AppKey("journal_replayer", JournalReplayer)


async def run_replayer(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the replayer runs while the app does, when the backends opened a
    journal (test doubles of the backends may not)."""
    replayer = app[REPLAYER]
    task = None
    if replayer.journal is not None:
        task = asyncio.create_task(replayer.run(), name="journal-replayer")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
