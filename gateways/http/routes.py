"""The HTTP API handlers and the route table (which the OpenAPI document is generated from)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from gateways.exceptions import KeyNamedAnOrder
from gateways.fix.best_execution import best_execution_report, prometheus_text
from gateways.http import answers
from gateways.http import schemas as s
from gateways.http.auth import bearer_token, issue_token
from gateways.http.bus import BrokerUnavailable
from gateways.http.context import Gateway, gateway_of
from gateways.http.limits import QUOTES
from gateways.http.portfolio import value_portfolio
from gateways.http.problems import Problem
from gateways.http.replies import (
    answers_cancel,
    answers_money_command,
    answers_placement,
    answers_replace,
)
from gateways.http.validation import (
    ValidOrder,
    ValidReplace,
    check_replace_fits,
    parse_amount,
    validate_order,
    validate_replace,
)
from state.domain.money import money_text, price_text, shares_text
from state.domain.risk import Reason
from state.exceptions import StoreError
from state.health import (
    CHECK_TIMEOUT_S,
    dependency_checks,
    down_of,
    overall,
    redis_error,
    shard_error,
)
from state.ids import order_id_for
from state.intake_journal import JournalEntry, new_claim
from state.messages import (
    TERMINAL_ORDER_STATES,
    CancelOrder,
    CommandAccepted,
    CommandRejected,
    Deposit,
    Message,
    OrderEvent,
    OrderState,
    OrderType,
    PlaceOrder,
    Quote,
    ReplaceOrder,
    Side,
    Withdraw,
    normalise_symbol,
)
from state.topics import Topic

T = TypeVar("T")
log = logging.getLogger(__name__)
COMMANDS = (PlaceOrder, CancelOrder, ReplaceOrder, Deposit, Withdraw)  # what the gateway sends
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ENCODER = msgspec.json.Encoder(decimal_format="string")
_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
_ACCOUNT_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
CANDLE_INTERVALS = ("1m", "5m", "1h", "1d")
QUOTE_SYMBOLS_MAX = 100
ORDERS_LIMIT_MAX = 500


# ---- plumbing ------------------------------------------------------------------------------


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=_ENCODER.encode(body), status=status,
                        content_type="application/json", headers=headers)


async def decode_body(request: web.Request, kind: type[T]) -> tuple[T, bytes]:
    """The request body as `kind` and its raw bytes; 400/413/415/422 problems otherwise."""
    content_type = request.headers.get("Content-Type", "application/json")
    if "json" not in content_type:
        raise Problem(415, "unsupported_media_type", "send application/json")
    raw = await request.read()  # aiohttp answers 413 past client_max_size
    try:
        return msgspec.json.decode(raw or b"{}", type=kind), raw
    except msgspec.ValidationError as error:
        raise Problem(422, "invalid_field", str(error)) from error
    except msgspec.DecodeError as error:
        raise Problem(400, "malformed_json", f"body is not valid JSON: {error}") from error


async def authenticate(request: web.Request, bucket: str) -> str:
    """The caller's user id; spends one request of their `bucket` budget."""
    user_id, now = await verified_user(request)
    await spend(gateway_of(request), user_id, bucket, now)
    return user_id


async def verified_user(request: web.Request) -> tuple[str, dt.datetime]:
    """The caller's user id (Problem 401 otherwise, 503 when the identity provider's keys
    cannot be fetched) and the time it was checked at; no budget spent yet (`spend`)."""
    gateway = gateway_of(request)
    now = gateway.clock()
    verified = await gateway.tokens.verify(bearer_token(request.headers.get("Authorization")),
                                           int(now.timestamp()))
    return verified.user_id, now


def _budget(gateway: Gateway, bucket: str) -> int:
    return (gateway.config.orders_per_s_max if bucket == "orders"
            else gateway.config.reads_per_s_max)


async def spend(gateway: Gateway, user_id: str, bucket: str, now: dt.datetime) -> None:
    await gateway.limiter.hit(user_id, bucket, _budget(gateway, bucket),
                              int(now.timestamp() * 1000))


def idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise Problem(400, "missing_idempotency_key", "Idempotency-Key header required")
    if not _IDEMPOTENCY_KEY_RE.match(key):
        raise Problem(400, "invalid_idempotency_key",
                      "Idempotency-Key must be 1-64 printable ASCII characters")
    return key


def _not_found(what: str) -> Problem:
    return Problem(404, f"{what}_not_found", f"no such {what}")


async def owned_account(gateway: Gateway, user_id: str, account_id: str) -> str:
    """`account_id` when the user owns it; 404 for unknown and for someone else's account,
    so a probe cannot tell which ids exist."""
    if not _ACCOUNT_ID_RE.match(account_id):
        raise _not_found("account")
    owner = gateway.owners.get(account_id)
    if owner is None:
        account = await gateway.reader.account(account_id)
        if account is None:
            raise _not_found("account")
        owner = str(account["user_id"])
        gateway.owners[account_id] = owner
    if owner != user_id:
        raise _not_found("account")
    return account_id


def query_account(request: web.Request) -> str:
    account_id = request.query.get("account_id")
    if not account_id:
        raise Problem(400, "missing_parameter", "account_id query parameter required",
                      field="account_id")
    return account_id


async def send_command(gateway: Gateway, message: Message, account_id: str) -> None:
    """Journal the command in the account's shard, then produce it: what the broker took is
    durable before any answer says so (gateways.http.journal replays it after a reset). A
    shard that cannot be written is a 503 with nothing sent; a command the broker did not take
    is taken out of the journal again (when no retry of the same key claimed it since)."""
    claim = await _journal(gateway, message)
    try:
        await gateway.producer.produce(gateway.topic(Topic.ORDERS_COMMANDS), account_id, message)
    except BrokerUnavailable as error:
        gateway.metrics.commands.inc(outcome="broker_unavailable")
        if claim is not None:
            await _withdraw(gateway, account_id, message, claim)
        raise Problem(503, "broker_unavailable", f"the command was not taken: {error}",
                      headers={"Retry-After": "1"}) from error
    gateway.metrics.commands.inc(outcome="produced", type=type(message).__name__)


async def _journal(gateway: Gateway, message: Message) -> str | None:
    """Journal the command; returns its claim. A place order whose key already named an order
    in the shard is not journaled (KeyNamedAnOrder): the account topology forgets keys after
    days and closed orders after dozens, the order id derives from the key alone, and the
    shard keeps the first row of each id, so the order would take the old one's ids and the
    shard would disagree with the account's books. The journal's transaction looks it up."""
    if gateway.journal is None:
        return None
    claim = new_claim()
    assert isinstance(message, COMMANDS), f"{type(message).__name__} is not a command"
    entry = JournalEntry.of(message)
    try:
        on_record = await gateway.journal.write(entry, claim)
    except StoreError as error:
        gateway.metrics.commands.inc(outcome="journal_unavailable")
        raise Problem(503, "store_unavailable",
                      f"the command could not be journaled; nothing was sent: {error}",
                      headers={"Retry-After": "1"}) from error
    if on_record is not None:
        assert entry.order_id is not None, "only a place order's key names an order"
        raise KeyNamedAnOrder(entry.order_id, on_record)
    return claim


async def _withdraw(gateway: Gateway, account_id: str, message: Message, claim: str) -> None:
    assert isinstance(message, COMMANDS)
    key = message.idempotency_key
    try:
        await gateway.journal.withdraw(account_id, key, claim)
    except StoreError as error:
        # Left in the journal, the command is published when the broker is back: a retry
        # with the same key finds it decided.
        log.warning("journal entry %s/%s not withdrawn: %s", account_id, key, error)


def _refusal(answer: Any) -> bool:
    """The topology refused the command itself (not as another body's key)."""
    if isinstance(answer, CommandRejected):
        return answer.reason != Reason.DUPLICATE_IDEMPOTENCY_KEY
    return isinstance(answer, OrderEvent) and answer.state == OrderState.REJECTED


async def _note_refusal(gateway: Gateway, account_id: str, key: str) -> None:
    """A refusal the client is told about is final: the journal must not replay the command
    after a reset that lost the refusal (a second decision could accept it)."""
    try:
        await gateway.journal.mark_decided(account_id, key)
    except StoreError as error:
        log.warning("journal entry %s/%s not marked decided: %s", account_id, key, error)


async def request_reply(gateway: Gateway, message: Message, account_id: str, key: str,
                        predicate: Callable[[Any], bool]) -> Any | None:
    """Produce `message` and wait (bounded) for the event that answers it; None on timeout.
    The future is registered before producing, so a fast answer cannot be missed."""
    future = gateway.replies.expect(account_id, key, predicate)
    try:
        await send_command(gateway, message, account_id)
        answer = await gateway.replies.wait(future, gateway.config.reply_wait_ms / 1000)
    finally:
        gateway.replies.forget(account_id, key, future)
    if gateway.journal is not None and _refusal(answer):
        await _note_refusal(gateway, account_id, key)
    gateway.metrics.replies.inc(outcome="timeout" if answer is None else "answered")
    return answer


def key_reused(answer: Any) -> Problem | None:
    """The 409 for the topology's refusal of a key already used with another body: the same
    answer the Redis pre-check gives, whichever of the two caught it."""
    if isinstance(answer, CommandRejected) and answer.reason == Reason.DUPLICATE_IDEMPOTENCY_KEY:
        return Problem(409, "idempotency_key_reused",
                       answer.detail or "this Idempotency-Key was already used with a "
                       "different request", reason=answer.reason)
    return None


async def refuse_reused_key(gateway: Gateway, answer: Any, claimed: bool | None, scope: str,
                            key: str, fingerprint: str) -> None:
    """Raise the 409 when the topology refused the key as another body's. A claim this
    request made in Redis (the key's record had expired, or Redis was skipped) is released:
    the key belongs to the other body, and its retry must not be refused."""
    reused = key_reused(answer)
    if reused is None:
        return
    if claimed:
        await gateway.idempotency.release(scope, key, fingerprint)
    raise reused


# ---- auth and accounts ---------------------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    if not gateway.config.demo_login:
        raise Problem(404, "demo_login_disabled",
                      "the demo login is off: sign in with this deployment's identity provider "
                      "(a stack file turns the demo login on with [http] demo_login = true)")
    body, _ = await decode_body(request, s.TokenRequest)
    now = gateway.clock()
    ttl_s = gateway.config.token_ttl_s
    token = issue_token(gateway.config.token_secret, body.user_id, int(now.timestamp()), ttl_s)
    expires_at = dt.datetime.fromtimestamp(int(now.timestamp()) + ttl_s, dt.UTC)
    return json_response(s.TokenReply(token=token, token_type="Bearer", expires_at=expires_at),
                         201)


async def create_account(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "orders")
    await decode_body(request, s.AccountCreate)
    if "Idempotency-Key" in request.headers:
        # A retried request names the same account: the shard follows from the seed alone.
        seed = f"{user_id}\x1f{idempotency_key(request)}"
        account_id, shard = gateway.router.new_account_id(seed)
    else:  # a fresh account on the least loaded shard
        loads = await gateway.reader.shard_loads() if hasattr(gateway.reader, "shard_loads") \
            else None
        account_id, shard = gateway.router.new_account_id(uuid.uuid4().hex, loads)
    account = await gateway.reader.create_account(user_id, account_id, shard)
    if account["user_id"] != user_id:  # the key's account belongs to someone else
        raise Problem(409, "idempotency_key_reused", "this Idempotency-Key names another account")
    gateway.owners[account_id] = user_id
    if gateway.hub is not None:
        gateway.hub.account_created(user_id, account_id, gateway)
    return json_response(answers.account(account), 201,
                         {"Location": f"/v1/accounts/{account_id}"})


async def list_accounts(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    accounts = await gateway.reader.accounts_of_user(user_id)
    return json_response(s.AccountList(accounts=[answers.account(a) for a in accounts]))


async def get_account(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    account_id = await owned_account(gateway, user_id, request.match_info["account_id"])
    account = await gateway.reader.account(account_id)
    if account is None:
        raise _not_found("account")
    return json_response(answers.account(account))


# ---- money ---------------------------------------------------------------------------------


async def _money(request: web.Request, kind: str) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "orders")
    key = idempotency_key(request)
    body, _ = await decode_body(request, s.MoneyRequest)
    amount = parse_amount(body.amount)
    account_id = await owned_account(gateway, user_id, request.match_info["account_id"])
    fingerprint = f"{kind}:{amount}"
    first = await gateway.idempotency.claim(f"{kind}:{account_id}", key, fingerprint)
    command_class = Deposit if kind == "deposit" else Withdraw
    command = command_class(account_id=account_id, idempotency_key=key, amount=amount,
                            submitted_at=gateway.clock(), user_id=user_id)
    reply = {"account_id": account_id, "idempotency_key": key, "kind": kind,
             "amount": money_text(amount)}
    recorded = await _recorded_outcome(gateway, account_id, key)
    if first is False and recorded is not None:  # a retry: the first request's outcome
        return _money_reply(reply, recorded, retry=True)
    if recorded is not None and recorded["type"] == "command_accepted":
        # Redis forgot the key (or cannot tell), the shard did not: the same request again
        # gets its first answer; another one would be booked under the first one's ids.
        if (recorded.get("command_type"), _decimal(recorded.get("amount"))) == (
                type(command).__struct_config__.tag, amount):
            return _money_reply(reply, recorded, retry=True)
        if first:
            await gateway.idempotency.release(f"{kind}:{account_id}", key, fingerprint)
        raise Problem(409, "idempotency_key_reused",
                      f"this Idempotency-Key named another command of this account "
                      f"({recorded.get('command_type')} of {recorded.get('amount')}): "
                      "use a new key", reason=Reason.DUPLICATE_IDEMPOTENCY_KEY)
    try:
        # A replay is sent again: the topology books a key once, so a duplicate is harmless
        # and its answer is the one the first request got. (`first` is None when Redis could
        # not tell: the topology's idempotency decides alone.)
        answer = await request_reply(gateway, command, account_id, key, answers_money_command)
    except Problem:
        if first:
            await gateway.idempotency.release(f"{kind}:{account_id}", key, fingerprint)
        raise
    await refuse_reused_key(gateway, answer, first, f"{kind}:{account_id}", key, fingerprint)
    if isinstance(answer, CommandRejected | CommandAccepted):
        return _money_reply(reply, msgspec.to_builtins(answer), retry=first is False)
    # No answer in time: a duplicate the topology already decided answers nothing, and the
    # shard may know the outcome; else it is still on its way.
    recorded = await _recorded_outcome(gateway, account_id, key)
    if recorded is not None:
        return _money_reply(reply, recorded, retry=True)
    return json_response({**reply, "status": "pending"}, 202)


async def _recorded_outcome(gateway: Gateway, account_id: str, key: str) -> dict | None:
    """The decided outcome of a command as its shard records it (None: not decided there
    yet, or the shard cannot be read right now: the request goes on without it)."""
    try:
        recorded = await gateway.reader.command_outcome(account_id, key)
    except StoreError:
        return None
    return recorded if recorded is not None and recorded["status"] != "pending" else None


def _money_reply(reply: dict[str, Any], outcome: dict[str, Any], retry: bool) -> web.Response:
    """A money command's answer from its outcome (an event, or the shard's record of it): the
    same answer for the first request and every retry with its key."""
    if outcome["type"] == "command_rejected":
        reason = outcome["reason"]
        raise Problem(422, reason, outcome.get("detail") or f"{reply['kind']} rejected: {reason}",
                      reason=reason, account_id=reply["account_id"],
                      idempotency_key=reply["idempotency_key"])
    return json_response({**reply, "status": "accepted", "txn_id": outcome.get("txn_id")},
                         200 if retry else 201)


async def command_outcome(request: web.Request) -> web.Response:
    """GET /v1/accounts/{account_id}/commands/{idempotency_key}: what became of a command."""
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    account_id = await owned_account(gateway, user_id, request.match_info["account_id"])
    key = request.match_info["idempotency_key"]
    if not _IDEMPOTENCY_KEY_RE.match(key):
        raise Problem(400, "invalid_idempotency_key", "1 to 64 printable ASCII characters",
                      field="idempotency_key")
    outcome = await gateway.reader.command_outcome(account_id, key)
    if outcome is None:
        raise Problem(404, "command_not_found", f"no command with key {key!r} on this account")
    return json_response({
        "account_id": account_id, "idempotency_key": key, "status": outcome["status"],
        "command_type": outcome.get("command_type"), "txn_id": outcome.get("txn_id"),
        "amount": _money_or_none(outcome.get("amount")), "reason": outcome.get("reason"),
        "detail": outcome.get("detail"), "occurred_at": outcome.get("occurred_at")})


def _money_or_none(amount: Any) -> str | None:
    return None if amount is None else money_text(Decimal(str(amount)))


async def deposit(request: web.Request) -> web.Response:
    return await _money(request, "deposit")


async def withdraw(request: web.Request) -> web.Response:
    return await _money(request, "withdrawal")


# ---- orders --------------------------------------------------------------------------------


def _rejected(order_id: str, account_id: str, reason: str, detail: str | None) -> Problem:
    return Problem(422, "order_rejected", detail or f"order rejected: {reason}",
                   reason=reason, order_id=order_id, account_id=account_id)


async def place_order(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id, now = await verified_user(request)
    try:
        key = idempotency_key(request)
        body, _ = await decode_body(request, s.OrderRequest)
        valid = validate_order(body)
        account_id = await owned_account(gateway, user_id, body.account_id)
    except (Problem, StoreError):
        # A refused request spends its budget too, and past the budget the answer is 429,
        # as when the budget is spent first: only an admitted order's Redis work is batched.
        await spend(gateway, user_id, "orders", now)
        raise
    order_id = order_id_for(account_id, key)
    scope = f"order:{account_id}"
    fingerprint = _ENCODER.encode(body).decode()
    # None: Redis cannot tell whether the key was used; the topology's idempotency decides.
    symbol = normalise_symbol(body.symbol)  # the body's pattern admits only symbols
    claimed, quote = await _admit_order(gateway, user_id, now, scope, key, fingerprint,
                                        symbol)
    if claimed is False:
        replayed = await _replay_on_record(gateway, account_id, order_id, key)
        if replayed is not None:
            return replayed
        # Redis saw this request before, but neither the shard nor the journal holds its
        # order: the first attempt died before its command was durable (it claimed the key,
        # then its process was killed). Answering 202 now would acknowledge an order that
        # will never exist; it is sent as a first attempt is (a second copy, if the first
        # one is still on its way, is harmless: one journal row a key, one decision a key).
    try:
        command = PlaceOrder(
            account_id=account_id, idempotency_key=key, symbol=symbol, side=body.side,
            order_type=body.order_type, quantity=valid.quantity,
            time_in_force=body.time_in_force, limit_price=valid.limit_price,
            stop_price=valid.stop_price, submitted_at=gateway.clock(), user_id=user_id,
            **_reference(quote, body.side),
        )
        answer = await request_reply(gateway, command, account_id, key, answers_placement)
    except KeyNamedAnOrder as named:  # Redis, the journal and the topology forgot the key
        if _same_order(named.terms, symbol, body, valid):
            return await _replayed_order(gateway, account_id, order_id, key)
        if claimed:
            await gateway.idempotency.release(scope, key, fingerprint)
        raise Problem(409, "idempotency_key_reused",
                      f"this Idempotency-Key named another order of this account ({order_id}); "
                      "an order's key names it for good: use a new key",
                      order_id=order_id) from named
    except Exception:
        if claimed:
            await gateway.idempotency.release(scope, key, fingerprint)  # nothing was taken
        raise
    location = {"Location": f"/v1/orders/{order_id}"}
    await refuse_reused_key(gateway, answer, claimed, scope, key, fingerprint)
    if answer is None and claimed is not True:
        # The topology answers nothing to a replay of the same body: it may be one.
        return await _replayed_order(gateway, account_id, order_id, key)
    if isinstance(answer, CommandRejected):
        raise _rejected(order_id, account_id, answer.reason, answer.detail)
    if isinstance(answer, OrderEvent):
        if answer.state == OrderState.REJECTED:
            raise _rejected(order_id, account_id, answer.reason or "rejected", answer.detail)
        return json_response(answers.order_from_event(answer), 201, location)
    return json_response(_pending_order(order_id, account_id, key), 202, location)


def _same_order(terms: dict[str, Any], symbol: str, body: s.OrderRequest,
                valid: ValidOrder) -> bool:
    """The request is the order on record (a retry after every memory of its key expired):
    the same instrument, side, type and time in force, and the same size and prices unless
    a replace changed them since."""
    fixed = ((terms["symbol"], terms["side"], terms["order_type"], terms["time_in_force"])
             == (symbol, body.side, body.order_type, body.time_in_force))  # StrEnums
    sized = ((_decimal(terms["quantity"]), _decimal(terms["limit_price"]),
              _decimal(terms["stop_price"]))
             == (valid.quantity, valid.limit_price, valid.stop_price))
    return fixed and (sized or bool(terms["replaced"]))


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _pending_order(order_id: str, account_id: str, key: str) -> s.OrderAccepted:
    return s.OrderAccepted(order_id=order_id, account_id=account_id,
                           status=s.RequestStatus.PENDING, state=OrderState.PENDING,
                           idempotency_key=key)


async def _admit_order(gateway: Gateway, user_id: str, now: dt.datetime, scope: str, key: str,
                       fingerprint: str, symbol: str) -> tuple[bool | None, Quote | None]:
    """Spend the order's budget, claim its key and read its reference quote: in one Redis
    round trip when the gateway has `admission`, else one call each (the quote only for a
    request that is not a replay)."""
    if gateway.admission is not None:
        admitted = await gateway.admission.admit(
            user_id, _budget(gateway, "orders"), int(now.timestamp() * 1000), scope, key,
            fingerprint, symbol)
        return admitted.claimed, admitted.quote
    await spend(gateway, user_id, "orders", now)
    claimed = await gateway.idempotency.claim(scope, key, fingerprint)
    if claimed is False:
        return claimed, None
    return claimed, await _reference_quote(gateway, symbol)


async def _reference_quote(gateway: Gateway, symbol: str) -> Quote | None:
    """The symbol's latest quote, or None when there is none or the quote cache cannot
    answer now. The order goes on without a reference price either way and the topology
    decides, with a stable reason: a limit order needs none; a market buy is rejected
    `no_reference_price`. Market data never holds up or refuses the write path."""
    try:
        quote: Quote | None = await gateway.quotes.get(symbol)
    except StoreError:
        gateway.metrics.redis_fallbacks.inc(feature=QUOTES)
        return None
    return quote


def _reference(quote: Quote | None, side: Side) -> dict[str, Any]:
    """The price a buy would pay (ask) or a sell get (bid), and when it was quoted."""
    if quote is None:
        return {}
    return {"reference_price": quote.ask if side == Side.BUY else quote.bid,
            "reference_time": quote.venue_time}


async def _replayed_order(gateway: Gateway, account_id: str, order_id: str,
                          key: str) -> web.Response:
    """Same key, same body: the order as the shard knows it, or 202 while it catches up."""
    order = await gateway.reader.order(account_id, order_id)
    return _replay_answer(order, account_id, order_id, key)


async def _replay_on_record(gateway: Gateway, account_id: str, order_id: str,
                            key: str) -> web.Response | None:
    """A retry's answer when its order is durable: in the shard (as `_replayed_order`), or
    journaled (202: the journal publishes it until it is decided); None when it is neither."""
    order = await gateway.reader.order(account_id, order_id)
    if order is None and await gateway.reader.journaled_order(account_id, order_id) is None:
        return None
    return _replay_answer(order, account_id, order_id, key)


def _replay_answer(order: dict[str, Any] | None, account_id: str, order_id: str,
                   key: str) -> web.Response:
    """The shard's order (200, or its refusal), or 202 while it is not there yet."""
    location = {"Location": f"/v1/orders/{order_id}"}
    if order is not None:
        if order.get("state") == OrderState.REJECTED:
            raise _rejected(order_id, account_id, order.get("reason") or "rejected", None)
        return json_response(answers.order(order), 200, location)
    return json_response(_pending_order(order_id, account_id, key), 202, location)


async def _find_order(gateway: Gateway, user_id: str, order_id: str,
                      account_id: str | None) -> dict[str, Any]:
    if not _ORDER_ID_RE.match(order_id):
        raise _not_found("order")
    if account_id is not None:
        candidates = [await owned_account(gateway, user_id, account_id)]
    else:
        candidates = [a["account_id"] for a in await gateway.reader.accounts_of_user(user_id)]
    for candidate in candidates:
        order = await gateway.reader.order(candidate, order_id)
        if order is not None:
            return dict(order)
    # Acknowledged but not landed yet: readable (and cancellable) at once by its owner.
    for candidate in candidates:
        order = await gateway.reader.journaled_order(candidate, order_id)
        if order is not None:
            return order
    raise _not_found("order")


async def list_orders(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    limit = _int_param(request, "limit", 100, 1, ORDERS_LIMIT_MAX)
    account_id = request.query.get("account_id")
    if account_id is not None:
        accounts = [await owned_account(gateway, user_id, account_id)]
    else:
        accounts = [a["account_id"] for a in await gateway.reader.accounts_of_user(user_id)]
    orders: list[dict[str, Any]] = []
    for account in accounts:
        orders += await gateway.reader.orders(account, limit)
    return json_response(s.OrderList(orders=[
        answers.order(row, with_events=False)
        for row in (orders[:limit] if account_id is None else orders)]))


async def get_order(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    order = await _find_order(gateway, user_id, request.match_info["order_id"],
                              request.query.get("account_id"))
    return json_response(answers.order(order))


async def cancel_order(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "orders")
    order_id = request.match_info["order_id"]
    # Cancelling an order twice is the same request: the order id makes a natural key.
    key = (idempotency_key(request) if "Idempotency-Key" in request.headers
           else f"cancel:{order_id}")
    order = await _find_order(gateway, user_id, order_id, request.query.get("account_id"))
    account_id = str(order["account_id"])
    _require_open(order, order_id)
    command = CancelOrder(account_id=account_id, idempotency_key=key, order_id=order_id,
                          submitted_at=gateway.clock(), user_id=user_id)
    answer = await request_reply(gateway, command, account_id, key, answers_cancel)
    if (reused := key_reused(answer)) is not None:
        raise reused
    if isinstance(answer, CommandRejected):
        raise Problem(409, answer.reason, answer.detail or f"cancel rejected: {answer.reason}",
                      reason=answer.reason, order_id=order_id)
    if isinstance(answer, OrderEvent):
        return json_response(answers.order_from_event(answer))
    return json_response(s.OrderAccepted(
        order_id=order_id, account_id=account_id, status=s.RequestStatus.CANCEL_REQUESTED,
        state=OrderState(order["state"]), idempotency_key=key), 202)


def _require_open(order: dict[str, Any], order_id: str) -> None:
    """Problem 409 for an order that is already filled, cancelled, rejected or expired."""
    if order.get("state") in TERMINAL_ORDER_STATES:
        raise Problem(409, "order_not_open", f"order is {order.get('state')}",
                      order_id=order_id)


async def replace_order(request: web.Request) -> web.Response:
    """New quantity and/or prices for an open order (a FIX cancel/replace downstream)."""
    gateway = gateway_of(request)
    user_id = await authenticate(request, "orders")
    key = idempotency_key(request)
    body, _ = await decode_body(request, s.OrderReplaceRequest)
    valid = validate_replace(body)
    order_id = request.match_info["order_id"]
    order = await _find_order(gateway, user_id, order_id, body.account_id)
    account_id = str(order["account_id"])
    _require_open(order, order_id)
    check_replace_fits(OrderType(str(order["order_type"])),
                       Decimal(str(order.get("filled_quantity") or 0)), valid)
    scope = f"replace:{account_id}"
    fingerprint = f"{order_id}:" + _ENCODER.encode(body).decode()
    first = await gateway.idempotency.claim(scope, key, fingerprint)
    command = ReplaceOrder(account_id=account_id, idempotency_key=key, order_id=order_id,
                           submitted_at=gateway.clock(), quantity=valid.quantity,
                           limit_price=valid.limit_price, stop_price=valid.stop_price,
                           user_id=user_id)
    try:
        # A replay is sent again: the topology takes a key once and answers it the same way.
        answer = await request_reply(gateway, command, account_id, key,
                                     answers_replace(order_id, key))
    except Exception:
        if first:
            await gateway.idempotency.release(scope, key, fingerprint)  # nothing was taken
        raise
    await refuse_reused_key(gateway, answer, first, scope, key, fingerprint)
    if isinstance(answer, CommandRejected):
        raise Problem(422, "replace_rejected",
                      answer.detail or f"replace rejected: {answer.reason}",
                      reason=answer.reason, order_id=order_id, account_id=account_id)
    if isinstance(answer, OrderEvent):
        current = {"quantity": answer.quantity, "limit_price": answer.limit_price,
                   "stop_price": answer.stop_price}
        return json_response(msgspec.structs.replace(
            answers.order_from_event(answer), pending_replace=_pending_replace(
                valid, current, key, _REPLACE_STATES.get(answer.reason or "", "requested"))))
    return json_response(s.OrderAccepted(
        order_id=order_id, account_id=account_id, status=s.RequestStatus.REPLACE_REQUESTED,
        state=OrderState(order["state"]), idempotency_key=key,
        pending_replace=_pending_replace(valid, order, key, "sent")), 202)


# The reason of the order event that answered a replace -> the replace's state.
_REPLACE_STATES = {"replace_requested": "requested", "replaced": "replaced",
                   "replace_rejected": "rejected"}


def _pending_replace(valid: ValidReplace, current: dict[str, Any], key: str, state: str
                     ) -> s.PendingReplace:
    """The terms a replace asked for (the fields it left out keep the order's `current`
    ones) and its state: the order's own terms change only once the market maker confirms."""
    def term(name: str) -> Any:
        asked = getattr(valid, name)
        return asked if asked is not None else current.get(name)

    def price(name: str) -> str | None:
        value = term(name)
        return None if value is None else price_text(Decimal(str(value)))
    return s.PendingReplace(state=state, idempotency_key=key,
                            quantity=shares_text(Decimal(str(term("quantity")))),
                            limit_price=price("limit_price"), stop_price=price("stop_price"))


# ---- portfolio, activities, market data ----------------------------------------------------


async def portfolio(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    account_id = await owned_account(gateway, user_id, query_account(request))
    ledger = await gateway.reader.portfolio(account_id)
    symbols = [p["symbol"] for p in ledger.get("positions", [])]
    quotes = await gateway.quotes.get_many(symbols) if symbols else {}
    return json_response(value_portfolio(ledger, quotes, gateway.clock()))


async def activities(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    user_id = await authenticate(request, "reads")
    account_id = await owned_account(gateway, user_id, query_account(request))
    as_of = None
    if "as_of" in request.query:
        try:
            as_of = dt.datetime.fromisoformat(request.query["as_of"])
        except ValueError as error:
            raise Problem(400, "invalid_parameter", "as_of must be an RFC 3339 time",
                          field="as_of") from error
        if as_of.tzinfo is None:
            raise Problem(400, "invalid_parameter", "as_of needs a UTC offset", field="as_of")
    entries = await gateway.reader.activities(account_id, as_of)
    return json_response(s.ActivityList(account_id=account_id,
                                        activities=[answers.activity(e) for e in entries]))


def _symbols(text: str) -> list[str]:
    symbols = [part.strip() for part in text.split(",") if part.strip()]
    if not symbols:
        raise Problem(400, "missing_parameter", "symbols query parameter required",
                      field="symbols")
    if len(symbols) > QUOTE_SYMBOLS_MAX:
        raise Problem(400, "too_many_symbols", f"at most {QUOTE_SYMBOLS_MAX} symbols",
                      field="symbols")
    try:
        symbols = [normalise_symbol(symbol) for symbol in symbols]
    except ValueError as error:
        raise Problem(400, "invalid_symbol", str(error), field="symbols") from None
    return list(dict.fromkeys(symbols))


async def quotes(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    await authenticate(request, "reads")
    symbols = _symbols(request.query.get("symbols", ""))
    found = await gateway.quotes.get_many(symbols)
    return json_response(s.QuoteList(
        quotes=[answers.quote(found[symbol]) for symbol in symbols if symbol in found],
        missing=[symbol for symbol in symbols if symbol not in found],
        quote_age_ms_max=gateway.config.quote_age_ms_max))


async def candles(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    await authenticate(request, "reads")
    try:
        symbol = normalise_symbol(request.match_info["symbol"])
    except ValueError as error:
        raise Problem(400, "invalid_symbol", str(error), field="symbol") from None
    interval = request.query.get("interval", "1m")
    if interval not in CANDLE_INTERVALS:
        raise Problem(400, "invalid_parameter",
                      f"interval must be one of {', '.join(CANDLE_INTERVALS)}", field="interval")
    limit = _int_param(request, "limit", 100, 1, 1000)
    found = await _read_candles(gateway, symbol, interval, limit)
    return json_response(s.CandleList(symbol=symbol, interval=interval,
                                      candles=[answers.candle(c) for c in found]))


async def _read_candles(gateway: Gateway, symbol: str, interval: str,
                        limit: int) -> list[Any]:
    """Candles from whichever store keeps them: a shard reader or quote cache that offers
    `candles(symbol, interval, limit)`; none yet is an empty list, not an error."""
    for store in (gateway.quotes, gateway.reader):
        reader = getattr(store, "candles", None)
        if reader is not None:
            return list(await reader(symbol, interval, limit))
    return []


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # ASCII digits only, and few: str.isdigit() takes "²" (int() refuses it) and int() refuses
    # more than 4,300 digits; either was a 500.
    if not (text.isascii() and text.isdigit() and len(text) <= 9) \
            or not low <= int(text) <= high:
        raise Problem(400, "invalid_parameter", f"{name} must be an integer in [{low}, {high}]",
                      field=name)
    return int(text)


# ---- operations ----------------------------------------------------------------------------


async def _check_shard(dsn: str) -> bool:
    return await shard_error(dsn) is None


async def _check_redis(gateway: Gateway) -> bool:
    return await redis_error(gateway.redis) is None


async def healthz(request: web.Request) -> web.Response:
    """The checks and their verdicts are state.health's, shared with `brokerage status`."""
    gateway = gateway_of(request)
    loop = asyncio.get_running_loop()
    names = ["broker", "redis"] + [f"shard{i}" for i in range(len(gateway.config.shard_dsns))]
    results = await asyncio.gather(
        loop.run_in_executor(None, gateway.producer.broker_reachable, CHECK_TIMEOUT_S),
        _check_redis(gateway),
        *(_check_shard(dsn) for dsn in gateway.config.shard_dsns),
    )
    checks = dependency_checks(dict(zip(names, results, strict=True)))
    down = down_of(checks)
    if down:
        raise Problem(503, "unhealthy", f"down: {', '.join(down)}", down=down, checks=checks)
    return json_response({"status": overall(checks), "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    text = gateway.metrics.render()
    if gateway.config.fix_store_dir:
        report = await asyncio.to_thread(best_execution_report, gateway.config.fix_store_dir)
        text += prometheus_text(report)
    return web.Response(text=text,
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Format": "prometheus-0.0.4"})


# ---- the route table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    request: Any = None
    responses: tuple[tuple[int, Any], ...] = ()
    auth: bool = True
    idempotency_key: bool = False
    query: tuple[tuple[str, bool, str], ...] = ()  # (name, required, description)
    # Query parameters that take one of a fixed set of values: (name, values), first the default.
    query_values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    tag: str = "api"
    description: str = ""


PLACE_ORDER_DESCRIPTION = (
    "The symbol must be an upper-case ticker (checked here); whether it trades is the market "
    "maker's answer (the order is then rejected with its reason), not the quote cache's. The "
    "gateway attaches the latest quote it holds as the reference price; without one (no quote "
    "yet, or the quote cache unavailable) the order is sent without it: limit and stop-limit "
    "orders need none, and a market order the account topology cannot price is rejected, 422 "
    "`order_rejected` with reason `no_reference_price` (or `stale_reference_price`). "
    "Same Idempotency-Key and same body: the same order (200, or 202 while it is on its way); "
    "same key and another body: 409 `idempotency_key_reused`, whether Redis or the account "
    "topology notices. Neither a stalled market-data path nor Redis blocks placement: without "
    "Redis the per-user budget is kept per gateway process and idempotency by the topology.")


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/auth/token", create_token,
          "Demo login: a short-lived signed token for any user id, no credential asked",
          s.TokenRequest, ((201, s.TokenReply),), auth=False, tag="auth",
          description="Only while the demo login is on (the embedded default turns it on; a "
          "stack file, with `[http] demo_login = true`); otherwise 404 `demo_login_disabled`. "
          "A deployment behind its own identity provider (`[http.identity]`) sends that "
          "provider's tokens (RS256/ES256, checked for signature, `exp`, `iss` and `aud`; the "
          "user is `sub`) as `Authorization: Bearer`, and 503 "
          "`identity_provider_unavailable` when the provider's keys cannot be fetched."),
    Route("POST", "/v1/accounts", create_account, "Open a brokerage account",
          s.AccountCreate, ((201, s.Account),), tag="accounts"),
    Route("GET", "/v1/accounts", list_accounts, "The caller's accounts",
          responses=((200, s.AccountList),), tag="accounts"),
    Route("GET", "/v1/accounts/{account_id}", get_account, "One of the caller's accounts",
          responses=((200, s.Account),), tag="accounts"),
    Route("POST", "/v1/accounts/{account_id}/deposits", deposit, "Deposit cash (ACH)",
          s.MoneyRequest, ((201, s.MoneyReply), (200, s.MoneyReply), (202, s.MoneyReply)),
          idempotency_key=True,
          tag="money"),
    Route("POST", "/v1/accounts/{account_id}/withdrawals", withdraw, "Withdraw cash",
          s.MoneyRequest, ((201, s.MoneyReply), (200, s.MoneyReply), (202, s.MoneyReply)),
          idempotency_key=True,
          tag="money"),
    Route("GET", "/v1/accounts/{account_id}/commands/{idempotency_key}", command_outcome,
          "What became of a command (deposit, withdrawal, order, cancel) by its "
          "Idempotency-Key: accepted, rejected with its reason, or pending",
          responses=((200, s.CommandOutcome),), tag="accounts"),
    Route("POST", "/v1/orders", place_order, "Place an order", s.OrderRequest,
          ((201, s.Order), (200, s.Order), (202, s.OrderAccepted)), idempotency_key=True,
          tag="orders", description=PLACE_ORDER_DESCRIPTION),
    Route("GET", "/v1/orders", list_orders, "The caller's orders, newest first",
          responses=((200, s.OrderList),),
          query=(("account_id", False, "one account"), ("limit", False, "1-500")),
          tag="orders"),
    Route("GET", "/v1/orders/{order_id}", get_order, "One order with its events",
          responses=((200, s.Order),), query=(("account_id", False, "its account"),),
          tag="orders"),
    Route("DELETE", "/v1/orders/{order_id}", cancel_order, "Cancel an open order",
          responses=((200, s.Order), (202, s.OrderAccepted)),
          query=(("account_id", False, "its account"),), tag="orders"),
    Route("PATCH", "/v1/orders/{order_id}", replace_order,
          "Change an open order's quantity and/or prices (cancel/replace)",
          s.OrderReplaceRequest, ((200, s.Order), (202, s.OrderAccepted)),
          idempotency_key=True, tag="orders"),
    Route("GET", "/v1/portfolio", portfolio, "Cash, buying power, equity and positions",
          responses=((200, s.Portfolio),), query=(("account_id", True, "the account"),),
          tag="portfolio"),
    Route("GET", "/v1/activities", activities, "The account's ledger history",
          responses=((200, s.ActivityList),),
          query=(("account_id", True, "the account"), ("as_of", False, "RFC 3339 time")),
          tag="portfolio"),
    Route("GET", "/v1/quotes", quotes, "Latest quotes", responses=((200, s.QuoteList),),
          query=(("symbols", True, "comma-separated, e.g. AAPL,TSLA"),), tag="market"),
    Route("GET", "/v1/candles/{symbol}", candles, "OHLCV candles",
          responses=((200, s.CandleList),),
          query=(("interval", False, "the candle width: " + ", ".join(CANDLE_INTERVALS)
                  + f" (default {CANDLE_INTERVALS[0]})"), ("limit", False, "1-1000")),
          query_values=(("interval", CANDLE_INTERVALS),), tag="market"),
    Route("GET", "/healthz", healthz, "Broker, Redis and every shard reachable",
          responses=((200, s.Health),), auth=False, tag="operations",
          description="503 when the broker or a shard is down; Redis down or slow is "
          "`degraded` (status 200): orders still go through without it."),
    Route("GET", "/metrics", metrics, "Prometheus text format", auth=False, tag="operations"),
)
