"""The state is bounded; what it forgets leaves a watermark so nothing applies twice."""

from __future__ import annotations

import datetime as dt

from state.domain import account
from state.messages import Alert, CommandAccepted, CommandRejected, OrderState, RouteNewOrder

from .builders import T0, D, Driver, at, deposit, of_type, place, report, states


def test_closed_orders_and_keys_are_bounded() -> None:
    d = Driver()
    d.send(deposit("dep", "1000000.00"))
    for n in range(account.IDEMPOTENCY_KEYS_MAX + 20):
        now = at(n)
        d.send(place(f"o{n}", "buy", "1", reference="100", reference_time=now, when=now))
        d.send(report(f"o{n}", f"x{n}", qty="1", px="100", cum="1", when=now), now)
    assert len(d.state.closed_orders) == account.CLOSED_ORDERS_MAX
    assert len(d.state.commands) == account.IDEMPOTENCY_KEYS_MAX
    assert d.state.commands_forgotten_until is not None
    assert d.state.executions_forgotten_until is not None


def test_a_duplicate_older_than_the_memory_is_refused_not_applied() -> None:
    d = Driver()
    first = deposit("dep", "100.00")
    d.send(first)
    later = T0 + dt.timedelta(days=4)
    d.send(deposit("dep2", "1.00", later), later)  # prunes the first key
    out = d.send(first, later)
    [rejection] = of_type(out, CommandRejected)
    assert rejection.reason == "command_too_old"
    assert d.cash() == D("101.00")
    assert of_type(d.send(deposit("dep3", "1.00", later), later), CommandAccepted)


def test_an_open_order_is_still_recognised_after_its_key_is_forgotten() -> None:
    d = Driver()
    d.send(deposit("dep", "1000.00"))
    order = place("gtc", "buy", "1", order_type="limit", limit="100", reference=None, tif="gtc")
    d.send(order)
    later = T0 + dt.timedelta(days=4)
    d.send(deposit("dep2", "1.00", later), later)
    assert "gtc" not in d.state.commands
    assert d.send(order, later) == []
    changed = place("gtc", "buy", "2", order_type="limit", limit="100", reference=None,
                    tif="gtc")
    [rejection] = of_type(d.send(changed, later), CommandRejected)
    assert rejection.reason == "duplicate_idempotency_key_different_body"


def test_a_fill_replayed_after_its_order_was_forgotten_is_alerted_not_booked() -> None:
    d = Driver()
    d.send(deposit("dep", "1000.00"))
    d.send(place("o", "buy", "1", reference="100"))
    fill = report("o", "x1", qty="1", px="100", cum="1")
    d.send(fill)
    later = T0 + dt.timedelta(days=4)
    d.send(deposit("dep2", "1.00", later), later)
    assert not d.state.closed_orders
    out = d.send(fill, later)
    assert [(a.code, a.severity) for a in of_type(out, Alert)] == [
        ("execution_for_forgotten_order", "critical")]
    assert d.shares() == D("1")
    # a fill from after what was forgotten is real and booked
    fresh = report("o", "x2", qty="1", px="100", cum="2", when=later)
    assert [a.code for a in of_type(d.send(fresh, later), Alert)] == ["fill_for_unknown_order"]
    assert d.shares() == D("2")


def test_rejected_orders_are_kept_for_their_key() -> None:
    d = Driver()
    out = d.send(place("o", "buy", "1", reference="100"))
    assert states(out) == [OrderState.REJECTED]
    assert d.send(place("o", "buy", "1", reference="100")) == []
    d.send(deposit("dep", "1000.00"))
    assert not of_type(d.send(place("o", "buy", "1", reference="100")), RouteNewOrder)
