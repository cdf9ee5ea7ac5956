"""Connector configuration: one file per connector (TOML or JSON), in the spirit of Kafka
Connect: `name`, `connector` (the class), `topic` (without the prefix) and `settings`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from connectors.exceptions import ConnectorConfigError

CONNECTOR_CLASSES = ("synthetic_quotes", "file_replay", "market_status")
_SUFFIXES = (".toml", ".json")


class ConnectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    connector: str
    topic: str
    settings: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.connector not in CONNECTOR_CLASSES:
            raise ValueError(
                f"unknown connector class {self.connector!r}; "
                f"one of {', '.join(CONNECTOR_CLASSES)}")
        if not self.name or not self.topic:
            raise ValueError("name and topic must not be empty")


class ConnectorsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bootstrap_servers: str
    connectors: tuple[ConnectorConfig, ...]
    topic_prefix: str = ""
    session_timeout_ms: int = 3000
    # Extra librdkafka producer settings (security, etc.) for a real cluster.
    producer_extra: dict[str, str] = {}
    # Symbols given a partition of `quotes` to themselves (symbol -> partition); the other
    # symbols are spread by murmur2 over the remaining partitions (connectors.partitioning).
    hot_symbols: dict[str, int] = {}
    # Where Quix keeps the sources' local state: under the stack's data dir (empty: a temporary
    # directory of its own), never the directory the process was started from.
    state_dir: str = ""

    def __post_init__(self) -> None:
        from connectors.partitioning import check_hot_symbols

        try:
            check_hot_symbols(self.hot_symbols)
        except ConnectorConfigError as error:
            raise ValueError(str(error)) from error


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return json.loads(text)


def load_connector_file(path: str | Path) -> ConnectorConfig:
    """One connector file, or ConnectorConfigError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = _read(path)
    except (OSError, ValueError) as error:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConnectorConfigError(f"{path}: cannot read: {error}") from error
    except RecursionError as error:  # arrays nested hundreds deep: a traceback, not a line
        raise ConnectorConfigError(f"{path}: cannot read: nested too deeply") from error
    try:
        config = msgspec.convert(data, ConnectorConfig)
    except (msgspec.ValidationError, ValueError) as error:
        raise ConnectorConfigError(f"{path}: {error}") from error
    # Settings are checked now, not in the connector's process, so a bad file fails `up` early.
    from connectors.registry import check_settings

    return check_settings(config, path)


def load_connector_dir(path: str | Path) -> tuple[ConnectorConfig, ...]:
    """Every `*.toml` / `*.json` connector file of a directory, sorted by file name.
    Names must be unique."""
    directory = Path(path)
    if not directory.is_dir():
        raise ConnectorConfigError(f"{directory}: not a directory of connector files")
    configs: list[ConnectorConfig] = []
    seen: dict[str, Path] = {}
    for file in sorted(directory.iterdir()):
        if file.suffix not in _SUFFIXES or not file.is_file():
            continue
        config = load_connector_file(file)
        if config.name in seen:
            raise ConnectorConfigError(
                f"{file}: name: {config.name!r} is already used by {seen[config.name]}")
        seen[config.name] = file
        configs.append(config)
    return tuple(configs)
