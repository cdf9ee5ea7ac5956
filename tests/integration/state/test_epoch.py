"""Broker epochs on a real broker: written once, read by everyone, new for a forgetful broker."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from state.epoch import ensure_epoch, read_epoch

pytestmark = pytest.mark.integration


def test_a_broker_without_an_epoch_gets_one_that_stays(services) -> None:  # type: ignore[no-untyped-def]
    prefix = f"e{uuid.uuid4().hex[:8]}."
    assert read_epoch(services.bootstrap_servers, prefix) is None
    epoch = ensure_epoch(services.bootstrap_servers, prefix)
    assert read_epoch(services.bootstrap_servers, prefix) == epoch
    assert ensure_epoch(services.bootstrap_servers, prefix) == epoch


def test_racing_writers_agree_on_the_first_record(services) -> None:  # type: ignore[no-untyped-def]
    prefix = f"e{uuid.uuid4().hex[:8]}."
    with ThreadPoolExecutor(max_workers=3) as pool:
        epochs = set(pool.map(lambda _: ensure_epoch(services.bootstrap_servers, prefix),
                              range(3)))
    assert len(epochs) == 1
    assert read_epoch(services.bootstrap_servers, prefix) in epochs


def test_another_log_has_another_epoch(services) -> None:  # type: ignore[no-untyped-def]
    # A broker that forgot its topics looks, to its readers, like an empty namespace.
    first = ensure_epoch(services.bootstrap_servers, f"e{uuid.uuid4().hex[:8]}.")
    second = ensure_epoch(services.bootstrap_servers, f"e{uuid.uuid4().hex[:8]}.")
    assert first != second
