"""Money and quantity arithmetic on Decimal: USD in cents, shares to 6 decimal places."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")
SHARE_QUANTUM = Decimal("0.000001")
PRICE_QUANTUM = Decimal("0.000001")
ZERO = Decimal(0)


def cents(amount: Decimal) -> Decimal:
    """Round to the nearest cent (banker's rounding): the cash value of a trade."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def cents_up(amount: Decimal) -> Decimal:
    """Round up to the cent: a hold must never be smaller than what it covers."""
    return amount.quantize(CENT, rounding=ROUND_CEILING)


MAGNITUDE_DIGITS_MAX = 15  # larger figures are input errors, not money


def _has_places(value: Decimal, quantum: Decimal) -> bool:
    if not value.is_finite() or (value and value.adjusted() >= MAGNITUDE_DIGITS_MAX):
        return False
    return value == value.quantize(quantum, rounding=ROUND_HALF_EVEN)


def is_cents(amount: Decimal) -> bool:
    return _has_places(amount, CENT)


def is_share_quantity(quantity: Decimal) -> bool:
    return _has_places(quantity, SHARE_QUANTUM)


def is_price(price: Decimal) -> bool:
    return _has_places(price, PRICE_QUANTUM)


# Reg NMS Rule 612 (the sub-penny rule): orders priced at $1.00 or more are in whole cents,
# orders below $1.00 in hundredths of a cent. Fills may still be sub-penny (price improvement).
SUB_PENNY_TICK = Decimal("0.0001")
TICK_PRICE_THRESHOLD = Decimal("1.00")


def price_tick(price: Decimal) -> Decimal:
    """The increment an order's limit or stop price must be a multiple of."""
    return CENT if price >= TICK_PRICE_THRESHOLD else SUB_PENNY_TICK


def tick_refusal(name: str, price: Decimal) -> str | None:
    """Why `price` is not a valid order price (positive, on its tick), or None when it is."""
    if not price.is_finite() or price <= 0:
        return f"{name} must be positive"
    tick = price_tick(price)
    if not _has_places(price, tick):
        side = "at or above" if tick == CENT else "below"
        return (f"{name} {price} is not a multiple of the ${tick} tick for prices {side} "
                f"${TICK_PRICE_THRESHOLD} (Reg NMS Rule 612)")
    return None


# ---- the scales of figures shown to users (the HTTP API, refusal details) ------------------
# Every figure is computed exactly and rounded once, here, with banker's rounding: money to the
# cent, prices to their tick, share quantities to 6 places; the text always has the scale's
# places ("7000.00", "2.500000").


def _text(value: Decimal, quantum: Decimal) -> str:
    rounded = value.quantize(quantum, rounding=ROUND_HALF_EVEN)
    return str(rounded.copy_abs() if rounded.is_zero() else rounded)  # never "-0.00"


def money_text(amount: Decimal) -> str:
    """USD to the cent: "9996.28"."""
    return _text(amount, CENT)


def shares_text(quantity: Decimal) -> str:
    """A share quantity to 6 places: "2.500000"."""
    return _text(quantity, SHARE_QUANTUM)


def price_text(price: Decimal) -> str:
    """A price to its tick (whole cents at $1.00 or more, else $0.0001): "210.05", "0.4321"."""
    tick = price_tick(abs(price))
    rounded = price.quantize(tick, rounding=ROUND_HALF_EVEN)
    if price_tick(abs(rounded)) != tick:  # 0.99995 rounds up to 1.0000: shown as 1.00
        tick = price_tick(abs(rounded))
    return _text(rounded, tick)
