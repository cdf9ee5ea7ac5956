"""`brokerage up` calls the stack ready once an order can fill: which symbols it waits for,
what counts as quoted, and the line it prints (python -m pytest -q tests/unit/compose)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from compose import cli, up
from compose.stack import SERVICE_NAMES, load_stack
from state.messages import Quote

FEED = ("AAPL", "MSFT", "TSLA", "GME", "SPY")  # connectors/examples/synthetic.toml
STARTED = dt.datetime(2026, 12, 3, 17, 0, tzinfo=dt.UTC)


def quote(symbol: str, venue_time: dt.datetime) -> Quote:
    return Quote(symbol=symbol, bid=Decimal("10.00"), ask=Decimal("10.01"),
                 bid_size=Decimal(100), ask_size=Decimal(100), venue_time=venue_time)


def stack_with(tmp_path: Path, services: tuple[str, ...]):  # noqa: ANN201
    path = tmp_path / "stack.toml"
    path.write_text(f"[stack]\nservices = {list(services)!r}\n")
    return load_stack(path, environ={})


def test_the_default_stack_waits_for_every_symbol_of_its_feed() -> None:
    assert up.ready_symbols(load_stack(environ={})) == FEED


@pytest.mark.parametrize("left_out", ["connectors", "http", "market-data"])
def test_a_stack_without_the_feed_or_http_does_not_wait(tmp_path: Path, left_out: str) -> None:
    services = tuple(name for name in SERVICE_NAMES if name != left_out)
    assert up.ready_symbols(stack_with(tmp_path, services)) == ()


def test_only_quotes_of_this_run_count() -> None:
    quotes = {"AAPL": quote("AAPL", STARTED + dt.timedelta(seconds=3)),
              "MSFT": quote("MSFT", STARTED - dt.timedelta(hours=1))}  # a previous run's
    assert up.unquoted(quotes, ["AAPL", "MSFT", "TSLA"], STARTED) == ["MSFT", "TSLA"]
    assert up.unquoted(quotes, ["AAPL"], STARTED) == []


def _report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            missing: list[str], stop: threading.Event | None = None) -> tuple[str, str]:
    stop = stop or threading.Event()

    def wait_ready(running, symbols, since, stop_, timeout_s):  # noqa: ANN001, ANN202
        assert (tuple(symbols), since, stop_, timeout_s) == (FEED, STARTED, stop, 60.0)
        return missing

    monkeypatch.setattr(up, "wait_ready", wait_ready)
    running = SimpleNamespace(stack=load_stack(environ={}))
    cli._report_readiness(running, STARTED, 60.0, stop)  # type: ignore[arg-type]
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_up_prints_ready_when_every_symbol_is_quoted(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _report(monkeypatch, capsys, [])
    assert out.startswith("ready: quotes for AAPL, MSFT, TSLA, GME, SPY in ") and not err


def test_up_names_the_unquoted_symbols_and_keeps_running(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _report(monkeypatch, capsys, ["GME"])
    assert "ready:" not in out + err
    assert "no quote" in err and "for GME:" in err and "running anyway" in err


def test_a_stop_while_waiting_for_quotes_reports_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    assert _report(monkeypatch, capsys, ["GME"], stop) == ("", "")


def test_once_healthy_a_stop_signal_asks_for_the_clean_stop() -> None:
    """Ctrl-C while `up` waits for quotes is the normal stop (exit 0), not an interrupted start:
    the signal sets the event the ready wait and the serve loop watch, and raises nothing."""
    before = {signum: signal.getsignal(signum) for signum in up.STOP_SIGNALS}
    try:
        stop = up.stop_on_signals()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5.0)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
