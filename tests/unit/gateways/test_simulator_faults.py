"""The simulator's faults switched while it runs (gateways/simulator/faults.py): the faults file
read when it changes, and what the application does with the faults.

python -m pytest -q tests/unit/gateways/test_simulator_faults.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from gateways.simulator.application import SimulatorApplication
from gateways.simulator.book import Book, NewOrder, Report
from gateways.simulator.config import SimulatorConfig
from gateways.simulator.faults import POLL_INTERVAL_S, Faults, FaultSwitch, faults_of
from gateways.simulator.store import BookStore
from state.messages import ExecType, OrderType, Side


def _write(path: Path, faults: dict[str, object], mtime_ns: int) -> None:
    path.write_text(json.dumps(faults))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_file_overrides_the_config_while_present(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    base = Faults(latency_ms=5)
    switch = FaultSwitch(path, base)
    now = 100.0
    assert switch.poll(now) is None  # no file: the config's faults stand
    _write(path, {"duplicate_reports": True, "drop_sessions": 1}, 1_000)
    assert switch.poll(now + POLL_INTERVAL_S / 2) is None  # not looked at yet
    now += POLL_INTERVAL_S
    assert switch.poll(now) == (Faults(latency_ms=5, duplicate_reports=True, drop_sessions=1), 1)
    now += POLL_INTERVAL_S
    assert switch.poll(now) is None  # unchanged
    _write(path, {"latency_ms": 900, "drop_sessions": 1}, 2_000)
    now += POLL_INTERVAL_S
    assert switch.poll(now) == (Faults(latency_ms=900, drop_sessions=1), 0)  # no new drop
    path.unlink()
    now += POLL_INTERVAL_S
    assert switch.poll(now) == (base, 0)  # removed: the config's again


def test_an_unreadable_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    switch = FaultSwitch(path, Faults())
    for n, text in enumerate(('{"latency_ms": "soon"}', "{not json", '{"explode": true}')):
        path.write_text(text)
        os.utime(path, ns=(n * 1000 + 1, n * 1000 + 1))
        assert switch.poll(100.0 + n) is None
    assert switch.current == Faults()


def test_without_a_file_nothing_is_read() -> None:
    assert FaultSwitch(None, Faults()).poll(1e9) is None


@pytest.fixture
def app(tmp_path: Path) -> SimulatorApplication:
    config = SimulatorConfig(bootstrap_servers="unused", port=1, store_dir=str(tmp_path))
    application = SimulatorApplication(config, Book(Decimal(0), Decimal(1000)),
                                       BookStore(tmp_path))
    assert application.faults == faults_of(config) == Faults()
    return application


def _reports() -> list[Report]:
    book = Book(Decimal(0), Decimal(1000))
    book.on_quote("GME", Decimal("23.40"), Decimal("23.41"))
    return book.new_order(NewOrder(cl_ord_id="c1", account="a1", symbol="GME", side=Side.BUY,
                                   order_type=OrderType.MARKET, quantity=Decimal(1000)))


def test_the_application_sends_as_its_current_faults_say(app: SimulatorApplication) -> None:
    sent: list[list[str]] = []
    scheduled: list[tuple[float, Callable[[], None]]] = []
    app._send = lambda reports, session_id: sent.append([r.exec_id for r in reports])  # type: ignore[method-assign]
    app.sender.schedule = lambda delay, action: scheduled.append((delay, action))  # type: ignore[method-assign]
    reports = _reports()
    ids = [r.exec_id for r in reports]
    assert [r.exec_type for r in reports] == [ExecType.NEW] + [ExecType.TRADE] * 3
    app.deliver(reports, None)
    assert sent == [ids]
    app.set_faults(Faults(duplicate_reports=True, out_of_order_reports=True))
    app.deliver(reports, None)
    reordered = [ids[0], ids[3], ids[2], ids[1]]
    assert sent[-1] == [i for i in reordered for _ in (1, 2)]
    app.set_faults(Faults(latency_ms=1500))
    app.deliver(reports, None)
    assert len(sent) == 2 and [delay for delay, _ in scheduled] == [1.5]
    scheduled[0][1]()
    assert sent[-1] == ids


def test_a_drop_counter_drops_every_logged_on_session_once(app: SimulatorApplication) -> None:
    dropped: list[object] = []
    app._drop = dropped.append  # type: ignore[method-assign]
    app.sender.schedule = lambda delay, action: action()  # type: ignore[method-assign]
    app.logged_on = {"FIX.4.4:MM1->BROKER"}
    app.sessions = {"FIX.4.4:MM1->BROKER": "session"}  # type: ignore[dict-item]
    app.set_faults(Faults(drop_sessions=1), drop_sessions=1)
    app.set_faults(Faults(drop_sessions=1), drop_sessions=0)
    assert dropped == ["session"]
