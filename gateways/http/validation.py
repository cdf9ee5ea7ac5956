"""Order and money validation, pure: what can be refused before anything reaches a topic."""

from __future__ import annotations

import re
from decimal import Decimal

from gateways.http.problems import Problem
from gateways.http.schemas import OrderReplaceRequest, OrderRequest
from state.domain.money import tick_refusal
from state.messages import OrderType

QUANTITY_MAX = Decimal("1000000")
QUANTITY_PLACES_MAX = 6
PRICE_MAX = Decimal("1000000")
AMOUNT_MAX = Decimal("10000000")
_PLAIN_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_NOT_FINITE = frozenset({"nan", "snan", "inf", "infinity"})


def _invalid(code: str, field: str, detail: str) -> Problem:
    return Problem(422, code, f"{field}: {detail}", field=field)


def parse_positive(field: str, text: str, maximum: Decimal) -> Decimal:
    """A positive, finite decimal from a plain decimal string (no exponent, no sign)."""
    if text.strip().lower().lstrip("+-") in _NOT_FINITE:
        raise _invalid("not_finite", field, "must be a finite number")
    if text.startswith("-"):
        raise _invalid("not_positive", field, "must be greater than zero")
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise _invalid("invalid_decimal", field, f"{text[:40]!r} is not a plain decimal string")
    value = Decimal(text)
    if value <= 0:
        raise _invalid("not_positive", field, "must be greater than zero")
    if value > maximum:
        raise _invalid("too_large", field, f"must be at most {maximum}")
    return value


def _places(value: Decimal) -> int:
    """The decimal places `value` needs, exactly. (`normalize()` rounds to the context's 28
    digits first: "1.0000000000000000000000000000001" came out as 0 places and its 31 were
    sent on.)"""
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    places = -exponent
    for digit in reversed(digits):  # trailing zeros need no place
        if places <= 0 or digit:
            break
        places -= 1
    return max(0, places)


def check_tick(field: str, price: Decimal) -> None:
    """The account topology's own rule (Reg NMS 612), refused here before anything is sent."""
    refusal = tick_refusal(field, price)
    if refusal is not None:
        raise _invalid("invalid_tick_size", field, refusal.removeprefix(f"{field} "))


def parse_quantity(text: str) -> Decimal:
    quantity = parse_positive("quantity", text, QUANTITY_MAX)
    if _places(quantity) > QUANTITY_PLACES_MAX:
        raise _invalid("too_many_decimals", "quantity",
                       f"at most {QUANTITY_PLACES_MAX} decimal places")
    return quantity


def parse_price(field: str, text: str) -> Decimal:
    price = parse_positive(field, text, PRICE_MAX)
    check_tick(field, price)
    return price


def parse_amount(text: str) -> Decimal:
    amount = parse_positive("amount", text, AMOUNT_MAX)
    if _places(amount) > 2:
        raise _invalid("too_many_decimals", "amount", "USD amounts have at most 2 decimal places")
    return amount


_NEEDS_LIMIT = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_NEEDS_STOP = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


class ValidOrder:
    __slots__ = ("quantity", "limit_price", "stop_price")

    def __init__(self, quantity: Decimal, limit_price: Decimal | None,
                 stop_price: Decimal | None) -> None:
        self.quantity = quantity
        self.limit_price = limit_price
        self.stop_price = stop_price


class ValidReplace:
    __slots__ = ("quantity", "limit_price", "stop_price")

    def __init__(self, quantity: Decimal | None, limit_price: Decimal | None,
                 stop_price: Decimal | None) -> None:
        self.quantity = quantity
        self.limit_price = limit_price
        self.stop_price = stop_price


def validate_replace(request: OrderReplaceRequest) -> ValidReplace:
    """New terms of an order: each field as for a new order; at least one present. A
    quantity of None keeps the order's."""
    if request.quantity is None and request.limit_price is None and request.stop_price is None:
        raise _invalid("missing_field", "quantity",
                       "give at least one of quantity, limit_price, stop_price")
    quantity = parse_quantity(request.quantity) if request.quantity is not None else None
    limit_price = (parse_price("limit_price", request.limit_price)
                   if request.limit_price is not None else None)
    stop_price = (parse_price("stop_price", request.stop_price)
                  if request.stop_price is not None else None)
    return ValidReplace(quantity, limit_price, stop_price)


def check_replace_fits(order_type: OrderType, filled_quantity: Decimal,
                       valid: ValidReplace) -> None:
    """The new terms must suit the order: prices its type has, and more shares than have
    already filled (fills only grow, so an older view of the order is safe to check)."""
    if valid.limit_price is not None and order_type not in _NEEDS_LIMIT:
        raise _invalid("unexpected_field", "limit_price", f"{order_type} orders have none")
    if valid.stop_price is not None and order_type not in _NEEDS_STOP:
        raise _invalid("unexpected_field", "stop_price", f"{order_type} orders have none")
    if valid.quantity is not None and valid.quantity <= filled_quantity:
        raise _invalid("quantity_not_above_filled", "quantity",
                       f"must exceed the {filled_quantity} already filled")


def _typed_price(order_type: OrderType, needs: frozenset[OrderType], field: str,
                 raw: str | None) -> Decimal | None:
    """A price the order type requires (missing: refused), or must not carry (given: refused)."""
    if order_type in needs:
        if raw is None:
            raise _invalid("missing_field", field, f"required for {order_type} orders")
        return parse_price(field, raw)
    if raw is not None:
        raise _invalid("unexpected_field", field, f"not allowed for {order_type} orders")
    return None


def validate_order(request: OrderRequest) -> ValidOrder:
    quantity = parse_quantity(request.quantity)
    limit_price = _typed_price(request.order_type, _NEEDS_LIMIT, "limit_price",
                               request.limit_price)
    stop_price = _typed_price(request.order_type, _NEEDS_STOP, "stop_price", request.stop_price)
    return ValidOrder(quantity, limit_price, stop_price)
