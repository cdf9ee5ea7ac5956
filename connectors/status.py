"""The market-status connector: halts, restrictions (closing only) and resumes, from a file
(JSONL, CSV or TOML `[[events]]`) and/or a schedule in the settings. An event either carries
`after_s` (seconds after the connector starts) or `at` (RFC 3339; a past instant is published
at once), and `symbol`, `status` (open, halted, restricted), optionally `reason`."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from connectors.exceptions import ReplayFileError
from connectors.replay import read_rows
from connectors.runtime import Clock, Pause, Publish, Reject, Step
from state.messages import MarketStatus, Symbol, SymbolStatus

STATUS_MALFORMED = "malformed_status"


class StatusEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    symbol: Symbol
    status: SymbolStatus
    after_s: float | None = None
    at: dt.datetime | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if (self.after_s is None) == (self.at is None):
            raise ValueError("give exactly one of after_s and at")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("at must carry a UTC offset")


class MarketStatusSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                           kw_only=True):
    path: str = ""
    events: tuple[StatusEvent, ...] = ()


def _file_events(path: Path) -> Iterator[tuple[bytes, StatusEvent | str]]:
    """Each event of the file, or the reason it is malformed, with its raw text."""
    if path.suffix == ".toml":
        try:
            rows: list[Any] = tomllib.loads(path.read_text(encoding="utf-8")).get("events", [])
        except (OSError, ValueError) as error:
            raise ReplayFileError(f"{path}: cannot read: {error}") from error
        raws = [json.dumps(row, default=str).encode() for row in rows]
        pairs = list(zip(raws, rows, strict=True))
    else:
        pairs = list(read_rows(path, "csv" if path.suffix == ".csv" else "jsonl"))
    for raw, fields in pairs:
        cleaned = {k: v for k, v in (fields or {}).items() if v not in (None, "")}
        try:
            yield raw, msgspec.convert(cleaned, StatusEvent, strict=False)
        except (msgspec.ValidationError, ValueError) as error:
            yield raw, str(error)


class MarketStatusFeed:
    def __init__(self, settings: MarketStatusSettings) -> None:
        self.settings = settings

    def steps(self, clock: Clock) -> Iterator[Step]:
        started_s, started_at = clock.monotonic(), clock.now()
        timed: list[tuple[float, int, StatusEvent]] = []
        items: list[tuple[bytes, StatusEvent | str]] = []
        if self.settings.path:
            items += list(_file_events(Path(self.settings.path)))
        items += [(msgspec.json.encode(event), event) for event in self.settings.events]
        for index, (raw, event) in enumerate(items):
            if isinstance(event, str):
                yield Reject(None, f"{STATUS_MALFORMED}: {event}", raw)
                continue
            timed.append((_offset_s(event, started_at), index, event))
        for offset_s, _, event in sorted(timed, key=lambda item: item[:2]):
            if offset_s > 0:
                yield Pause(started_s + offset_s)
            effective_at = event.at if event.at is not None and offset_s <= 0 else clock.now()
            yield Publish(event.symbol, MarketStatus(
                symbol=event.symbol, status=event.status, effective_at=effective_at,
                reason=event.reason))


def _offset_s(event: StatusEvent, started_at: dt.datetime) -> float:
    if event.after_s is not None:
        return event.after_s
    assert event.at is not None
    return (event.at - started_at).total_seconds()
