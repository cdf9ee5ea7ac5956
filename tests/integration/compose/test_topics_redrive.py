"""`brokerage topics redrive` on the embedded broker with the account topology running: a
command dead-lettered for its partition is decided after a re-drive, once however often it is
re-driven; --dry-run produces nothing and --reason leaves the other dead letters where they
are."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from compose.redrive import redrive
from compose.topics_cli import Bounds
from state.messages import CommandAccepted, Deposit
from state.router import account_partition
from state.topics import Topic, decode, encode
from tests.integration.kafka_io import produce, produce_raw, read_topic
from tests.integration.topologies.test_accounts_topology import Topology, _config

pytestmark = pytest.mark.integration

ACCOUNT = "acc_redrive1"
T0 = dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.UTC)
DEPOSIT = Deposit(account_id=ACCOUNT, idempotency_key="dep-redriven", amount=Decimal("1000.00"),
                  submitted_at=T0)


@pytest.fixture
def topology(services, topics, tmp_path) -> Iterator[Topology]:
    running = Topology(_config(services, topics, tmp_path / "state", topics + "accounts"))
    yield running
    running.stop()


def _redrive(services, dlq: str, **options) -> list[str]:
    lines: list[str] = []
    assert redrive(services.bootstrap_servers, dlq, destination=None, bounds=Bounds(),
                   report=lines.append, reason=options.get("reason"),
                   dry_run=options.get("dry_run", False)) == 0
    return lines


def _dead_letter_three(services, topics: str, home: int) -> None:
    """A deposit on another partition than its account's and a command that is not JSON,
    both dead-lettered by the topology, and a record in the DLQ that is no envelope."""
    wrong = _wrong(services, home)
    sender = Producer({"bootstrap.servers": services.bootstrap_servers})  # its own partition
    sender.produce(topics + Topic.ORDERS_COMMANDS, key=ACCOUNT.encode(), value=encode(DEPOSIT),
                   partition=wrong)
    assert sender.flush(15) == 0
    produce_raw(services.bootstrap_servers, topics + Topic.ORDERS_COMMANDS, ACCOUNT, b"{no json")
    produce_raw(services.bootstrap_servers, topics + "dlq." + Topic.ORDERS_COMMANDS, ACCOUNT,
                b"not an envelope")
    read_topic(services.bootstrap_servers, topics + "dlq." + Topic.ORDERS_COMMANDS,
               until=lambda records: len(records) >= 3)


def _wrong(services, home: int) -> int:
    return (home + 1) % services.account_partitions


def _accepted(services, topics: str, key: str, until_key: str) -> int:
    """How many acceptances of `key` orders.events holds once `until_key` was accepted."""
    def accepted(record) -> CommandAccepted | None:
        event = decode(Topic.ORDERS_EVENTS, record.value)
        return event if isinstance(event, CommandAccepted) else None

    records = read_topic(services.bootstrap_servers, topics + Topic.ORDERS_EVENTS, until=lambda rs:
                         any((a := accepted(r)) and a.idempotency_key == until_key for r in rs))
    return sum(1 for r in records if (a := accepted(r)) and a.idempotency_key == key)


def test_a_dead_lettered_command_is_decided_once_after_redrives(services, topics,
                                                                topology) -> None:
    commands, dlq = topics + Topic.ORDERS_COMMANDS, topics + "dlq." + Topic.ORDERS_COMMANDS
    home = account_partition(ACCOUNT, services.account_partitions)
    _dead_letter_three(services, topics, home)

    dry = _redrive(services, dlq, dry_run=True)
    assert dry[0] == "would re-drive by reason: malformed_json 1, wrong_partition 1"
    assert dry[1] == f"would re-drive by target partition: {commands}[{home}] 2"
    assert dry[-2:] == [f"{dlq}[0]: read 3, would re-drive 2, skipped 1 (not_an_envelope 1)",
                        "total: read 3, would re-drive 2, skipped 1 (not_an_envelope 1)"]

    lines = _redrive(services, dlq, reason="wrong_partition")
    assert lines[-1] == ("total: read 3, re-driven 1, skipped 2 (not_an_envelope 1, "
                         "unasked:malformed_json 1)")
    sent = read_topic(services.bootstrap_servers, commands, until=lambda rs: len(rs) >= 3)
    assert sorted((r.partition, r.key) for r in sent if r.value == encode(DEPOSIT)) == sorted(
        [(_wrong(services, home), ACCOUNT), (home, ACCOUNT)])
    assert _accepted(services, topics, "dep-redriven", until_key="dep-redriven") == 1

    assert _redrive(services, dlq, reason="wrong_partition")[-1] == lines[-1]
    produce(services.bootstrap_servers, commands, [Deposit(
        account_id=ACCOUNT, idempotency_key="dep-after", amount=Decimal("1.00"), submitted_at=T0)])
    assert _accepted(services, topics, "dep-redriven", until_key="dep-after") == 1
    # the two records sent, the deposit re-driven twice, the last one: the dry run sent none
    assert len(read_topic(services.bootstrap_servers, commands)) == 5
