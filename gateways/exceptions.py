"""Errors of the gateways package, under one root."""


class GatewayError(Exception):
    """Root of every error raised by `gateways`."""


class BindHostError(GatewayError):
    """A listener cannot be made to bind where its config says (the simulator's bind-host
    shim cannot be built or is not loaded). One line naming the cause."""
