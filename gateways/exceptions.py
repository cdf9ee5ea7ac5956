"""Errors of the gateways package, under one root."""


class GatewayError(Exception):
    """Root of every error raised by `gateways`."""
