"""The bad-input corpus (tests/bad_input.py) where it needs no servers: the HTTP and
WebSocket cases against the gateway on in-memory stores, the `orders.commands` records
through the decoder every reader uses, the FIX reports through the gateway's normaliser, and
the connector files. The whole-stack run is tests/integration/compose/test_bad_input.py;
these catch a 500, a traceback or an accepted bad input in seconds."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateways.http.app import create_app
from gateways.http.auth import issue_token
from gateways.http.openapi import openapi_document
from state import dead_letters
from state.exceptions import DecodeError
from state.messages import CommandRejected, Message, Withdraw
from state.topics import Topic, decode
from tests import bad_input as corpus
from tests.unit.gateways.test_http_fakes import NOW, SECRET, Fakes, config, shard_order

VICTIM_ACCOUNT, ATTACKER_ACCOUNT, ORDER = "acc_victim", "acc_attacker", "ord_victim"
TARGET = corpus.Target(VICTIM_ACCOUNT, ORDER, ATTACKER_ACCOUNT, SECRET, int(NOW.timestamp()))


def _refuse_withdrawals(message: Message) -> list[Any]:
    if isinstance(message, Withdraw):
        return [CommandRejected(event_id="e", account_id=message.account_id,
                                idempotency_key=message.idempotency_key,
                                command_type="withdraw",
                                reason="insufficient_withdrawable_cash", occurred_at=NOW)]
    return []


def _serve(scenario: Callable[[str, Fakes], Awaitable[None]]) -> Fakes:
    fakes = Fakes()
    fakes.reader.accounts[VICTIM_ACCOUNT] = {"account_id": VICTIM_ACCOUNT,
                                             "user_id": corpus.VICTIM, "shard": 0,
                                             "created_at": NOW}
    fakes.reader.accounts[ATTACKER_ACCOUNT] = {"account_id": ATTACKER_ACCOUNT,
                                               "user_id": corpus.ATTACKER, "shard": 1,
                                               "created_at": NOW}
    fakes.reader.orders_by_id[(VICTIM_ACCOUNT, ORDER)] = shard_order(
        VICTIM_ACCOUNT, ORDER, limit_price=Decimal("1.00"), quantity=Decimal(1))
    fakes.producer.respond = _refuse_withdrawals

    async def main() -> None:
        app = create_app(config(orders_per_s_max=100_000, reads_per_s_max=100_000),
                         backends=fakes.backends)
        server = TestServer(app)
        await server.start_server()
        try:
            await scenario(str(server.make_url("")).rstrip("/"), fakes)
        finally:
            await server.close()

    asyncio.run(main())
    return fakes


def _tokens() -> dict[str, str]:
    return {user: issue_token(SECRET, user, TARGET.now_s, 900)
            for user in (corpus.VICTIM, corpus.ATTACKER)}


def test_http_corpus_gets_problems_and_produces_nothing() -> None:
    """Every hand-made case and 8 schemathesis cases per operation and mode: a documented
    4xx problem (or a read served), never a 5xx; nothing reaches the topic. Found here first:
    `?limit=²` and `?limit=<5,000 digits>` were 500s (routes._int_param); tokens whose
    `exp` is NaN, Infinity or 1e400 were 500s, and `nbf: NaN` or `exp: 1e40` were accepted
    (auth._is_time); an amount of "1.0000000000000000000000000000001" was taken as 1.00
    with its 31 decimals sent on (validation._places)."""
    tally = corpus.Tally()
    document = openapi_document()
    cases = corpus.hand_made_http_cases(TARGET) + [
        case for case in corpus.openapi_http_cases(document, TARGET, 8, 1)
        if "/healthz" not in case.name]  # it checks real servers, which these fakes are not

    async def scenario(base: str, fakes: Fakes) -> None:
        await corpus.run_http(base, cases, _tokens(), document, tally)

    fakes = _serve(scenario)
    produced = [m for _, _, m in fakes.producer.produced if not isinstance(m, Withdraw)]
    assert not tally.failures, "\n".join(tally.failures)
    assert produced == []  # only the withdrawal the topology refuses went out
    assert tally.inputs["http"] == len(cases) > 600


def test_requests_the_http_parser_refuses_get_a_4xx_and_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """Not HTTP, a header over 8 KiB, a NUL in a header, two Content-Lengths: aiohttp's
    parser answers 400 before the app sees them, and the gateway logs one line for each
    (gateways.http.service.ClientErrorsInOneLine), not an ERROR with a traceback."""
    import logging

    from gateways.http.service import ClientErrorsInOneLine

    tally = corpus.Tally()
    one_line = ClientErrorsInOneLine()
    logging.getLogger("aiohttp.server").addFilter(one_line)

    async def scenario(base: str, fakes: Fakes) -> None:
        host, port = base.removeprefix("http://").split(":")
        await asyncio.to_thread(corpus.run_protocol, host, int(port), tally)

    try:
        with caplog.at_level(logging.WARNING, logger="aiohttp.server"):
            _serve(scenario)
    finally:
        logging.getLogger("aiohttp.server").removeFilter(one_line)
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.answers["http_protocol"] == {"400": len(corpus.PROTOCOL_CASES)}
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert refused and all(r.levelname == "WARNING" and not r.exc_info for r in refused)


def test_websocket_corpus_gets_error_frames_on_a_connection_kept() -> None:
    """Found here first: a frame nested 5,000 deep ended the stream with a traceback (the
    refusal's own decode recursed), a token with `exp` NaN or Infinity did too, and a frame
    over 16 KiB closed the connection (1009) instead of an error frame."""
    tally = corpus.Tally()
    token = _tokens()[corpus.VICTIM]

    async def scenario(base: str, fakes: Fakes) -> None:
        await corpus.run_ws(base.replace("http", "ws", 1) + "/v1/stream",
                            corpus.ws_cases(SECRET, corpus.VICTIM, TARGET.now_s), token, tally)

    _serve(scenario)
    assert not tally.failures, "\n".join(tally.failures)


@pytest.mark.parametrize("record", corpus.command_records(
    VICTIM_ACCOUNT, ATTACKER_ACCOUNT, 0, 4, dt.datetime(2026, 3, 2, 15, tzinfo=dt.UTC)),
    ids=lambda record: record.name)
def test_command_records_decode_or_are_refused_with_their_reason(
        record: corpus.CommandRecord) -> None:
    """What a reader of `orders.commands` makes of each record: a DecodeError whose reason is
    one the record may be dead-lettered for, or a command (judged by the account topology,
    which the whole-stack run covers). Never another exception: a value nested 20,000 deep
    before `type` raised RecursionError out of the decoder."""
    try:
        message = decode(Topic.ORDERS_COMMANDS, record.value)
    except DecodeError as error:
        assert dead_letters.reason_of(str(error)) in record.reasons, str(error)
        return
    # Decoded: a routing error (key, partition, record time), or a command to refuse.
    assert record.idempotency_key or record.reasons & {
        "key_mismatch", "wrong_partition", "invalid_timestamp"}, message


def test_connector_files_are_refused_in_one_line_naming_file_and_field(
        tmp_path: Path) -> None:
    """Found here first: NaN and Infinity rates and volatilities, negative volatilities and
    tolerances, NaN and negative start prices and malformed symbols were loaded (the feed
    died on its first quote, or published what every reader dead-lettered); arrays nested
    500 deep were a RecursionError traceback."""
    tally = corpus.Tally()
    corpus.run_connector_files(tmp_path, tally)
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.inputs["connector_files"] == len(corpus.connector_files()) + len(
        corpus.JSON_CONNECTOR_FILES)


@pytest.mark.parametrize("case", [c for c in corpus.fix_cases(ATTACKER_ACCOUNT)
                                  if c.refused_by == {"unusable_report"}],
                         ids=lambda case: case.name)
def test_fix_reports_the_gateway_cannot_use_are_refused(case: corpus.FixCase) -> None:
    """A report of our ClOrdID naming another Account (1) was forwarded under that account,
    and its fill booked there (`fill_for_unknown_order`) instead of refused."""
    from gateways.fix import fixmsg
    from state.ids import cl_ord_id_for
    from state.messages import Side

    known = fixmsg.KnownOrder(VICTIM_ACCOUNT, "AAPL", Side.BUY, Decimal(1),
                              cl_ord_id=cl_ord_id_for(ORDER))
    message = corpus.fix_report(case, cl_ord_id_for(ORDER), VICTIM_ACCOUNT, "AAPL", "E-1")
    with pytest.raises(fixmsg.FixFieldError):
        fixmsg.execution_report_from_fix(message, "mm", known, dt.datetime.now(dt.UTC))


def test_the_corpus_is_the_same_for_the_same_seed() -> None:
    document = openapi_document()
    first = corpus.openapi_http_cases(document, TARGET, 3, 7)
    again = corpus.openapi_http_cases(document, TARGET, 3, 7)
    assert [(c.method, c.path, c.body_bytes()) for c in first] == [
        (c.method, c.path, c.body_bytes()) for c in again]
    assert json.dumps(corpus.Tally().summary())
