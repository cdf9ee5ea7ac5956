"""Errors of the state package, under one root."""


class StateError(Exception):
    """Root of every error raised by `state`."""


class DecodeError(StateError):
    """A payload that is not a valid message for its topic; the reason goes to the DLQ."""


class InvariantViolation(StateError, AssertionError):
    """A broken invariant (unbalanced transaction, negative hold): a crash, never a log line."""


class StoreError(StateError):
    """A store (shard database, directory, quote cache) could not do what was asked."""


class ShardUnavailable(StoreError):
    """The shard that owns an account cannot be reached right now."""


class EpochUnavailable(StateError):
    """The broker did not answer, or its epoch record could not be read or written in time."""


class NotRedrivable(DecodeError):
    """A dead-letter record that cannot be unwrapped into the record it stands for; `reason`
    is a stable code for counting (`not_an_envelope`, `missing_payload`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
