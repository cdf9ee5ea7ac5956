"""The account topology on the embedded broker: fills booked as they come, duplicates booked
once, malformed input dead-lettered, replay reproduces ids and balances, kill -9 recovers."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from compose.topics_cli import replay
from state import ledger_accounts as la
from state.domain.ledger import balances
from state.ids import cl_ord_id_for, order_id_for
from state.messages import (
    Deposit,
    ExecType,
    ExecutionReport,
    LedgerTransaction,
    OrderEvent,
    OrderType,
    PlaceOrder,
    Side,
)
from state.topics import Topic, decode, encode
from tests.integration.kafka_io import produce, produce_raw, read_topic
from topologies.config import AccountTopologyConfig, KafkaSettings

pytestmark = pytest.mark.integration

ACCOUNT = "acc_test1"
T0 = dt.datetime(2026, 11, 27, 15, 0, tzinfo=dt.UTC)


def _config(services, prefix: str, state_dir: Path, group: str) -> AccountTopologyConfig:
    return AccountTopologyConfig(
        kafka=KafkaSettings(bootstrap_servers=services.bootstrap_servers, topic_prefix=prefix),
        state_dir=str(state_dir), account_partitions=services.account_partitions,
        consumer_group=group)


def _run(config: AccountTopologyConfig) -> None:
    from topologies.accounts import run

    run(config)


class Topology:
    """The topology in a process of its own, as in production."""

    def __init__(self, config: AccountTopologyConfig) -> None:
        self.config = config
        self.process = multiprocessing.get_context("spawn").Process(target=_run, args=(config,))
        self.process.start()

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(20)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)


@pytest.fixture
def topology(services, topics, tmp_path) -> Iterator[Topology]:
    running = Topology(_config(services, topics, tmp_path / "state", topics + "accounts"))
    yield running
    running.stop()


def _report(n: int, exec_type: ExecType, last_qty: str, last_px: str, cum: str, leaves: str,
            order_id: str, poss_dup: bool = False) -> ExecutionReport:
    return ExecutionReport(
        account_id=ACCOUNT, exec_id=f"sim-{order_id}-{n}", order_id=order_id,
        cl_ord_id=cl_ord_id_for(order_id), exec_type=exec_type, symbol="AAPL", side=Side.BUY,
        last_qty=Decimal(last_qty), last_px=Decimal(last_px), cum_qty=Decimal(cum),
        leaves_qty=Decimal(leaves), transact_time=T0, market_maker="sim", poss_dup=poss_dup)


def _postings(services, prefix: str, **kwargs) -> dict[str, LedgerTransaction]:
    records = read_topic(services.bootstrap_servers, prefix + Topic.LEDGER_POSTINGS, **kwargs)
    unique: dict[str, LedgerTransaction] = {}
    for record in records:
        txn = decode(Topic.LEDGER_POSTINGS, record.value)
        assert unique.setdefault(txn.txn_id, txn) == txn, "one txn_id, two contents"
    return unique


def _order_states(services, prefix: str, order_id: str, **kwargs) -> list[str]:
    records = read_topic(services.bootstrap_servers, prefix + Topic.ORDERS_EVENTS, **kwargs)
    events = [decode(Topic.ORDERS_EVENTS, r.value) for r in records]
    return [e.state for e in events if isinstance(e, OrderEvent) and e.order_id == order_id]


def _place_and_fill(services, prefix: str) -> str:
    """Deposit, a market buy of 1,000 AAPL, and its fills as 400, 300, 300 (UC3)."""
    commands = prefix + Topic.ORDERS_COMMANDS
    produce(services.bootstrap_servers, commands, [
        Deposit(account_id=ACCOUNT, idempotency_key="dep-1", amount=Decimal("200000.00"),
                submitted_at=T0),
        PlaceOrder(account_id=ACCOUNT, idempotency_key="buy-1", symbol="AAPL", side=Side.BUY,
                   order_type=OrderType.MARKET, quantity=Decimal("1000"), submitted_at=T0,
                   reference_price=Decimal("100.00"),
                   reference_time=dt.datetime.now(dt.UTC)),
    ])
    order_id = order_id_for(ACCOUNT, "buy-1")
    read_topic(services.bootstrap_servers, prefix + Topic.ORDERS_ROUTE,
               until=lambda records: len(records) >= 1)
    produce(services.bootstrap_servers, prefix + Topic.EXECUTIONS, [
        _report(0, ExecType.NEW, "0", "0", "0", "1000", order_id),
        _report(1, ExecType.TRADE, "400", "100.01", "400", "600", order_id),
        _report(2, ExecType.TRADE, "300", "100.02", "700", "300", order_id),
        _report(3, ExecType.TRADE, "300", "100.00", "1000", "0", order_id),
    ])
    _order_states(services, prefix, order_id, until=lambda rs: any(
        decode(Topic.ORDERS_EVENTS, r.value).__class__ is OrderEvent
        and decode(Topic.ORDERS_EVENTS, r.value).state == "filled" for r in rs))
    return order_id


COST = Decimal("400") * Decimal("100.01") + Decimal("300") * Decimal("100.02") + \
    Decimal("300") * Decimal("100.00")


def _check_balances(postings: dict[str, LedgerTransaction]) -> None:
    totals = balances(postings.values())
    assert totals.get((la.user(ACCOUNT, la.CASH), la.USD)) == Decimal("200000.00") - COST
    assert totals.get((la.user(ACCOUNT, la.CASH_HELD), la.USD), Decimal(0)) == 0
    shares = sum((v for (acct, asset), v in totals.items()
                  if asset == "AAPL" and acct.startswith(f"user:{ACCOUNT}:")), Decimal(0))
    assert shares == Decimal(1000)
    per_asset: dict[str, Decimal] = {}
    for (_, asset), value in totals.items():
        per_asset[asset] = per_asset.get(asset, Decimal(0)) + value
    assert all(total == 0 for total in per_asset.values()), per_asset


def test_partial_fills_are_booked_as_they_come_and_duplicates_once(services, topics,
                                                                   topology) -> None:
    order_id = _place_and_fill(services, topics)
    postings = _postings(services, topics, idle_s=2)
    fills = [p for p in postings.values() if p.kind == "fill"]
    assert len(fills) == 3
    _check_balances(postings)
    states = _order_states(services, topics, order_id, idle_s=1)
    assert states[:3] == ["validated", "funds_held", "routed"]
    assert states[-1] == "filled" and states.count("partially_filled") == 2

    # The market maker resends the first fill (PossDup) and a duplicate of the last.
    produce(services.bootstrap_servers, topics + Topic.EXECUTIONS, [
        _report(1, ExecType.TRADE, "400", "100.01", "400", "600", order_id, poss_dup=True),
        _report(3, ExecType.TRADE, "300", "100.00", "1000", "0", order_id),
    ])
    # a marker command after the duplicates: once it is booked, the duplicates were seen
    produce(services.bootstrap_servers, topics + Topic.ORDERS_COMMANDS, [
        Deposit(account_id=ACCOUNT, idempotency_key="dep-marker", amount=Decimal("1.00"),
                submitted_at=T0)])
    after = _postings(services, topics, until=lambda rs: any(
        decode(Topic.LEDGER_POSTINGS, r.value).cause_id.endswith("dep-marker") or
        "dep-marker" in decode(Topic.LEDGER_POSTINGS, r.value).cause_id for r in rs))
    assert len([p for p in after.values() if p.kind == "fill"]) == 3


def test_malformed_commands_go_to_the_dead_letter_topic(services, topics, topology) -> None:
    commands = topics + Topic.ORDERS_COMMANDS
    produce_raw(services.bootstrap_servers, commands, ACCOUNT, b"{not json")
    produce_raw(services.bootstrap_servers, commands, ACCOUNT,
                b'{"type":"teleport","v":1,"account_id":"acc_test1"}')
    produce(services.bootstrap_servers, commands, [
        Deposit(account_id=ACCOUNT, idempotency_key="dep-after", amount=Decimal("5.00"),
                submitted_at=T0)])
    letters = read_topic(services.bootstrap_servers, topics + "dlq." + Topic.ORDERS_COMMANDS,
                         until=lambda rs: len(rs) >= 2)
    first = decode_letter(letters[0].value)
    assert first["source_topic"] == commands and first["error"]
    assert {decode_letter(r.value)["offset"] for r in letters} == {0, 1}
    postings = _postings(services, topics, until=lambda rs: len(rs) >= 1)
    assert any(p.kind == "deposit" for p in postings.values())


def test_a_record_off_its_accounts_partition_is_dead_lettered_never_decided(
        services, topics, topology) -> None:
    """A producer that keeps librdkafka's default partitioner (crc32) puts an account's records
    on a partition of another account: decided there, they would meet a second, empty state
    of the same account. They go to the DLQ with the partition named."""
    from confluent_kafka import Producer

    from state.router import account_partition

    commands = topics + Topic.ORDERS_COMMANDS
    partitions = services.account_partitions
    home = account_partition(ACCOUNT, partitions)
    wrong = (home + 1) % partitions
    deposit = Deposit(account_id=ACCOUNT, idempotency_key="dep-wrong-partition",
                      amount=Decimal("1000.00"), submitted_at=T0)
    sender = Producer({"bootstrap.servers": services.bootstrap_servers})  # default partitioner
    sender.produce(commands, key=ACCOUNT.encode(), value=encode(deposit), partition=wrong)
    assert sender.flush(15) == 0
    produce(services.bootstrap_servers, commands, [
        Deposit(account_id=ACCOUNT, idempotency_key="dep-home", amount=Decimal("5.00"),
                submitted_at=T0)])
    letters = read_topic(services.bootstrap_servers, topics + "dlq." + Topic.ORDERS_COMMANDS,
                         until=lambda rs: len(rs) >= 1)
    letter = decode_letter(letters[0].value)
    assert letter["partition"] == wrong
    assert f"lives on partition {home} of {partitions}" in letter["error"]
    postings = _postings(services, topics, until=lambda rs: len(rs) >= 1)
    deposits = [p for p in postings.values() if p.kind == "deposit"]
    assert len(deposits) == 1, deposits
    assert {abs(e.amount) for e in deposits[0].entries} == {Decimal("5.00")}


def decode_letter(raw: bytes) -> dict:
    import json

    return json.loads(raw)


def test_replay_into_empty_state_reproduces_ids_and_balances(services, topics, topology,
                                                             tmp_path) -> None:
    _place_and_fill(services, topics)
    original = _postings(services, topics, idle_s=2)
    topology.stop()

    replayed_prefix = topics.replace(".", "r.", 1)
    from compose.kafka import create_topics
    from state.topics import topic_specs

    create_topics(services.bootstrap_servers,
                  topic_specs(replayed_prefix, services.account_partitions, 2))
    for topic in (Topic.ORDERS_COMMANDS, Topic.EXECUTIONS):
        replay(services.bootstrap_servers, topics + topic, replayed_prefix + topic,
               from_offset=0, from_time=None, report=lambda line: None)
    again = Topology(_config(services, replayed_prefix, tmp_path / "replay-state",
                             replayed_prefix + "accounts"))
    try:
        replayed = _postings(services, replayed_prefix,
                             until=lambda rs: len({r.value for r in rs}) >= len(original))
    finally:
        again.stop()
    assert set(replayed) == set(original)
    _check_balances(replayed)


def test_kill_9_then_restart_rebuilds_state_from_the_changelog(services, topics, topology,
                                                               tmp_path) -> None:
    _place_and_fill(services, topics)
    topology.kill()
    shutil.rmtree(tmp_path / "state", ignore_errors=True)  # force recovery from the changelog
    restarted = Topology(topology.config)
    try:
        # A second buy needs the recovered cash; a replayed first buy must not book again.
        produce(services.bootstrap_servers, topics + Topic.ORDERS_COMMANDS, [
            PlaceOrder(account_id=ACCOUNT, idempotency_key="buy-1", symbol="AAPL",
                       side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal("1000"),
                       submitted_at=T0, reference_price=Decimal("100.00"),
                       reference_time=dt.datetime.now(dt.UTC)),
            PlaceOrder(account_id=ACCOUNT, idempotency_key="buy-2", symbol="AAPL",
                       side=Side.BUY, order_type=OrderType.LIMIT, quantity=Decimal("10"),
                       limit_price=Decimal("99.00"), submitted_at=T0),
        ])
        second = order_id_for(ACCOUNT, "buy-2")
        states = _order_states(services, topics, second,
                               until=lambda rs: any(second.encode() in r.value
                                                    and b'"routed"' in r.value for r in rs))
        assert "rejected" not in states
        postings = _postings(services, topics, idle_s=2)
        holds = [p for p in postings.values() if p.order_id == second and p.kind == "hold"]
        assert len(holds) == 1
        assert len([p for p in postings.values() if p.kind == "fill"]) == 3
    finally:
        restarted.stop()


def test_state_cache_serves_an_account_only_while_the_store_holds_its_bytes() -> None:
    """The step skips decoding a stored account only when the store holds exactly the bytes
    that account was encoded to: after an aborted checkpoint or a rebalance the store holds
    other bytes and the account is decoded again."""
    from state.domain.account import AccountState, state_to_bytes
    from topologies.accounts import StateCache

    cache = StateCache(accounts_max=2)
    first, second = AccountState.empty("acc_a"), AccountState.empty("acc_b")
    raw = state_to_bytes(first)
    cache.put("acc_a", raw, first)
    assert cache.get("acc_a", bytes(raw)) is first  # equal bytes read back from the store
    assert cache.get("acc_a", raw + b"\x00") is None  # the store moved on (or back)
    cache.put("acc_b", state_to_bytes(second), second)
    cache.put("acc_c", raw, first)  # over the bound: the least recently used goes
    assert cache.get("acc_a", raw) is None and cache.get("acc_c", raw) is first


def _first_event(services, prefix: str, order_id: str) -> OrderEvent:
    """The order's first decisive event: rejected, or held/routed."""
    records = read_topic(services.bootstrap_servers, prefix + Topic.ORDERS_EVENTS,
                         until=lambda rs: any(order_id.encode() in r.value and (
                             b'"rejected"' in r.value or b'"funds_held"' in r.value)
                             for r in rs))
    events = [decode(Topic.ORDERS_EVENTS, r.value) for r in records]
    return next(e for e in events if isinstance(e, OrderEvent) and e.order_id == order_id
                and e.state in ("rejected", "funds_held"))


def test_halted_and_restricted_symbols_follow_market_status(services, topics,
                                                            topology) -> None:
    """`brokerage halt TSLA` reaches the topology: TSLA orders are refused until it resumes;
    a restricted symbol takes closing trades only (the GME case)."""
    from compose.topics_cli import publish_market_status

    commands = topics + Topic.ORDERS_COMMANDS
    produce(services.bootstrap_servers, commands, [
        Deposit(account_id=ACCOUNT, idempotency_key="dep-s", amount=Decimal("10000.00"),
                submitted_at=T0)])
    publish_market_status(services.bootstrap_servers, topics, "TSLA", "halted", "news")
    publish_market_status(services.bootstrap_servers, topics, "GME", "restricted", None)

    def limit_buy(symbol: str, key: str) -> OrderEvent:
        produce(services.bootstrap_servers, commands, [PlaceOrder(
            account_id=ACCOUNT, idempotency_key=key, symbol=symbol, side=Side.BUY,
            order_type=OrderType.LIMIT, quantity=Decimal(1), limit_price=Decimal("10.00"),
            submitted_at=dt.datetime.now(dt.UTC))])
        return _first_event(services, topics, order_id_for(ACCOUNT, key))

    def eventually_reason(symbol: str, reason: str | None, stem: str) -> None:
        # The status view follows its topic in the background: retry with fresh keys.
        for attempt in range(20):
            event = limit_buy(symbol, f"{stem}-{attempt}")
            if event.reason == reason or (reason is None and event.state == "funds_held"):
                return
        raise AssertionError(f"{symbol}: last event {event}")

    eventually_reason("TSLA", "symbol_halted", "tsla-halted")
    eventually_reason("GME", "symbol_restricted", "gme-restricted")
    assert limit_buy("AAPL", "aapl-open").state == "funds_held"
    publish_market_status(services.bootstrap_servers, topics, "TSLA", "open", None)
    eventually_reason("TSLA", None, "tsla-open")


def test_a_new_account_whose_shard_is_down_is_refused_and_the_rest_goes_on(
        services, topics, tmp_path) -> None:
    """With no stream state the account's shard decides; while it cannot be read, commands
    are refused with a stable reason and nothing is stored; the topology keeps serving."""
    from compose.embedded import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    config = msgspec.structs.replace(
        _config(services, topics, tmp_path / "state-down", topics + "accounts-down"),
        shard_dsns=(dead, dead), partitions_per_shard=2)
    running = Topology(config)
    try:
        produce(services.bootstrap_servers, topics + Topic.ORDERS_COMMANDS, [
            Deposit(account_id=f"acc_down{i}", idempotency_key="dep", amount=Decimal("1.00"),
                    submitted_at=T0) for i in range(2)])
        records = read_topic(services.bootstrap_servers, topics + Topic.ORDERS_EVENTS,
                             until=lambda rs: len(rs) >= 2, timeout_s=60)
        events = [decode(Topic.ORDERS_EVENTS, r.value) for r in records]
        assert {e.reason for e in events} == {"account_unavailable"}, events
        assert running.process.is_alive()
        assert not read_topic(services.bootstrap_servers, topics + Topic.LEDGER_POSTINGS,
                              idle_s=1)
    finally:
        running.stop()


def test_an_account_never_opened_takes_no_money_until_it_is_opened(
        services, topics, tmp_path, fresh_databases) -> None:
    """A deposit for an account that was never opened is refused with a stable reason and
    nothing is stored; once the account is opened, the next one is booked."""
    import psycopg

    from state.ids import account_id_for
    from state.shard_store import migrate

    pps = services.partitions_per_shard
    for dsn in fresh_databases:
        migrate(dsn)
    account = account_id_for("never-opened", 1, services.shards, pps)
    config = msgspec.structs.replace(
        _config(services, topics, tmp_path / "state-open", topics + "accounts-open"),
        shard_dsns=fresh_databases, partitions_per_shard=pps)
    running = Topology(config)
    try:
        commands = topics + Topic.ORDERS_COMMANDS
        produce(services.bootstrap_servers, commands, [
            Deposit(account_id=account, idempotency_key="dep-early", amount=Decimal("9.00"),
                    submitted_at=T0)])
        records = read_topic(services.bootstrap_servers, topics + Topic.ORDERS_EVENTS,
                             until=lambda rs: len(rs) >= 1, timeout_s=60)
        refused = decode(Topic.ORDERS_EVENTS, records[0].value)
        assert refused.reason == "unknown_account", refused
        with psycopg.connect(fresh_databases[1], autocommit=True) as conn:
            conn.execute("INSERT INTO accounts (account_id, user_id, shard) VALUES (%s, %s, 1)",
                         (account, "user-1"))
        produce(services.bootstrap_servers, commands, [
            Deposit(account_id=account, idempotency_key="dep-opened", amount=Decimal("7.00"),
                    submitted_at=T0 + dt.timedelta(seconds=1))])
        postings = _postings(services, topics, until=lambda rs: len(rs) >= 1, timeout_s=60)
        assert [abs(e.amount) for p in postings.values() for e in p.entries] == [
            Decimal("7.00"), Decimal("7.00")]
    finally:
        running.stop()
