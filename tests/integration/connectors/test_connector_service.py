"""The connector service on the embedded broker: file replay with bad ticks and market status,
each in a Quix source process, stopped by SIGTERM."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from connectors.config import ConnectorsConfig, load_connector_dir
from state.messages import DeadLetter, MarketStatus, Quote, SymbolStatus
from state.topics import Topic, decode
from tests.integration.connectors.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def _run(config: ConnectorsConfig) -> None:
    from connectors.service import run

    run(config)


def _write_connectors(directory: Path) -> None:
    start = dt.datetime(2024, 3, 1, 15, 0, tzinfo=dt.UTC)
    ticks = []
    for i in range(20):
        ticks.append({"symbol": ["AAPL", "MSFT"][i % 2], "bid": "100.00", "ask": "100.02",
                      "bid_size": "100", "ask_size": "200",
                      "venue_time": (start + dt.timedelta(milliseconds=10 * i)).isoformat()})
    ticks[3]["bid"] = "-1"            # non-positive price
    ticks[5]["bid"] = "100.10"        # crossed
    ticks[7]["symbol"] = "NOPE"       # unknown symbol
    lines = [json.dumps(t) for t in ticks] + ["garbage"]
    (directory / "ticks.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "replay.toml").write_text(
        'name = "replay"\nconnector = "file_replay"\ntopic = "quotes"\n[settings]\n'
        'path = "ticks.jsonl"\nspeed = 10\nsymbols = ["AAPL", "MSFT"]\n')
    (directory / "status.toml").write_text(
        'name = "status"\nconnector = "market_status"\ntopic = "market.status"\n'
        '[[settings.events]]\nsymbol = "GME"\nstatus = "halted"\nafter_s = 0\n'
        'reason = "news pending"\n')


def test_replay_and_status_reach_their_topics(services: Any, topics: str,
                                              tmp_path: Path) -> None:
    _write_connectors(tmp_path)
    config = ConnectorsConfig(bootstrap_servers=services.bootstrap_servers, topic_prefix=topics,
                              connectors=load_connector_dir(tmp_path))
    process = multiprocessing.get_context("spawn").Process(target=_run, args=(config,))
    process.start()
    try:
        bootstrap = services.bootstrap_servers
        quotes = read_topic(bootstrap, topics + "quotes", lambda r: len(r) >= 17)
        dead = read_topic(bootstrap, topics + "dlq.quotes", lambda r: len(r) >= 4)
        status = read_topic(bootstrap, topics + "market.status", lambda r: len(r) >= 1)
        time.sleep(0.5)
        assert process.is_alive(), "the service keeps running after the replay ends"
    finally:
        if process.pid:
            os.kill(process.pid, signal.SIGTERM)
        process.join(20)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0

    assert len(quotes) == 17
    for key, raw in quotes:
        quote = decode(Topic.QUOTES, raw)
        assert isinstance(quote, Quote) and key == quote.symbol
    letters = [msgspec.json.decode(raw, type=DeadLetter) for _, raw in dead]
    reasons = sorted(letter.error.split(":")[0] for letter in letters)
    assert reasons == ["crossed_quote", "malformed_tick", "non_positive_price", "unknown_symbol"]
    assert all(letter.original for letter in letters)
    ((key, raw),) = status
    halt = decode(Topic.MARKET_STATUS, raw)
    assert isinstance(halt, MarketStatus) and key == "GME"
    assert (halt.status, halt.reason) == (SymbolStatus.HALTED, "news pending")
