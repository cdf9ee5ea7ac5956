"""Errors of the topologies package, under one root."""


class TopologyError(Exception):
    """Root of every error raised by `topologies`."""
