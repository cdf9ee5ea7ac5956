from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import msgspec
import pytest

from connectors.runtime import Publish, Reject
from connectors.status import MarketStatusFeed, MarketStatusSettings, StatusEvent
from state.messages import MarketStatus, SymbolStatus
from tests.unit.connectors.fakes import T0, FakeClock, play


def test_schedule_and_file_events_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "status.jsonl"
    path.write_text("\n".join([
        json.dumps({"symbol": "GME", "status": "resumed", "after_s": 1}),  # bad status
        json.dumps({"symbol": "GME", "status": "open", "after_s": 90}),
        json.dumps({"symbol": "SPY", "status": "restricted",
                    "at": (T0 - dt.timedelta(hours=1)).isoformat()}),
    ]) + "\n")
    schedule = (StatusEvent(symbol="GME", status=SymbolStatus.HALTED, after_s=30,
                            reason="volatility pause"),)
    feed = MarketStatusFeed(MarketStatusSettings(path=str(path), events=schedule))
    played = list(play(feed, FakeClock()))
    rejects = [step for _, step in played if isinstance(step, Reject)]
    assert len(rejects) == 1 and "resumed" in rejects[0].original.decode()
    published = [(at, step.message) for at, step in played if isinstance(step, Publish)]
    assert [(at, m.symbol, m.status) for at, m in published] == [  # type: ignore[attr-defined]
        (0, "SPY", SymbolStatus.RESTRICTED), (30, "GME", SymbolStatus.HALTED),
        (90, "GME", SymbolStatus.OPEN)]
    spy, gme_halt = published[0][1], published[1][1]
    assert isinstance(spy, MarketStatus) and spy.effective_at == T0 - dt.timedelta(hours=1)
    assert isinstance(gme_halt, MarketStatus)
    assert gme_halt.effective_at == T0 + dt.timedelta(seconds=30)
    assert gme_halt.reason == "volatility pause"


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "status.toml"
    path.write_text('[[events]]\nsymbol = "TSLA"\nstatus = "halted"\nafter_s = 0\n')
    played = list(play(MarketStatusFeed(MarketStatusSettings(path=str(path))), FakeClock()))
    assert len(played) == 1 and isinstance(played[0][1], Publish)


def test_an_event_needs_exactly_one_time() -> None:
    with pytest.raises(msgspec.ValidationError, match="exactly one"):
        msgspec.convert({"symbol": "A", "status": "open"}, StatusEvent)
