from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.replay import FileReplay, FileReplaySettings
from connectors.runtime import Publish, Reject
from connectors.validation import MALFORMED, NON_POSITIVE_PRICE, STALE, UNKNOWN_SYMBOL
from state.messages import Quote
from tests.unit.connectors.fakes import T0, FakeClock, play

REC = dt.datetime(2024, 3, 1, 15, 0, tzinfo=dt.UTC)  # when the recording was made


def tick(seconds: float, symbol: str = "AAPL", bid: str = "180.00", ask: str = "180.02",
         **extra: str) -> dict[str, str]:
    return {"symbol": symbol, "bid": bid, "ask": ask, "bid_size": "100", "ask_size": "300",
            "venue_time": (REC + dt.timedelta(seconds=seconds)).isoformat(), **extra}


def write_jsonl(path: Path, rows: list[dict[str, str]], extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join([json.dumps(r) for r in rows] + list(extra_lines)) + "\n")
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = ["symbol", "bid", "ask", "bid_size", "ask_size", "venue_time", "last", "last_size"]
    lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_at_original_pace_restamped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ticks.jsonl", [tick(0), tick(0.5), tick(2, last="180.02",
                                                                            last_size="10")])
    clock = FakeClock()
    played = list(play(FileReplay(FileReplaySettings(path=str(path))), clock))
    assert [at for at, _ in played] == [0, 0.5, 2]
    quotes = [step.message for _, step in played if isinstance(step, Publish)
              and isinstance(step.message, Quote)]
    assert [q.venue_time for q in quotes] == [T0, T0 + dt.timedelta(seconds=0.5),
                                              T0 + dt.timedelta(seconds=2)]
    third = quotes[2]
    assert third.last == Decimal("180.02") and third.last_size == 10


@pytest.mark.parametrize(("speed", "times"), [(4.0, [0, 0.5, 1.0]), (0.0, [0, 0, 0])])
def test_csv_scaled_or_as_fast_as_possible(tmp_path: Path, speed: float,
                                           times: list[float]) -> None:
    path = write_csv(tmp_path / "ticks.csv", [tick(0), tick(2), tick(4)])
    played = list(play(FileReplay(FileReplaySettings(path=str(path), speed=speed)),
                       FakeClock()))
    assert [at for at, _ in played] == times
    assert all(isinstance(step, Publish) for _, step in played)


def test_bad_ticks_are_rejected_with_reasons(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ticks.jsonl", [
        tick(0), tick(0.1, bid="0"), tick(0.2, symbol="XYZ"), tick(0.3, bid="abc"),
        {"symbol": "AAPL", "bid": "1"},
    ], extra_lines=("not json", "[1, 2]"))
    settings = FileReplaySettings(path=str(path), speed=0, symbols=("AAPL",))
    played = [step for _, step in play(FileReplay(settings), FakeClock())]
    assert sum(isinstance(step, Publish) for step in played) == 1
    reasons = [step.reason.split(":")[0] for step in played if isinstance(step, Reject)]
    assert reasons == [NON_POSITIVE_PRICE, UNKNOWN_SYMBOL, MALFORMED, MALFORMED, MALFORMED,
                       MALFORMED]
    assert all(step.original for step in played if isinstance(step, Reject))


def test_without_restamp_old_ticks_are_stale(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ticks.jsonl", [tick(0)])
    played = [s for _, s in play(FileReplay(FileReplaySettings(path=str(path), restamp=False)),
                                 FakeClock())]
    assert isinstance(played[0], Reject) and played[0].reason == STALE


def test_loop_replays_again(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ticks.jsonl", [tick(0), tick(1)])
    settings = FileReplaySettings(path=str(path), loop=True)
    played = list(play(FileReplay(settings), FakeClock(), until_s=10))
    assert len(played) >= 6
