"""WebSocket `/v1/stream`: live quotes for subscribed symbols and the user's own order updates.

One `quotes` tail per process feeds `StreamHub.publish_quotes`, which fans out in memory through
a subscription map (symbol -> connections). Conflation happens twice: the hub keeps the latest
quote per symbol and hands it to the watchers at most every QUOTE_FLUSH_INTERVAL_S (so the work
per watcher is bounded by that rate, not by the feed's), and each connection holds at most the
latest quote per symbol until its sender task can write, so a slow client gets fresh quotes,
never a growing queue. A quote's frame is encoded once, however many watch it. Order updates
are not conflated (each fill matters); a client too slow to take them is disconnected rather
than allowed to grow memory without bound.
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
from state.exceptions import StoreError
from state.messages import Alert, OrderEvent, Quote

log = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()
SYMBOLS_PER_CONNECTION_MAX = 200
ORDER_UPDATES_BUFFERED_MAX = 1000
AUTH_TIMEOUT_S = 10.0
_CLOSE_TOO_SLOW = 4008
_CLOSE_AUTH_TIMEOUT = 4001
# At 20,000 quotes/s over 100 symbols a symbol changes every 5 ms; handing each change to its
# watchers would cost (changes x watchers) per second. At most one hand-over per symbol per
# interval bounds that, for at most this much added delay.
QUOTE_FLUSH_INTERVAL_S = 0.05


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


class QuoteFrame:
    """A quote and its frame text, encoded on first use and shared by every watcher."""

    __slots__ = ("quote", "_text")

    def __init__(self, quote: Quote) -> None:
        self.quote = quote
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = frame("quote", quote=self.quote)
        return self._text


class Connection:
    """One client: its subscriptions, its pending (conflated) quotes, its order updates."""

    __slots__ = ("ws", "user_id", "token_verified", "accounts", "symbols", "pending_quotes",
                 "updates", "wake", "too_slow", "heartbeat_due", "last_sent_at", "heartbeat_timer")

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.user_id: str | None = None
        self.token_verified = False  # a valid auth op arrived (its account lookup may lag)
        self.accounts: set[str] = set()
        self.symbols: set[str] = set()
        self.pending_quotes: dict[str, QuoteFrame] = {}
        self.updates: deque[str] = deque()
        self.wake = asyncio.Event()
        self.too_slow = False
        self.heartbeat_due = False
        self.last_sent_at = 0.0  # loop time of the last frame written
        self.heartbeat_timer: asyncio.TimerHandle | None = None

    def offer_quote(self, quote: Quote | QuoteFrame) -> None:
        update = quote if isinstance(quote, QuoteFrame) else QuoteFrame(quote)
        self.pending_quotes[update.quote.symbol] = update  # replaces an unsent older quote
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

    def __init__(self, flush_interval_s: float = QUOTE_FLUSH_INTERVAL_S) -> None:
        self.subscribers: dict[str, set[Connection]] = defaultdict(set)
        self.connections: set[Connection] = set()
        self.quotes_received = 0
        self._flush_interval_s = flush_interval_s
        self._latest: dict[str, Quote] = {}  # changed since the last hand-over
        self._flush: asyncio.TimerHandle | None = None
        self._flushed_at = float("-inf")

    def publish_quotes(self, quotes: list[Quote]) -> None:
        """Called on the loop by the quotes tail with a batch: keep each symbol's latest and
        hand them over now, or when the flush interval since the last hand-over is up."""
        self.quotes_received += len(quotes)
        latest = self._latest
        for quote in quotes:
            latest[quote.symbol] = quote
        if self._flush is None and latest:
            loop = asyncio.get_running_loop()
            delay_s = max(0.0, self._flushed_at + self._flush_interval_s - loop.time())
            self._flush = loop.call_later(delay_s, self.flush_quotes)

    def flush_quotes(self) -> None:
        """Hand each changed symbol's latest quote to its watchers."""
        self._flush = None
        self._flushed_at = asyncio.get_running_loop().time()
        latest, self._latest = self._latest, {}
        subscribers = self.subscribers
        for symbol, quote in latest.items():
            watchers = subscribers.get(symbol)
            if not watchers:
                continue
            update = QuoteFrame(quote)
            for connection in watchers:
                pending = connection.pending_quotes
                if not pending:  # non-empty: already woken, its sender will take this too
                    connection.wake.set()
                pending[symbol] = update

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

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
    when there has been nothing to say for `heartbeat_s`. One timer per heartbeat period,
    not one per wake-up: wake-ups are many under a busy feed."""
    ws = connection.ws
    loop = asyncio.get_running_loop()
    connection.last_sent_at = loop.time()
    connection.heartbeat_timer = loop.call_later(heartbeat_s, _heartbeat_check, connection,
                                                 heartbeat_s, loop)
    try:
        while not ws.closed:
            await connection.wake.wait()
            connection.wake.clear()
            if connection.too_slow:
                await ws.close(code=_CLOSE_TOO_SLOW, message=b"too slow for order updates")
                return
            sent = False
            while connection.updates:
                await ws.send_str(connection.updates.popleft())
                gateway.metrics.ws_messages.inc(kind="update")
                sent = True
            if connection.pending_quotes:
                quotes, connection.pending_quotes = connection.pending_quotes, {}
                for update in quotes.values():
                    await ws.send_str(update.text)
                gateway.metrics.ws_messages.inc(len(quotes), kind="quote")
                sent = True
            if connection.heartbeat_due and not sent:
                await ws.send_str(frame("heartbeat", at=gateway.clock()))
                sent = True
            connection.heartbeat_due = False
            if sent:
                connection.last_sent_at = loop.time()
    finally:
        if connection.heartbeat_timer is not None:
            connection.heartbeat_timer.cancel()


def _heartbeat_check(connection: Connection, heartbeat_s: float,
                     loop: asyncio.AbstractEventLoop) -> None:
    """Due when nothing was written for `heartbeat_s`; checks again when it next could be."""
    if connection.ws.closed:
        return
    idle_s = loop.time() - connection.last_sent_at
    if idle_s >= heartbeat_s:
        connection.heartbeat_due = True
        connection.wake.set()
        idle_s = 0.0
    connection.heartbeat_timer = loop.call_later(heartbeat_s - idle_s, _heartbeat_check,
                                                 connection, heartbeat_s, loop)


async def _authenticate(connection: Connection, gateway: Gateway, op: AuthOp) -> None:
    if connection.user_id is not None:
        raise Problem(400, "already_authenticated", "this connection is authenticated")
    user_id = verify_token(gateway.config.token_secret, op.token, int(gateway.clock().timestamp()))
    connection.token_verified = True  # in time, however long the account lookup takes
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
        try:
            latest = await gateway.quotes.get_many(symbols)
        except StoreError:
            latest = {}  # no snapshot while the cache is down: the live quotes still come
        for quote in latest.values():
            connection.offer_quote(quote)  # start from the latest known quote
    elif isinstance(op, UnsubscribeOp):
        hub.unsubscribe(connection, _valid_symbols(op.quotes))
        connection.send_later(frame("subscribed", quotes=sorted(connection.symbols)))


async def stream(request: web.Request) -> web.WebSocketResponse:
    gateway = gateway_of(request)
    config = gateway.config
    # No permessage-deflate: its zlib state costs up to ~256 KB per connection, and quote
    # frames are small; memory per connection stays bounded whatever the client offers.
    ws = web.WebSocketResponse(heartbeat=config.ws_heartbeat_s,
                               max_msg_size=config.body_bytes_max, compress=False)
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
    if connection.user_id is None and not connection.token_verified \
            and not connection.ws.closed:
        asyncio.ensure_future(
            connection.ws.close(code=_CLOSE_AUTH_TIMEOUT, message=b"auth timeout"))
