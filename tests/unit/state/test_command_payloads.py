"""What a producer writing `orders.commands` directly must send: the decoder holds the contract
to the letter (decimal strings, known versions, whole-string symbols)."""

from __future__ import annotations

import re

import orjson
import pytest

from state import topics as t
from state.exceptions import DecodeError
from state.messages import SYMBOL_PATTERN, Deposit, PlaceOrder

_PLACE = {"type": "place_order", "v": 1, "account_id": "acct-1", "idempotency_key": "k-1",
          "symbol": "AAPL", "side": "buy", "order_type": "limit", "quantity": "2",
          "limit_price": "209.50", "submitted_at": "2026-12-03T14:00:00Z"}


def _decode(payload: dict[str, object]) -> object:
    return t.decode(t.Topic.ORDERS_COMMANDS, orjson.dumps(payload))


def test_a_well_formed_command_decodes() -> None:
    order = _decode(_PLACE)
    assert isinstance(order, PlaceOrder)
    assert str(order.limit_price) == "209.50"


@pytest.mark.parametrize("field,value", [("quantity", 2), ("limit_price", 209.5),
                                         ("quantity", 0.1)])
def test_money_and_quantities_given_as_json_numbers_are_refused(field: str, value: object) -> None:
    with pytest.raises(DecodeError, match=f"`{field}` must be a decimal string"):
        _decode({**_PLACE, field: value})


def test_a_deposit_amount_as_a_number_is_refused() -> None:
    deposit = {"type": "deposit", "v": 1, "account_id": "acct-1", "idempotency_key": "d-1",
               "amount": "100.00", "submitted_at": "2026-12-03T14:00:00Z"}
    assert isinstance(_decode(deposit), Deposit)
    with pytest.raises(DecodeError, match="`amount` must be a decimal string"):
        _decode({**deposit, "amount": 100})


@pytest.mark.parametrize("version", [0, 2, "1"])
def test_a_version_the_code_does_not_know_is_refused(version: object) -> None:
    with pytest.raises(DecodeError, match=r"\$\.v"):
        _decode({**_PLACE, "v": version})


@pytest.mark.parametrize("symbol", ["AAPL\n", "aapl", "AAPL ", " AAPL", "", "TOOLONGSYMBOL"])
def test_a_symbol_is_matched_as_a_whole_string(symbol: str) -> None:
    with pytest.raises(DecodeError, match=r"\$\.symbol"):
        _decode({**_PLACE, "symbol": symbol})
    assert re.search(SYMBOL_PATTERN, symbol) is None


def test_symbols_of_the_usual_forms_pass() -> None:
    for symbol in ("A", "BRK.B", "SPY", "BF-B"):
        assert re.search(SYMBOL_PATTERN, symbol)
