"""Day end: every account's open day orders expire and release their holds.

One `expire_orders` command per account, keyed by account, with the trading day as its
idempotency key (`eod-YYYY-MM-DD`): running it twice for a day changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import psycopg
from confluent_kafka import Producer

from compose.exceptions import ComposeError
from state.messages import ExpireOrders
from state.topics import Topic, encode


def account_ids(shard_dsns: Sequence[str]) -> list[str]:
    """Every account the shards know (read-only)."""
    found: list[str] = []
    for dsn in shard_dsns:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            found += [row[0] for row in conn.execute(
                "SELECT account_id FROM accounts ORDER BY account_id")]
    return found


def expire_day_orders(bootstrap: str, prefix: str, shard_dsns: Sequence[str],
                      trading_day: dt.date, report: Callable[[str], None]) -> int:
    accounts = account_ids(shard_dsns)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    now = dt.datetime.now(dt.UTC)
    for done, account_id in enumerate(accounts, start=1):
        command = ExpireOrders(account_id=account_id, idempotency_key=f"eod-{trading_day}",
                               trading_day=trading_day, submitted_at=now)
        producer.produce(prefix + Topic.ORDERS_COMMANDS, key=account_id.encode(),
                         value=encode(command))
        producer.poll(0)
        if done % 1000 == 0:
            report(f"{done}/{len(accounts)} accounts ...")
    if producer.flush(30):
        raise ComposeError(f"broker {bootstrap}: expire commands not all delivered")
    report(f"day orders of {trading_day} expired for {len(accounts)} accounts")
    return len(accounts)
