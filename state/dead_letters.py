"""Dead letters read back, so they can be re-driven once their cause is fixed.

An envelope (`state.messages.DeadLetter`, written through `state.topics.dead_letter`) keeps
the original value bytes, the key as text, the source topic, partition and offset, and the
error in words. It keeps neither the record's headers nor its timestamp. `reason_of` names the
error by a stable code, so dead letters can be counted and filtered by cause without matching
the wording of each writer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from state.exceptions import NotRedrivable
from state.messages import DeadLetter

NOT_AN_ENVELOPE = "not_an_envelope"
MISSING_PAYLOAD = "missing_payload"

WRONG_PARTITION = "wrong_partition"
KEY_MISMATCH = "key_mismatch"
NOT_DECIMAL_STRING = "not_decimal_string"
TOO_LARGE = "too_large"
TOMBSTONE = "tombstone"
WRONG_SHARD = "wrong_shard"
MALFORMED_JSON = "malformed_json"
INVALID_PAYLOAD = "invalid_payload"
INVALID_TIMESTAMP = "invalid_timestamp"

# The wording each writer uses (topologies/accounts.py, state/topics.py, state/shard_store.py);
# tests/unit/state/test_dead_letters.py produces each error with the writer's own code, so a
# rewording that would leave its dead letters unnamed fails there.
_WORDINGS = (
    (re.compile(r"^record on partition \d+, but account .* lives on partition"), WRONG_PARTITION),
    (re.compile(r"^key .* is not the payload's account_id$"), KEY_MISMATCH),
    (re.compile(r"must be a decimal string"), NOT_DECIMAL_STRING),
    (re.compile(r"^payload of \d+ bytes exceeds \d+$"), TOO_LARGE),
    (re.compile(r"^empty payload \(tombstone\)$"), TOMBSTONE),
    (re.compile(r"belongs to shard \d+, not to shard"), WRONG_SHARD),
    (re.compile(r"^JSON is malformed"), MALFORMED_JSON),
    # msgspec's word for JSON cut short (and for an empty value): malformed, not a payload
    # that is JSON of the wrong shape.
    (re.compile(r"^Input data was truncated"), MALFORMED_JSON),
    (re.compile(r"^record timestamp -?\d+ ms is outside"), INVALID_TIMESTAMP),
)
# Connectors write a code of their own, alone or before a colon (`crossed_quote`,
# `malformed_tick: ...`).
_CODE = re.compile(r"^([a-z][a-z0-9_]*)(?::|$)")

_ENVELOPE = msgspec.json.Decoder(DeadLetter)


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """The record a dead letter stands for, and why it was dead-lettered."""

    topic: str
    key: str | None
    value: bytes
    reason: str
    error: str
    partition: int  # where the original was read from: -1 when it never was on a topic
    offset: int


def reason_of(error: str) -> str:
    """A stable code for a dead letter's error; `invalid_payload` for the schema's own words
    (an unknown `type` or `v`, a missing or unknown field)."""
    for pattern, reason in _WORDINGS:
        if pattern.search(error):
            return reason
    code = _CODE.match(error)
    return code.group(1) if code else INVALID_PAYLOAD


def unwrap(raw: bytes | None) -> Unwrapped:
    """The original record inside a `dlq.<topic>` value, or NotRedrivable with the reason."""
    try:
        letter = _ENVELOPE.decode(raw or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise NotRedrivable(NOT_AN_ENVELOPE, str(error)) from error
    if not letter.original:
        # A tombstone or a refused empty record: producing b"" would be dead-lettered again.
        raise NotRedrivable(MISSING_PAYLOAD, f"{letter.source_topic} offset {letter.offset}")
    return Unwrapped(topic=letter.source_topic, key=letter.key, value=letter.original,
                     reason=reason_of(letter.error), error=letter.error,
                     partition=letter.partition, offset=letter.offset)
