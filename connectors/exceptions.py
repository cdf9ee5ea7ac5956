"""Errors of the connectors package, under one root."""


class ConnectorError(Exception):
    """Root of every error raised by `connectors`."""


class ConnectorConfigError(ConnectorError):
    """A connector file or its settings are invalid; the message names the file and field."""


class ReplayFileError(ConnectorError):
    """A replay or status file cannot be read."""
