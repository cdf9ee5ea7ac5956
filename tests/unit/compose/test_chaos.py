"""`brokerage chaos` without a stack: the seeded schedule, the fault kinds, the auditor's checks
and figures on records made by hand, and the ACH return's publish-until-decided loop.

python -m pytest -q tests/unit/compose/test_chaos.py
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from compose.chaos.auditor import Journal, MMOrder, Request, ShardRows, audit_records
from compose.chaos.client import REPUBLISH_AFTER_S, ChaosClient, ach_return_bytes
from compose.chaos.faults import KINDS, SERVICES, parse_faults, plan
from compose.cli import build_parser
from compose.exceptions import ComposeError
from state.messages import AchReturn
from state.topics import Topic, decode

# ---- the schedule ----------------------------------------------------------------------------


def test_a_seed_replays_the_same_schedule_and_another_seed_does_not() -> None:
    every = parse_faults("all")
    assert plan(42, every, 300, 2) == plan(42, every, 300, 2)
    assert plan(42, every, 300, 2) != plan(43, every, 300, 2)


def test_all_kinds_expand_to_every_service_and_shard_within_the_load() -> None:
    faults = plan(7, parse_faults("all"), 300, 2)
    kinds = {f.kind for f in faults}
    assert kinds == set(KINDS)
    assert sorted(f.target for f in faults if f.kind == "kill_service") == sorted(SERVICES)
    assert sorted(f.target for f in faults if f.kind == "kill_shard") == ["0", "1"]
    assert len([f for f in faults if f.kind == "freeze"]) == 2
    times = [f.planned_at_s for f in faults]
    assert times == sorted(times)
    assert 30 <= times[0] and times[-1] <= 240  # none in the first tenth nor the last fifth
    assert all(3 <= f.window_s <= 8 for f in faults if f.kind == "freeze")
    assert all(f.window_s > 0 for f in faults if f.kind.startswith("mm_"))
    assert all(500 <= f.latency_ms < 3000 for f in faults if f.kind == "mm_delay")


def test_a_target_picks_one_fault() -> None:
    faults = plan(1, parse_faults("kill_service:accounts, freeze:http,kill_shard:1"), 60, 2)
    assert sorted((f.kind, f.target) for f in faults) == [
        ("freeze", "http"), ("kill_service", "accounts"), ("kill_shard", "1")]


@pytest.mark.parametrize(("text", "says"), [
    ("kill_everything", "unknown fault kind 'kill_everything'"),
    ("kill_service:postgres", "unknown service 'postgres'"),
    ("kill_shard:first", "shard number"),
    (" , ", "no fault kinds"),
])
def test_unknown_faults_are_refused_with_what_is_known(text: str, says: str) -> None:
    with pytest.raises(ComposeError, match=says):
        parse_faults(text)


def test_the_command_line_takes_the_options() -> None:
    args = build_parser().parse_args(["chaos", "--seed", "5", "--minutes", "1.5", "--faults",
                                      "kill_redis,mm_delay", "--no-progress"])
    assert (args.seed, args.minutes, args.faults, args.progress) == (
        5, 1.5, "kill_redis,mm_delay", False)


# ---- the auditor on records made by hand ---------------------------------------------------


ACCOUNT = "acc-1"


def _records() -> tuple[Journal, ShardRows, list[MMOrder]]:
    """One deposit, one filled buy of 10 at 20.00, one ACH return of a second deposit: all
    agreeing."""
    journal = Journal(accounts={ACCOUNT: "u1"})
    journal.requests += [
        Request("deposit", "dep-1", ACCOUNT, "u1", {"amount": "1000.00"}, status=201),
        Request("deposit", "dep-2", ACCOUNT, "u1", {"amount": "50.00"}, status=201),
        Request("order", "ord-1", ACCOUNT, "u1", {"symbol": "AAPL", "side": "buy",
                                                  "quantity": "10", "order_type": "market"},
                status=201, order_id="o1"),
        Request("ach_return", "ach-1", ACCOUNT, "u1",
                {"deposit_idempotency_key": "dep-2", "amount": "50.00"}, status=200),
    ]
    shards = ShardRows()
    shards.orders["o1"] = {"order_id": "o1", "account_id": ACCOUNT, "symbol": "AAPL",
                           "side": "buy", "order_type": "market", "quantity": Decimal(10),
                           "state": "filled", "filled_quantity": Decimal(10),
                           "held_amount": Decimal(0)}
    shards.fills["o1"].append(("t-fill", "exec:sim:S-o1-2", Decimal("-200.00"), Decimal(10)))
    shards.transactions = 4
    shards.holdings[ACCOUNT]["USD"] = Decimal("800.00")
    shards.holdings[ACCOUNT]["AAPL"] = Decimal(10)
    for key, amount in (("dep-1", "1000.00"), ("dep-2", "50.00"), ("ach-1", "-50.00")):
        shards.booked_money[(ACCOUNT, key)] = Decimal(amount)
        shards.money_bookings[(ACCOUNT, key)] = 1
        shards.decisions[(ACCOUNT, key)] = "accepted"
    book = [MMOrder("o1", "o1", ACCOUNT, "AAPL", "buy", Decimal(10), Decimal(10),
                    Decimal("200.00"), "2")]
    return journal, shards, book


def test_records_that_agree_pass_with_nothing_lost_doubled_or_off() -> None:
    report = audit_records(*_records())
    assert report.ok, report.text()
    assert (report.figures.lost, report.figures.doubled, report.figures.cents_off) == (0, 0, 0)
    figures = report.as_json()
    assert (figures["passed"], figures["lost"], figures["doubled"], figures["cents_off"]) == (
        True, 0, 0, 0)


def test_an_acknowledged_order_missing_from_the_shard_is_lost() -> None:
    journal, shards, book = _records()
    del shards.orders["o1"]
    report = audit_records(journal, shards, book)
    assert not report.ok
    assert report.figures.lost == 1
    assert "is missing" in report.text()


def test_a_fill_booked_twice_is_doubled_and_cents_off() -> None:
    journal, shards, book = _records()
    shards.fills["o1"].append(("t-fill-2", "exec:sim:S-o1-2", Decimal("-200.00"), Decimal(10)))
    shards.holdings[ACCOUNT]["USD"] -= Decimal("200.00")
    shards.holdings[ACCOUNT]["AAPL"] += 10
    report = audit_records(journal, shards, book)
    assert set(report.failed()) >= {"no fill booked twice (execution ids unique)",
                                    "market maker's fills equal the ledger's, order by order"}
    assert report.figures.doubled == 2  # the ExecID twice, and more than the market maker filled
    assert report.figures.cents_off == 20000
    totals = next(c for c in report.checks if c.name.startswith("totals across accounts"))
    assert [f.split(":")[0] for f in totals.failures] == ["AAPL", "USD"]


def test_an_ach_return_told_refused_but_booked_fails_the_money_check() -> None:
    journal, shards, book = _records()
    journal.requests[-1].status = 422
    report = audit_records(journal, shards, book)
    money = next(c for c in report.checks if c.name.startswith("money commands"))
    assert money.failures == ["ach_return ach-1 of 50.00 on acc-1 answered 422 (refused) but "
                              "booked"]
    assert report.figures.cents_off == 5000  # the client believes it still has the 50.00


def test_a_money_command_booked_twice_is_doubled() -> None:
    journal, shards, book = _records()
    shards.money_bookings[(ACCOUNT, "dep-1")] = 2
    report = audit_records(journal, shards, book)
    assert report.figures.doubled == 1
    assert "booked 2 times" in report.text()


# ---- ACH returns: published again with the same bytes until decided --------------------------


class FakeProducer:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, account_id: str, value: bytes) -> None:
        self.published.append((account_id, value))


def test_an_ach_return_is_published_again_until_its_outcome_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    client = ChaosClient("http://unused", random.Random(1), producer=producer)
    client.journal.accounts[ACCOUNT] = "u1"
    outcomes: list[tuple[int | None, Any]] = [(404, {"code": "command_not_found"})] * 3 + [
        (200, {"status": "pending"}), (200, {"status": "accepted", "txn_id": "t"})]
    calls: list[str] = []

    def call(method: str, path: str, body: Any = None, user_id: str | None = None,
             key: str | None = None) -> tuple[int | None, Any]:
        calls.append(path)
        return outcomes.pop(0)

    clock = [1000.0]
    monkeypatch.setattr(client, "call", call)
    monkeypatch.setattr("compose.chaos.client.time.monotonic", lambda: clock[0])
    request = client.new("ach_return", ACCOUNT, {"deposit_idempotency_key": "dep-2",
                                                 "amount": "50.00",
                                                 "submitted_at": "2026-12-03T10:00:00+00:00"})
    assert len(producer.published) == 1 and not request.definite
    assert request in client.undecided
    client.send(request)  # not found, too soon to publish again
    assert len(producer.published) == 1
    clock[0] += REPUBLISH_AFTER_S
    client.send(request)  # still not found: published again, the same bytes
    assert producer.published == [producer.published[0]] * 2
    client.send(request)  # not found, too soon
    client.send(request)  # pending
    assert not request.definite
    client.send(request)  # accepted
    assert (request.status, request.acknowledged, request.definite) == (200, True, True)
    assert request not in client.undecided
    assert calls == [f"/v1/accounts/{ACCOUNT}/commands/{request.key}"] * 5
    command = decode(Topic.ORDERS_COMMANDS, producer.published[0][1])
    assert isinstance(command, AchReturn)
    assert (command.account_id, command.idempotency_key, command.deposit_idempotency_key) == (
        ACCOUNT, request.key, "dep-2")
    assert ach_return_bytes(request) == producer.published[0][1]



# ---- the load's requests are valid by the gateway's own rules --------------------------------


def test_every_request_of_the_load_is_well_formed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand operations against a stand-in API that acknowledges everything: each order,
    replace and money body passes the HTTP gateway's schema and validation (a 400 would be a
    definite answer and hide the load's intent), on prices near the quotes."""
    import msgspec

    from gateways.http import schemas
    from gateways.http.validation import check_replace_fits, validate_order, validate_replace
    from state.messages import OrderType

    producer = FakeProducer()
    client = ChaosClient("http://unused", random.Random(3), producer=producer)
    for n in range(4):
        client.journal.accounts[f"acc-{n}"] = "u1"
    quotes = {"quotes": [{"symbol": s, "bid": b, "ask": a} for s, b, a in (
        ("AAPL", "209.90", "210.00"), ("MSFT", "415.10", "415.20"), ("GME", "23.40", "23.41"),
        ("SPY", "545.00", "545.10"))]}
    orders: dict[str, dict[str, Any]] = {}

    def call(method: str, path: str, body: Any = None, user_id: str | None = None,
             key: str | None = None) -> tuple[int | None, Any]:
        if path.startswith("/v1/quotes"):
            return 200, quotes
        if method == "POST" and path == "/v1/orders":
            order = msgspec.convert(body, schemas.OrderRequest)
            validate_order(order)
            orders[f"o-{key}"] = body
            return 201, {"order_id": f"o-{key}"}
        if method == "PATCH":
            change = msgspec.convert(body, schemas.OrderReplaceRequest)
            target = orders[path.rsplit("/", 1)[1]]
            check_replace_fits(OrderType(target["order_type"]), Decimal(0),
                               validate_replace(change))
            return 200, {}
        if method == "POST":
            msgspec.convert(body, schemas.MoneyRequest)
            return 201, {}
        if path.startswith("/v1/accounts/") and "/commands/" in path:
            return 200, {"status": "accepted"}
        return 200, {}

    monkeypatch.setattr(client, "call", call)
    for _ in range(1000):
        client.retry_undecided()
        client.one_op()
    kinds = {r.kind for r in client.journal.requests}
    assert kinds == {"order", "cancel", "replace", "deposit", "withdrawal", "ach_return"}
    types = {(r.body["order_type"], r.body["side"]) for r in client.journal.requests
             if r.kind == "order"}
    assert types >= {("market", "buy"), ("market", "sell"), ("limit", "buy"),
                     ("limit", "sell"), ("stop", "buy"), ("stop", "sell")}
    assert any(r.body["quantity"] == "1000" for r in client.journal.requests
               if r.kind == "order")
    assert all(r.definite for r in client.journal.requests), [
        r for r in client.journal.requests if not r.definite][:3]
    assert producer.published
