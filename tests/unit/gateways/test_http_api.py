"""The HTTP surface against in-memory stores and a fake broker: every answer and every refusal,
and what reaches the (fake) topic."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateways.http import schemas as s
from gateways.http.app import create_app
from gateways.http.auth import issue_token
from state.ids import order_id_for
from state.messages import (
    CommandAccepted,
    CommandRejected,
    Deposit,
    Message,
    OrderEvent,
    OrderState,
    PlaceOrder,
    Side,
)
from tests.openapi_answers import CheckedClient
from tests.unit.gateways.test_http_fakes import NOW, SECRET, Fakes, config, quote, shard_order

Scenario = Callable[[TestClient, Fakes], Awaitable[None]]


def run(scenario: Scenario, **overrides: Any) -> Fakes:
    fakes = Fakes()

    async def main() -> None:
        app = create_app(config(**overrides), backends=fakes.backends)
        async with CheckedClient(TestServer(app)) as client:
            await scenario(client, fakes)

    asyncio.run(main())
    return fakes


def bearer(user_id: str, now: dt.datetime = NOW, ttl_s: int = 900) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(SECRET, user_id, int(now.timestamp()),
                                                     ttl_s)}


async def new_account(client: TestClient, user: str = "alice") -> str:
    response = await client.post("/v1/accounts", json={}, headers=bearer(user))
    assert response.status == 201, await response.text()
    return str((await response.json())["account_id"])


def accept_everything(message: Message) -> list[Any]:
    if isinstance(message, PlaceOrder):
        order_id = order_id_for(message.account_id, message.idempotency_key)
        state = OrderState.REJECTED if message.quantity > 1000 else OrderState.FUNDS_HELD
        return [OrderEvent(
            event_id=f"{order_id}:1", account_id=message.account_id, order_id=order_id, seq=1,
            state=state, symbol=message.symbol, side=message.side,
            order_type=message.order_type, quantity=message.quantity,
            time_in_force=message.time_in_force, filled_quantity=Decimal(0),
            occurred_at=NOW, cause_id="c", idempotency_key=message.idempotency_key,
            reason="insufficient_buying_power" if state == OrderState.REJECTED else None,
            limit_price=message.limit_price)]
    if isinstance(message, Deposit):
        if message.amount > 5000:
            return [CommandRejected(event_id="e", account_id=message.account_id,
                                    idempotency_key=message.idempotency_key,
                                    command_type="deposit", reason="deposit_limit",
                                    occurred_at=NOW)]
        return [CommandAccepted(event_id="e", account_id=message.account_id,
                                idempotency_key=message.idempotency_key,
                                command_type="deposit", occurred_at=NOW, amount=message.amount,
                                txn_id="txn_1")]
    return []


ORDER = {"symbol": "AAPL", "side": "buy", "order_type": "limit", "quantity": "10",
         "limit_price": "209.50"}


async def place(client: TestClient, account_id: str, key: str, user: str = "alice", /,
                **changes: Any) -> Any:
    body = {**ORDER, "account_id": account_id, **changes}
    return await client.post("/v1/orders", json=body,
                             headers={**bearer(user), "Idempotency-Key": key})


# ---- auth ----------------------------------------------------------------------------------


def test_token_then_accounts_are_private() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        response = await client.post("/v1/auth/token", json={"user_id": "alice"})
        assert response.status == 201
        token = (await response.json())["token"]
        created = await client.post("/v1/accounts", json={},
                                    headers={"Authorization": f"Bearer {token}"})
        account_id = (await created.json())["account_id"]
        mine = await client.get(f"/v1/accounts/{account_id}", headers=bearer("alice"))
        assert mine.status == 200 and (await mine.json())["user_id"] == "alice"
        theirs = await client.get(f"/v1/accounts/{account_id}", headers=bearer("mallory"))
        assert theirs.status == 404
        assert theirs.content_type == "application/problem+json"
        assert (await theirs.json())["code"] == "account_not_found"
        unknown = await client.get("/v1/accounts/acc_nope", headers=bearer("alice"))
        assert (await unknown.json())["code"] == "account_not_found"

    run(scenario)


@pytest.mark.parametrize("headers, code", [
    ({}, "missing_token"),
    ({"Authorization": "Basic abc"}, "invalid_token"),
    ({"Authorization": "Bearer not.a.token"}, "invalid_token"),
    (bearer("alice", now=NOW - dt.timedelta(hours=1)), "token_expired"),
])
def test_requests_without_a_valid_token_get_401(headers: dict[str, str], code: str) -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        response = await client.get("/v1/accounts", headers=headers)
        assert response.status == 401
        assert (await response.json())["code"] == code

    run(scenario)


def test_dev_login_rejects_bad_user_ids() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        for body in ({"user_id": ""}, {"user_id": "a b"}, {"user": "x"}, {"user_id": 5}):
            response = await client.post("/v1/auth/token", json=body)
            assert response.status == 422, body
        response = await client.post("/v1/auth/token", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400 and (await response.json())["code"] == "malformed_json"

    run(scenario)


# ---- orders --------------------------------------------------------------------------------


def test_order_answered_within_the_wait_is_201_and_carries_the_reference_quote() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        response = await place(client, account_id, "k1")
        assert response.status == 201, await response.text()
        body = await response.json()
        assert body["order_id"] == order_id_for(account_id, "k1")
        assert body["state"] == "funds_held" and body["quantity"] == "10.000000"
        assert body["limit_price"] == "209.50"
        [(topic, key, command)] = fakes.producer.produced
        assert topic.endswith("orders.commands") and key == account_id
        assert isinstance(command, PlaceOrder) and command.side == Side.BUY
        assert command.reference_price == Decimal("209.45")  # the ask, for a buy
        assert command.user_id == "alice"
        sell = await place(client, account_id, "k2", side="sell")
        assert sell.status == 201
        assert fakes.producer.produced[-1][2].reference_price == Decimal("209.40")

    run(scenario)


def test_rejected_order_is_422_with_the_reason() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        response = await place(client, account_id, "k1", quantity="5000")
        assert response.status == 422
        body = await response.json()
        assert body["code"] == "order_rejected"
        assert body["reason"] == "insufficient_buying_power"
        assert body["order_id"] == order_id_for(account_id, "k1")

    run(scenario)


def test_no_answer_within_the_wait_is_202_with_the_order_id() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        account_id = await new_account(client)
        response = await place(client, account_id, "k1")
        assert response.status == 202
        body = await response.json()
        # `status` is the request's, `state` the order's (every order answer carries it).
        assert body == {"order_id": order_id_for(account_id, "k1"), "account_id": account_id,
                        "status": "pending", "state": "pending", "idempotency_key": "k1",
                        "pending_replace": None}
        assert response.headers["Location"] == f"/v1/orders/{body['order_id']}"

    run(scenario, reply_wait_ms=50)


def test_same_key_same_body_is_the_same_order_and_another_body_is_409() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        first = await place(client, account_id, "k1")
        assert first.status == 201
        order_id = (await first.json())["order_id"]
        again = await place(client, account_id, "k1")
        assert again.status == 202 and (await again.json())["order_id"] == order_id
        fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(account_id, order_id)
        replay = await place(client, account_id, "k1")
        assert replay.status == 200 and (await replay.json())["order_id"] == order_id
        other = await place(client, account_id, "k1", quantity="11")
        assert other.status == 409
        assert (await other.json())["code"] == "idempotency_key_reused"
        assert len(fakes.producer.produced) == 1

    run(scenario)


def test_a_retry_whose_first_attempt_died_before_the_journal_sends_the_order() -> None:
    """The first attempt claimed the key in Redis, then its process was killed before the
    journal held the command (seen in the scale-out test: the retry was answered 202 and the
    order never existed). Neither the shard nor the journal has it: the retry sends it."""
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        body = msgspec.json.decode(msgspec.json.encode({**ORDER, "account_id": account_id}),
                                   type=s.OrderRequest)
        fingerprint = msgspec.json.Encoder(decimal_format="string").encode(body).decode()
        fakes.idempotency.records[(f"order:{account_id}", "k1")] = fingerprint  # died here
        retried = await place(client, account_id, "k1")
        assert retried.status == 201, await retried.text()
        assert [m.idempotency_key for _, _, m in fakes.producer.produced] == ["k1"]
        assert (account_id, "k1") in fakes.journal.rows
        again = await place(client, account_id, "k1")  # journaled now: answered from it
        assert again.status == 202
        assert len(fakes.producer.produced) == 1

    run(scenario)


def test_broker_down_is_503_and_the_key_can_be_retried() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        fakes.producer.failing = True
        down = await place(client, account_id, "k1")
        assert down.status == 503
        assert (await down.json())["code"] == "broker_unavailable"
        assert down.headers["Retry-After"] == "1"
        assert fakes.idempotency.records == {}  # nothing half-written
        fakes.producer.failing = False
        retried = await place(client, account_id, "k1")
        assert retried.status == 201

    run(scenario)


BAD_ORDERS = [
    ({"quantity": "NaN"}, 422, "not_finite"),
    ({"quantity": "Infinity"}, 422, "not_finite"),
    ({"quantity": "-1"}, 422, "not_positive"),
    ({"quantity": "0"}, 422, "not_positive"),
    ({"quantity": "0.0000000"}, 422, "not_positive"),
    ({"quantity": "1e3"}, 422, "invalid_decimal"),
    ({"quantity": "99999999999"}, 422, "too_large"),
    ({"quantity": "1.1234567"}, 422, "too_many_decimals"),
    ({"quantity": 10}, 422, "invalid_field"),
    ({"limit_price": "209.505"}, 422, "invalid_tick_size"),
    ({"limit_price": "0.12345"}, 422, "invalid_tick_size"),
    ({"limit_price": None}, 422, "missing_field"),
    ({"order_type": "market"}, 422, "unexpected_field"),
    ({"order_type": "stop"}, 422, "unexpected_field"),
    ({"order_type": "iceberg"}, 422, "invalid_field"),
    ({"side": "short"}, 422, "invalid_field"),
    ({"time_in_force": "fok"}, 422, "invalid_field"),
    ({"symbol": "AAPL\n"}, 422, "invalid_field"),
    ({"symbol": "AA PL"}, 422, "invalid_field"),
    ({"extra": 1}, 422, "invalid_field"),
    ({"account_id": "acc_someone_else"}, 404, "account_not_found"),
]


@pytest.mark.parametrize("changes, status, code", BAD_ORDERS)
def test_bad_orders_are_refused_before_anything_is_produced(
        changes: dict[str, Any], status: int, code: str) -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        account_id = await new_account(client)
        response = await place(client, account_id, "k1", **changes)
        assert response.status == status, await response.text()
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == code
        assert fakes.producer.produced == []
        assert fakes.idempotency.records == {}

    run(scenario)


def test_malformed_oversized_and_keyless_orders() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        headers = {**bearer("alice"), "Idempotency-Key": "k1",
                   "Content-Type": "application/json"}
        malformed = await client.post("/v1/orders", data=b'{"symbol": ', headers=headers)
        assert malformed.status == 400
        assert (await malformed.json())["code"] == "malformed_json"
        huge = await client.post("/v1/orders", data=b"{" + b" " * 20000 + b"}", headers=headers)
        assert huge.status == 413
        assert (await huge.json())["code"] == "body_too_large"
        keyless = await client.post("/v1/orders", json={**ORDER, "account_id": account_id},
                                    headers=bearer("alice"))
        assert keyless.status == 400
        assert (await keyless.json())["code"] == "missing_idempotency_key"
        long_key = await place(client, account_id, "k" * 65)
        assert (await long_key.json())["code"] == "invalid_idempotency_key"
        wrong_type = await client.post("/v1/orders", data=b"x",
                                       headers={**headers, "Content-Type": "text/plain"})
        assert wrong_type.status == 415
        assert fakes.producer.produced == []

    run(scenario)


def test_a_lower_case_symbol_is_read_as_upper_case_as_everywhere() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        response = await place(client, account_id, "k1", symbol="aapl")
        assert response.status == 201, await response.text()
        assert fakes.producer.produced[0][2].symbol == "AAPL"
        quotes = await client.get("/v1/quotes?symbols=aapl", headers=bearer("alice"))
        assert quotes.status == 200 and (await quotes.json())["quotes"][0]["symbol"] == "AAPL"
        refused = await client.get("/v1/quotes?symbols=AA%3BPL", headers=bearer("alice"))
        assert refused.status == 400
        assert "a letter, then letters, digits" in (await refused.json())["detail"]

    run(scenario)


def test_fractional_and_sub_penny_orders_are_accepted() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["PENNY"] = quote("PENNY", "0.5", "0.51")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        response = await place(client, account_id, "k1", symbol="PENNY",
                               quantity="0.123456", limit_price="0.5012")
        assert response.status == 201, await response.text()
        command = fakes.producer.produced[0][2]
        assert command.quantity == Decimal("0.123456")
        assert command.limit_price == Decimal("0.5012")

    run(scenario)


def test_orders_rate_limit_is_429_with_retry_after() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        account_id = await new_account(client)
        statuses = [(await place(client, account_id, f"k{i}")).status for i in range(4)]
        assert statuses[:1] == [202] and 429 in statuses
        limited = await place(client, account_id, "k9")
        assert limited.status == 429 and limited.headers["Retry-After"] == "1"
        assert (await limited.json())["code"] == "rate_limited"

    run(scenario, orders_per_s_max=2, reply_wait_ms=10)


# ---- money, portfolio, reads -----------------------------------------------------------------


def test_deposits_accepted_rejected_and_replayed() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        path = f"/v1/accounts/{account_id}/deposits"
        headers = {**bearer("alice"), "Idempotency-Key": "d1"}
        accepted = await client.post(path, json={"amount": "100.00"}, headers=headers)
        assert accepted.status == 201
        assert (await accepted.json())["status"] == "accepted"
        replay = await client.post(path, json={"amount": "100.00"}, headers=headers)
        assert replay.status == 200
        other = await client.post(path, json={"amount": "200.00"}, headers=headers)
        assert other.status == 409
        rejected = await client.post(path, json={"amount": "9000"},
                                     headers={**bearer("alice"), "Idempotency-Key": "d2"})
        assert rejected.status == 422
        assert (await rejected.json())["code"] == "deposit_limit"
        cents = await client.post(path, json={"amount": "1.001"},
                                  headers={**bearer("alice"), "Idempotency-Key": "d3"})
        assert (await cents.json())["code"] == "too_many_decimals"
        theirs = await client.post(path, json={"amount": "1"},
                                   headers={**bearer("bob"), "Idempotency-Key": "d4"})
        assert theirs.status == 404
        kinds = [type(m).__name__ for _, _, m in fakes.producer.produced]
        assert kinds == ["Deposit", "Deposit", "Deposit"]

    run(scenario)


def test_money_answers_write_amounts_in_cents() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        accepted = await client.post(f"/v1/accounts/{account_id}/deposits", json={"amount": "100"},
                                     headers={**bearer("alice"), "Idempotency-Key": "d1"})
        assert accepted.status == 201 and (await accepted.json())["amount"] == "100.00"
        fakes.reader.outcomes[(account_id, "d1")] = {
            "type": "command_accepted", "status": "accepted", "command_type": "deposit",
            "txn_id": "txn-1", "amount": "100.0"}
        read = await client.get(f"/v1/accounts/{account_id}/commands/d1",
                                headers=bearer("alice"))
        assert (await read.json())["amount"] == "100.00"

    run(scenario)


def test_a_money_command_answered_202_is_followed_up_by_its_key() -> None:
    """A retry with the same key returns the original outcome (not 202 again, forever), and
    the outcome can be read by the key."""
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        path = f"/v1/accounts/{account_id}/deposits"
        headers = {**bearer("alice"), "Idempotency-Key": "d1"}
        first = await client.post(path, json={"amount": "100.00"}, headers=headers)
        assert first.status == 202 and (await first.json())["status"] == "pending"
        outcome_path = f"/v1/accounts/{account_id}/commands/d1"
        fakes.reader.outcomes[(account_id, "d1")] = {
            "status": "pending", "command_type": "deposit"}
        pending = await client.get(outcome_path, headers=bearer("alice"))
        assert (await pending.json())["status"] == "pending"
        fakes.reader.outcomes[(account_id, "d1")] = {
            "type": "command_accepted", "status": "accepted", "command_type": "deposit",
            "txn_id": "txn-1", "amount": "100.00"}
        produced = len(fakes.producer.produced)
        retry = await client.post(path, json={"amount": "100.00"}, headers=headers)
        assert retry.status == 200, await retry.text()
        assert (await retry.json())["txn_id"] == "txn-1"
        assert len(fakes.producer.produced) == produced  # answered from the record
        read = await client.get(outcome_path, headers=bearer("alice"))
        assert read.status == 200
        assert (await read.json())["status"] == "accepted"
        fakes.reader.outcomes[(account_id, "w1")] = {
            "type": "command_rejected", "status": "rejected", "command_type": "withdraw",
            "reason": "insufficient_withdrawable_cash", "detail": "withdrawable 0.00"}
        refused = await client.post(f"/v1/accounts/{account_id}/withdrawals",
                                    json={"amount": "5.00"},
                                    headers={**bearer("alice"), "Idempotency-Key": "w1"})
        assert refused.status == 422
        assert (await refused.json())["code"] == "insufficient_withdrawable_cash"
        unknown = await client.get(f"/v1/accounts/{account_id}/commands/nope",
                                   headers=bearer("alice"))
        assert unknown.status == 404 and (await unknown.json())["code"] == "command_not_found"
        theirs = await client.get(outcome_path, headers=bearer("bob"))
        assert theirs.status == 404

    run(scenario, reply_wait_ms=20)


def test_an_acknowledged_order_is_readable_and_cancellable_before_it_lands() -> None:
    """Right after a 201/202 the shard may not have the order yet: its journaled place_order
    answers for it, to its owner only, and a cancel goes out for it."""
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        order_id = order_id_for(account_id, "k1")
        fakes.reader.journaled_orders[(account_id, order_id)] = {
            "order_id": order_id, "account_id": account_id, "symbol": "AAPL", "side": "buy",
            "order_type": "limit", "quantity": "2", "time_in_force": "day",
            "state": "pending", "filled_quantity": "0", "limit_price": "209.50",
            "stop_price": None, "idempotency_key": "k1", "created_at": NOW, "events": [],
            "detail": "accepted; its decision is not on record yet"}
        read = await client.get(f"/v1/orders/{order_id}", headers=bearer("alice"))
        assert read.status == 200 and (await read.json())["state"] == "pending"
        theirs = await client.get(f"/v1/orders/{order_id}", headers=bearer("bob"))
        assert theirs.status == 404
        cancel = await client.delete(f"/v1/orders/{order_id}", headers=bearer("alice"))
        assert cancel.status in (200, 202), await cancel.text()
        assert [type(m).__name__ for _, _, m in fakes.producer.produced] == ["CancelOrder"]

    run(scenario, reply_wait_ms=20)


def test_a_stream_ends_when_its_token_expires() -> None:
    """Order updates stop with the token that opened the stream: the client is told why and
    the stream closes (a fresh token opens a new one)."""
    from aiohttp import WSMsgType

    async def scenario(client: TestClient, fakes: Fakes) -> None:
        await new_account(client)
        # issued 899 s before the gateway's "now" with a 900 s life: one second left
        token = bearer("alice", NOW - dt.timedelta(seconds=899))["Authorization"].split()[1]
        async with client.ws_connect("/v1/stream") as ws:
            await ws.send_json({"op": "auth", "token": token})
            assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
            frames = []
            while True:
                message = await ws.receive(timeout=15)
                if message.type is not WSMsgType.TEXT:
                    break
                frames.append(message.json())
            assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
            assert ws.close_code == 4002
            assert [f.get("code") for f in frames if f["type"] == "error"] == ["token_expired"]

    run(scenario)


def test_portfolio_values_positions_at_the_latest_quotes() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "210.00", "210.10", last="210.05")
        fakes.reader.portfolios[account_id] = {
            "account_id": account_id, "cash": Decimal("1000.00"), "cash_held": Decimal("50.00"),
            "buying_power": Decimal("1000.00"), "as_of": NOW, "ledger_seq": 17,
            "positions": [
                {"symbol": "AAPL", "quantity": Decimal("2.5"), "average_cost": Decimal("200"),
                 "cost_basis": Decimal("500.00")},
                {"symbol": "XYZ", "quantity": Decimal("1"), "average_cost": Decimal("10"),
                 "cost_basis": Decimal("10.00")}]}
        response = await client.get(f"/v1/portfolio?account_id={account_id}",
                                    headers=bearer("alice"))
        assert response.status == 200
        body = await response.json()
        aapl, xyz = body["positions"]
        # 525.125 and 25.125 in cents, half to even; shares to 6 places, prices to the tick
        assert aapl["market_value"] == "525.12" and aapl["unrealized_pnl"] == "25.12"
        assert (aapl["quantity"], aapl["price"], aapl["average_cost"]) == (
            "2.500000", "210.05", "200.00")
        assert xyz["market_value"] is None
        assert body["equity"] == "1585.12"  # 1050.00 + 525.125 + 10.00, rounded once
        assert body["withdrawable_cash"] == "1000.00" and body["held_deposits"] == []
        assert body["ledger_seq"] == 17 and body["as_of"].startswith("2026-03-02T15:00")
        missing = await client.get("/v1/portfolio", headers=bearer("alice"))
        assert (await missing.json())["code"] == "missing_parameter"
        theirs = await client.get(f"/v1/portfolio?account_id={account_id}",
                                  headers=bearer("bob"))
        assert theirs.status == 404

    run(scenario)


def test_quotes_candles_and_operations() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "210.00", "210.10")
        response = await client.get("/v1/quotes?symbols=AAPL,TSLA", headers=bearer("alice"))
        body = await response.json()
        assert [q["symbol"] for q in body["quotes"]] == ["AAPL"] and body["missing"] == ["TSLA"]
        assert body["quotes"][0]["bid"] == "210.00"
        assert body["quote_age_ms_max"] == 60_000  # the risk check's limit, for stale marks
        bad = await client.get("/v1/quotes?symbols=AAPL,$$$", headers=bearer("alice"))
        assert (await bad.json())["code"] == "invalid_symbol"
        candles = await client.get("/v1/candles/AAPL?interval=5m", headers=bearer("alice"))
        assert (await candles.json())["candles"] == []
        bad_interval = await client.get("/v1/candles/AAPL?interval=2m", headers=bearer("alice"))
        assert bad_interval.status == 400
        metrics = await client.get("/metrics")
        text = await metrics.text()
        assert "http_requests_total{" in text and "# TYPE http_request_duration_seconds" in text
        assert (await client.get("/v1/openapi.json")).status == 200
        index = await (await client.get("/v1")).json()
        assert index["openapi"] == "/v1/openapi.json" and "/v1/orders" in index["paths"]
        spec = await (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.1")
        assert "post" in spec["paths"]["/v1/orders"]
        assert "OrderRequest" in spec["components"]["schemas"]
        interval = next(p for p in spec["paths"]["/v1/candles/{symbol}"]["get"]["parameters"]
                        if p["name"] == "interval")
        assert interval["schema"] == {"type": "string", "enum": ["1m", "5m", "1h", "1d"],
                                      "default": "1m"}
        unknown = await client.get("/v1/nothing")
        assert unknown.status == 404 and unknown.content_type == "application/problem+json"

    run(scenario)


def test_quotes_publish_the_configured_quote_age_limit() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        response = await client.get("/v1/quotes?symbols=AAPL", headers=bearer("alice"))
        body = await response.json()
        assert body == {"quotes": [], "missing": ["AAPL"], "quote_age_ms_max": 5000}

    run(scenario, quote_age_ms_max=5000)


def test_healthz_names_what_is_down() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.failing = True
        response = await client.get("/healthz")
        assert response.status == 503
        body = await response.json()
        assert body["code"] == "unhealthy"
        assert "broker" in body["down"] and "shard0" in body["down"]
        assert body["checks"]["redis"] == "ok"

    run(scenario)


def test_cancel_unknown_and_foreign_orders_are_404() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        order_id = order_id_for(account_id, "k1")
        fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(
            account_id, order_id, state="routed")
        theirs = await client.delete(f"/v1/orders/{order_id}", headers=bearer("bob"))
        assert theirs.status == 404
        nope = await client.delete("/v1/orders/ord_nope", headers=bearer("alice"))
        assert nope.status == 404
        mine = await client.delete(f"/v1/orders/{order_id}", headers=bearer("alice"))
        assert mine.status == 202
        [(_, key, command)] = fakes.producer.produced
        assert key == account_id and command.order_id == order_id
        fakes.reader.orders_by_id[(account_id, order_id)]["state"] = "filled"
        done = await client.delete(f"/v1/orders/{order_id}", headers=bearer("alice"))
        assert done.status == 409

    run(scenario, reply_wait_ms=20)


def test_an_order_key_every_memory_forgot_still_names_its_order() -> None:
    """Redis's record of a key expires after a day and the topology forgets keys after days
    (and closed orders after dozens), but the order id derives from the key alone: the
    gateway asks the shard, so the key still names its order. The same order again is that
    order; another one is 409 and nothing is sent (it would take the old order's ids)."""
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        assert (await place(client, account_id, "k1")).status == 201
        order_id = order_id_for(account_id, "k1")
        fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(
            account_id, order_id, state="filled")
        fakes.idempotency.records.clear()  # Redis's record expired
        again = await place(client, account_id, "k1")
        assert again.status == 200 and (await again.json())["order_id"] == order_id
        fakes.idempotency.records.clear()
        other = await place(client, account_id, "k1", quantity="11")
        assert other.status == 409, await other.text()
        assert (await other.json())["code"] == "idempotency_key_reused"
        assert fakes.idempotency.records == {}, "the other body's claim was not released"
        fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(
            account_id, order_id, quantity=Decimal(12),
            events=[{"event_id": f"{order_id}:3", "seq": 3, "state": "funds_held",
                     "occurred_at": NOW, "reason": "replaced", "payload": {}}])
        replaced_since = await place(client, account_id, "k1")
        assert replaced_since.status == 200, await replaced_since.text()
        assert len(fakes.producer.produced) == 1

    run(scenario)


def test_a_money_key_every_memory_forgot_still_names_its_command() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        path = f"/v1/accounts/{account_id}/deposits"
        headers = {**bearer("alice"), "Idempotency-Key": "d1"}
        assert (await client.post(path, json={"amount": "100.00"}, headers=headers)).status == 201
        fakes.reader.outcomes[(account_id, "d1")] = {
            "type": "command_accepted", "status": "accepted", "command_type": "deposit",
            "txn_id": "txn-1", "amount": "100.00"}
        fakes.idempotency.records.clear()  # Redis's record expired
        again = await client.post(path, json={"amount": "100"}, headers=headers)
        assert again.status == 200 and (await again.json())["txn_id"] == "txn-1"
        other = await client.post(path, json={"amount": "200.00"}, headers=headers)
        assert other.status == 409 and (await other.json())["code"] == "idempotency_key_reused"
        withdrawal = await client.post(f"/v1/accounts/{account_id}/withdrawals",
                                       json={"amount": "100.00"}, headers=headers)
        assert withdrawal.status == 409, "a key names one command of the account, any kind"
        # A refused command booked nothing: its key may carry another request.
        fakes.reader.outcomes[(account_id, "d2")] = {
            "type": "command_rejected", "status": "rejected", "command_type": "deposit",
            "reason": "deposit_limit"}
        retried = await client.post(path, json={"amount": "50.00"},
                                    headers={**bearer("alice"), "Idempotency-Key": "d2"})
        assert retried.status == 201, await retried.text()
        assert [type(m).__name__ for _, _, m in fakes.producer.produced] == ["Deposit", "Deposit"]

    run(scenario)
