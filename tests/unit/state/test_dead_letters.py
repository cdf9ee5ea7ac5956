"""Dead letters read back: each writer's envelope unwraps into the original record, and each
writer's error is named by a stable reason (so `brokerage topics redrive --reason` can filter)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from state import dead_letters as d
from state import topics as t
from state.domain.risk import RiskLimits
from state.exceptions import DecodeError, NotRedrivable
from state.messages import Deposit, LedgerEntry, LedgerTransaction
from state.router import ShardRouter, account_partition
from state.shard_store import Refused, decode_for_shard

NOW = dt.datetime(2026, 12, 3, 17, 0, tzinfo=dt.UTC)
ACCOUNT = "acc_redrive"
DEPOSIT = t.encode(Deposit(account_id=ACCOUNT, idempotency_key="dep-1",
                           amount=Decimal("10.00"), submitted_at=NOW))
PARTITIONS = 4


def _letter(raw: bytes | None, error: str = "boom", key: str | None = ACCOUNT) -> bytes:
    return t.encode(t.dead_letter("p.orders.commands", 3, 17, key, raw, error, NOW))


def test_an_envelope_unwraps_into_the_original_record() -> None:
    record = d.unwrap(_letter(DEPOSIT, "key 'x' is not the payload's account_id"))
    assert (record.topic, record.key, record.value) == ("p.orders.commands", ACCOUNT, DEPOSIT)
    assert (record.partition, record.offset, record.reason) == (3, 17, d.KEY_MISMATCH)
    assert d.unwrap(_letter(DEPOSIT, key=None)).key is None


@pytest.mark.parametrize("raw", [None, b"", b"{not json", DEPOSIT,
                                 b'{"type":"dead_letter","v":1,"source_topic":"x"}'])
def test_what_is_not_an_envelope_is_refused_with_its_reason(raw: bytes | None) -> None:
    with pytest.raises(NotRedrivable) as refused:
        d.unwrap(raw)
    assert refused.value.reason == d.NOT_AN_ENVELOPE
    assert isinstance(refused.value, DecodeError)


def test_an_envelope_without_the_original_bytes_is_refused() -> None:
    with pytest.raises(NotRedrivable) as refused:
        d.unwrap(_letter(None, "empty payload (tombstone)"))
    assert refused.value.reason == d.MISSING_PAYLOAD


def _decode_error(raw: bytes | None) -> str:
    with pytest.raises(DecodeError) as error:
        t.decode(t.Topic.ORDERS_COMMANDS, raw)
    return str(error.value)


def _deposit_json(**fields: Any) -> bytes:
    return orjson.dumps({**orjson.loads(DEPOSIT), **fields})


@pytest.mark.parametrize("raw,reason", [
    (None, d.TOMBSTONE),
    (b"x" * (t.PAYLOAD_BYTES_MAX + 1), d.TOO_LARGE),
    (b"{not json", d.MALFORMED_JSON),
    (_deposit_json(amount=10.5), d.NOT_DECIMAL_STRING),
    (_deposit_json(type="teleport"), d.INVALID_PAYLOAD),
    (_deposit_json(v=2), d.INVALID_PAYLOAD),
    # from the bad-input corpus (tests/bad_input.py)
    (DEPOSIT[:-5], d.MALFORMED_JSON),  # cut short: was invalid_payload
    (b"", d.MALFORMED_JSON),  # an empty value, not a tombstone: was invalid_payload
    (b'{"x":' + b"[" * 20000 + b"]" * 20000 + b',"type":"deposit"}',
     d.MALFORMED_JSON),  # was a RecursionError out of the decoder
    (_deposit_json(amount="1e400"), d.NOT_DECIMAL_STRING),  # was decided, then 500 on reads
    (_deposit_json(amount="1" + "0" * 15), d.NOT_DECIMAL_STRING),
])
def test_the_decoders_errors_have_stable_reasons(raw: bytes | None, reason: str) -> None:
    assert d.reason_of(_decode_error(raw)) == reason


def test_a_sinks_wrong_shard_refusal_has_its_reason() -> None:
    router = ShardRouter(2, 2)
    other = 1 - router.shard_of_account(ACCOUNT)
    refused = decode_for_shard(t.Topic.LEDGER_POSTINGS, _posting(), router, other)
    assert isinstance(refused, Refused)
    assert d.reason_of(refused.reason) == d.WRONG_SHARD


def _posting() -> bytes:
    entries = (LedgerEntry("cash", "USD", Decimal("10.00")),
               LedgerEntry("customer", "USD", Decimal("-10.00")))
    return t.encode(LedgerTransaction(txn_id="t-1", account_id=ACCOUNT, kind="deposit",
                                      cause_id="dep-1", occurred_at=NOW, entries=entries))


@pytest.mark.parametrize("error,reason", [("crossed_quote", "crossed_quote"),
                                          ("malformed_tick: no bid", "malformed_tick"),
                                          ("Expected `str`, got `int`", d.INVALID_PAYLOAD)])
def test_a_connectors_code_is_its_own_reason(error: str, reason: str) -> None:
    assert d.reason_of(error) == reason


def _account_step_letter(monkeypatch: pytest.MonkeyPatch, key: str, partition: int,
                         timestamp_ms: int = int(NOW.timestamp() * 1000)) -> bytes:
    """The dead letter the account topology itself writes for a record."""
    from topologies import accounts

    monkeypatch.setattr(accounts, "message_context", lambda: SimpleNamespace(
        topic="p.orders.commands", partition=partition, offset=5))
    step = accounts.AccountStep("p.", None, RiskLimits(), account_partitions=PARTITIONS)
    outputs = step(DEPOSIT, key, timestamp_ms, None, state=None)  # type: ignore[arg-type]
    assert [output.topic for output in outputs] == ["p.dlq.orders.commands"]
    return outputs[0].payload


def test_the_account_topologys_routing_errors_unwrap_with_their_reasons(
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = account_partition(ACCOUNT, PARTITIONS)
    wrong = d.unwrap(_account_step_letter(monkeypatch, ACCOUNT, (home + 1) % PARTITIONS))
    assert (wrong.reason, wrong.key, wrong.value) == (d.WRONG_PARTITION, ACCOUNT, DEPOSIT)
    mismatch = d.unwrap(_account_step_letter(monkeypatch, "acc_other", home))
    assert (mismatch.reason, mismatch.key) == (d.KEY_MISMATCH, "acc_other")


@pytest.mark.parametrize("timestamp_ms", [253_402_300_800_000, -1, 0])
def test_a_record_time_out_of_bounds_is_dead_lettered_with_its_reason(
        monkeypatch: pytest.MonkeyPatch, timestamp_ms: int) -> None:
    home = account_partition(ACCOUNT, PARTITIONS)
    letter = d.unwrap(_account_step_letter(monkeypatch, ACCOUNT, home, timestamp_ms))
    assert (letter.reason, letter.key, letter.value) == (d.INVALID_TIMESTAMP, ACCOUNT, DEPOSIT)
