"""The shard sink service lands postings and account events in the shard of each account."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgspec
import pytest

from sinks.config import SinkConfig
from state import ledger_accounts as la
from state.epoch import ensure_epoch, read_epoch
from state.ids import account_id_for
from state.messages import DeadLetter, OrderState
from state.shard_reader import ShardReader
from state.shard_store import landed_epochs, landed_offsets, ledger_balances, migrate, reconcile
from tests.integration.sinks.helpers import count, produce, read_topic, running_sink, wait_for
from tests.integration.sinks.ledger_builders import at, deposit, fill, order_event

pytestmark = pytest.mark.integration


def _config(services, prefix: str, dsns: tuple[str, ...], group: str = "shard-sink"
            ) -> SinkConfig:
    return SinkConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=prefix,
                      shard_dsns=dsns, partitions_per_shard=services.partitions_per_shard,
                      consumer_group=prefix + group, commit_interval_s=0.2)


def _story(account_id: str) -> list:
    return [deposit(account_id, "10000.00", "d1", at(0)),
            order_event(account_id, "o1", 0, OrderState.PENDING, when=at(1)),
            order_event(account_id, "o1", 1, OrderState.FILLED, filled="10", when=at(2)),
            fill(account_id, "ord_1", f"{account_id}-x1", "buy", "AAPL", "10", "200.00", at(2))]


def _tables(dsn: str) -> tuple[int, int, int, int]:
    return tuple(count(dsn, f"SELECT count(*) FROM {table}") for table in  # type: ignore[return-value]
                 ("ledger_transactions", "ledger_entries", "order_events", "orders"))


def test_sink_lands_each_account_in_its_shard_and_replay_changes_nothing(
        services, topics, fresh_databases) -> None:
    shards = services.shards
    accounts = [account_id_for(f"user{s}", s, shards, services.partitions_per_shard)
                for s in range(shards)]
    for dsn in fresh_databases:
        migrate(dsn)
    malformed = [("ledger.postings", accounts[0].encode(), b'{"type":"ledger_transaction"}'),
                 ("orders.events", accounts[1].encode(), b"not json")]
    produce(services.bootstrap_servers, topics,
            [m for account in accounts for m in _story(account)], extra=malformed)

    config = _config(services, topics, fresh_databases)
    with running_sink(config):
        wait_for(lambda: all(_tables(dsn) == (2, 6, 2, 1) for dsn in fresh_databases), 45,
                 "the rows of every shard")
    epoch = read_epoch(services.bootstrap_servers, topics)
    for dsn in fresh_databases:  # the offsets say which broker log they count in
        assert {landed.epoch for landed in landed_offsets(dsn).values()} == {epoch}
        assert set(landed_epochs(dsn)) == {epoch}

    for shard, (dsn, account) in enumerate(zip(fresh_databases, accounts, strict=True)):
        balances = ledger_balances(dsn)
        assert balances[(la.user(account, la.CASH), "USD")] == Decimal("8000.00")
        assert balances[(la.user(account, la.SHARES_UNSETTLED), "AAPL")] == 10
        other = accounts[1 - shard]
        assert count(dsn, "SELECT count(*) FROM ledger_transactions WHERE account_id = %s",
                     (other,)) == 0
        assert count(dsn, "SELECT count(*) FROM positions WHERE account_id = %s "
                     "AND quantity = 10 AND cost_basis = 2000", (account,)) == 1
        assert reconcile(dsn) == []

    letters = [msgspec.json.decode(raw, type=DeadLetter) for raw in
               read_topic(services.bootstrap_servers, topics + "dlq.ledger.postings", 1)
               + read_topic(services.bootstrap_servers, topics + "dlq.orders.events", 1)]
    assert sorted(letter.source_topic for letter in letters) == [
        topics + "ledger.postings", topics + "orders.events"]

    # Replaying both topics from offset 0 (a new consumer group) changes nothing.
    before = [(_tables(dsn), ledger_balances(dsn)) for dsn in fresh_databases]
    with running_sink(_config(services, topics, fresh_databases, group="replay")):
        wait_for(lambda: all(count(dsn, "SELECT count(*) FROM sink_offsets WHERE updated_at > "
                                        "(SELECT max(recorded_at) FROM order_events)") >= 2
                             for dsn in fresh_databases), 45, "the replay to land")
    assert [(_tables(dsn), ledger_balances(dsn)) for dsn in fresh_databases] == before


def test_reader_creates_accounts_and_reads_the_portfolio(services, topics, fresh_databases
                                                         ) -> None:
    for dsn in fresh_databases:
        migrate(dsn)
    reader = ShardReader(fresh_databases, services.partitions_per_shard)
    account_id, shard = reader.router.new_account_id("alice-1")

    async def scenario() -> tuple:
        await reader.open()
        try:
            created = await reader.create_account("alice", account_id, shard)
            again = await reader.create_account("alice", account_id, shard)
            mine = await reader.accounts_of_user("alice")
            empty = await reader.portfolio(account_id)
            produce(services.bootstrap_servers, topics, _story(account_id))
            with running_sink(_config(services, topics, fresh_databases)):
                for _ in range(150):
                    if (await reader.order(account_id, _story(account_id)[2].order_id) or
                            {}).get("state") == "filled" and \
                            (await reader.portfolio(account_id))["positions"]:
                        break
                    await asyncio.sleep(0.2)
            return (created, again, mine, empty, await reader.portfolio(account_id),
                    await reader.order(account_id, _story(account_id)[2].order_id),
                    await reader.activities(account_id),
                    await reader.activities(account_id, as_of=at(1)),
                    await reader.account(account_id), await reader.account("acc_unknown"))
        finally:
            await reader.close()

    created, again, mine, empty, folio, order, entries, early, account, unknown = \
        asyncio.run(scenario())
    assert created["account_id"] == account_id and created["shard"] == shard
    assert again == created and account == created and unknown is None
    assert [a["account_id"] for a in mine] == [account_id]
    assert empty["cash"] == 0 and empty["positions"] == [] and empty["as_of"] is None
    assert folio["cash"] == Decimal("8000.00") and folio["buying_power"] == Decimal("8000.00")
    assert folio["as_of"] == at(2) and folio["ledger_seq"] is not None
    assert folio["positions"] == [{
        "symbol": "AAPL", "quantity": Decimal(10), "average_cost": Decimal("200.000000"),
        "cost_basis": Decimal("2000.00"), "quantity_settled": Decimal(0),
        "quantity_unsettled": Decimal(10), "quantity_held": Decimal(0)}]
    assert empty["deposits"] == []
    assert folio["deposits"] == [
        {"kind": "deposit", "occurred_at": at(0), "amount": Decimal("10000.00")}]
    assert order["state"] == "filled" and [e["seq"] for e in order["events"]] == [0, 1]
    assert [(e["bucket"], e["amount"], e["balance_after"]) for e in entries] == [
        ("cash", Decimal("10000.00"), Decimal("10000.00")),
        ("cash", Decimal("-2000.00"), Decimal("8000.00")),
        ("shares_unsettled", Decimal(10), Decimal(10))]
    assert [e["bucket"] for e in early] == ["cash"]


def test_a_record_the_database_refuses_goes_to_the_dead_letters_alone(
        services, topics, fresh_databases) -> None:
    account = account_id_for("poison", 0, services.shards, services.partitions_per_shard)
    for dsn in fresh_databases:
        migrate(dsn)
    poison = msgspec.structs.replace(deposit(account, "5.00", "p"), kind="dep\x00osit")
    produce(services.bootstrap_servers, topics,
            [deposit(account, "1.00", "a"), poison, deposit(account, "2.00", "b")])
    with running_sink(_config(services, topics, fresh_databases)):
        wait_for(lambda: count(fresh_databases[0],
                               "SELECT count(*) FROM ledger_transactions") == 2, 45,
                 "the two good postings")
        letters = read_topic(services.bootstrap_servers, topics + "dlq.ledger.postings", 1)
    letter = msgspec.json.decode(letters[0], type=DeadLetter)
    assert letter.error.startswith("refused by shard 0") and letter.key == account
    assert ledger_balances(fresh_databases[0])[(la.user(account, la.CASH), "USD")] == 3


def test_sink_waits_for_the_broker_epoch_then_records_it(services, topic_prefix,
                                                         fresh_databases, tmp_path) -> None:
    from compose.kafka import create_topics
    from state.topics import topic_specs

    # topics made without an epoch record: not prepared the way `brokerage up` prepares them
    create_topics(services.bootstrap_servers,
                  topic_specs(topic_prefix, services.account_partitions, 2))
    account = account_id_for("epoch", 0, services.shards, services.partitions_per_shard)
    produce(services.bootstrap_servers, topic_prefix, [deposit(account, "4.00", "e")])
    for dsn in fresh_databases:
        migrate(dsn)
    log_path = tmp_path / "sink.log"
    with running_sink(_config(services, topic_prefix, fresh_databases), log_path) as sink:
        wait_for(lambda: "has no epoch record" in log_path.read_text(), 30,
                 "the sink to say what it waits for")
        assert sink.poll() is None  # waiting, not crashing
        assert count(fresh_databases[0], "SELECT count(*) FROM ledger_transactions") == 0
        epoch = ensure_epoch(services.bootstrap_servers, topic_prefix)
        wait_for(lambda: count(fresh_databases[0], "SELECT count(*) FROM sink_offsets "
                               "WHERE epoch = %s", (epoch,)) == 1, 45,
                 "the deposit to land under the broker's epoch")
