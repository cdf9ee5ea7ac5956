"""Errors of the sinks package, under one root."""


class SinkError(Exception):
    """Root of every error raised by `sinks`."""


class DeadLetterFailed(SinkError):
    """A dead letter could not be delivered: the batch must not commit its offsets."""
