"""What the stack's health is made of, in one place for the HTTP gateway's `/healthz` and for
`brokerage status`: how each server is asked (a shard: connect and one query; Redis: PING; the
broker: a metadata request) and how the answers add up (Redis down is `degraded`: orders go on
without it; the broker or a shard down is down).

The gateway asks with its own long-lived clients (its Redis client, its producer's metadata);
`brokerage status` asks with clients of its own, with the same checks and the same verdicts.
Each check answers None when the server is fine, else why not in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from redis.exceptions import RedisError

CHECK_TIMEOUT_S = 2.0

OK = "ok"
DOWN = "down"
DEGRADED = "degraded"
# Orders go on without Redis (local budgets, the topology's idempotency, no reference
# prices): a Redis that does not answer degrades the stack, it does not bring it down.
DEGRADES_ONLY = frozenset({"redis"})


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


async def shard_error(dsn: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """A shard is up when it takes a connection and answers a query."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=max(int(timeout_s), 1), autocommit=True)
    except psycopg.Error as error:
        return first_line(error)
    try:
        await conn.execute("SELECT 1")
        return None
    except psycopg.Error as error:
        return first_line(error)
    finally:
        await conn.close()


async def redis_error(client: Any) -> str | None:
    """Redis is up when it answers PING (`client`: a redis.asyncio client, whose own timeouts
    bound the wait)."""
    try:
        return None if await client.ping() else "PING not answered"
    except (RedisError, OSError) as error:
        return first_line(error)


def broker_error(bootstrap_servers: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """The broker is up when it answers a metadata request (the gateway asks its producer the
    same; this is for a caller without a client of its own)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 0: librdkafka would otherwise print every failed connection on stderr.
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        return first_line(error)
    return None


def dependency_checks(reachable: Mapping[str, bool]) -> dict[str, str]:
    """Each server's verdict from whether it answered: `ok`, `down`, or `degraded` for one the
    stack works without."""
    return {name: OK if up else DEGRADED if name in DEGRADES_ONLY else DOWN
            for name, up in reachable.items()}


def down_of(checks: Mapping[str, str]) -> list[str]:
    """The servers that are down (the stack is unhealthy while any is)."""
    return [name for name, state in checks.items() if state == DOWN]


def overall(checks: Mapping[str, str]) -> str:
    """`ok`, `degraded` (something the stack works without is down) or `unhealthy`."""
    if down_of(checks):
        return "unhealthy"
    return DEGRADED if any(state == DEGRADED for state in checks.values()) else OK
