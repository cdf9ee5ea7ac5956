"""Durable intake at the HTTP surface (fakes): every command the gateway produces is journaled
first with the exact bytes it produces; no journal, no acknowledgement; what the broker did not
take leaves the journal; a refusal the client is told about is not replayed."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from state import topics as t
from state.ids import order_id_for
from state.messages import CancelOrder, Deposit, PlaceOrder, ReplaceOrder, Withdraw
from tests.unit.gateways.test_http_api import (
    ORDER,
    accept_everything,
    bearer,
    new_account,
    place,
    run,
)
from tests.unit.gateways.test_http_fakes import Fakes, quote, shard_order


async def money(client: TestClient, account_id: str, kind: str, key: str, amount: str) -> Any:
    return await client.post(f"/v1/accounts/{account_id}/{kind}", json={"amount": amount},
                             headers={**bearer("alice"), "Idempotency-Key": key})


def test_every_command_produced_is_journaled_first_with_its_bytes() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        assert (await money(client, account_id, "deposits", "dep-1", "100.00")).status == 201
        assert (await money(client, account_id, "withdrawals", "wd-1", "5.00")).status == 202
        assert (await place(client, account_id, "ord-1")).status == 201
        order_id = order_id_for(account_id, "ord-1")
        fakes.reader.orders_by_id[(account_id, order_id)] = shard_order(account_id, order_id)
        patched = await client.patch(f"/v1/orders/{order_id}",
                                     json={"account_id": account_id, "quantity": "12"},
                                     headers={**bearer("alice"), "Idempotency-Key": "rep-1"})
        assert patched.status == 202, await patched.text()
        cancelled = await client.delete(f"/v1/orders/{order_id}", headers=bearer("alice"))
        assert cancelled.status == 202
        produced = [message for _topic, _key, message in fakes.producer.produced]
        assert [type(m) for m in produced] == [Deposit, Withdraw, PlaceOrder, ReplaceOrder,
                                               CancelOrder]
        for number, message in enumerate(produced):
            row = fakes.journal.rows[(account_id, message.idempotency_key)]
            assert row["entry"].payload == t.encode(message)
            assert row["produced_before"] == number  # written before it was produced
        assert fakes.journal.rows[(account_id, "ord-1")]["entry"].order_id == order_id

    run(scenario)


def test_a_shard_that_cannot_journal_is_503_and_nothing_is_sent() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.quotes.quotes["AAPL"] = quote("AAPL", "209.40", "209.45")
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        fakes.journal.failing = True
        refused = await place(client, account_id, "k1")
        assert refused.status == 503
        assert refused.content_type == "application/problem+json"
        assert (await refused.json())["code"] == "store_unavailable"
        assert refused.headers["Retry-After"] == "1"
        deposit = await money(client, account_id, "deposits", "dep-1", "10.00")
        assert deposit.status == 503 and (await deposit.json())["code"] == "store_unavailable"
        assert fakes.producer.produced == []
        assert fakes.idempotency.records == {}  # the key is free for the retry
        fakes.journal.failing = False
        retried = await place(client, account_id, "k1")
        assert retried.status == 201
        assert (account_id, "k1") in fakes.journal.rows

    run(scenario)


def test_a_command_the_broker_did_not_take_leaves_the_journal() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        fakes.producer.failing = True
        down = await place(client, account_id, "k1")
        assert down.status == 503 and (await down.json())["code"] == "broker_unavailable"
        assert fakes.journal.rows == {}
        fakes.producer.failing = False
        assert (await place(client, account_id, "k1")).status == 201
        assert (account_id, "k1") in fakes.journal.rows

    run(scenario)


def test_a_retry_claims_the_row_so_the_first_requests_failure_cannot_take_it_back() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        account_id = await new_account(client)
        entry_of = fakes.journal.rows.get
        first = await money(client, account_id, "deposits", "dep-1", "10.00")
        assert first.status == 202  # nobody answers: pending
        row = entry_of((account_id, "dep-1"))
        assert row is not None
        first_claim = row["claim"]
        again = await money(client, account_id, "deposits", "dep-1", "10.00")
        assert again.status == 202
        assert len(fakes.journal.rows) == 1 and row["claim"] != first_claim
        assert not await fakes.journal.withdraw(account_id, "dep-1", first_claim)

    run(scenario)


def test_a_refusal_told_to_the_client_is_not_replayed_but_a_reused_key_is_kept() -> None:
    async def scenario(client: TestClient, fakes: Fakes) -> None:
        fakes.producer.respond = accept_everything
        account_id = await new_account(client)
        rejected = await place(client, account_id, "big", quantity="5000")
        assert rejected.status == 422
        assert fakes.journal.rows[(account_id, "big")]["decided"]
        refused = await money(client, account_id, "deposits", "dep-big", "9000.00")
        assert refused.status == 422
        assert fakes.journal.rows[(account_id, "dep-big")]["decided"]
        placed = await place(client, account_id, "ok")
        assert placed.status == 201
        assert not fakes.journal.rows[(account_id, "ok")]["decided"]
        first = fakes.journal.rows[(account_id, "ok")]["entry"]
        other = await client.post("/v1/orders", json={**ORDER, "account_id": account_id,
                                                      "quantity": "11"},
                                  headers={**bearer("alice"), "Idempotency-Key": "ok"})
        assert other.status == 409
        assert fakes.journal.rows[(account_id, "ok")]["entry"] == first  # the first body

    run(scenario)
