"""Healthy is not ready (issue 14, item 14): `brokerage up` prints its ready line once an order
can fill, and one market buy per symbol of the quote feed, placed the moment that line appears,
fills; none is refused for want of a quote, at the HTTP gateway or at the market maker.

python -m pytest -q tests/integration/compose/test_ready.py
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from compose.services import feed_symbols
from compose.stack import load_stack
from state.messages import TERMINAL_ORDER_STATES
from tests.integration.compose.stack_process import StackProcess, eventually, http, start_stack
from tests.integration.compose.test_end_to_end import _login

pytestmark = pytest.mark.integration

READY_LINE = re.compile(r"^ready: quotes for (?P<symbols>.+) in [\d.]+ s$", re.MULTILINE)
# Above the simulator's quote wait (30 s): an order it held and then rejected for want of a
# quote shows as rejected here, not as a timeout.
ORDERS_END_S_MAX = 40.0


def _open_funded_account(base: str, token: str) -> str:
    status, account = http("POST", f"{base}/v1/accounts", {}, token)
    assert status in (200, 201), account
    account_id = account["account_id"]
    status, deposit = http("POST", f"{base}/v1/accounts/{account_id}/deposits",
                           {"amount": "10000.00"}, token, {"Idempotency-Key": "ready-dep"})
    assert status in (200, 201, 202), deposit
    return str(account_id)


def _ready_symbols(stack: StackProcess) -> list[str]:
    match = READY_LINE.search(stack.read_until("ready: "))
    assert match, "".join(stack.output)
    return match["symbols"].split(", ")


def _market_buy(base: str, token: str, account_id: str, symbol: str) -> str:
    body = {"account_id": account_id, "symbol": symbol, "side": "buy", "order_type": "market",
            "quantity": "1", "time_in_force": "day"}
    status, order = http("POST", f"{base}/v1/orders", body, token,
                         {"Idempotency-Key": f"ready-{symbol}-{uuid.uuid4().hex[:6]}"})
    assert status in (200, 201, 202) and order.get("state") != "rejected", (symbol, order)
    return str(order["order_id"])


def test_every_feed_symbol_fills_right_after_ready(server_dir: Path) -> None:
    stack = start_stack(server_dir / "data")
    try:
        stack.read_until("healthy")
        base = stack.base_url
        token = _login(base, "ready")
        account_id = _open_funded_account(base, token)
        symbols = _ready_symbols(stack)
        placed_at = time.monotonic()
        orders = {_market_buy(base, token, account_id, symbol): symbol for symbol in symbols}
        assert stack.stack_file is not None
        assert tuple(symbols) == feed_symbols(load_stack(stack.stack_file, environ={}))

        def ended() -> dict[str, dict] | None:
            found = {}
            for order_id in orders:
                code, body = http("GET", f"{base}/v1/orders/{order_id}?account_id={account_id}",
                                  token=token)
                if code != 200 or body["state"] not in TERMINAL_ORDER_STATES:
                    return None
                found[order_id] = body
            return found

        final = eventually(ended, timeout_s=ORDERS_END_S_MAX)
        ended_s = time.monotonic() - placed_at
        states = {orders[order_id]: (body["state"], body.get("reason"))
                  for order_id, body in final.items()}
        assert all(state == "filled" for state, _ in states.values()), (states, stack.logs())
        print(f"{len(orders)} market buys placed at the ready line, all filled in "
              f"{ended_s:.1f} s")
    finally:
        code = stack.stop()
    assert code == 0, "".join(stack.output)
