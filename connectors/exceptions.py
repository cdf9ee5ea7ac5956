"""Errors of the connectors package, under one root."""


class ConnectorError(Exception):
    """Root of every error raised by `connectors`."""
