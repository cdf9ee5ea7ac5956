"""WebSocket `/v1/stream`: live quotes for subscribed symbols and the user's own order updates.

One `quotes` tail per process feeds `StreamHub.publish_quotes`, which fans out in memory through
a subscription map (symbol -> connections). Each connection conflates: it holds at most the
latest quote per symbol until its sender task can write, so a slow client gets fresh quotes,
never a growing queue. Order updates are not conflated (each fill matters); a client too slow to
take them is disconnected rather than allowed to grow memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from gateways.http.auth import verify_token
from gateways.http.context import Gateway, gateway_of
from gateways.http.problems import Problem
from state.messages import Alert, OrderEvent, Quote

log = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()
SYMBOLS_PER_CONNECTION_MAX = 200
ORDER_UPDATES_BUFFERED_MAX = 1000
AUTH_TIMEOUT_S = 10.0
_CLOSE_TOO_SLOW = 4008
_CLOSE_AUTH_TIMEOUT = 4001


class ClientOp(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op"):
    pass


class AuthOp(ClientOp, frozen=True, tag="auth"):
    token: str


class SubscribeOp(ClientOp, frozen=True, tag="subscribe"):
    quotes: list[str]


class UnsubscribeOp(ClientOp, frozen=True, tag="unsubscribe"):
    quotes: list[str]


class PingOp(ClientOp, frozen=True, tag="ping"):
    pass


_OP_DECODER = msgspec.json.Decoder(AuthOp | SubscribeOp | UnsubscribeOp | PingOp)


def frame(kind: str, **body: Any) -> str:
    """A server frame: JSON text (browsers read text frames as strings)."""
    return _ENCODER.encode({"type": kind, **body}).decode()


class Connection:
    """One client: its subscriptions, its pending (conflated) quotes, its order updates."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.user_id: str | None = None
        self.accounts: set[str] = set()
        self.symbols: set[str] = set()
        self.pending_quotes: dict[str, Quote] = {}
        self.updates: deque[str] = deque()
        self.wake = asyncio.Event()
        self.too_slow = False

    def offer_quote(self, quote: Quote) -> None:
        self.pending_quotes[quote.symbol] = quote  # replaces an unsent older quote
        self.wake.set()

    def offer_event(self, event: Any) -> None:
        if isinstance(event, Alert):
            return  # operator alerts are not for end users
        kind = "order" if isinstance(event, OrderEvent) else "command"
        self.send_later(frame(kind, event=event))

    def send_later(self, payload: str) -> None:
        if len(self.updates) >= ORDER_UPDATES_BUFFERED_MAX:
            self.too_slow = True
        else:
            self.updates.append(payload)
        self.wake.set()


class StreamHub:
    """The subscription map and the fan-out."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[Connection]] = defaultdict(set)
        self.connections: set[Connection] = set()
        self.quotes_received = 0

    def publish_quotes(self, quotes: list[Quote]) -> None:
        """Called on the loop by the quotes tail with a batch."""
        self.quotes_received += len(quotes)
        for quote in quotes:
            for connection in self.subscribers.get(quote.symbol, ()):
                connection.offer_quote(quote)

    def subscribe(self, connection: Connection, symbols: list[str]) -> None:
        for symbol in symbols:
            connection.symbols.add(symbol)
            self.subscribers[symbol].add(connection)

    def unsubscribe(self, connection: Connection, symbols: list[str]) -> None:
        for symbol in symbols:
            connection.symbols.discard(symbol)
            connection.pending_quotes.pop(symbol, None)
            watchers = self.subscribers.get(symbol)
            if watchers is not None:
                watchers.discard(connection)
                if not watchers:
                    del self.subscribers[symbol]

    def account_created(self, user_id: str, account_id: str, gateway: Gateway) -> None:
        """A user who is streaming opened an account: stream its updates too."""
        for connection in self.connections:
            if connection.user_id == user_id and account_id not in connection.accounts:
                connection.accounts.add(account_id)
                gateway.replies.listen(account_id, connection.offer_event)

    def drop(self, connection: Connection, gateway: Gateway) -> None:
        self.unsubscribe(connection, list(connection.symbols))
        for account_id in connection.accounts:
            gateway.replies.unlisten(account_id, connection.offer_event)
        self.connections.discard(connection)


async def _sender(connection: Connection, gateway: Gateway, heartbeat_s: float) -> None:
    """Writes order updates first, then the latest quote of each symbol; a heartbeat frame
    when there has been nothing to say for `heartbeat_s`."""
    ws = connection.ws
    while not ws.closed:
        try:
            await asyncio.wait_for(connection.wake.wait(), heartbeat_s)
        except TimeoutError:
            await ws.send_str(frame("heartbeat", at=gateway.clock()))
            continue
        connection.wake.clear()
        if connection.too_slow:
            await ws.close(code=_CLOSE_TOO_SLOW, message=b"too slow for order updates")
            return
        while connection.updates:
            await ws.send_str(connection.updates.popleft())
            gateway.metrics.ws_messages.inc(kind="update")
        quotes, connection.pending_quotes = connection.pending_quotes, {}
        for quote in quotes.values():
            await ws.send_str(frame("quote", quote=quote))
        if quotes:
            gateway.metrics.ws_messages.inc(len(quotes), kind="quote")


async def _authenticate(connection: Connection, gateway: Gateway, op: AuthOp) -> None:
    if connection.user_id is not None:
        raise Problem(400, "already_authenticated", "this connection is authenticated")
    user_id = verify_token(gateway.config.token_secret, op.token, int(gateway.clock().timestamp()))
    accounts = [str(a["account_id"]) for a in await gateway.reader.accounts_of_user(user_id)]
    connection.user_id = user_id
    for account_id in accounts:
        connection.accounts.add(account_id)
        gateway.replies.listen(account_id, connection.offer_event)
    connection.send_later(frame("authenticated", user_id=user_id, accounts=accounts))


def _valid_symbols(symbols: list[str]) -> list[str]:
    from gateways.http.routes import _SYMBOL_RE  # one symbol rule for REST and stream

    bad = [s for s in symbols if not isinstance(s, str) or not _SYMBOL_RE.match(s)]
    if bad:
        raise Problem(400, "invalid_symbol", f"not symbols: {bad[:5]!r}")
    return list(dict.fromkeys(symbols))


async def _handle(connection: Connection, gateway: Gateway, raw: str | bytes) -> None:
    try:
        op = _OP_DECODER.decode(raw)
    except msgspec.ValidationError as error:
        raise Problem(400, "invalid_message", str(error)) from error
    except msgspec.DecodeError as error:
        raise Problem(400, "malformed_json", "frames are JSON objects with an op") from error
    hub: StreamHub = gateway.hub
    if isinstance(op, PingOp):
        connection.send_later(frame("pong", at=gateway.clock()))
    elif isinstance(op, AuthOp):
        await _authenticate(connection, gateway, op)
    elif connection.user_id is None:
        raise Problem(401, "not_authenticated", "send {\"op\":\"auth\",\"token\":...} first")
    elif isinstance(op, SubscribeOp):
        symbols = _valid_symbols(op.quotes)
        if len(connection.symbols | set(symbols)) > SYMBOLS_PER_CONNECTION_MAX:
            raise Problem(400, "too_many_symbols",
                          f"at most {SYMBOLS_PER_CONNECTION_MAX} symbols per connection")
        hub.subscribe(connection, symbols)
        connection.send_later(frame("subscribed", quotes=sorted(connection.symbols)))
        for quote in (await gateway.quotes.get_many(symbols)).values():
            connection.offer_quote(quote)  # start from the latest known quote
    elif isinstance(op, UnsubscribeOp):
        hub.unsubscribe(connection, _valid_symbols(op.quotes))
        connection.send_later(frame("subscribed", quotes=sorted(connection.symbols)))


async def stream(request: web.Request) -> web.WebSocketResponse:
    gateway = gateway_of(request)
    config = gateway.config
    ws = web.WebSocketResponse(heartbeat=config.ws_heartbeat_s,
                               max_msg_size=config.body_bytes_max)
    await ws.prepare(request)
    connection = Connection(ws)
    hub: StreamHub = gateway.hub
    hub.connections.add(connection)
    sender = asyncio.create_task(_sender(connection, gateway, config.ws_heartbeat_s))
    auth_deadline = asyncio.get_running_loop().call_later(
        AUTH_TIMEOUT_S, _close_unauthenticated, connection)
    try:
        async for message in ws:
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                await _handle(connection, gateway, message.data)
            except Problem as problem:
                connection.send_later(frame("error", code=problem.code, detail=problem.detail))
    finally:
        auth_deadline.cancel()
        hub.drop(connection, gateway)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    return ws


def _close_unauthenticated(connection: Connection) -> None:
    if connection.user_id is None and not connection.ws.closed:
        asyncio.ensure_future(
            connection.ws.close(code=_CLOSE_AUTH_TIMEOUT, message=b"auth timeout"))
