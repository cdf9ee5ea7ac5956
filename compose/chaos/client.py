"""The load of a fault run: a client of the public API that keeps a journal of what it was told.

Every request carries an idempotency key and is retried with the same key and body until it
gets a definite answer (acknowledged, or refused for good): no answer, a 5xx or a 429 is not an
answer. The journal (`auditor.Journal`) is what the auditor compares with the market maker's
book and the shards.

`Client` is the load of the whole-stack crash test (tests/integration/compose/test_crash.py):
market, limit and 1,000-share orders, cancels, deposits and withdrawals. `ChaosClient` adds
stop orders, replaces (PATCH) and ACH returns, which have no HTTP entry point: the bank's side
produces `ach_return` to `orders.commands` and, as the README asks of any producer, publishes
it again with the same key and bytes until its outcome is readable from the shard
(`GET /v1/accounts/{account_id}/commands/{key}`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any, Protocol

from compose.chaos.auditor import Journal, Request

SYMBOLS = ("AAPL", "MSFT", "GME", "SPY")
FIRST_DEPOSIT = Decimal("60000.00")
LOAD_DEPOSIT_MAX = Decimal("2000.99")  # the load's own deposits: ACH returns take these only
HTTP_TIMEOUT_S = 10.0
CENT = Decimal("0.01")
# A command produced to the broker whose outcome the shard does not show yet is published
# again (same key, same bytes) this long after the last time.
REPUBLISH_AFTER_S = 5.0
# A cancel or replace of an order answered 201 may come before the order has landed in the
# shard the gateway reads: it is retried while answered 404, this many times.
NOT_FOUND_RETRIES = 20


class CommandProducer(Protocol):
    """Produces one command to `orders.commands` (keyed by its account)."""

    def publish(self, account_id: str, value: bytes) -> None: ...


@dataclass
class Client:
    """A load client that keeps a journal of what it was told. Requests without a definite
    answer (no answer, 5xx, 429) are kept and retried with the same key and body."""

    base_url: str
    rng: random.Random
    journal: Journal = field(default_factory=Journal)
    tokens: dict[str, str] = field(default_factory=dict)
    undecided: list[Request] = field(default_factory=list)
    resting: list[Request] = field(default_factory=list)  # acknowledged limit orders to cancel
    quotes: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    quotes_at: float = 0.0
    counter: int = 0
    key_prefix: str = ""  # distinct per client when several share accounts' key space
    account_shards: dict[str, int] = field(default_factory=dict)  # account_id -> shard

    # ---- HTTP --------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, user_id: str | None = None,
             key: str | None = None) -> tuple[int | None, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if user_id is not None:
            request.add_header("Authorization", f"Bearer {self._token(user_id)}")
        if key is not None:
            request.add_header("Idempotency-Key", key)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw) if raw else None
            except ValueError:
                return error.code, raw.decode(errors="replace")
        except (OSError, ValueError) as error:  # refused, reset, timed out, torn answer
            return None, repr(error)

    def _token(self, user_id: str) -> str:
        if user_id not in self.tokens:
            status, body = self.call("POST", "/v1/auth/token", {"user_id": user_id})
            if status not in (200, 201):
                raise ConnectionError(f"login {user_id}: {status} {body}")
            self.tokens[user_id] = body["token"]
        return self.tokens[user_id]

    def send(self, request: Request) -> Request:
        """One attempt; the answer goes into the journal entry."""
        request.attempts += 1
        try:
            status, answer = self._attempt(request)
        except ConnectionError as error:  # the login itself got no answer
            status, answer = None, repr(error)
        if status == 401:
            self.tokens.pop(request.user_id, None)
        if (request.kind in ("cancel", "replace") and status == 404
                and request.attempts < NOT_FOUND_RETRIES):
            # An order answered 201 may not have landed in the shard the gateway reads yet:
            # the cancel is retried until the order is found (bounded).
            status = None
        if request.acknowledged and status not in (200, 201, 202):
            # Never downgrade what the client was told: a retry of an acknowledged request
            # does not happen, but keep the rule explicit.
            return request
        request.status, request.answer = status, answer
        if request.kind == "order" and request.acknowledged and isinstance(answer, dict):
            request.order_id = answer.get("order_id")
        if not request.definite and request not in self.undecided:
            self.undecided.append(request)
        if request.definite and request in self.undecided:
            self.undecided.remove(request)
        return request

    def _attempt(self, request: Request) -> tuple[int | None, Any]:
        user = request.user_id
        if request.kind == "order":
            return self.call("POST", "/v1/orders", request.body, user, request.key)
        if request.kind in ("deposit", "withdrawal"):
            path = f"/v1/accounts/{request.account_id}/{request.kind}s"
            return self.call("POST", path, request.body, user, request.key)
        if request.kind == "cancel":
            return self.call("DELETE", f"/v1/orders/{request.order_id}?account_id="
                             f"{request.account_id}", None, user, request.key)
        if request.kind == "replace":
            return self.call("PATCH", f"/v1/orders/{request.order_id}", request.body, user,
                             request.key)
        raise AssertionError(request.kind)

    def new(self, kind: str, account_id: str, body: dict[str, Any],
            order_id: str | None = None) -> Request:
        self.counter += 1
        request = Request(kind=kind, key=f"{self.key_prefix}{kind[:3]}-{self.counter:05d}",
                          account_id=account_id, user_id=self.journal.accounts[account_id],
                          body=body, order_id=order_id)
        self.journal.requests.append(request)
        return self.send(request)

    # ---- setup -------------------------------------------------------------------------

    def open_account(self, user_id: str, key: str, attempts: int = 20) -> str:
        """POST /v1/accounts with an idempotency key (the key names the account and its
        shard), retried (bounded) until answered; returns the account id."""
        status, account = None, None
        for _ in range(attempts):  # bounded: the stack is up and healthy here
            status, account = self.call("POST", "/v1/accounts", {}, user_id, key)
            if status in (200, 201):
                break
            time.sleep(0.5)
        if status not in (200, 201) or not isinstance(account, dict):
            raise ConnectionError(f"POST /v1/accounts for {user_id}: {status} {account}")
        self.journal.accounts[account["account_id"]] = user_id
        self.account_shards[account["account_id"]] = int(account["shard"])
        return str(account["account_id"])

    def open_accounts(self, count: int, deposit: Decimal = FIRST_DEPOSIT) -> None:
        for n in range(count):
            self.open_account(f"crash-user-{n}", f"acct-{n}")
        for account_id in self.journal.accounts:
            self.new("deposit", account_id, {"amount": str(deposit)})

    def refresh_quotes(self, max_age_s: float = 2.0) -> bool:
        if self.quotes and time.monotonic() - self.quotes_at < max_age_s:
            return True
        user = next(iter(self.journal.accounts.values()))
        status, body = self.call("GET", f"/v1/quotes?symbols={','.join(SYMBOLS)}", None, user)
        if status != 200 or not isinstance(body, dict):
            return False
        for quote in body.get("quotes", []):
            self.quotes[quote["symbol"]] = (Decimal(str(quote["bid"])), Decimal(str(quote["ask"])))
        self.quotes_at = time.monotonic()
        return all(symbol in self.quotes for symbol in SYMBOLS)

    # ---- the load ----------------------------------------------------------------------

    def shares_believed(self, account_id: str, symbol: str) -> Decimal:
        """Shares the client thinks it has: acknowledged buys less acknowledged sells (a sell
        beyond what was filled is refused with a reason; that is a definite answer too)."""
        total = Decimal(0)
        for request in self.journal.requests:
            if (request.kind == "order" and request.acknowledged
                    and request.account_id == account_id and request.body["symbol"] == symbol
                    and request.body["order_type"] == "market"):
                sign = 1 if request.body["side"] == "buy" else -1
                total += sign * Decimal(request.body["quantity"])
        return total

    def order(self, account_id: str, symbol: str, side: str, order_type: str, quantity: int,
              limit: Decimal | None = None, tif: str = "day",
              stop: Decimal | None = None) -> Request:
        body: dict[str, Any] = {"account_id": account_id, "symbol": symbol, "side": side,
                                "order_type": order_type, "quantity": str(quantity),
                                "time_in_force": tif}
        if limit is not None:
            body["limit_price"] = str(limit.quantize(CENT, ROUND_DOWN))
        if stop is not None:
            body["stop_price"] = str(stop.quantize(CENT, ROUND_DOWN))
        return self.new("order", account_id, body)

    def draw(self) -> tuple[str, str, float, Decimal, Decimal]:
        """An operation's account, symbol and roll, drawn from the seed, and the symbol's
        bid and ask as last read."""
        rng = self.rng
        account_id = rng.choice(sorted(self.journal.accounts))
        symbol = rng.choice(SYMBOLS)
        roll = rng.random()
        self.refresh_quotes()
        bid, ask = self.quotes.get(symbol, (Decimal("20"), Decimal("20")))
        return account_id, symbol, roll, bid, ask

    def one_op(self) -> None:
        rng = self.rng
        account_id, symbol, roll, bid, ask = self.draw()

        def order(side: str, order_type: str, quantity: int, limit: Decimal | None = None,
                  tif: str = "day") -> Request:
            return self.order(account_id, symbol, side, order_type, quantity, limit, tif)

        if roll < 0.28:
            order("buy", "market", rng.randint(1, 5))
        elif roll < 0.32:
            symbol = "GME"  # at least partial_fill_qty_min: three fills of 40/30/30 %
            order("buy", "market", 1000)
        elif roll < 0.47:
            held = self.shares_believed(account_id, symbol)
            if held >= 1:
                order("sell", "market", rng.randint(1, int(min(held, Decimal(1000)))))
            else:
                order("buy", "market", rng.randint(1, 3))
        elif roll < 0.55:
            order("buy", "limit", rng.randint(1, 3), ask * Decimal("1.02"))  # marketable
        elif roll < 0.70:
            placed = order("buy", "limit", rng.randint(1, 3), bid * Decimal("0.8"), "gtc")
            if placed.acknowledged:
                self.resting.append(placed)
        elif roll < 0.73 and self.shares_believed(account_id, symbol) >= 1:
            placed = order("sell", "limit", 1, ask * Decimal("1.25"), "gtc")
            if placed.acknowledged:
                self.resting.append(placed)
        elif roll < 0.85 and self.resting:
            target = self.resting.pop(rng.randrange(len(self.resting)))
            if target.order_id:
                self.new("cancel", target.account_id, {}, order_id=target.order_id)
        elif roll < 0.95:
            amount = f"{rng.randint(100, 2000)}.{rng.randint(0, 99):02d}"
            self.new("deposit", account_id, {"amount": amount})
        else:
            self.new("withdrawal", account_id, {"amount": f"{rng.randint(1, 50)}.00"})

    def retry_undecided(self, limit: int = 3) -> None:
        for request in list(self.undecided)[:limit]:
            self.send(request)
            if request.status == 429:
                time.sleep(0.2)

    def _unanswered(self) -> bool:
        """The latest request without a definite answer got no answer at all: the stack
        does not answer."""
        return bool(self.undecided) and self.undecided[-1].status is None \
            and self.undecided[-1].kind != "ach_return"

    def run(self, stop: threading.Event, ops_max: int, pace_s: float = 0.0) -> int:
        """The load until `stop` (or `ops_max` operations): each operation, then a few retries
        of requests without a definite answer; `pace_s` between operations. Returns how many
        operations ran."""
        done = 0
        while not stop.is_set() and done < ops_max:
            self.retry_undecided()
            if stop.is_set():
                break
            if self._unanswered():
                # The stack does not answer: back off rather than pile up new requests.
                stop.wait(0.5)
                continue
            self.one_op()
            done += 1
            if pace_s > 0:
                stop.wait(pace_s)
        return done

    def settle_requests(self, timeout_s: float) -> None:
        """Retry (same key, same body) every request without a definite answer until it has
        one, bounded in time."""
        deadline = time.monotonic() + timeout_s
        while self.undecided and time.monotonic() < deadline:
            self.retry_undecided(limit=len(self.undecided))
            if self.undecided:
                time.sleep(0.5)


@dataclass
class ChaosClient(Client):
    """The fault run's load: `Client`'s, with stop orders, replaces and ACH returns, on the
    accounts given to it (each worker of a run has accounts of its own)."""

    producer: CommandProducer | None = None  # for ACH returns; None: none are sent
    published_at: dict[str, float] = field(default_factory=dict)  # ACH return key -> time

    def _attempt(self, request: Request) -> tuple[int | None, Any]:
        if request.kind == "ach_return":
            return self._ach_return_attempt(request)
        return super()._attempt(request)

    def _ach_return_attempt(self, request: Request) -> tuple[int | None, Any]:
        """Publish when due, else read the outcome: accepted is the client's 200, refused its
        422; not decided yet (pending, or not found: a record the broker lost) is no answer."""
        published = self.published_at.get(request.key)
        if published is not None:
            status, outcome = self.call(
                "GET", f"/v1/accounts/{request.account_id}/commands/{request.key}",
                None, request.user_id)
            if status == 200 and isinstance(outcome, dict):
                if outcome.get("status") == "accepted":
                    return 200, outcome
                if outcome.get("status") == "rejected":
                    return 422, outcome
            if time.monotonic() - published < REPUBLISH_AFTER_S:
                return None, outcome
        assert self.producer is not None
        try:
            self.producer.publish(request.account_id, ach_return_bytes(request))
        except Exception as error:  # noqa: BLE001 - the broker may be down: try again later
            return None, f"not published: {error!r}"
        self.published_at[request.key] = time.monotonic()
        return None, "published"

    def one_op(self) -> None:
        rng = self.rng
        account_id, symbol, roll, bid, ask = self.draw()
        held = self.shares_believed(account_id, symbol)

        def rest(placed: Request) -> None:
            if placed.acknowledged:
                self.resting.append(placed)

        if roll < 0.20:
            self.order(account_id, symbol, "buy", "market", rng.randint(1, 5))
        elif roll < 0.24:  # at least partial_fill_qty_min: three fills of 40/30/30 %
            self.order(account_id, "GME", "buy", "market", 1000)
        elif roll < 0.33:
            if held >= 1:
                self.order(account_id, symbol, "sell", "market",
                           rng.randint(1, int(min(held, Decimal(1000)))))
            else:
                self.order(account_id, symbol, "buy", "market", rng.randint(1, 3))
        elif roll < 0.38:  # marketable limit
            self.order(account_id, symbol, "buy", "limit", rng.randint(1, 3),
                       ask * Decimal("1.02"))
        elif roll < 0.47:  # resting limit buy
            rest(self.order(account_id, symbol, "buy", "limit", rng.randint(1, 3),
                            bid * Decimal(rng.choice(("0.80", "0.90", "0.95"))), "gtc"))
        elif roll < 0.50 and held >= 1:  # resting limit sell
            rest(self.order(account_id, symbol, "sell", "limit", 1, ask * Decimal("1.25"),
                            "gtc"))
        elif roll < 0.56:  # stop buy a few basis points above the ask: some trigger
            stop = (ask * Decimal(rng.choice(("1.0005", "1.001", "1.003")))).quantize(
                CENT, ROUND_UP)
            rest(self.order(account_id, symbol, "buy", "stop", rng.randint(1, 3), stop=stop,
                            tif="gtc"))
        elif roll < 0.59 and held >= 1:  # stop sell (a stop loss) below the bid
            stop = bid * Decimal(rng.choice(("0.9995", "0.999", "0.997")))
            rest(self.order(account_id, symbol, "sell", "stop", 1, stop=stop, tif="gtc"))
        elif roll < 0.66 and self.resting:
            target = self.resting.pop(rng.randrange(len(self.resting)))
            if target.order_id:
                self.new("cancel", target.account_id, {}, order_id=target.order_id)
        elif roll < 0.73 and self.resting:
            self._replace(self.resting[rng.randrange(len(self.resting))])
        elif roll < 0.84:
            amount = f"{rng.randint(100, 2000)}.{rng.randint(0, 99):02d}"
            self.new("deposit", account_id, {"amount": amount})
        elif roll < 0.91:
            self.new("withdrawal", account_id, {"amount": f"{rng.randint(1, 50)}.00"})
        elif roll < 0.95 and self.producer is not None:
            self._ach_return(account_id)
        else:
            self.order(account_id, symbol, "buy", "limit", rng.randint(1, 3),
                       ask * Decimal("1.01"), "ioc")

    def _replace(self, target: Request) -> None:
        """New terms for a resting order: a price nearer the market (sometimes through it)
        or one more share."""
        if not target.order_id:
            return
        rng, body = self.rng, target.body
        bid, ask = self.quotes.get(body["symbol"], (Decimal("20"), Decimal("20")))
        change: dict[str, Any] = {"account_id": target.account_id}
        if rng.random() < 0.3:
            change["quantity"] = str(int(Decimal(body["quantity"])) + 1)
        elif body["order_type"] == "limit":
            factor = Decimal(rng.choice(("0.85", "0.97", "1.01")) if body["side"] == "buy"
                             else rng.choice(("1.2", "1.1")))
            change["limit_price"] = str(((bid if body["side"] == "buy" else ask) * factor)
                                        .quantize(CENT, ROUND_DOWN))
        else:
            factor = Decimal(rng.choice(("1.002", "1.0005")) if body["side"] == "buy"
                             else rng.choice(("0.998", "0.9995")))
            change["stop_price"] = str(((ask if body["side"] == "buy" else bid) * factor)
                                       .quantize(CENT, ROUND_UP))
        self.new("replace", target.account_id, change, order_id=target.order_id)

    def _ach_return(self, account_id: str) -> None:
        """The bank returns one of the account's load deposits (not the first, large one),
        each at most once; none left: a deposit instead."""
        returned = {r.body["deposit_idempotency_key"] for r in self.journal.requests
                    if r.kind == "ach_return"}
        deposits = [r for r in self.journal.requests
                    if r.kind == "deposit" and r.account_id == account_id
                    and r.status in (200, 201) and r.key not in returned
                    and Decimal(r.body["amount"]) <= LOAD_DEPOSIT_MAX]
        if not deposits:
            amount = f"{self.rng.randint(100, 2000)}.{self.rng.randint(0, 99):02d}"
            self.new("deposit", account_id, {"amount": amount})
            return
        deposit = deposits[self.rng.randrange(len(deposits))]
        now = dt.datetime.now(dt.UTC).isoformat()
        self.new("ach_return", account_id, {"deposit_idempotency_key": deposit.key,
                                            "amount": deposit.body["amount"],
                                            "submitted_at": now})


def ach_return_bytes(request: Request) -> bytes:
    """The `ach_return` command of a journal entry, the same bytes every time."""
    from state.messages import AchReturn
    from state.topics import encode

    return encode(AchReturn(
        account_id=request.account_id, idempotency_key=request.key,
        deposit_idempotency_key=request.body["deposit_idempotency_key"],
        submitted_at=dt.datetime.fromisoformat(request.body["submitted_at"])))
