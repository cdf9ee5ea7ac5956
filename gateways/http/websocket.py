"""WebSocket `/v1/stream`: live quotes for subscribed symbols and the user's own order updates.

One `quotes` tail per process feeds `StreamHub.publish_quotes`, which fans out in memory through
a subscription map (symbol -> connections). Conflation happens twice: the hub keeps only the
newest quote per symbol and writes a connection at most once per round, a round at most every
QUOTE_FLUSH_INTERVAL_S (so the work per watcher is bounded by that rate, not by the feed's);
and a connection is written the newest frame of each of its symbols it has not been sent, when
its turn comes, so a slow client gets fresh quotes, never a growing queue.

The fan-out is rounds over the connections, not a task per connection woken per quote: a
quote's WebSocket frame (header and JSON) is encoded once, however many watch it, and a round
writes each connection's due frames to its transport in one write (one system call), skipping
a connection whose transport still holds unsent bytes (its quotes stay due, conflated, for a
later round). Server frames are unmasked, so the same bytes are valid on every connection;
aiohttp writes its own frames (pings, close, the sender task's frames) whole and synchronously,
so frames never interleave. Order updates are not conflated (each fill matters) and go through
a per-connection sender task, before any quote; a client too slow to take them is disconnected
rather than allowed to grow memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import typing
from collections import defaultdict, deque
from typing import Annotated, Any, ClassVar, Protocol

import msgspec
from aiohttp import WSMsgType, web

from gateways.http.context import Gateway, gateway_of
from gateways.http.metrics import Metrics
from gateways.http.problems import Problem
from state.exceptions import StoreError
from state.messages import (
    SYMBOL_RULE,
    Alert,
    CommandAccepted,
    CommandRejected,
    OrderEvent,
    Quote,
    normalise_symbol,
)

log = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()
SYMBOLS_PER_CONNECTION_MAX = 200
ORDER_UPDATES_BUFFERED_MAX = 1000
AUTH_TIMEOUT_S = 10.0
# A frame over the body limit (HttpConfig.body_bytes_max) is refused with an `error` frame
# `too_large`, and the connection stays open. aiohttp reads a frame up to this many bytes
# before that check can run; past it, it closes the connection with 1009 (message too big), so
# a connection's memory stays bounded whatever a client sends.
FRAME_BYTES_HARD_MAX = 256 * 1024
_CLOSE_TOO_SLOW = 4008
_CLOSE_AUTH_TIMEOUT = 4001
_CLOSE_TOKEN_EXPIRED = 4002  # the token that opened the stream expired
# At 20,000 quotes/s over 100 symbols a symbol changes every 5 ms; handing each change to its
# watchers would cost (changes x watchers) per second. At most one round per interval bounds
# that: a watcher gets at most one write per interval, with the newest quote of each symbol.
QUOTE_FLUSH_INTERVAL_S = 0.05
# Rounds also start no sooner than this many times the last round's duration after it began:
# writing 5,000 connections costs tens of ms of CPU (a system call each), and a busy machine
# stretches that; the fan-out then backs off and leaves the loop (HTTP, the tails) and the
# machine at least half of the time, instead of running rounds back to back.
QUOTE_ROUND_DUTY_FACTOR = 2.0
# Connections written per loop callback (a few µs each): other callbacks wait at most that.
QUOTE_ROUND_CHUNK = 200
# A transport holding more unsent bytes than this has a client (or a network) slower than the
# feed: its quotes wait, conflated, rather than queue in the process.
QUOTE_WRITE_BACKLOG_BYTES_MAX = 1024
_OPCODE_TEXT = 0x81  # FIN + text


class Transport(Protocol):
    """What the fan-out needs of an asyncio transport."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


Instant = Annotated[dt.datetime, msgspec.Meta(tz=True)]  # RFC 3339, with its offset


class ServerFrame(msgspec.Struct, frozen=True, tag_field="type"):
    """A frame from the gateway: a JSON text frame whose `type` names it."""


class Authenticated(ServerFrame, frozen=True, tag="authenticated"):
    """Answers `auth`: the user, and the accounts whose order and command updates now stream."""

    user_id: str
    accounts: list[str]


class Subscribed(ServerFrame, frozen=True, tag="subscribed"):
    """Answers `subscribe` and `unsubscribe`: every symbol the connection now watches."""

    quotes: list[str]


class QuoteUpdate(ServerFrame, frozen=True, tag="quote"):
    """The newest quote of a watched symbol: first the latest known one on subscribing, then
    conflated (a slow client skips older quotes, never gets a queue)."""

    quote: Quote


class OrderUpdate(ServerFrame, frozen=True, tag="order"):
    """A state transition of one of the user's orders, each one, before any quote."""

    event: OrderEvent


class CommandUpdate(ServerFrame, frozen=True, tag="command"):
    """A command of one of the user's accounts booked or refused (with its stable `reason`)."""

    event: CommandAccepted | CommandRejected


class Pong(ServerFrame, frozen=True, tag="pong"):
    """Answers `ping`, with the gateway's clock."""

    at: Instant


class Heartbeat(ServerFrame, frozen=True, tag="heartbeat"):
    """Sent when nothing else was for the gateway's `ws_heartbeat_s` (15 s by default)."""

    at: Instant


class StreamError(ServerFrame, frozen=True, tag="error"):
    """A client frame refused; the connection stays open. `detail` says what was expected."""

    code: Annotated[str, msgspec.Meta(
        description="stable: malformed_json, invalid_message, too_large, not_authenticated, "
                    "missing_token, invalid_token, token_expired, already_authenticated, "
                    "identity_provider_unavailable, invalid_symbol, too_many_symbols, "
                    "store_unavailable",
        examples=["invalid_message"])]
    detail: str


# Every frame the gateway sends, by its `type`.
SERVER_FRAMES: tuple[type[ServerFrame], ...] = (
    Authenticated, Subscribed, QuoteUpdate, OrderUpdate, CommandUpdate, Pong, Heartbeat,
    StreamError)
_FRAMES: dict[str, Any] = {str(kind.__struct_config__.tag): kind for kind in SERVER_FRAMES}

Symbols = Annotated[list[str], msgspec.Meta(
    description=f"symbols, at most {SYMBOLS_PER_CONNECTION_MAX} per connection ({SYMBOL_RULE};"
                " lower case reads as upper case)",
    examples=[["AAPL", "MSFT"]])]


class ClientOp(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op"):
    """A frame from the client: a JSON object whose `op` names what it asks."""

    # The frames that answer it (besides an `error` frame, which any op may get).
    answers: ClassVar[tuple[type[ServerFrame], ...]] = ()


class AuthOp(ClientOp, frozen=True, tag="auth"):
    """First, within 10 s of connecting (else the gateway closes with 4001): who is streaming.
    The user's order and command updates follow until the token expires: then an `error`
    frame `token_expired` and the stream closes with 4002 (open a new one with a fresh
    token)."""

    answers = (Authenticated,)
    token: Annotated[str, msgspec.Meta(description="a bearer token the HTTP API takes (the demo "
                                       "login's or the identity provider's), checked the same way",
                                       examples=["<token from POST /v1/auth/token>"])]


class SubscribeOp(ClientOp, frozen=True, tag="subscribe"):
    """Watch the quotes of these symbols too (after `auth`)."""

    answers = (Subscribed, QuoteUpdate)
    quotes: Symbols


class UnsubscribeOp(ClientOp, frozen=True, tag="unsubscribe"):
    """Stop watching the quotes of these symbols."""

    answers = (Subscribed,)
    quotes: Symbols


class PingOp(ClientOp, frozen=True, tag="ping"):
    """Is the gateway there? Answered `pong`, before or after `auth`."""

    answers = (Pong,)


ClientOps = AuthOp | SubscribeOp | UnsubscribeOp | PingOp
# Every op a client may send, by its `op`.
CLIENT_OPS: tuple[type[ClientOp], ...] = typing.get_args(ClientOps)
_OP_DECODER = msgspec.json.Decoder(ClientOps)
ASYNCAPI_PATH = "/v1/asyncapi.json"


def _op_usage() -> dict[str, str]:
    """Per op, what it takes, in words made from its fields and their schema's examples:
    `subscribe takes "quotes": ["AAPL", ...]`."""
    _refs, schemas = msgspec.json.schema_components(CLIENT_OPS)
    usage: dict[str, str] = {}
    for kind in CLIENT_OPS:
        properties = schemas[kind.__name__]["properties"]
        parts = []
        for field in msgspec.structs.fields(kind):
            example = properties[field.encode_name]["examples"][0]
            shown = (f"[{json.dumps(example[0])}, ...]" if isinstance(example, list)
                     else json.dumps(example))
            parts.append(f"{json.dumps(field.encode_name)}: {shown}")
        tag = str(kind.__struct_config__.tag)
        usage[tag] = f"{tag} takes " + (", ".join(parts) if parts else "no other field")
    return usage


_OP_USAGE = _op_usage()


def refusal(raw: str | bytes, reason: str) -> str:
    """Why a client frame was refused and what was expected: the given op's fields, or every
    op's if it named none the gateway knows."""
    try:
        given = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # nested past the parser's depth
        given = None
    op = given.get("op") if isinstance(given, dict) else None
    where = f"the protocol: {ASYNCAPI_PATH}"
    if isinstance(op, str) and op in _OP_USAGE:
        return f"{reason}: {_OP_USAGE[op]} (ops: {', '.join(_OP_USAGE)}; {where})"
    return (f"{reason}: a frame is a JSON object with an \"op\"; "
            f"{'; '.join(_OP_USAGE.values())} ({where})")


def frame(kind: str, **body: Any) -> str:
    """A server frame (one of SERVER_FRAMES, by its `type`): JSON text (browsers read text
    frames as strings)."""
    return _ENCODER.encode(_FRAMES[kind](**body)).decode()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2): what a server sends."""
    length = len(payload)
    if length < 126:
        header = bytes((_OPCODE_TEXT, length))
    elif length < 65536:
        header = bytes((_OPCODE_TEXT, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((_OPCODE_TEXT, 127)) + length.to_bytes(8, "big")
    return header + payload


class QuoteFrame:
    """A quote and its frame, encoded on first use and shared by every watcher."""

    __slots__ = ("quote", "_payload", "_wire")

    def __init__(self, quote: Quote) -> None:
        self.quote = quote
        self._payload: bytes | None = None
        self._wire: bytes | None = None

    @property
    def payload(self) -> bytes:
        """The frame's JSON."""
        if self._payload is None:
            self._payload = _ENCODER.encode(QuoteUpdate(self.quote))
        return self._payload

    @property
    def wire(self) -> bytes:
        """The whole WebSocket frame, header included, ready for any connection's transport."""
        if self._wire is None:
            self._wire = text_frame(self.payload)
        return self._wire

    @property
    def text(self) -> str:
        return self.payload.decode()


class Connection:
    """One client: its subscriptions, the quote frame it was last sent per symbol, its order
    updates."""

    __slots__ = ("ws", "transport", "user_id", "token_verified", "accounts", "symbols",
                 "latest", "sent", "pending_quotes", "updates", "wake", "too_slow",
                 "heartbeat_due", "last_sent_at", "heartbeat_timer", "expiry_timer")

    def __init__(self, ws: web.WebSocketResponse, transport: Transport | None = None) -> None:
        self.ws = ws
        # Quotes are written straight to it by the hub's rounds; without one (a test double)
        # the sender task sends them through `ws`.
        self.transport = transport
        self.user_id: str | None = None
        self.token_verified = False  # a valid auth op arrived (its account lookup may lag)
        self.accounts: set[str] = set()
        self.symbols: set[str] = set()
        self.latest: dict[str, QuoteFrame] = {}  # the hub's newest frame per symbol (shared)
        self.sent: dict[str, QuoteFrame] = {}  # per subscribed symbol, the frame last written
        self.pending_quotes: dict[str, QuoteFrame] = {}  # offered directly (the snapshot)
        self.updates: deque[str] = deque()
        self.wake = asyncio.Event()
        self.too_slow = False
        self.heartbeat_due = False
        self.last_sent_at = 0.0  # loop time of the last frame written
        self.heartbeat_timer: asyncio.TimerHandle | None = None
        self.expiry_timer: asyncio.TimerHandle | None = None  # the token's end

    def offer_quote(self, quote: Quote | QuoteFrame) -> None:
        """A quote from elsewhere than the feed (the cache's snapshot on subscribing): sent
        unless the feed has spoken about its symbol since this connection subscribed."""
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

    def due_quotes(self) -> list[QuoteFrame]:
        """The newest frame of each subscribed symbol this connection has not been sent, now
        counted as sent: however many quotes came meanwhile, only the latest is due."""
        due: list[QuoteFrame] = []
        sent = self.sent
        latest = self.latest
        symbols = self.symbols
        if self.pending_quotes:
            offered, self.pending_quotes = self.pending_quotes, {}
            for symbol, update in offered.items():
                if symbol in symbols and symbol not in latest:  # else the feed's is newer
                    sent[symbol] = update
                    due.append(update)
        for symbol in symbols:
            newest = latest.get(symbol)
            if newest is not None and sent.get(symbol) is not newest:
                sent[symbol] = newest
                due.append(newest)
        return due

    def write_quotes(self, now: float) -> int:
        """Write the due quotes in one transport write; how many were written, or -1 if the
        transport is backlogged (they stay due, conflated). The sender task writes them
        instead while order updates wait (updates first, in order) and without a transport."""
        transport = self.transport
        if transport is None or self.updates:
            self.wake.set()
            return 0
        if self.ws.closed or transport.is_closing():
            return 0
        if transport.get_write_buffer_size() > QUOTE_WRITE_BACKLOG_BYTES_MAX:
            return -1
        due = self.due_quotes()
        if not due:
            return 0
        transport.write(due[0].wire if len(due) == 1 else b"".join([u.wire for u in due]))
        self.last_sent_at = now
        return len(due)


class StreamHub:
    """The subscription map and the fan-out.

    Quotes from the tail replace each symbol's frame in `latest` and mark the symbol changed.
    A round, at most every flush interval, takes the connections watching a changed symbol and
    writes each its due quotes, a chunk of connections per loop callback: the tail's batches
    and HTTP requests are served between chunks, and a connection late in a long round gets
    the quotes that are newest when its turn comes, not those of when the round began."""

    def __init__(self, flush_interval_s: float = QUOTE_FLUSH_INTERVAL_S,
                 metrics: Metrics | None = None) -> None:
        self.subscribers: dict[str, set[Connection]] = defaultdict(set)
        self.connections: set[Connection] = set()
        self.quotes_received = 0
        self.latest: dict[str, QuoteFrame] = {}  # per symbol seen, its newest frame
        self.metrics = metrics  # counts the quote frames the rounds write
        self._flush_interval_s = flush_interval_s
        self._changed: set[str] = set()  # symbols with a new frame since the round began
        self._backlogged: set[Connection] = set()  # due quotes wait for the transport
        self._round: list[Connection] = []  # connections this round still has to write
        self._round_timer: asyncio.TimerHandle | None = None
        self._round_step: asyncio.Handle | None = None
        self._round_started_at = float("-inf")
        self._next_round_at = float("-inf")

    def publish_quotes(self, quotes: list[Quote]) -> None:
        """Called on the loop by the quotes tail with a batch: the newest frame per symbol;
        the watchers get it in the next round."""
        self.quotes_received += len(quotes)
        latest = self.latest
        changed = self._changed
        for quote in quotes:
            latest[quote.symbol] = QuoteFrame(quote)  # encoded only if someone is sent it
            changed.add(quote.symbol)
        self._schedule_round()

    def _schedule_round(self) -> None:
        """Unless a round runs (it schedules the next when done) or is due already."""
        if self._round or self._round_timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay_s = max(0.0, self._next_round_at - loop.time())
        self._round_timer = loop.call_later(delay_s, self._start_round)

    def _start_round(self) -> None:
        self._round_timer = None
        changed, self._changed = self._changed, set()
        dirty, self._backlogged = self._backlogged, set()
        subscribers = self.subscribers
        for symbol in changed:
            watchers = subscribers.get(symbol)
            if watchers:
                dirty |= watchers
        if dirty:
            self._round_started_at = asyncio.get_running_loop().time()
            self._round = list(dirty)
            self._continue_round()

    def _continue_round(self) -> None:
        """Write one chunk of the round; the rest after whatever else the loop has to do."""
        self._round_step = None
        loop = asyncio.get_running_loop()
        chunk = self._round[-QUOTE_ROUND_CHUNK:]
        del self._round[-QUOTE_ROUND_CHUNK:]
        now = loop.time()
        sent = 0
        try:
            for connection in chunk:
                written = connection.write_quotes(now)
                if written < 0:
                    self._backlogged.add(connection)
                else:
                    sent += written
        finally:  # whatever a write raised, the fan-out goes on (the loop logs the error)
            self._chunk_done(loop, sent)

    def _chunk_done(self, loop: asyncio.AbstractEventLoop, sent: int) -> None:
        if sent and self.metrics is not None:
            self.metrics.ws_messages.inc(sent, kind="quote")
        if self._round:
            self._round_step = loop.call_soon(self._continue_round)
            return
        took_s = loop.time() - self._round_started_at
        self._next_round_at = self._round_started_at + max(
            self._flush_interval_s, QUOTE_ROUND_DUTY_FACTOR * took_s)
        if self._changed or self._backlogged:
            self._schedule_round()

    def backlogged(self, connection: Connection) -> None:
        """Its quotes could not be written now: a later round writes them."""
        self._backlogged.add(connection)
        self._schedule_round()

    def close(self) -> None:
        for handle in (self._round_timer, self._round_step):
            if handle is not None:
                handle.cancel()
        self._round_timer = self._round_step = None
        self._round = []

    def subscribe(self, connection: Connection, symbols: list[str]) -> None:
        """The connection's next write (the sender's, after the `subscribed` frame, or a
        round's) carries the newest frame known of each new symbol."""
        connection.latest = self.latest
        for symbol in symbols:
            connection.symbols.add(symbol)
            self.subscribers[symbol].add(connection)

    def unsubscribe(self, connection: Connection, symbols: list[str]) -> None:
        for symbol in symbols:
            connection.symbols.discard(symbol)
            connection.sent.pop(symbol, None)
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
        self._backlogged.discard(connection)
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
            if connection.transport is not None:
                written = connection.write_quotes(loop.time())
                if written > 0:
                    gateway.metrics.ws_messages.inc(written, kind="quote")
                    sent = True
                elif written < 0:
                    gateway.hub.backlogged(connection)
            else:
                due = connection.due_quotes()
                for update in due:
                    await ws.send_str(update.text)
                if due:
                    gateway.metrics.ws_messages.inc(len(due), kind="quote")
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
    user_id, exp = await gateway.tokens.verify(op.token, int(gateway.clock().timestamp()))
    connection.token_verified = True  # in time, however long the account lookup takes
    accounts = [str(a["account_id"]) for a in await gateway.reader.accounts_of_user(user_id)]
    connection.user_id = user_id
    expires_in_s = exp - gateway.clock().timestamp()
    connection.expiry_timer = asyncio.get_running_loop().call_later(
        max(expires_in_s, 0.0), _close_expired, connection)
    for account_id in accounts:
        connection.accounts.add(account_id)
        gateway.replies.listen(account_id, connection.offer_event)
    connection.send_later(frame("authenticated", user_id=user_id, accounts=accounts))


def _valid_symbols(symbols: list[str]) -> list[str]:
    """The one symbol rule of every edge (state.messages.normalise_symbol)."""
    valid, bad = [], []
    for symbol in symbols:
        try:
            valid.append(normalise_symbol(symbol))
        except (ValueError, AttributeError):
            bad.append(symbol)
    if bad:
        raise Problem(400, "invalid_symbol", f"not symbols: {bad[:5]!r} ({SYMBOL_RULE})")
    return list(dict.fromkeys(valid))


async def _handle(connection: Connection, gateway: Gateway, raw: str | bytes) -> None:
    try:
        op = _OP_DECODER.decode(raw)
    except msgspec.ValidationError as error:
        raise Problem(400, "invalid_message", refusal(raw, str(error))) from error
    except msgspec.DecodeError as error:
        raise Problem(400, "malformed_json", refusal(raw, "not JSON")) from error
    except RecursionError as error:  # a frame nested thousands deep: it ended the stream
        raise Problem(400, "invalid_message", refusal(raw, "nested too deeply")) from error
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
                               max_msg_size=max(FRAME_BYTES_HARD_MAX, config.body_bytes_max),
                               compress=False)
    await ws.prepare(request)
    connection = Connection(ws, request.transport)
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
                size = _frame_bytes(message.data, config.body_bytes_max)
                if size > config.body_bytes_max:
                    raise Problem(413, "too_large", f"a frame is at most {config.body_bytes_max} "
                                  f"bytes; this one had {size}")
                await _handle(connection, gateway, message.data)
            except Problem as problem:
                connection.send_later(frame("error", code=problem.code, detail=problem.detail))
            except StoreError as error:  # the account lookup of `auth`: try again later
                connection.send_later(frame("error", code="store_unavailable",
                                            detail=f"{error}; send the op again"))
    finally:
        auth_deadline.cancel()
        if connection.expiry_timer is not None:
            connection.expiry_timer.cancel()
        hub.drop(connection, gateway)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    return ws


def _frame_bytes(data: str | bytes, limit: int) -> int:
    """A frame's size in bytes (a text frame's UTF-8, counted only when it may matter)."""
    if isinstance(data, bytes) or len(data) > limit or len(data) * 4 <= limit:
        return len(data)  # bytes; or a text frame past the limit, or far within it, either way
    return len(data.encode("utf-8", "surrogatepass"))


def _close_expired(connection: Connection) -> None:
    """A stream lives no longer than the token that opened it: order updates stop with it.
    The client is told why, then the stream closes; it opens a new one with a fresh token."""
    if connection.ws.closed:
        return
    connection.user_id = None  # nothing more is sent for the user's accounts
    asyncio.ensure_future(_say_and_close(connection))


async def _say_and_close(connection: Connection) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await connection.ws.send_str(frame(
            "error", code="token_expired",
            detail="the token expired: open a new stream and authenticate with a fresh token"))
    await connection.ws.close(code=_CLOSE_TOKEN_EXPIRED, message=b"token expired")


def _close_unauthenticated(connection: Connection) -> None:
    if connection.user_id is None and not connection.token_verified \
            and not connection.ws.closed:
        asyncio.ensure_future(
            connection.ws.close(code=_CLOSE_AUTH_TIMEOUT, message=b"auth timeout"))
