"""Errors of the sinks package, under one root."""


class SinkError(Exception):
    """Root of every error raised by `sinks`."""
