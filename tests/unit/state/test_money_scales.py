"""The scales figures are shown at (issue 14 item 6): one rounding, half to even, every place
of the scale written."""

from __future__ import annotations

from decimal import Decimal

import pytest

from state.domain.money import money_text, price_text, shares_text


@pytest.mark.parametrize(("amount", "text"), [
    ("9996.275", "9996.28"), ("9996.265", "9996.26"), ("-2.340000", "-2.34"), ("7000", "7000.00"),
    ("0.005", "0.00"), ("-0.005", "0.00"), ("-0.0051", "-0.01"),
    ("123456789012.5", "123456789012.50"),
])
def test_money_is_in_cents(amount: str, text: str) -> None:
    assert money_text(Decimal(amount)) == text


@pytest.mark.parametrize(("price", "text"), [
    ("210.05", "210.05"), ("210.055", "210.06"), ("210.045", "210.04"), ("1", "1.00"),
    ("0.43215", "0.4322"), ("0.43225", "0.4322"), ("0.5", "0.5000"), ("0.99995", "1.00"),
    ("0.99994", "0.9999"), ("1.004999", "1.00"),
])
def test_prices_are_at_their_tick(price: str, text: str) -> None:
    assert price_text(Decimal(price)) == text


@pytest.mark.parametrize(("quantity", "text"), [
    ("2.5", "2.500000"), ("10", "10.000000"), ("0.3333335", "0.333334"),
    ("0.3333325", "0.333332"), ("-1.5", "-1.500000"),
])
def test_shares_have_6_places(quantity: str, text: str) -> None:
    assert shares_text(Decimal(quantity)) == text
