"""Durable intake on the embedded broker and shards: what the HTTP gateway answers 202 is in
its shard's journal; after a broker reset (simulated: a fresh set of topics under a new prefix,
with a new epoch record) the replayer re-publishes it and the real account topology decides it,
readable over HTTP; a decided entry is not re-published after the next reset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateways.http.app import create_app
from gateways.http.config import HttpConfig
from gateways.http.journal import REPLAYER
from sinks.config import SinkConfig
from state import topics as t
from state.epoch import read_epoch
from state.ids import order_id_for
from state.intake_journal import undecided_of_account
from state.router import ShardRouter
from state.shard_store import migrate
from state.topics import Topic
from tests.integration.gateways.test_http_support import gateway_config
from tests.integration.sinks.helpers import running_sink
from tests.integration.topologies.test_accounts_topology import Topology
from tests.openapi_answers import CheckedClient
from topologies.config import AccountTopologyConfig, KafkaSettings

pytestmark = pytest.mark.integration

DEPOSIT = "1000.00"
ORDER = {"symbol": "AAPL", "side": "buy", "order_type": "limit", "quantity": "10",
         "limit_price": "20.00"}
WAIT_S = 90.0


@pytest.fixture
def databases(fresh_databases: tuple[str, ...]) -> tuple[str, ...]:
    for dsn in fresh_databases:
        migrate(dsn)
    return fresh_databases


def new_topics(services: Any, prefix: str) -> str:
    """A broker that forgot everything, as the stack sees one: empty topics, a new epoch."""
    from compose.kafka import prepare_topics
    from state.topics import topic_specs

    prepare_topics(services.bootstrap_servers, prefix,
                   topic_specs(prefix, services.account_partitions, 2))
    return prefix


def serve(config: HttpConfig, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with CheckedClient(TestServer(create_app(config))) as client:
            return await scenario(client)

    return asyncio.run(main())


async def login(client: TestClient, user: str) -> dict[str, str]:
    response = await client.post("/v1/auth/token", json={"user_id": user})
    assert response.status == 201
    return {"Authorization": f"Bearer {(await response.json())['token']}"}


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def journal_rows(dsn: str, account_id: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT idempotency_key, command_type, order_id, payload, published_epoch, "
            "publish_count, decided_at FROM intake_journal WHERE account_id = %s",
            (account_id,))
        names = [c.name for c in cur.description or ()]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def shard_of(services: Any, dsns: tuple[str, ...], account_id: str) -> str:
    return dsns[ShardRouter(len(dsns), services.partitions_per_shard).shard_of_account(
        account_id)]


def test_acknowledged_commands_survive_a_broker_reset(
        services: Any, topics: str, databases: tuple[str, ...], tmp_path: Path) -> None:
    # 1. The broker takes the commands, nobody decides them: 202, and journaled.
    quiet = {"reply_wait_ms": 300, "journal_replay_after_s": 600.0,
             "journal_replay_interval_s": 0.2}

    async def acknowledged(client: TestClient) -> tuple[str, dict[str, str]]:
        alice = await login(client, "alice")
        created = await client.post("/v1/accounts", json={}, headers=alice)
        assert created.status == 201
        account_id = str((await created.json())["account_id"])
        deposit = await client.post(f"/v1/accounts/{account_id}/deposits",
                                    json={"amount": DEPOSIT},
                                    headers={**alice, "Idempotency-Key": "dep-1"})
        assert deposit.status == 202, await deposit.text()
        placed = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                   headers={**alice, "Idempotency-Key": "ord-1"})
        assert placed.status == 202, await placed.text()
        return account_id, alice

    account_id, alice = serve(gateway_config(services, topics, databases, **quiet),
                              acknowledged)
    order_id = order_id_for(account_id, "ord-1")
    dsn = shard_of(services, databases, account_id)
    first_epoch = read_epoch(services.bootstrap_servers, topics)
    rows = journal_rows(dsn, account_id)
    assert rows.keys() == {"dep-1", "ord-1"}
    placement = t.decode(Topic.ORDERS_COMMANDS, bytes(rows["ord-1"]["payload"]))
    assert (placement.idempotency_key, placement.quantity) == ("ord-1", 10)
    assert rows["ord-1"]["order_id"] == order_id and rows["dep-1"]["order_id"] is None
    assert rows["dep-1"]["command_type"] == "deposit"
    assert all(r["published_epoch"] == first_epoch and r["publish_count"] == 0
               for r in rows.values())

    # 2. The broker forgets; the stack comes back on new topics. The replayer re-publishes at
    # once (the epoch changed; the entries are far from old enough for the time rule) and the
    # account topology decides both, in journal order.
    reset = new_topics(services, topics + "r1.")
    second_epoch = read_epoch(services.bootstrap_servers, reset)
    assert second_epoch not in (None, first_epoch)
    topology = Topology(AccountTopologyConfig(
        kafka=KafkaSettings(bootstrap_servers=services.bootstrap_servers, topic_prefix=reset),
        state_dir=str(tmp_path / "accounts"), account_partitions=services.account_partitions,
        shard_dsns=databases, partitions_per_shard=services.partitions_per_shard,
        consumer_group=reset + "accounts"))
    sink = SinkConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=reset,
                      shard_dsns=databases, partitions_per_shard=services.partitions_per_shard,
                      consumer_group=reset + "sink")
    try:
        with running_sink(sink):
            async def decided(client: TestClient) -> dict[str, Any]:
                async def readable() -> bool:
                    # Readable at once from the journal (state pending); decided once the
                    # replayed command's events land. They may land in two sink batches, so
                    # `validated` can be read between them: wait for the decided state.
                    got = await client.get(f"/v1/orders/{order_id}?account_id={account_id}",
                                           headers=alice)
                    return got.status == 200 and (await got.json())["state"] in (
                        "funds_held", "routed")

                await wait_until(readable, "the replayed order to be decided")
                order = await (await client.get(
                    f"/v1/orders/{order_id}?account_id={account_id}", headers=alice)).json()

                async def landed() -> bool:
                    return not undecided_of_account_now(dsn, account_id)

                await wait_until(landed, "the deposit's outcome to land")
                portfolio = await (await client.get(
                    f"/v1/portfolio?account_id={account_id}", headers=alice)).json()
                stats = client.app[REPLAYER].stats if client.app else None
                assert stats is not None and stats.epoch == second_epoch
                return {"order": order, "portfolio": portfolio}

            seen = serve(gateway_config(services, reset, databases, **quiet), decided)
    finally:
        topology.stop()
    assert seen["order"]["state"] in ("funds_held", "routed"), seen["order"]
    assert Decimal(str(seen["portfolio"]["cash"])) == 800, seen["portfolio"]
    rows = journal_rows(dsn, account_id)
    assert all(r["published_epoch"] == second_epoch and r["publish_count"] == 1
               for r in rows.values()), rows

    # 3. Another reset: the shard shows both decided, so nothing is re-published; the
    # replayer notes them decided instead.
    again = new_topics(services, topics + "r2.")

    async def passes(client: TestClient) -> Any:
        assert client.app is not None
        stats = client.app[REPLAYER].stats

        async def two_passes() -> bool:
            return stats.passes >= 2

        await wait_until(two_passes, "two replay passes")
        return stats

    stats = serve(gateway_config(services, again, databases, **quiet), passes)
    assert stats.republished == 0 and stats.decided == 2, stats
    rows = journal_rows(dsn, account_id)
    assert all(r["publish_count"] == 1 and r["decided_at"] is not None
               for r in rows.values()), rows


def undecided_of_account_now(dsn: str, account_id: str) -> list[tuple[str, str, Any]]:
    with psycopg.connect(dsn) as conn:
        return undecided_of_account(conn, account_id)

