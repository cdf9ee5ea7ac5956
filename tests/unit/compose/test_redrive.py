"""`brokerage topics redrive` without a broker: where each unwrapped record goes, what is
skipped and why, and the closing lines."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from compose import redrive as r
from state import topics as t
from state.router import account_partition

NOW = dt.datetime(2026, 12, 3, 17, 0, tzinfo=dt.UTC)
COMMANDS, DLQ = "p.orders.commands", "p.dlq.orders.commands"
WRONG = "record on partition 0, but account 'a' lives on partition 1 of 4: partition by murmur2"


@dataclass
class Record:
    raw: bytes

    def partition(self) -> int:
        return 0

    def value(self) -> bytes:
        return self.raw


class Sender:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def produce(self, topic: str, **record: Any) -> None:
        self.sent.append({"topic": topic, **record})

    def poll(self, timeout: float) -> int:
        return 0


def _letter(key: str | None, error: str = WRONG, raw: bytes | None = b"{}") -> Record:
    return Record(t.encode(t.dead_letter(COMMANDS, 0, 9, key, raw, error, NOW)))


def _run(records: list[Record], reason: str | None = None, destination: str | None = None
         ) -> tuple[list[dict[str, Any]], r.Tally]:
    targets = r.Targets({COMMANDS: 4, DLQ: 1, "p.other": 2}, DLQ, destination)
    sender, tally = Sender(), r.Tally()
    for record in records:
        r._one(record, targets, reason, sender, tally)  # type: ignore[arg-type]
    return sender.sent, tally


def test_the_original_goes_to_its_accounts_partition() -> None:
    sent, tally = _run([_letter(f"acc_{i}") for i in range(8)])
    assert [s["partition"] for s in sent] == [account_partition(f"acc_{i}", 4) for i in range(8)]
    assert {(s["topic"], s["value"]) for s in sent} == {(COMMANDS, b"{}")}
    assert [s["key"] for s in sent] == [f"acc_{i}".encode() for i in range(8)]
    assert tally.reasons == {"wrong_partition": 8}
    sent, _ = _run([_letter("acc_1")], destination="p.other")
    assert (sent[0]["topic"], sent[0]["partition"]) == ("p.other", account_partition("acc_1", 2))


def test_what_cannot_be_re_driven_is_counted_by_reason_and_never_sent() -> None:
    records = [_letter("a"), _letter("a", error="JSON is malformed: x"), Record(b"junk"),
               _letter("a", raw=None), Record(t.encode(t.dead_letter(
                   "p.gone", 0, 1, "a", b"{}", WRONG, NOW)))]
    sent, tally = _run(records, reason="wrong_partition")
    assert len(sent) == 1
    assert tally.partitions[0].skipped == {"unasked:malformed_json": 1, "not_an_envelope": 1,
                                           "missing_payload": 1, "unknown_topic": 1}
    _, into_itself = _run([_letter("a")], destination=DLQ)
    assert into_itself.partitions[0].skipped == {"into_itself": 1}


def test_a_dry_run_names_reasons_and_targets_and_ends_with_partitions_and_a_total() -> None:
    targets = r.Targets({COMMANDS: 4}, DLQ, None)
    tally = r.Tally(partitions={0: r.PartitionTally(), 1: r.PartitionTally()})
    for record in [_letter("acc_1"), Record(b"junk")]:
        r._one(record, targets, None, None, tally)
    where = account_partition("acc_1", 4)
    assert r.summary(DLQ, tally, dry_run=True) == [
        "would re-drive by reason: wrong_partition 1",
        f"would re-drive by target partition: {COMMANDS}[{where}] 1",
        f"{DLQ}[0]: read 2, would re-drive 1, skipped 1 (not_an_envelope 1)",
        f"{DLQ}[1]: read 0, would re-drive 0, skipped 0",
        "total: read 2, would re-drive 1, skipped 1 (not_an_envelope 1)",
    ]
