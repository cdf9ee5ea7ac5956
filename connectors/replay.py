"""File replay: ticks from a CSV or JSONL file, at their original pace, scaled, or as fast as
possible. Columns / fields: symbol, bid, ask, bid_size, ask_size, venue_time (RFC 3339),
optionally last and last_size. With `restamp` (the default) each tick is published with
venue_time = now, keeping the original spacing, so old recordings pass the staleness check."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from connectors.exceptions import ReplayFileError
from connectors.runtime import Clock, Pause, Publish, Reject, Step
from connectors.validation import MALFORMED, ValidationSettings, check_quote
from state.messages import Quote, Symbol

_REQUIRED = ("symbol", "bid", "ask", "bid_size", "ask_size", "venue_time")
_DECIMALS = ("bid", "ask", "bid_size", "ask_size", "last", "last_size")


class FileReplaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str
    format: str = ""  # "csv" or "jsonl"; empty: from the file suffix
    speed: float = 1.0  # 1: original pace, 10: ten times faster, 0: as fast as possible
    restamp: bool = True
    loop: bool = False
    symbols: tuple[Symbol, ...] = ()  # the known universe; empty: any well-formed symbol
    validation: ValidationSettings = ValidationSettings()

    def __post_init__(self) -> None:
        if self.format not in ("", "csv", "jsonl"):
            raise ValueError("format must be 'csv' or 'jsonl'")
        if not math.isfinite(self.speed) or self.speed < 0:
            raise ValueError("speed must be a finite number, not negative")

    @property
    def file_format(self) -> str:
        return self.format or ("csv" if self.path.endswith(".csv") else "jsonl")


def read_rows(path: Path, file_format: str) -> Iterator[tuple[bytes, dict[str, Any] | None]]:
    """Each line's raw bytes and its fields (None for a line that is not a record)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if file_format == "csv":
                reader = csv.DictReader(handle)
                for row in reader:
                    raw = ",".join(str(value) for value in row.values()).encode()
                    yield raw, dict(row)
            else:
                for line in handle:
                    if line.strip():
                        yield line.rstrip("\n").encode(), _json_object(line)
    except OSError as error:
        raise ReplayFileError(f"{path}: cannot read: {error}") from error


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_tick(fields: dict[str, Any]) -> Quote:
    """A tick as a Quote, or ValueError saying which field is wrong."""
    missing = [name for name in _REQUIRED if fields.get(name) in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    data: dict[str, Any] = {"symbol": str(fields["symbol"]).strip()}
    for name in _DECIMALS:
        value = fields.get(name)
        if value not in (None, ""):
            try:
                data[name] = Decimal(str(value).strip())
            except InvalidOperation as error:
                raise ValueError(f"{name}: not a decimal: {value!r}") from error
    venue_time = dt.datetime.fromisoformat(str(fields["venue_time"]).strip())
    if venue_time.tzinfo is None:
        raise ValueError("venue_time must carry a UTC offset")
    data["venue_time"] = venue_time
    try:
        return msgspec.convert(data, Quote)
    except msgspec.ValidationError as error:
        raise ValueError(str(error)) from error


class FileReplay:
    def __init__(self, settings: FileReplaySettings) -> None:
        self.settings = settings

    def steps(self, clock: Clock) -> Iterator[Step]:
        while True:
            yield from self._one_pass(clock)
            if not self.settings.loop:
                return

    def _one_pass(self, clock: Clock) -> Iterator[Step]:
        settings = self.settings
        known = frozenset(settings.symbols) or None
        first_venue: dt.datetime | None = None
        started_s = clock.monotonic()
        for raw, fields in read_rows(Path(settings.path), settings.file_format):
            try:
                if fields is None:
                    raise ValueError("not a JSON object")
                tick = parse_tick(fields)
            except ValueError as error:
                yield Reject(_symbol_of(fields), f"{MALFORMED}: {error}", raw)
                continue
            first_venue = first_venue or tick.venue_time
            offset_s = (tick.venue_time - first_venue).total_seconds()
            if settings.speed and offset_s > 0:
                yield Pause(started_s + offset_s / settings.speed)
            now = clock.now()
            if settings.restamp:
                tick = msgspec.structs.replace(tick, venue_time=now)
            reason = check_quote(tick, now, settings.validation, known)
            yield Publish(tick.symbol, tick) if reason is None else \
                Reject(tick.symbol, reason, raw)


def _symbol_of(fields: dict[str, Any] | None) -> str | None:
    symbol = (fields or {}).get("symbol")
    return str(symbol) if symbol else None
