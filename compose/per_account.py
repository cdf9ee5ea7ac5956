"""One command per account, for the operations that touch every account (day end,
settlement): the accounts come from the shards, the commands go to `orders.commands` keyed by
account, so each lands in its shard's partitions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import psycopg
from confluent_kafka import Producer

from compose.exceptions import ComposeError
from state.messages import Message
from state.topics import Topic, encode

PROGRESS_EVERY_ACCOUNTS = 1000
FLUSH_TIMEOUT_S = 30


def account_ids(shard_dsns: Sequence[str]) -> list[str]:
    """Every account the shards know (read-only)."""
    found: list[str] = []
    for dsn in shard_dsns:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            found += [row[0] for row in conn.execute(
                "SELECT account_id FROM accounts ORDER BY account_id")]
    return found


def produce_per_account(bootstrap: str, prefix: str, shard_dsns: Sequence[str],
                        command_for: Callable[[str, dt.datetime], Message],
                        report: Callable[[str], None]) -> int:
    """Produce `command_for(account_id, now)` for every account; the number of accounts.
    Raises ComposeError when the broker did not take them all."""
    accounts = account_ids(shard_dsns)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    now = dt.datetime.now(dt.UTC)
    for done, account_id in enumerate(accounts, start=1):
        producer.produce(prefix + Topic.ORDERS_COMMANDS, key=account_id.encode(),
                         value=encode(command_for(account_id, now)))
        producer.poll(0)
        if done % PROGRESS_EVERY_ACCOUNTS == 0:
            report(f"{done}/{len(accounts)} accounts ...")
    if producer.flush(FLUSH_TIMEOUT_S):
        raise ComposeError(f"broker {bootstrap}: commands not all delivered")
    return len(accounts)
