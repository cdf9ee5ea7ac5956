"""Errors of the gateways package, under one root."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error raised by `gateways`."""


class BindHostError(GatewayError):
    """A listener cannot be made to bind where its config says (the simulator's bind-host
    shim cannot be built or is not loaded). One line naming the cause."""


class KeyNamedAnOrder(GatewayError):
    """A place order whose key already named an order in the shard (every faster memory of
    the key expired): nothing was journaled or sent; `terms` are the order on record."""

    def __init__(self, order_id: str, terms: dict[str, Any]) -> None:
        super().__init__(f"the key already named order {order_id}")
        self.order_id = order_id
        self.terms = terms
